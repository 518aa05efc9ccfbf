"""Stage: online fine-tuning in real worlds (DESIGN.md section 5) -> a bundle.

From a starting bundle (by default the untrained residual over the rules, which plays as the rules do),
each iteration plays ``worlds`` rollout worlds (`hrlxf_rl.rollout`: the training profile's std worlds,
our learner in the candidate slots, the league in the others) on the same runner as collect
(`tasks.parallel.run_jobs`: local processes or a Dask cluster), then updates the layers of its phase:

- ``l3``: L3 by thread-level MAPPO (`hrlxf_rl.mappo`) with L2 frozen (it plays its mean goal);
- ``l2``: L2 by PPO, a step a day (`hrlxf_rl.l2_ppo`) with L3 frozen (it plays its modes);
- ``joint``: both, at ``joint_lr_scale`` x their learning rates.

Every ``snapshot_every`` iterations a frozen copy joins the league (self-play); every ``eval_every``
iterations the policy plays greedily in a small fixed set of paired worlds beside the starting bundle
and PenguinAgent (`tasks.evaluate`: their rows are played once and reused).

The run directory holds ``checkpoint.pt`` (written atomically after each iteration: the networks, the
optimizers, the noise, the league and the history of every finished iteration), ``metrics.jsonl`` (one
row per finished iteration), TensorBoard event files under ``tb/``, ``curves.png``, the league's
snapshots and ``summary.json``. A run killed at any point (``kill -9``) resumes from its last finished
iteration: the iteration in flight is played again from its own seeds and nothing is logged twice.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from hrlxf_rl.ppo import LossNotFinite, PPOConfig
from hrlxf_rl.rewards import RewardConfig
from hrlxf_rl.search import SearchConfig
from hrlxf_models.policy import NoiseConfig
from tasks.collect import PROFILES as COLLECT_PROFILES

ROLLOUT_SEED_BASE = 9_000_000  # rollout worlds share no seed with collect, the audit or the evaluation (7_000_000)
EVAL_SEED = 17  # the paired worlds a run measures itself on: EvalConfig seed 17, never the pipeline's seed 0
SEARCH_SEED = 1_000  # EvalConfig seed of the search's worlds: 1_000 + 1_000 x seed + iteration (never 0 or 17)
PHASES = ("l3", "l2", "joint")
METHODS = ("ppo", "search")
#: opponents the league never plays, so the evaluation measures generalisation against them
HELD_OUT = ("KATSUDONAgent", "CautiousStdAgent")


class FinetuneError(RuntimeError):
    """A run that cannot start or go on; the message names the field, file or loss."""


@dataclass
class LeagueConfig:
    """Who the learner plays: the experts of collect but the held-out ones, and snapshots of itself."""

    experts: tuple[str, ...] = tuple(e for e in COLLECT_PROFILES["default"].experts if e not in HELD_OUT)
    held_out: tuple[str, ...] = HELD_OUT
    snapshot_every: int = 5  # iterations between snapshots joining the league (0: no self-play)
    self_play: float = 0.25  # share of rollout worlds with snapshots among the opponents
    snapshots_per_world: int = 2  # the newest snapshot and random older ones

    def validate(self) -> None:
        from hrlxf_agent.registry import resolve_all

        if not self.experts:
            raise ValueError("league.experts: give at least one expert")
        resolve_all(list(self.experts) + list(self.held_out))  # an unknown name fails before any world
        both = set(self.experts) & set(self.held_out)
        if both:
            raise ValueError(f"league: {sorted(both)} both in the league and held out of it")
        if self.snapshot_every < 0 or not 0 <= self.self_play <= 1 or self.snapshots_per_world < 1:
            raise ValueError(f"league: snapshot_every >= 0, self_play in [0, 1], snapshots_per_world >= 1; got "
                             f"{self.snapshot_every}, {self.self_play}, {self.snapshots_per_world}")


@dataclass
class FinetuneConfig:
    start: str = "untrained:rules"  # a bundle directory, "latest", or "untrained:rules" (plays as the rules)
    iterations: int = 30
    worlds: int = 4  # rollout worlds per iteration
    steps: int = 50
    agents_per_world: tuple[int, int] = COLLECT_PROFILES["default"].agents_per_world
    workers: int = 2
    world_timeout: float = 900.0
    seed: int = 0
    schedule: tuple[float, float] = (0.5, 0.75)  # the shares of the iterations where the l2, then the joint phase starts
    joint_lr_scale: float = 0.3
    l3: PPOConfig = field(default_factory=lambda: PPOConfig(lr=3e-4, critic_lr=3e-4, gamma=1.0))
    l2: PPOConfig = field(default_factory=lambda: PPOConfig(lr=1e-4, critic_lr=3e-4, gamma=0.99, minibatch=64))
    rewards: RewardConfig = field(default_factory=RewardConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    league: LeagueConfig = field(default_factory=LeagueConfig)
    eval_every: int = 5  # iterations between paired measurements (0: only after the last)
    eval_worlds: int = 4  # 0: no paired measurement in the run (the pipeline's evaluate stage measures it)
    eval_steps: int = 50
    publish: str = "best"  # "best": the measured iteration with the best paired score against the start; "last"
    # "ppo": the l3 / l2 / joint schedule above; "search": paired antithetic search over a few knobs (`hrlxf_rl.search`)
    method: str = "ppo"
    search: SearchConfig = field(default_factory=SearchConfig)

    def validate(self) -> None:
        if self.iterations < 1 or self.worlds < 1 or self.eval_worlds < 0:
            raise ValueError(f"iterations and worlds must be >= 1 and eval_worlds >= 0, got {self.iterations}, "
                             f"{self.worlds}, {self.eval_worlds}")
        if self.workers < 1:
            raise ValueError(f"workers = {self.workers}: give at least one worker")
        if self.steps < 3 or self.eval_steps < 3:
            raise ValueError(f"steps and eval_steps must be >= 3, got {self.steps}, {self.eval_steps}")
        lo, hi = self.agents_per_world
        if not 2 <= lo <= hi:
            raise ValueError(f"agents_per_world must be a range (lo, hi) with 2 <= lo <= hi, got {self.agents_per_world}")
        a, b = self.schedule
        if not 0 <= a <= b <= 1:
            raise ValueError(f"schedule = {self.schedule}: give (l2 start, joint start) with 0 <= l2 <= joint <= 1")
        if self.method not in METHODS:
            raise ValueError(f"method = {self.method!r}: give one of {', '.join(METHODS)}")
        if self.publish not in ("best", "last"):
            raise ValueError(f"publish = {self.publish!r}: give 'best' or 'last'")
        if not 0 < self.joint_lr_scale <= 1 or self.eval_every < 0 or self.world_timeout <= 0:
            raise ValueError(f"joint_lr_scale in (0, 1], eval_every >= 0, world_timeout > 0; got {self.joint_lr_scale}, "
                             f"{self.eval_every}, {self.world_timeout}")
        self.l3.validate("l3")
        self.l2.validate("l2")
        self.search.validate()
        self.rewards.validate()
        self.league.validate()

    def phase(self, iteration: int) -> str:
        """The phase of an iteration: l3 (L2 frozen), l2 (L3 frozen), then joint; or search."""
        if self.method == "search":
            return "search"
        share = iteration / self.iterations
        return "l3" if share < self.schedule[0] else "l2" if share < self.schedule[1] else "joint"

    @classmethod
    def smoke(cls, **kwargs: Any) -> "FinetuneConfig":
        """About a minute of short worlds: every phase, a snapshot and a paired measurement (for tests)."""
        base = dict(iterations=3, worlds=2, steps=10, agents_per_world=(4, 6), schedule=(0.3, 0.6), eval_every=3,
                    eval_worlds=1, eval_steps=10, world_timeout=300.0,
                    league=LeagueConfig(experts=("PenguinAgent", "AS0"), held_out=(), snapshot_every=1, self_play=0.5),
                    l3=PPOConfig(lr=1e-4, minibatch=64, epochs=2), l2=PPOConfig(lr=3e-5, gamma=0.99, minibatch=16, epochs=2))
        return cls(**{**base, **kwargs})

    @classmethod
    def default(cls, **kwargs: Any) -> "FinetuneConfig":
        """The pipeline's bounded budget: a few iterations of L3 only, inside `make run`'s 45 minutes."""
        return cls(**{**dict(iterations=4, worlds=2, schedule=(1.0, 1.0), eval_every=0, eval_worlds=0), **kwargs})

    @classmethod
    def long(cls, **kwargs: Any) -> "FinetuneConfig":
        """Real training: hours on 2 cores."""
        return cls(**{**dict(iterations=36, worlds=6, eval_every=4, eval_worlds=6), **kwargs})

    @classmethod
    def paired_search(cls, **kwargs: Any) -> "FinetuneConfig":
        """The paired antithetic search: 10 iterations of 5 worlds x 8 candidates (the centre, 3 antithetic pairs,
        the start), measured every 5 in 8 worlds (about 45 minutes on 2 cores)."""
        return cls(**{**dict(method="search", iterations=10, eval_every=5, eval_worlds=8,
                             league=LeagueConfig(snapshot_every=0)), **kwargs})

    @classmethod
    def screen(cls, **kwargs: Any) -> "FinetuneConfig":
        """The gated axis search on L2's goal per role: per iteration, four knobs at +-2 (about +-10% in price,
        +-0.5 n_lines per bucket in quantity) in 12 paired worlds; a knob steps by 2 toward the side whose
        interval excludes 0 (3 iterations, about 35 minutes on 2 cores; measure the result with `hrlxf evaluate`
        in 30+ fresh worlds). The knobs: what the first search iterations showed to matter, the first level's
        sell price and quantity (its stock grows with its exogenous supply and pays storage until sold) and
        the quantities the later levels buy."""
        screen = SearchConfig(knobs=("l2.p_sell@first", "l2.q_sell@first", "l2.q_buy@middle", "l2.q_buy@last"),
                              sampling="axes", step="gated", sigma=2.0, lr=2.0, worlds=12)
        return cls(**{**dict(method="search", iterations=3, eval_every=0, eval_worlds=0, search=screen,
                             league=LeagueConfig(snapshot_every=0)), **kwargs})


PROFILES: dict[str, Callable[..., FinetuneConfig]] = {"smoke": FinetuneConfig.smoke, "default": FinetuneConfig.default,
                                                      "long": FinetuneConfig.long, "search": FinetuneConfig.paired_search,
                                                      "screen": FinetuneConfig.screen}


# ------------------------------------------------------------------------------- the learner's state


@dataclass
class Learner:
    """The networks being trained, their optimizers and the run's history."""

    bundle: Any  # hrlxf_agent.bundle.Bundle: planner, executor, coordinator (L4 stays as it is)
    critic: Any
    noise: Any
    optimizers: dict[str, torch.optim.Optimizer]
    iteration: int = -1  # the last finished iteration
    league: list[str] = field(default_factory=list)  # snapshot bundle directories, oldest first
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    best: dict[str, Any] | None = None  # the measured iteration with the best paired score against the start
    search: dict[str, Any] | None = None  # the search's theta, Adam state and base entries (method "search")

    def keep_if_best(self, row: dict[str, Any]) -> None:
        """Remember this iteration's weights if its paired score against the start is the best measured yet."""
        score = row.get("eval/vs_start")
        if score is not None and (self.best is None or score > self.best["vs_start"]):
            self.best = {"iteration": row["iteration"], "vs_start": score,
                         "planner": copy.deepcopy(self.bundle.planner.state_dict()),
                         "executor": copy.deepcopy(self.bundle.executor.state_dict())}


