"""Online learning (`hrlxf_rl`, `tasks/finetune.py`): the math on hand-made numbers, rollouts in real short
worlds, and the run's resilience (crashing worlds, NaN losses, kill -9, bad configs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from hrlxf_agent.bundle import load_bundle, save_bundle, write_untrained_bundle
from hrlxf_models.policy import PolicyNoise
from hrlxf_rl.ppo import PPOConfig, gae, ppo_loss
from hrlxf_rl.rewards import RewardConfig, day_rewards, potential
from hrlxf_rl.rollout import RolloutJob, play_rollout
from tasks.finetune import FinetuneConfig, FinetuneError, LeagueConfig, finetune

ROOT = Path(__file__).resolve().parents[1]
SHORT = dict(steps=10, agents_per_world=(4, 6))


def test_gae_on_hand_made_numbers():
    adv, ret = gae(np.array([1.0, 0.0, 2.0]), np.array([0.5, 0.5, 1.0]), np.array([0, 0, 1]), gamma=0.9, lam=0.8)
    # t=2: 2 - 1 = 1; t=1: 0 + 0.9*1 - 0.5 = 0.4, + 0.72*1 = 1.12; t=0: 1 + 0.45 - 0.5 = 0.95, + 0.72*1.12
    np.testing.assert_allclose(adv, [1.7564, 1.12, 1.0], rtol=1e-6)
    np.testing.assert_allclose(ret, [2.2564, 1.62, 2.0], rtol=1e-6)
    adv, _ = gae(np.array([1.0, 2.0]), np.array([0.0, 5.0]), np.array([1, 1]), gamma=1.0, lam=1.0)
    np.testing.assert_allclose(adv, [1.0, -3.0])  # an episode's end never bootstraps from the next one


def test_ppo_loss_on_hand_made_numbers():
    config = PPOConfig(clip=0.2, value_clip=0.0, vf_coef=0.5, ent_coef=0.01)
    new_logp = torch.log(torch.tensor([1.5, 0.5]))
    loss, stats = ppo_loss(new_logp, torch.zeros(2), torch.tensor([3.0, 1.0]), torch.tensor([0.5, 0.5]),
                           torch.tensor([1.0, 2.0]), torch.zeros(2), torch.zeros(2), config)
    # advantages normalise to [1, -1]; ratios 1.5 and 0.5 clip to 1.2 and 0.8: pg = mean(-1.2, 0.8) = -0.2
    assert stats["policy_loss"] == pytest.approx(-0.2)
    assert stats["value_loss"] == pytest.approx(1.25)
    assert float(loss) == pytest.approx(-0.2 + 0.5 * 1.25 - 0.01 * 0.5)
    assert stats["approx_kl"] == pytest.approx(((0.5 - np.log(1.5)) + (-0.5 - np.log(0.5))) / 2)
    assert stats["clipfrac"] == 1.0
    clipped = replace(config, value_clip=0.5)  # the value may move 0.5 from the old one: max of both errors
    _, stats = ppo_loss(new_logp, torch.zeros(2), torch.tensor([3.0, 1.0]), torch.tensor([0.5, 0.5]),
                        torch.tensor([1.0, 2.0]), torch.zeros(2), torch.zeros(2), clipped)
    assert stats["value_loss"] == pytest.approx(1.25)


def _days(stock: list[float], balance: list[float]) -> dict[str, np.ndarray]:
    n = len(stock)
    return {"step": np.arange(n), "balance": np.asarray(balance, dtype=float), "stock": np.asarray(stock, dtype=float),
            "n_lines": np.full(n, 10), "n_steps": np.full(n, n), "price_in": np.full(n, 10.0),
            "price_out": np.full(n, 20.0), "production_cost": np.full(n, 2.0), "initial_balance": np.full(n, 1000.0)}


def test_the_potential_pays_nothing_for_hoarding():
    """Stock never drains in scml 0.8.4 and is worth nothing at the end: Phi counts only what can still be
    sold (n_lines a day), so buying beyond that, or holding stock to the end, earns no reward."""
    assert potential(1e6, 10, 3, 20.0, 2.0, 1000.0) == potential(30, 10, 3, 20.0, 2.0, 1000.0) == 30 * 18 / 1000
    assert potential(500, 10, 0, 20.0, 2.0, 1000.0) == 0.0
    config = RewardConfig(gamma=1.0, shortfall_weight=0.0)
    # a factory that buys 100 units a day at 10 and sells nothing, against one that does nothing
    hoard = day_rewards(_days([0, 100, 200, 300, 400], [1000, 0, -1000, -2000, -3000]), -4000, np.zeros(5), config)
    idle = day_rewards(_days([0] * 5, [1000] * 5), 1000, np.zeros(5), config)
    assert hoard["reward"].sum() == pytest.approx(100 * (-5000 / 1000))  # the money spent, nothing for the stock
    assert hoard["shaping"].sum() == pytest.approx(0.0)  # Phi(s_0) = 0 and nothing is left at the end
    assert hoard["reward"].sum() < idle["reward"].sum() == 0.0
    # a potential of stock x price would have paid 400 x 20 for the hoard at the last day


def _perturbed_bundle(path: Path) -> Path:
    """An untrained residual over the rules with random heads, so that every log-probability is non-trivial."""
    b = load_bundle(write_untrained_bundle(path.parent / "base", base="rules"))
    torch.manual_seed(3)
    for head in (b.executor.op_head, b.executor.delta_head, b.executor.q_head, b.executor.p_head, b.planner.goal):
        torch.nn.init.normal_(head.weight, std=0.2)
    return save_bundle(path, b.planner, b.executor, b.coordinator)


def test_a_rollouts_log_probs_equal_the_policys_on_replay(tmp_path):
    from hrlxf_rl import l2_ppo, mappo

    bundle = _perturbed_bundle(tmp_path / "policy")
    torch.save(PolicyNoise().state_dict(), tmp_path / "noise.pt")
    job = RolloutJob(0, 0, 4242, 10, (4, 6), ("PenguinAgent", "AS0"), (), str(bundle), str(tmp_path / "noise.pt"),
                     ("l2", "l3"), 300)
    row = play_rollout(job)
    assert row["error"] is None, row.get("traceback")
    factories = row["factories"]
    assert factories and all(f["unsafe"] == 0 and f["illegal"] == 0 for f in factories)
    for f in factories:  # the days' profits are the score, in its own unit
        profit = day_rewards(f["days"], f["final_balance"], f["shortfall"], RewardConfig())["profit"]
        assert profit.sum() / 100 == pytest.approx(f["score"] - 1, abs=1e-9)
    b = load_bundle(bundle)
    noise = PolicyNoise()
    noise.load_state_dict(torch.load(tmp_path / "noise.pt"))
    rows = mappo.l3_rows(factories, RewardConfig())
    assert len(rows["op"]) >= 10 and set(np.unique(rows["op"])) >= {1}  # counter-offers, with their (q, p) draws
    with torch.no_grad():
        logp, _ = mappo.replay(b.executor, noise, rows, np.arange(len(rows["op"])))
        np.testing.assert_allclose(logp.numpy(), rows["logp"], atol=1e-5)
        days = l2_ppo.l2_rows(factories, RewardConfig())
        assert len(days["logp"]) == 10 * len(factories)
        logp, _, _ = l2_ppo.replay(b.planner, noise, days, np.arange(len(days["logp"])))
        np.testing.assert_allclose(logp.numpy(), days["logp"], atol=1e-5)
    assert 0 < rows["done"].sum() < len(rows["op"])  # threads of several rounds, each ending once


def _smoke(tmp_path: Path, **kwargs) -> FinetuneConfig:
    league = LeagueConfig(experts=("PenguinAgent", "AS0"), held_out=(), snapshot_every=0)
    return FinetuneConfig.smoke(**{"workers": 1, "league": league, "start": str(
        write_untrained_bundle(tmp_path / "start", base="rules")), **kwargs})


def test_a_crashing_rollout_world_is_dropped_and_counted(tmp_path, monkeypatch):
    import tasks.finetune as ft

    config = _smoke(tmp_path, iterations=1, schedule=(1.0, 1.0))
    real = ft.rollout_jobs

    def jobs(*args, **kwargs):
        good, other = real(*args, **kwargs)
        return [good, replace(other, opponents=("PenguinAgent", "crashing_agents:RaisingAgent"))]

    monkeypatch.setattr(ft, "rollout_jobs", jobs)
    learner = ft.new_learner(Path(config.start), config)
    run = tmp_path / "run"
    run.mkdir()
    before = {k: v.clone() for k, v in learner.bundle.executor.state_dict().items()}
    row = ft.iterate(learner, config, run, 0)
    assert row["worlds"] == 1 and row["dropped"] == 1, row
    assert any("boom on day 2" in e for e in row["errors"]), row["errors"]
    assert row["l3/samples"] > 0  # training went on with the world that finished
    after = learner.bundle.executor.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_nan_loss_stops_the_run_naming_it_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import hrlxf_rl.mappo as mappo
    import tasks.finetune as ft

    config = _smoke(tmp_path, iterations=2, schedule=(1.0, 1.0), eval_every=0)
    real_rewards, real_save = mappo.thread_rewards, ft.save_checkpoint
    saved: list[int] = []

    def rewards(*args, **kwargs):
        out = real_rewards(*args, **kwargs)
        if saved:  # after the first checkpoint: a NaN reward
            out["reward"] = np.full_like(out["reward"], np.nan)
        return out

    def save(learner, run):
        real_save(learner, run)
        saved.append(learner.iteration)

    monkeypatch.setattr(mappo, "thread_rewards", rewards)
    monkeypatch.setattr(ft, "save_checkpoint", save)
    run = tmp_path / "run"
    with pytest.raises(FinetuneError, match=r"iteration 1: l3: the (policy|value) loss is nan.*iteration 0\) is kept"):
        finetune(config, run, tmp_path / "data", progress=False)
    assert torch.load(run / "checkpoint.pt", weights_only=False)["iteration"] == 0
    assert [json.loads(x)["iteration"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [0]


def test_bad_configs_and_starts_fail_before_any_world(tmp_path, monkeypatch):
    from flows.cli import main
    from hrlxf_agent.registry import UnknownAgentError

    cases = [(dict(l3=PPOConfig(clip=-0.1)), "clip = -0.1"), (dict(workers=0), "workers = 0"),
             (dict(schedule=(0.8, 0.2)), "schedule"), (dict(iterations=0), "iterations")]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            FinetuneConfig(**kwargs).validate()
    with pytest.raises(UnknownAgentError, match="NoSuchAgent"):
        FinetuneConfig(league=LeagueConfig(experts=("NoSuchAgent",))).validate()
    run = tmp_path / "run"
    with pytest.raises(FinetuneError, match="start: .*nowhere.*manifest.json: missing"):
        finetune(FinetuneConfig(start=str(tmp_path / "nowhere")), run, tmp_path)
    assert not run.exists()  # nothing was started
    monkeypatch.setenv("HRLXF_DATA", str(tmp_path / "data"))
    assert main(["finetune", "--profile", "smoke", "--set", "l3.clip=-1"]) == 2
    assert main(["finetune", "--profile", "smoke", "--set", "league.experts=[\"Nobody\"]"]) == 2
    assert not (tmp_path / "data" / "finetune").exists()


def test_a_run_killed_with_kill_9_resumes_without_repeating_or_losing_an_iteration(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data, run = tmp_path / "data", tmp_path / "run"
    env = {**os.environ, "HRLXF_DATA": str(data), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "flows.cli", "finetune", "--profile", "smoke", "--run-dir", str(run),
           "--set", "league.snapshot_every=0"]
    child = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGKILL)  # the learner and its world processes, in the middle of iteration 1
    child.wait()
    first = json.loads(metrics.read_text().splitlines()[0])
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert rows[0] == first  # iteration 0 was not played again
    assert torch.load(run / "checkpoint.pt", weights_only=False)["iteration"] == 2
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("run/score")] == [0, 1, 2]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 3 and summary["unsafe"] == 0 and summary["illegal"] == 0
    assert load_bundle(summary["bundle"]).manifest.metrics["from"].endswith("untrained-rules")
    assert (run / "curves.png").stat().st_size > 10_000
    assert "eval/vs_start" in rows[-1] and "eval/vs_penguin" in rows[-1]


def test_rollouts_fan_out_on_a_dask_cluster(tmp_path):
    from distributed import LocalCluster

    import tasks.finetune as ft

    config = _smoke(tmp_path, iterations=1, schedule=(1.0, 1.0))
    learner = ft.new_learner(Path(config.start), config)
    run = tmp_path / "run"
    run.mkdir()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        row = ft.iterate(learner, config, run, 0, dask_address=cluster.scheduler_address)
    assert row["worlds"] == 2 and row["dropped"] == 0 and row["l3/samples"] > 0, row


def test_the_run_publishes_its_best_measured_iteration(tmp_path, monkeypatch):
    """Later phases can lose what an earlier one gained: the bundle is the measured iteration with the best
    paired score against the start (here iteration 1 of 3), and the summary says which."""
    import tasks.finetune as ft

    scores = iter([0.01, 0.03, 0.02])
    weights: dict[int, dict] = {}

    def measure(learner, config, run, iteration, start, dask_address=None):
        weights[iteration] = {k: v.clone() for k, v in learner.bundle.executor.state_dict().items()}
        return {"eval/vs_start": next(scores), "eval/vs_penguin": 0.0}

    monkeypatch.setattr(ft, "measure", measure)
    config = _smoke(tmp_path, iterations=3, schedule=(1.0, 1.0), eval_every=1)
    summary = finetune(config, tmp_path / "run", tmp_path / "data", out_root=tmp_path / "bundles", progress=False)
    assert summary["published_iteration"] == 1 and summary["iterations"] == 3
    published = load_bundle(summary["bundle"]).executor.state_dict()
    assert all(torch.equal(published[k], weights[1][k]) for k in published)
    assert any(not torch.equal(weights[1][k], weights[2][k]) for k in published)  # the last one was another


# ------------------------------------------------------------------------------- the paired antithetic search


def test_the_antithetic_estimate_on_hand_made_numbers():
    """Two knobs, two directions: a score that rises with knob 0 only; the estimate points along knob 0
    and Adam's first step is lr in that knob (and clamped to the bound)."""
    from hrlxf_rl import search

    eps = np.array([[1.0, 0.5], [-0.5, 2.0]])
    theta, sigma = np.zeros(2), 0.1
    points = search.candidates(theta, eps, sigma)
    assert np.allclose(points[0], [0.1, 0.05]) and np.allclose(points[1], [-0.1, -0.05])
    scores = np.array([[3.0 * p[0] for p in points], [3.0 * p[0] + 1.0 for p in points]])  # 2 worlds; a world offset
    d = search.half_differences(scores)
    assert np.allclose(d, [0.3, -0.15])  # the world's offset cancels: (R+ - R-) / 2 = 3 sigma eps_k0
    grad = search.gradient(d, eps, sigma)
    assert np.allclose(grad, [(0.3 * 1.0 - 0.15 * -0.5) / 0.2, (0.3 * 0.5 - 0.15 * 2.0) / 0.2])
    ascent = search.Ascent(theta, lr=0.25)
    step = ascent.step(grad, bound=4.0)
    assert np.allclose(step, 0.25 * np.sign(grad))  # Adam's first step: lr x sign
    again = search.Ascent(step, lr=0.25, state=ascent.state()).step(np.array([1e6, 0.0]), bound=0.3)
    assert again[0] == pytest.approx(0.3)


