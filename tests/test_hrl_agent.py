"""LitaAgentHRL in real short worlds with the experts: rules only, untrained bundles, broken models."""

import logging

import numpy as np
import pytest
import torch

from conftest import agents_of, make_world
from hrlxf_agent import LitaAgentHRL
from hrlxf_agent.audit import audited
from hrlxf_agent.bundle import load_bundle, save_bundle, write_untrained_bundle
from hrlxf_agent.heuristics import heuristic_goal, teacher_alpha
from hrlxf_agent.registry import resolve

EXPERTS = ("PenguinAgent", "AS0", "UltraSuperMiracleSoraFinalAgentZ")


def _play(bundle=None, steps=15, seed=5):
    subject = audited(LitaAgentHRL)
    params = {"controller_params": {"bundle": str(bundle)}} if bundle is not None else {}
    world = make_world([subject] + [resolve(n) for n in EXPERTS], steps=steps, seed=seed,
                       agent_params=[params] + [{} for _ in EXPERTS])
    world.run()
    agents = list(agents_of(world, subject).values())
    assert agents, "the generator placed no LitaAgentHRL"
    return agents


def _assert_safe_and_active(agents):
    for a in agents:
        c = a.hook().counts
        assert c.unsafe_any == 0 and c.illegal == 0, c
    assert sum(a.hook().counts.decisions for a in agents) > 0


def test_rules_only_plays_safe_and_legal():
    agents = _play()
    _assert_safe_and_active(agents)
    assert all(a.models is None and not a.fallbacks for a in agents)


@pytest.mark.parametrize("mode", ["residual", "direct"])
def test_untrained_bundle_runs_the_neural_path_safely(tmp_path, mode):
    bundle = write_untrained_bundle(tmp_path / mode, mode=mode)
    agents = _play(bundle)
    _assert_safe_and_active(agents)
    for a in agents:
        assert a.models is not None and a.models.manifest.l3_mode == mode
        assert not a.fallbacks, a.fallbacks  # every layer ran its network


def test_a_missing_bundle_warns_once_and_plays_on_rules(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="hrlxf"):
        agents = _play(tmp_path / "no-such-bundle")
    _assert_safe_and_active(agents)
    assert all(a.fallbacks["bundle"] == 1 and a.models is None for a in agents)
    assert any("no-such-bundle" in r.message for r in caplog.records)