def start_bundle(spec: str, data: Path) -> Path:
    """The starting bundle's directory; ``untrained:rules`` is written once under DATA/bundles."""
    from hrlxf_agent.bundle import BundleError, load_bundle
    from tasks.candidates import parse_candidates

    try:
        if spec.startswith("untrained"):
            cand = parse_candidates([spec], data / "bundles")[0]
            return Path(cand.bundle).resolve()
        return load_bundle(spec).path.resolve()
    except (BundleError, ValueError) as e:
        raise FinetuneError(f"start: {e}") from None


def _optimizers(bundle: Any, critic: Any, noise: Any, config: FinetuneConfig, scale: float = 1.0) -> dict[str, torch.optim.Optimizer]:
    from hrlxf_rl.l2_ppo import l2_optimizer
    from hrlxf_rl.mappo import l3_optimizer

    l3 = replace(config.l3, lr=config.l3.lr * scale, critic_lr=config.l3.critic_lr * scale)
    l2 = replace(config.l2, lr=config.l2.lr * scale, critic_lr=config.l2.critic_lr * scale)
    return {"l3": l3_optimizer(bundle.executor, critic, noise, l3), "l2": l2_optimizer(bundle.planner, noise, l2)}


def new_learner(start: Path, config: FinetuneConfig) -> Learner:
    from hrlxf_agent.bundle import load_bundle
    from hrlxf_models import CoordinatorConfig
    from hrlxf_models.coordinator import ThreadCritic
    from hrlxf_models.policy import PolicyNoise

    torch.manual_seed(config.seed)
    bundle = load_bundle(start)
    critic = ThreadCritic(CoordinatorConfig())
    noise = PolicyNoise(config.noise)
    learner = Learner(bundle, critic, noise, _optimizers(bundle, critic, noise, config))
    if config.method == "search":
        from hrlxf_rl import search

        search.steer(bundle, config.search.knobs)
        learner.search = {"theta": np.zeros(len(config.search.knobs)), "adam": None,
                          "base": search.base_values(bundle, config.search.knobs)}
    return learner


