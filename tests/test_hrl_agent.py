"""LitaAgentHRL in real short worlds with the experts: rules only, untrained bundles, broken models."""

import logging

import pytest
import torch

from conftest import agents_of, make_world
from hrlxf_agent import LitaAgentHRL
from hrlxf_agent.audit import audited
from hrlxf_agent.bundle import load_bundle, save_bundle, write_untrained_bundle
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
