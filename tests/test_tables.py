"""Offline features equal online ones: a tracked LitaAgentHRL's own L2 inputs vs the macro table rebuilt from its log."""

import json

import numpy as np

from conftest import agents_of, make_world
from hrlxf_agent import LitaAgentHRL
from hrlxf_agent.bundle import write_untrained_bundle
from hrlxf_agent.registry import resolve
from hrlxf_agent.tracker import tracked
from tasks.events import run_events
from tasks.tables import macro_arrays
from tasks.world_tables import build_macro


def test_macro_features_rebuilt_from_the_log_equal_the_online_ones(tmp_path):
    bundle = write_untrained_bundle(tmp_path / "bundle")
    raw_world = tmp_path / "raw" / "exact" / "w0000"
    cls = tracked(LitaAgentHRL, raw_world / "events")
    world = make_world([cls, resolve("PenguinAgent"), resolve("AS0")], steps=12, seed=3,
                       agent_params=[{"controller_params": {"bundle": str(bundle)}}, {}, {}])
    mine = agents_of(world, cls)
    assert mine
    for agent in mine.values():
        agent.feature_log = []
    world.run()
    agents = {}
    for aid, agent in mine.items():
        agent.hook().close()
        agents[aid] = {"class": "LitaAgentHRL", "module": "hrlxf_agent.hrl.LitaAgentHRL", "level": agent.awi.level}
    (raw_world / "world.json").write_text(json.dumps({"agents": agents, "scores": {a: 1.0 for a in agents}}))
    (raw_world / "contracts.jsonl").write_text("")
    (raw_world / "DONE").write_text("")
    assert run_events(tmp_path / "raw", tmp_path / "lake")["converted"] == 1
    assert build_macro(tmp_path / "lake")["built"] == 1
    offline = macro_arrays(tmp_path / "lake" / "macro" / "exact" / "w0000.parquet")
    compared = 0
    for aid, agent in mine.items():
        assert len(agent.feature_log) == 12
        for online in agent.feature_log:
            i = np.flatnonzero((offline["agent_id"] == aid) & (offline["step"] == online["step"]))
            assert len(i) == 1
            for key in ("x_static", "x_temporal", "x_role", "rule_goal"):
                np.testing.assert_allclose(offline[key][i[0]], online[key], atol=1e-6, err_msg=f"{aid} day {online['step']} {key}")
            compared += 1
    assert compared >= 12