def _state(learner: Learner) -> dict[str, Any]:
    b = learner.bundle
    return {"iteration": learner.iteration, "planner": b.planner.state_dict(), "executor": b.executor.state_dict(),
            "critic": learner.critic.state_dict(), "noise": learner.noise.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in learner.optimizers.items()},
            "league": learner.league, "history": learner.history, "seconds": learner.seconds, "best": learner.best,
            "search": learner.search}


def save_checkpoint(learner: Learner, run: Path) -> None:
    """Atomically: a kill at any moment leaves the previous checkpoint or this one, never half of one."""
    tmp = run / f".checkpoint.pt.tmp-{os.getpid()}"
    torch.save(_state(learner), tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, run / "checkpoint.pt")


def load_checkpoint(learner: Learner, run: Path, config: FinetuneConfig) -> Learner:
    path = run / "checkpoint.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise FinetuneError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e}); delete it to start over") from None
    learner.bundle.planner.load_state_dict(state["planner"])
    learner.bundle.executor.load_state_dict(state["executor"])
    learner.critic.load_state_dict(state["critic"])
    learner.noise.load_state_dict(state["noise"])
    phase = config.phase(state["iteration"] + 1)
    learner.optimizers = _optimizers(learner.bundle, learner.critic, learner.noise, config,
                                     config.joint_lr_scale if phase == "joint" else 1.0)
    for k, o in learner.optimizers.items():
        if config.phase(state["iteration"]) == phase:  # the joint phase starts with fresh moments at its own rate
            o.load_state_dict(state["optimizers"][k])
    learner.iteration, learner.league = state["iteration"], list(state["league"])
    learner.history, learner.seconds = list(state["history"]), float(state["seconds"])
    learner.best = state.get("best")
    if learner.search is not None and state.get("search") is not None:
        learner.search = state["search"]
    return learner