def test_the_gated_axis_step_moves_only_knobs_with_evidence():
    """Axes: pair k perturbs knob k alone. Knob 0 helps in every world (its interval excludes 0), knob 1 is
    noise around 0: the gate steps knob 0 by lr toward its better side and leaves knob 1 where it was."""
    from hrlxf_rl import search
    from tasks.stats import excludes_zero, mean_interval

    eps = search.directions(np.random.default_rng(0), 5, 2, "axes")
    assert np.array_equal(eps, np.eye(2))  # the count of random directions does not apply
    theta, sigma = np.array([0.5, 0.0]), 2.0
    points = search.candidates(theta, eps, sigma)
    assert np.allclose(points, [[2.5, 0.0], [-1.5, 0.0], [0.5, 2.0], [0.5, -2.0]])
    noise = np.array([0.03, -0.02, 0.01, -0.04, 0.02, 0.0])
    scores = np.array([[1.0 + w + 0.01 * p[0] + (noise[w] if p[1] > 0 else 0.0) for p in points] for w in range(6)])
    per_world = search.per_world_half_differences(scores)
    assert np.allclose(per_world[:, 0], 0.02) and np.allclose(per_world[:, 1], noise / 2)
    assert np.allclose(search.half_differences(scores), per_world.mean(axis=0))
    sides = [excludes_zero(mean_interval(list(per_world[:, k]))) for k in range(2)]
    assert sides == [1, 0]
    assert np.allclose(search.gated_step(theta, sides, lr=2.0, bound=4.0), [2.5, 0.0])
    assert np.allclose(search.gated_step(np.array([3.0, 0.0]), [1, -1], lr=2.0, bound=4.0), [4.0, -2.0])
    with pytest.raises(ValueError, match="needs search.sampling = 'axes'"):
        search.SearchConfig(step="gated").validate()


