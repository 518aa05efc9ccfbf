"""The micro table rebuilds exactly, in real worlds, the bounds an expert faced and every L3 input LitaAgentHRL computed online."""

import json
from collections import Counter, defaultdict

import numpy as np
import pyarrow.parquet as pq
import torch

from conftest import agents_of, make_world
from hrlxf_agent import LitaAgentHRL
from hrlxf_agent.bundle import load_bundle, save_bundle, write_untrained_bundle
from hrlxf_agent.heuristics import heuristic_goal, teacher_alpha
from hrlxf_agent.registry import resolve
from hrlxf_agent.shield import SafetyShield
from hrlxf_agent.snapshot import snapshot_from_awi
from hrlxf_agent.state import FeatureSpec
from hrlxf_agent.tracker import tracked
from hrlxf_models.planner import Q_BUY, Q_SELL
from tasks.events import run_events
from tasks.goal_inputs import alpha_with_goal
from tasks.micro import HISTORY, MICRO_VERSION
from tasks.world_tables import build_micro


def test_bounds_at_every_decision_match_what_the_agent_faced_online(tmp_path):
    seen = {}

    class Recording(resolve("PenguinAgent")):
        def counter_all(self, offers, states):
            snap = snapshot_from_awi(self.awi)
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


class L4Logged(LitaAgentHRL):
    """LitaAgentHRL recording what its L4 was given, batch by batch (and the teacher it falls back to)."""

    def init(self):
        super().init()
        self.l4_log = []

    def _coordinate(self, snap, bounds, remaining, c, static, partners, is_buy, offer_of, rel):
        if partners:  # what _coordinate hands the coordinator, and the teacher it falls back to
            self.l4_log.append({
                "step": snap.step, "partners": list(partners),
                "rounds": [int(self.negotiators[p][0].nmi.state.step) for p in partners],
                "threads": self._thread_features(snap, bounds, remaining, partners, is_buy, offer_of, rel),
                "global": np.concatenate([static, c]),
                "teacher": [teacher_alpha(snap, bounds, remaining, is_buy[p], offer_of[p], rel[p]) for p in partners],
            })
        return super()._coordinate(snap, bounds, remaining, c, static, partners, is_buy, offer_of, rel)


class RuleGoalHRL(L4Logged):
    """LitaAgentHRL whose L2 is the rule-based goal, as the experts' tables assume (they have no L2): with it, the
    goal-dependent inputs (broadcast c, L4's gaps, the teacher) equal the tables' columns as they are."""

    def _plan(self, snap):
        return heuristic_goal(snap)


def planned_bundle(path):
    """An untrained bundle whose planner's residual head is not zero: its L2 goal differs from the rule goal,
    as a trained planner's does."""
    b = load_bundle(write_untrained_bundle(path / "untrained"))
    torch.manual_seed(7)
    with torch.no_grad():
        b.planner.goal.weight.normal_(0.0, 0.05)
        b.planner.goal.bias.normal_(0.0, 0.3)
    return save_bundle(path / "planned", b.planner, b.executor, b.coordinator)


def run_hrl_world(tmp_path, steps: int = 12, seed: int = 3):
    """A real world with a tracked LitaAgentHRL whose L2 is a planner (`planned_bundle`) and a tracked RuleGoalHRL,
    the L3 and L4 inputs each computed online recorded, converted to event tables: (lake, {agent_id: agent})."""
    bundle = planned_bundle(tmp_path)
    raw_world = tmp_path / "raw" / "hrl" / "w0000"
    plain, rule = tracked(L4Logged, raw_world / "events"), tracked(RuleGoalHRL, raw_world / "events")
    params = {"controller_params": {"bundle": str(bundle)}}
    world = make_world([plain, rule, resolve("PenguinAgent"), resolve("AS0")], steps=steps, seed=seed,
                       agent_params=[params, params, {}, {}])
    mine = {**agents_of(world, plain), **agents_of(world, rule)}
    assert any(isinstance(a, RuleGoalHRL) for a in mine.values()) and any(not isinstance(a, RuleGoalHRL) for a in mine.values())
    for agent in mine.values():
        agent.l3_log = []
    world.run()
    for agent in mine.values():
        agent.hook().close()
    agents = {aid: {"class": type(a).__name__, "module": "tests.test_micro", "level": a.awi.level} for aid, a in mine.items()}
    (raw_world / "world.json").write_text(json.dumps({"agents": agents, "scores": {a: 1.0 for a in agents}}))
    (raw_world / "contracts.jsonl").write_text("")
    (raw_world / "DONE").write_text("")
    assert run_events(tmp_path / "raw", tmp_path / "lake")["converted"] == 1
    return tmp_path / "lake", mine


