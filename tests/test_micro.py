"""The micro table rebuilds the bounds an expert faced at each decision exactly (in a real world)."""

import json

import numpy as np
import pyarrow.parquet as pq

from conftest import agents_of, make_world
from hrlxf_agent.registry import resolve
from hrlxf_agent.shield import SafetyShield
from hrlxf_agent.snapshot import snapshot_from_awi
from hrlxf_agent.state import FeatureSpec
from hrlxf_agent.tracker import tracked
from tasks.events import run_events
from tasks.micro import build_micro


def test_bounds_at_every_decision_match_what_the_agent_faced_online(tmp_path):
    seen = {}

    class Recording(resolve("PenguinAgent")):
        def counter_all(self, offers, states):
            snap = snapshot_from_awi(self.awi, horizon=40)
            b = SafetyShield().bounds(snap)
            seen[(self.id, self.awi.current_step, self.hook().version)] = (b.q_safe_buy.copy(), b.q_safe_sell.copy(), b.b_free)
            return super().counter_all(offers, states)

    raw_world = tmp_path / "raw" / "m" / "w0000"
    cls = tracked(Recording, raw_world / "events")
    world = make_world([cls, resolve("AS0"), resolve("XenoSotaAgent")], steps=12, seed=4)
    world.run()
    mine = agents_of(world, cls)
    for agent in mine.values():
        agent.hook().close()
    agents = {aid: {"class": "PenguinAgent", "module": "x.PenguinAgent", "level": a.awi.level} for aid, a in mine.items()}
    (raw_world / "world.json").write_text(json.dumps({"agents": agents, "scores": {a: 1.0 for a in agents}}))
    (raw_world / "contracts.jsonl").write_text("")
    (raw_world / "DONE").write_text("")
    run_events(tmp_path / "raw", tmp_path / "lake")
    assert build_micro(tmp_path / "lake", FeatureSpec())["built"] == 1
    rows = pq.read_table(tmp_path / "lake" / "micro" / "m" / "w0000.parquet").to_pylist()
    checked = 0
    for r in rows:
        online = seen.get((r["agent_id"], r["step"], r["version"]))
        if online is None:
            continue
        np.testing.assert_allclose(r["q_safe"], online[0] if r["is_buy"] else online[1], atol=1e-6)
        assert abs(r["b_free"] - online[2]) < 1e-6
        checked += 1
    assert checked > 20
    versions_with_deals = {r["version"] for r in rows if r["step"] > 0}
    assert len(versions_with_deals) > 3  # bounds were rebuilt after deals, not only in the mornings