def test_knobs_move_only_their_entries_and_zero_is_the_start(tmp_path):
    from hrlxf_rl import search

    b = load_bundle(write_untrained_bundle(tmp_path / "start", base="rules"))
    before = {n: {k: v.clone() for k, v in getattr(b, n).state_dict().items()} for n in ("planner", "executor")}
    knobs = ("l2.p_sell", "l3.q")
    base = search.base_values(b, knobs)
    search.steer(b, knobs)
    assert b.executor.config.rules_goal == "l2"
    search.apply(b, knobs, base, np.array([1.0, -2.0]))
    goal = b.planner.goal.bias.detach()
    assert torch.allclose(goal[list(search.KNOBS["l2.p_sell"].index)], torch.full((4,), 0.06))
    assert int((goal != 0).sum()) == 4 and float(b.executor.q_head.bias) == pytest.approx(-1.0)
    search.apply(b, knobs, base, np.zeros(2))
    for n in ("planner", "executor"):
        assert all(torch.equal(v, before[n][k]) for k, v in getattr(b, n).state_dict().items())
    with pytest.raises(ValueError, match="search.knobs: unknown"):
        search.SearchConfig(knobs=("l2.nothing",)).validate()


def test_a_role_knob_moves_the_goal_of_its_role_only(tmp_path):
    """`l2.p_sell@first` raises the sell price goal of a first-level factory ([can_buy, can_sell] = [0, 1]) and
    leaves a middle one's goal as the rules set it."""
    from hrlxf_models.planner import GOAL_DIM, P_SELL
    from hrlxf_rl import search

    b = load_bundle(write_untrained_bundle(tmp_path / "start", base="rules"))
    knobs = ("l2.p_sell@first",)
    search.apply(b, knobs, search.base_values(b, knobs), np.array([2.0]))
    torch.manual_seed(0)
    xs, xt = torch.randn(2, b.planner.config.n_static), torch.randn(2, b.planner.config.horizon + 1, b.planner.config.n_channels)
    role = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    base = torch.ones(2, GOAL_DIM)
    goal, _ = b.planner(xs, xt, role, base)
    sell_price = goal.view(2, -1, 4)[:, :, P_SELL]
    assert torch.allclose(sell_price[0], torch.full((4,), 1.0 + 0.5 * float(np.tanh(0.2))))
    assert torch.allclose(sell_price[1], torch.ones(4))