def test_a_bundle_for_other_features_or_another_horizon_is_refused_and_the_rules_play(tmp_path, caplog):
    """An H = 40 bundle of the earlier features, and one made for a 12-day horizon in a std world (10)."""
    import json

    old = write_untrained_bundle(tmp_path / "old")
    manifest = json.loads((old / "manifest.json").read_text())
    manifest.update(horizon=40, feature_fingerprint="d41d8cd98f00b204", features={})  # as bundles before version 2
    (old / "manifest.json").write_text(json.dumps(manifest))
    longer = write_untrained_bundle(tmp_path / "h12", horizon=12)
    for bundle, says in ((old, "features: not recorded"), (longer, "horizon 12, this world negotiates 10 days ahead")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hrlxf"):
            agents = _play(bundle, steps=10)
        _assert_safe_and_active(agents)
        assert all(a.fallbacks["bundle"] == 1 and a.models is None for a in agents)
        assert any(says in r.message for r in caplog.records), [r.message for r in caplog.records]


def test_a_model_returning_nan_falls_back_for_that_layer(tmp_path):
    good = load_bundle(write_untrained_bundle(tmp_path / "ok"))
    with torch.no_grad():
        for p in good.planner.parameters():
            p.fill_(float("nan"))
    nan_bundle = save_bundle(tmp_path / "nan", good.planner, good.executor, good.coordinator)
    agents = _play(nan_bundle)
    _assert_safe_and_active(agents)
    for a in agents:
        assert a.fallbacks["L2"] >= 1 and not a.fallbacks.get("L3")


def test_plays_in_scmls_own_parallel_tournament(tmp_path):
    from scml.utils import anac2024_std

    bundle = write_untrained_bundle(tmp_path / "b")
    results = anac2024_std(
        competitors=[LitaAgentHRL, resolve("PenguinAgent")],
        competitor_params=[{"controller_params": {"bundle": str(bundle)}}, {}],
        non_competitors=[resolve("AS0")], n_configs=1, n_runs_per_world=1, n_steps=10,
        parallelism="parallel", tournament_path=str(tmp_path / "t"), compact=True, verbose=False,
    )
    types = " ".join(results.total_scores["agent_type"].astype(str))
    assert "LitaAgentHRL" in types and len(results.scores) > 0


def test_ablations_replace_the_planner_and_the_coordinator_by_their_rules(tmp_path, monkeypatch):
    """Under ablate l2 + l4 the planner and the coordinator are never called: here they raise if they are,
    which the agent would record as a fallback."""
    import hrlxf_agent.hrl as hrl

    def broken(*args, **kwargs):
        raise AssertionError("an ablated layer ran")

    def load_without_l2_l4(spec, executor="final"):
        b = load_bundle(spec, executor=executor)
        b.planner.forward = broken
        b.coordinator_fn = broken
        return b

    monkeypatch.setattr(hrl, "load_bundle", load_without_l2_l4)
    bundle = write_untrained_bundle(tmp_path / "b")
    subject = audited(LitaAgentHRL)
    params = {"controller_params": {"bundle": str(bundle), "ablate": ["l2", "l4"]}}
    world = make_world([subject] + [resolve(n) for n in EXPERTS], steps=10, seed=5,
                       agent_params=[params] + [{} for _ in EXPERTS])
    world.run()
    agents = list(agents_of(world, subject).values())
    _assert_safe_and_active(agents)
    for a in agents:
        assert a.ablate == {"l2", "l4"} and a.models is not None
        assert not a.fallbacks, a.fallbacks  # neither layer ran; L3 ran its network
    with pytest.raises(ValueError, match="unknown layers"):
        LitaAgentHRL(bundle=str(bundle), ablate=["l3"])


class _RulesWatched(LitaAgentHRL):
    """Records each layer's output next to its rule: the day's goal and the rule goal, each thread's alpha
    and the teacher's, each thread's L3 response and the rule executor's."""

    pairs: list = []
    goals: list = []
    alphas: list = []

    def _plan(self, snap):
        goal = super()._plan(snap)
        side = np.tile([snap.can_buy, snap.can_buy, snap.can_sell, snap.can_sell], 4)  # what the factory can trade
        _RulesWatched.goals.append((goal.vector(snap) * side, heuristic_goal(snap).vector(snap) * side))
        return goal

    def _coordinate(self, snap, bounds, remaining, c, static, partners, is_buy, offer_of, rel):
        alpha = super()._coordinate(snap, bounds, remaining, c, static, partners, is_buy, offer_of, rel)
        _RulesWatched.alphas.extend(
            (alpha[p], teacher_alpha(snap, bounds, remaining, is_buy[p], offer_of[p], rel[p])) for p in partners)
        return alpha

    def _execute(self, snap, bounds, goal, c, static, alpha, partners, is_buy, offer_of, rel, rules, remaining):
        out = super()._execute(snap, bounds, goal, c, static, alpha, partners, is_buy, offer_of, rel, rules, remaining)
        _RulesWatched.pairs.extend((out[p], rules[p][0]) for p in partners)
        return out


def _same(ours, rule) -> bool:
    if ours.response != rule.response:
        return False
    if ours.outcome is None or rule.outcome is None:
        return ours.outcome is rule.outcome
    (q, t, p), (rq, rt, rp) = ours.outcome[:3], rule.outcome[:3]
    return (q, t, round(p)) == (rq, rt, round(rp))


def test_an_untrained_residual_bundle_over_the_rules_plays_as_the_rules(tmp_path):
    """base=rules: every layer of an untrained bundle is its rule. The planner plans the rule goal and the
    coordinator gives the teacher's alpha (residuals starting at 0), and L3 answers every thread as the
    rule executor does (op and day from the prior, quantity and price = the rules' offer + a zero residual)."""
    bundle = write_untrained_bundle(tmp_path / "r", base="rules")
    _RulesWatched.pairs, _RulesWatched.goals, _RulesWatched.alphas = [], [], []
    params = {"controller_params": {"bundle": str(bundle)}}
    world = make_world([_RulesWatched] + [resolve(n) for n in EXPERTS], steps=10, seed=5,
                       agent_params=[params] + [{} for _ in EXPERTS])
    world.run()
    pairs = _RulesWatched.pairs
    offers = [r for _, r in pairs if r.outcome is not None and r.response.name == "REJECT_OFFER"]
    assert len(pairs) > 50 and len(offers) > 10, (len(pairs), len(offers))
    differ = [(o, r) for o, r in pairs if not _same(o, r)]
    assert not differ, differ[:5]
    assert len(_RulesWatched.goals) >= 10 and all(np.allclose(g, r, atol=1e-5) for g, r in _RulesWatched.goals)
    assert len(_RulesWatched.alphas) > 50 and all(abs(a - t) < 1e-5 for a, t in _RulesWatched.alphas)
    with pytest.raises(ValueError, match="base must be"):
        write_untrained_bundle(tmp_path / "x", base="experts")