def test_micro_rows_carry_exactly_the_l3_inputs_lita_agent_hrl_computed_online(tmp_path):
    lake, mine = run_hrl_world(tmp_path)
    assert build_micro(lake)["built"] == 1
    table = pq.read_table(lake / "micro" / "hrl" / "w0000.parquet")
    assert table.schema.metadata[b"version"] == str(MICRO_VERSION).encode()
    # a thread can be decided twice in a round (our first proposal, then our answer): match in order
    rows = defaultdict(list)
    for r in sorted(table.to_pylist(), key=lambda r: (r["agent_id"], r["seq"])):
        if r["negotiation_id"]:
            rows[(r["agent_id"], r["step"], r["partner"], r["round"])].append(r)
    teacher = defaultdict(list)
    for aid, agent in mine.items():
        for e in getattr(agent, "l4_log", []):
            for p, k, a in zip(e["partners"], e["rounds"], e["teacher"]):
                teacher[(aid, e["step"], p, k)].append(a)
    seen = Counter()
    checked, signed, rebuilt_mattered = {True: 0, False: 0}, 0, 0
    for aid, agent in mine.items():
        rule_goal = isinstance(agent, RuleGoalHRL)
        for online in agent.l3_log:
            key = (aid, online["step"], online["partner"], online["round"])
            r = rows[key][seen[key]]  # every decision L3 made online is a micro row
            msg = f"{key} #{seen[key]}"
            np.testing.assert_allclose(r["static"], online["static"], atol=1e-6, err_msg=msg)
            np.testing.assert_allclose(r["role"], online["role"], atol=1e-6, err_msg=msg)
            np.testing.assert_allclose(np.reshape(r["history"], (HISTORY, -1)), online["rounds"], atol=1e-6, err_msg=msg)
            assert r["history_len"] == int(online["keep"].sum()), msg
            np.testing.assert_array_equal(np.asarray(r["time_mask"]) == 0.0, np.isfinite(online["time_mask"]), err_msg=msg)
            # L1's room per day, which q and p read at the chosen delta (train_l3: q_safe / n_lines)
            np.testing.assert_allclose(np.asarray(r["q_safe"]) / agent.awi.n_lines, online["room"], atol=1e-6, err_msg=msg)
            # the broadcast's goal gaps (c[0:8]) follow the goal: micro's is the rule goal's (experts have no L2) ...
            part = slice(0, 12) if rule_goal else slice(8, 12)
            np.testing.assert_allclose(np.asarray(r["broadcast"])[part], online["broadcast"][part], atol=1e-6, err_msg=msg)
            # ... and with L2's goal (normalised, as the agent feeds it to L3), ``committed`` gives the online c[0:8]
            goal = online["goal"].reshape(4, 4)
            rebuilt = np.stack([goal[:, Q_BUY], goal[:, Q_SELL]], axis=1).reshape(-1) - np.asarray(r["committed"])
            np.testing.assert_allclose(rebuilt, online["broadcast"][:8], atol=1e-5, err_msg=msg)
            signed += bool(np.any(r["committed"]))
            online_teacher = teacher[key][seen[key]]
            if rule_goal:
                assert abs(r["alpha"] - online_teacher) < 1e-6, msg
            # against the agent's own L2 goal, the training stages' rebuild gives the teacher it computed online
            rebuilt_alpha = alpha_with_goal(
                online["goal"][None], np.asarray(r["committed"])[None], np.array([r["is_buy"]]), np.asarray(r["tradable"])[None],
                np.array([np.nan if r["offer_delta"] is None else r["offer_delta"]]), np.array([r["rel_time"] or 0.0]),
                np.array([r["budget"]]), FeatureSpec().horizon)[0]
            assert abs(rebuilt_alpha - online_teacher) < 1e-5, msg
            assert abs(online["alpha"] - online_teacher) < 1e-5, msg  # an untrained coordinator is the teacher
            rebuilt_mattered += (not rule_goal) and abs(r["alpha"] - online_teacher) > 1e-3
            seen[key] += 1
            checked[rule_goal] += 1
    assert checked[True] > 30 and checked[False] > 30, checked
    assert rebuilt_mattered > 10  # the planner's goal moved the teacher: the table's rule-goal alpha would be wrong
    assert signed > 10  # decisions taken after the day's first deals were compared
    # every running decision of the agents is one L3 made online (none invented, none lost)
    assert sum(map(len, rows.values())) == sum(len(a.l3_log) for a in mine.values())
