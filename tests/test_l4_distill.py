"""The l4_distill table holds exactly what LitaAgentHRL's L4 was given online, batch by batch, and the teacher's alpha."""

from collections import Counter, defaultdict

import numpy as np
import pyarrow.parquet as pq

from hrlxf_agent.state import THREAD_FEATURES, FeatureSpec
from tasks.goal_inputs import l4_with_goal
from tasks.l4_distill import L4_DISTILL_VERSION
from tasks.world_tables import build_l4_distill, build_micro
from test_micro import RuleGoalHRL, run_hrl_world


def test_l4_distill_rows_equal_the_coordinator_inputs_and_teacher_computed_online(tmp_path):
    lake, mine = run_hrl_world(tmp_path, seed=5)
    assert build_micro(lake)["built"] == 1 and build_l4_distill(lake)["built"] == 1
    table = pq.read_table(lake / "l4_distill" / "hrl" / "w0000.parquet")
    meta = table.schema.metadata
    assert meta[b"version"] == str(L4_DISTILL_VERSION).encode() and meta[b"feature_fingerprint"] == FeatureSpec().fingerprint.encode()
    # a batch's rounds come from the micro rows of its threads (the table groups by the tracker's batch id)
    round_of = {(r["agent_id"], r["batch"], r["partner"]): r["round"] for r in pq.read_table(lake / "micro" / "hrl" / "w0000.parquet").to_pylist()}
    rows = defaultdict(list)
    for r in table.to_pylist():
        assert r["n_threads"] == len(r["partners"]) == len(r["teacher_alpha"]) and len(r["threads"]) == r["n_threads"] * THREAD_FEATURES
        assert r["partners"] == sorted(r["partners"])
        rounds = tuple(round_of[(r["agent_id"], r["batch"], p)] for p in r["partners"])
        rows[(r["agent_id"], r["step"], tuple(r["partners"]), rounds)].append(r)
    goal_of = {(aid, e["step"]): e["goal"] for aid, a in mine.items() for e in a.l3_log}  # the L2 goal each day
    seen, checked, differs = Counter(), {True: 0, False: 0}, 0
    for aid, agent in mine.items():
        rule_goal = isinstance(agent, RuleGoalHRL)
        for online in agent.l4_log:
            key = (aid, online["step"], tuple(online["partners"]), tuple(online["rounds"]))
            r = rows[key][seen[key]]
            seen[key] += 1
            threads = np.reshape(r["threads"], (-1, THREAD_FEATURES))
            if rule_goal:  # the table as it is: the rule goal's inputs
                np.testing.assert_allclose(threads, online["threads"], atol=1e-6, err_msg=str(key))
                np.testing.assert_allclose(r["global"], online["global"], atol=1e-6, err_msg=str(key))
                np.testing.assert_allclose(r["teacher_alpha"], online["teacher"], atol=1e-6, err_msg=str(key))
            # rebuilt against the agent's own L2 goal, as train_l4 does with goal_hat: what L4 was given online
            goal = goal_of[(aid, online["step"])]
            t, g, a = l4_with_goal(threads[None], np.ones((1, len(threads)), bool), np.asarray(r["global"], np.float32)[None],
                                   goal[None], np.asarray(r["committed"])[None], np.asarray(r["tradable"])[None],
                                   len(FeatureSpec().static), FeatureSpec().horizon)
            np.testing.assert_allclose(t[0], online["threads"], atol=1e-5, err_msg=str(key))
            np.testing.assert_allclose(g[0], online["global"], atol=1e-5, err_msg=str(key))
            np.testing.assert_allclose(a[0], online["teacher"], atol=1e-5, err_msg=str(key))
            differs += (not rule_goal) and not np.allclose(r["teacher_alpha"], online["teacher"], atol=1e-3)
            checked[rule_goal] += 1
        assert sum(1 for r in table.to_pylist() if r["agent_id"] == aid) == len(agent.l4_log)  # one row per coordinated batch
    assert checked[True] > 20 and checked[False] > 20, checked
    assert differs > 5  # the planner's goal moved L4's inputs: the rebuild mattered
    assert any(len(k[2]) > 1 for k in rows)  # batches of several threads were compared
    assert build_l4_distill(lake)["built"] == 0  # incremental: nothing new, nothing written
    path = lake / "l4_distill" / "hrl" / "w0000.parquet"
    pq.write_table(table.replace_schema_metadata({**meta, b"version": b"0"}), path)  # as an older version wrote it
    assert build_l4_distill(lake)["built"] == 1 and pq.read_table(path).equals(table)