def write_policy(learner: Learner, out: Path, metrics: dict[str, Any] | None = None,
                 trained_on: dict[str, Any] | None = None) -> Path:
    """The learner's networks as a bundle (the rollout workers and the league load it; the stage's output)."""
    from hrlxf_agent.bundle import save_bundle

    b = learner.bundle
    return save_bundle(out, b.planner, b.executor, b.coordinator, metrics=metrics or {"trained": True},
                       trained_on=trained_on or {})


# ------------------------------------------------------------------------------- one iteration


def rollout_jobs(config: FinetuneConfig, iteration: int, learner: Learner, run: Path, explore: tuple[str, ...]) -> list:
    """The iteration's worlds, from its own seeds (a resumed run plays the same ones)."""
    from hrlxf_rl.rollout import RolloutJob

    rng = np.random.default_rng([config.seed, iteration])
    jobs = []
    for w in range(config.worlds):
        snaps: tuple[str, ...] = ()
        if learner.league and rng.random() < config.league.self_play:
            older = learner.league[:-1]
            extra = rng.choice(len(older), size=min(len(older), config.league.snapshots_per_world - 1), replace=False) \
                if older else []
            snaps = (learner.league[-1], *(older[i] for i in extra))
        jobs.append(RolloutJob(iteration, w, ROLLOUT_SEED_BASE + config.seed * 100_000 + iteration * 100 + w, config.steps,
                               tuple(config.agents_per_world), tuple(config.league.experts), snaps, str(run / "policy"),
                               str(run / "noise.pt"), explore, config.world_timeout))
    return jobs