def test_a_search_run_plays_its_candidates_in_the_same_worlds_and_moves_theta(tmp_path):
    """Real short worlds: each iteration's candidates (centre, +-eps, the start) play the same world;
    theta moves, the steered bundle is published and a rerun resumes with nothing to play."""
    from hrlxf_rl.search import SearchConfig

    config = _smoke(tmp_path, method="search", iterations=2, eval_every=0, eval_worlds=0,
                    search=SearchConfig(knobs=("l2.p_buy", "l2.p_sell"), directions=1, worlds=1, sigma=2.0))
    run = tmp_path / "run"
    summary = finetune(config, run, tmp_path / "data", out_root=tmp_path / "bundles", progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["search", "search"] and summary["unsafe"] == summary["illegal"] == 0
    assert all(r["worlds"] == 1 and r["samples"] == 4 for r in rows)  # centre, d0p, d0m, the start
    played = [json.loads(p.read_text()) for p in (run / "search" / "it0000" / "worlds").rglob("w*/*.json")]
    first = {r["agent"]: r for r in played}  # rows are named by content; each holds the label that played it
    assert len(played) == 4 and len({r["seed"] for r in played}) == 1  # one world, the same seed for every candidate
    start = next(label for label in first if label not in ("centre", "d0p", "d0m"))
    assert first["centre"]["score"] == first[start]["score"]  # theta 0 (steered) plays exactly as its start
    theta = [rows[-1][f"search/theta/{k}"] for k in ("l2.p_buy", "l2.p_sell")]
    assert any(abs(t) > 0 for t in theta)
    published = load_bundle(summary["bundle"])
    assert published.executor.config.rules_goal == "l2"
    assert float(published.planner.goal.bias[list(__import__("hrlxf_rl.search").search.KNOBS["l2.p_buy"].index)][0]) \
        == pytest.approx(theta[0] * 0.06, rel=1e-5)
    again = finetune(config, run, tmp_path / "data", out_root=tmp_path / "bundles", progress=False)
    assert again["bundle"] == summary["bundle"]


def test_a_gated_search_iteration_steps_a_knob_only_as_its_recorded_interval_says(tmp_path):
    """Real short worlds, one role knob on its axis: the row records the knob's per-world half difference and
    interval, and theta moved by lr toward the side that interval favours, or not at all when it holds 0."""
    from hrlxf_rl.search import SearchConfig
    from tasks.stats import excludes_zero

    knob = "l2.p_sell@first"
    config = _smoke(tmp_path, method="search", iterations=1, eval_every=0, eval_worlds=0, workers=2,
                    search=SearchConfig(knobs=(knob,), sampling="axes", step="gated", sigma=2.0, lr=2.0, worlds=3))
    run = tmp_path / "run"
    finetune(config, run, tmp_path / "data", out_root=tmp_path / "bundles", progress=False)
    (row,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert row["worlds"] == 3 and row["samples"] == 12  # the centre, +-axis, the start in each world
    mean, hw = row[f"search/half_difference/{knob}"], row[f"search/half_difference_half_width/{knob}"]
    side = excludes_zero({"ci95": [mean - hw, mean + hw]})
    assert row[f"search/theta/{knob}"] == pytest.approx(2.0 * side)