def iterate(learner: Learner, config: FinetuneConfig, run: Path, iteration: int, dask_address: str | None = None,
            progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Play the iteration's worlds and update the layers of its phase; the iteration's metrics row."""
    from hrlxf_rl import l2_ppo, mappo
    from hrlxf_rl.rollout import died, play_rollout
    from tasks import parallel

    phase = config.phase(iteration)
    if phase == "search":
        return search_iteration(learner, config, run, iteration, dask_address, progress)
    explore = {"l3": ("l3",), "l2": ("l2",), "joint": ("l2", "l3")}[phase]
    write_policy(learner, run / "policy")
    torch.save(learner.noise.state_dict(), run / "noise.pt")
    start = time.perf_counter()
    rows = parallel.run_jobs(play_rollout, rollout_jobs(config, iteration, learner, run, explore), config.workers, died,
                             progress, dask_address, name=lambda j: f"rollout-i{j.iteration}-w{j.index}")
    played = time.perf_counter() - start
    good = [r for r in rows if r["error"] is None and r.get("factories")]
    factories = [f for r in good for f in r["factories"]]
    row: dict[str, Any] = {
        "iteration": iteration, "phase": phase, "worlds": len(good), "dropped": len(rows) - len(good),
        "errors": sorted({r["error"] for r in rows if r["error"]}), "factories": len(factories),
        "rollout_seconds": round(played, 2), "worlds_per_hour": round(3600 * len(good) / played, 1) if played > 0 else None,
        "score": float(np.mean([f["score"] for f in factories])) if factories else None,
        "unsafe": sum(f["unsafe"] for f in factories), "illegal": sum(f["illegal"] for f in factories),
        "decisions": sum(f["audited"] for f in factories),
        "league": len(learner.league), "snapshot_worlds": sum(1 for r in good if r.get("snapshots")),
    }
    rng = np.random.default_rng([config.seed, iteration, 1])
    update_start = time.perf_counter()
    samples = 0
    if factories and "l3" in explore:
        l3_rows = mappo.l3_rows(factories, config.rewards)
        if l3_rows:
            stats = mappo.update_l3(learner.bundle.executor, learner.critic, learner.noise, learner.optimizers["l3"],
                                    l3_rows, config.l3, rng)
            row.update({f"l3/{k}": v for k, v in stats.items()})
            samples += stats["samples"]
    if factories and "l2" in explore:
        l2_rows = l2_ppo.l2_rows(factories, config.rewards)
        if l2_rows:
            stats = l2_ppo.update_l2(learner.bundle.planner, learner.noise, learner.optimizers["l2"], l2_rows, config.l2, rng)
            row.update({f"l2/{k}": v for k, v in stats.items()})
            samples += stats["samples"]
    elapsed = time.perf_counter() - start
    row.update(samples=samples, update_seconds=round(time.perf_counter() - update_start, 2), seconds=round(elapsed, 2),
               samples_per_second=round(samples / elapsed, 1) if elapsed > 0 else None)
    if factories:
        from hrlxf_rl.rewards import day_rewards

        days = [day_rewards(f["days"], f["final_balance"], f["shortfall"], config.rewards) for f in factories]
        row["reward"] = float(np.mean([d["reward"].sum() for d in days]))  # per factory and world, percent of balance
    return row


def search_iteration(learner: Learner, config: FinetuneConfig, run: Path, iteration: int,
                     dask_address: str | None = None, progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """One step of the paired antithetic search (`hrlxf_rl.search`): the centre, its 2 x directions
    perturbations and the starting bundle play the iteration's own worlds (the same seeds and slots for
    all: common random numbers) on the collect runner; theta moves along the antithetic estimate.
    A world that failed for any candidate is dropped for all (complete cases)."""
    from hrlxf_rl import search
    from tasks import parallel
    from tasks.candidates import parse_candidates
    from tasks.evaluate import EvalConfig, complete_cases, died, play_unit, read_rows, todo, unit_name, units
    from tasks.stats import excludes_zero, mean_interval, paired_difference

    s, state = config.search, learner.search
    assert state is not None, "a search iteration needs the learner of a search run"
    theta = np.asarray(state["theta"], dtype=float)
    eps = search.directions(np.random.default_rng([config.seed, iteration, 2]), s.n_directions(), len(s.knobs), s.sampling)
    points = [theta, *search.candidates(theta, eps, s.sigma)]
    here = run / "search" / f"it{iteration:04d}"
    labels = ["centre"] + [f"d{k}{sign}" for k in range(s.n_directions()) for sign in ("p", "m")]
    paths = []
    for label, point in zip(labels, points):
        search.apply(learner.bundle, s.knobs, state["base"], point)
        paths.append(write_policy(learner, here / "bundles" / label))
    search.apply(learner.bundle, s.knobs, state["base"], theta)
    start = Path(json.loads((run / "config.json").read_text())["start"])
    eval_config = EvalConfig(worlds=s.worlds, steps=config.steps, seed=SEARCH_SEED + 1_000 * config.seed + iteration,
                             candidates=(), reference=paths[0].name, opponents=tuple(config.league.experts),
                             agents_per_world=tuple(config.agents_per_world), workers=config.workers,
                             world_timeout=config.world_timeout, keep_logs=False)
    eval_config.validate()
    cands = parse_candidates([str(p) for p in paths] + [str(start)])
    every = units(eval_config, cands, here / "worlds")
    t0 = time.perf_counter()
    parallel.run_jobs(play_unit, todo(every), config.workers, died, progress, dask_address, name=unit_name)
    played = time.perf_counter() - t0
    rows = read_rows(every)
    names = [c.label for c in cands]
    by, complete, dropped = complete_cases(rows, names)
    searched = [r for r in rows if not r.get("error") and r["agent"] in labels]  # the start's decisions are not ours
    row: dict[str, Any] = {
        "iteration": iteration, "phase": "search", "worlds": len(complete), "dropped": len(dropped),
        "errors": sorted({r["error"] for r in rows if r.get("error")}), "rollout_seconds": round(played, 2),
        "worlds_per_hour": round(3600 * len(every) / played, 1) if played > 0 else None,  # units: shared rows once
        "samples": len(every), "samples_per_second": round(len(every) / played, 3) if played > 0 else None,
        **{key: sum(int(r["counts"][count]) for r in searched)
           for key, count in (("unsafe", "unsafe_any"), ("illegal", "illegal"), ("decisions", "decisions"))},
        "score": None, "league": 0, "snapshot_worlds": 0,
    }
    if complete:
        scores = np.array([[float(by[(w, c)]["score"]) for c in names] for w in complete])  # (worlds, centre + 2n + start)
        per_world = search.per_world_half_differences(scores[:, 1:-1])
        d = per_world.mean(axis=0)
        grad = search.gradient(d, eps, s.sigma)
        if s.step == "gated":  # axes: direction k is knob k
            axes = [mean_interval(list(per_world[:, k]), config.seed) for k in range(len(d))]
            sides = [excludes_zero(a) for a in axes]
            new = search.gated_step(theta, sides, s.lr, s.bound)
            row.update({f"search/half_difference/{k}": a["mean"] for k, a in zip(s.knobs, axes)})
            row.update({f"search/half_difference_half_width/{k}": a["half_width"] for k, a in zip(s.knobs, axes)})
        else:
            ascent = search.Ascent(theta, s.lr, state["adam"])
            new = ascent.step(grad, s.bound)
            state["adam"] = ascent.state()
        state["theta"] = new
        search.apply(learner.bundle, s.knobs, state["base"], new)
        vs_start = paired_difference(list(scores[:, 0]), list(scores[:, -1]), config.seed)
        row.update({"score": float(scores[:, 0].mean()), "search/vs_start": vs_start["mean"],
                    "search/vs_start_half_width": vs_start["half_width"], "search/grad_norm": float(np.linalg.norm(grad)),
                    "search/abs_difference": float(np.abs(d).mean()),
                    **{f"search/theta/{k}": float(v) for k, v in zip(s.knobs, new)}})
    shutil.rmtree(here / "bundles", ignore_errors=True)  # the rows are the result; a replayed iteration rewrites them
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def measure(learner: Learner, config: FinetuneConfig, run: Path, iteration: int, start: Path,
            dask_address: str | None = None) -> dict[str, Any]:
    """The greedy policy in the run's fixed paired worlds beside its starting bundle and PenguinAgent."""
    from tasks.evaluate import EvalConfig, evaluate, find_pair

    label = f"it{iteration:04d}"
    policy = write_policy(learner, run / "eval" / "bundles" / label)
    eval_config = EvalConfig(worlds=config.eval_worlds, steps=config.eval_steps, seed=EVAL_SEED,
                             candidates=("PenguinAgent",), opponents=tuple(config.league.experts) + tuple(config.league.held_out),
                             agents_per_world=tuple(config.agents_per_world), workers=config.workers,
                             world_timeout=config.world_timeout, keep_logs=False)
    doc = evaluate(eval_config, run / "eval" / label, [policy, start], worlds_dir=run / "eval" / "worlds",
                   extra_pairs=[(label, start.name)], dask_address=dask_address)
    out: dict[str, Any] = {"eval/worlds": doc["worlds"]["complete"], "eval/score": doc["agents"][label]["score"]["mean"],
                           "eval/unsafe": doc["agents"][label]["unsafe_any"], "eval/illegal": doc["agents"][label]["illegal"]}
    for name, other in (("penguin", "PenguinAgent"), ("start", start.name)):
        d = find_pair(doc, label, other)
        if d is not None:
            out[f"eval/vs_{name}"], out[f"eval/vs_{name}_half_width"] = d["mean"], d["half_width"]
    return out


# ------------------------------------------------------------------------------- the run


def run_key(config: FinetuneConfig, start: Path) -> str:
    """What decides a run: the config and the starting bundle's weights (a run directory holds one)."""
    from tasks.fingerprint import canonical, fingerprint

    what = {"config": json.loads(canonical({k: v for k, v in asdict(config).items() if k not in ("workers", "publish")})),
            "start": fingerprint(start)}
    return hashlib.sha256(canonical(what).encode()).hexdigest()[:12]


def _log(writer: Any, row: dict[str, Any]) -> None:
    for k, v in row.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None and np.isfinite(v):
            writer.add_scalar(k if "/" in k else f"run/{k}", v, row["iteration"])
    writer.flush()


def finetune(config: FinetuneConfig, run: Path, data: Path, out_root: Path | None = None, dask_address: str | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Train from ``config.start`` for ``config.iterations`` in ``run`` (resuming what is there) and write the
    fine-tuned bundle under ``out_root`` (default DATA/bundles); returns the summary (also ``summary.json``)."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from tasks.fingerprint import canonical

    try:
        config.validate()
    except ValueError as e:
        raise FinetuneError(str(e)) from None
    start = start_bundle(config.start, data)
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    key = run_key(config, start)
    recorded = run / "config.json"
    if recorded.exists():
        before = json.loads(recorded.read_text())
        if before.get("key") != key:
            raise FinetuneError(f"{run}: holds a run of another config or starting bundle (key {before.get('key')}, "
                                f"this one {key}); give another run directory")
    else:
        recorded.write_text(json.dumps({"key": key, "start": str(start), "config": json.loads(canonical(config))}, indent=1))
    learner = new_learner(start, config)
    if (run / "checkpoint.pt").exists():
        learner = load_checkpoint(learner, run, config)
    with open(run / "metrics.jsonl", "w") as f:  # exactly the finished iterations (a kill may have cut one)
        f.writelines(json.dumps(r) + "\n" for r in learner.history)
    writer = SummaryWriter(str(run / "tb"), purge_step=learner.iteration + 1)
    bar = tqdm(total=config.iterations, initial=learner.iteration + 1, desc="finetune", unit="it", disable=not progress)
    try:
        for iteration in range(learner.iteration + 1, config.iterations):
            phase = config.phase(iteration)
            if iteration > 0 and phase == "joint" and config.phase(iteration - 1) != "joint":
                learner.optimizers = _optimizers(learner.bundle, learner.critic, learner.noise, config, config.joint_lr_scale)
            t0 = time.perf_counter()
            try:
                row = iterate(learner, config, run, iteration, dask_address)
            except LossNotFinite as e:
                raise FinetuneError(f"iteration {iteration}: {e}; the last good checkpoint (iteration "
                                    f"{learner.iteration}) is kept") from None
            snap_every = config.league.snapshot_every
            if config.method == "ppo" and snap_every and (iteration + 1) % snap_every == 0:
                learner.league.append(str(write_policy(learner, run / "league" / f"it{iteration:04d}")))
            last = iteration == config.iterations - 1
            if config.eval_worlds and (last or (config.eval_every and (iteration + 1) % config.eval_every == 0)):
                row.update(measure(learner, config, run, iteration, start, dask_address))
                learner.keep_if_best(row)
            learner.seconds += time.perf_counter() - t0
            row["wall_seconds"] = round(learner.seconds, 1)
            learner.iteration = iteration
            learner.history.append(row)
            _log(writer, row)
            save_checkpoint(learner, run)
            with open(run / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            bar.update(1)
            tail = f"vs start {row.get('search/vs_start') or float('nan'):+.4f}" if phase == "search" else \
                f"kl {row.get('l3/approx_kl', row.get('l2/approx_kl', float('nan'))):.4f}"
            bar.set_postfix_str(f"{phase} score {row['score'] or float('nan'):.3f} {tail}")
    finally:
        bar.close()
        writer.close()
    plot_curves(learner.history, run / "curves.png")
    return publish(learner, config, run, start, out_root or data / "bundles", key)


def publish(learner: Learner, config: FinetuneConfig, run: Path, start: Path, out_root: Path, key: str) -> dict[str, Any]:
    """The fine-tuned bundle (named by the digest of its weights) and the run's summary. ``config.publish``
    "best" publishes the measured iteration with the best paired score against the start (the last
    iteration when none was measured): later phases can lose what an earlier one gained."""
    b = learner.bundle
    published = learner.iteration
    if config.publish == "best" and learner.best is not None:
        b.planner.load_state_dict(learner.best["planner"])
        b.executor.load_state_dict(learner.best["executor"])
        published = learner.best["iteration"]
    from tasks.bundle import bundle_name

    name = bundle_name(b.executor, tuple(m.state_dict() for m in (b.planner, b.executor, b.coordinator)))
    last = learner.history[-1] if learner.history else {}
    summary = {"run": str(run), "key": key, "start": str(start), "iterations": learner.iteration + 1,
               "published_iteration": published, "publish": config.publish,
               "seconds": round(learner.seconds, 1), "worlds": sum(r["worlds"] for r in learner.history),
               "dropped": sum(r["dropped"] for r in learner.history),
               "unsafe": sum(r["unsafe"] for r in learner.history), "illegal": sum(r["illegal"] for r in learner.history),
               "last": {k: v for k, v in last.items() if k.startswith("eval/") or k in ("score", "reward", "phase")}}
    out = write_policy(learner, Path(out_root) / f"hrlxf-ft-{name}",
                       metrics={"trained": True, "finetune": summary, "from": str(start)},
                       trained_on={"finetune": str(run), "from": str(start)})
    summary["bundle"] = str(out)
    tmp = run / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1, default=float))
    os.replace(tmp, run / "summary.json")
    return summary


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Learning curves: reward and rollout score, the paired scores, and the PPO diagnostics (or the search's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    it = [r["iteration"] for r in history]

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(r["iteration"], r[key]) for r in history if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    paired = ("paired score difference (greedy, fixed worlds)", ["eval/vs_penguin", "eval/vs_start"])
    if any(r.get("phase") == "search" for r in history):
        knobs = sorted({k for r in history for k in r if k.startswith("search/theta/")})
        panels = [("centre score", ["score"]), ("centre - start, the iteration's own paired worlds", ["search/vs_start"]),
                  paired, ("theta (knob units)", knobs)]
        halves = sorted({k for r in history for k in r if k.startswith("search/half_difference/")})
        panels += [("(R+ - R-) / 2 per knob, 95% (the gate)", halves)] if halves else \
            [("antithetic gradient norm", ["search/grad_norm"])]
        panels += [("mean |d_k| (half the +- difference)", ["search/abs_difference"])]
    else:
        panels = [("reward (percent of balance, per factory-world)", ["reward"]), ("rollout score", ["score"]), paired,
                  ("approx_kl", ["l3/approx_kl", "l2/approx_kl"]), ("entropy", ["l3/entropy", "l2/entropy"]),
                  ("explained variance", ["l3/explained_variance", "l2/explained_variance"])]
    for ax, (title, keys) in zip(axes.flat, panels):
        for k in keys:
            x, y = series(k)
            if not x:
                continue
            if k.startswith(("eval/vs_", "search/vs_", "search/half_difference/")):
                width = k.replace("half_difference/", "half_difference_half_width/") if "half_difference/" in k \
                    else f"{k}_half_width"
                hw = [r.get(width) or 0.0 for r in history if r.get(k) is not None]
                ax.errorbar(x, y, yerr=hw, marker="o", capsize=3, label=k)
                ax.axhline(0, color="black", lw=0.8)
            else:
                ax.plot(x, y, marker=".", label=k)
        ax.set_title(title, fontsize=10)
        ax.set_xlim(min(it) - 0.5, max(it) + 0.5)
        if len(keys) > 1 and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
