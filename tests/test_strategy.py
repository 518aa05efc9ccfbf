"""The strategy template (hrlxf_agent/strategy.py): offsets of the rule layers, 0 = the rules to the last digit."""

import json
from pathlib import Path

import numpy as np
import pytest

from hrlxf_agent.bundle import BundleError, load_bundle, save_rules_bundle
from hrlxf_agent.heuristics import day_needs, heuristic_action, heuristic_goal, limit_price, teacher_alpha_from
from hrlxf_agent.shield import SafetyShield
from hrlxf_agent.snapshot import IssueRanges
from hrlxf_agent.strategy import PARAMS, RULES, Strategy, StrategyError, markdown_table, role_of
from tests.conftest import snap

ROOT = Path(__file__).resolve().parents[1]


def _at(step: int, **overrides):
    """`snap` on day ``step`` of 20, its negotiations from that day on."""
    t_max = min(step + 10, 19)
    return snap(step=step, buy_issues=IssueRanges(1, 30, step, t_max, 9, 11),
                sell_issues=IssueRanges(1, 30, step, t_max, 18, 22), **overrides)


def _goal_tuple(g):
    return tuple(tuple(np.asarray(getattr(g, k), float)) for k in ("q_buy", "p_buy", "q_sell", "p_sell"))


def test_zero_offsets_are_the_rules_and_bad_ones_are_named():
    assert Strategy({name: 0.0 for name in PARAMS}) == RULES and not Strategy({"limit.margin": 0})
    for bad, words in (({"limit.marginn": 0.1}, "unknown parameter 'limit.marginn'"),
                       ({"limit.margin": 0.5}, "limit.margin = 0.5 is outside its range [-0.1, 0.15]"),
                       ({"end.buy_cut": float("nan")}, "end.buy_cut"),
                       ({"teacher.gain": "high"}, "teacher.gain = 'high' is not a number"),
                       ([("limit.margin", 0.1)], "expected parameter -> offset")):
        with pytest.raises(StrategyError, match=words.replace("[", r"\[").replace("]", r"\]")):
            Strategy(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("overrides", [{}, {"inventory_input": 12}, {"can_buy": False, "level": 0},
                                       {"can_sell": False, "level": 2, "step": 18}])
def test_the_rule_layers_at_zero_compute_the_same_numbers(overrides):
    s = _at(**{"step": 5, **overrides})
    zero = Strategy({name: 0.0 for name in PARAMS})
    assert _goal_tuple(heuristic_goal(s, zero)) == _goal_tuple(heuristic_goal(s))
    assert [tuple(x) for x in day_needs(s, zero)] == [tuple(x) for x in day_needs(s)]
    bounds = SafetyShield().bounds(s)
    goal = heuristic_goal(s)
    gaps = (goal.q_buy, goal.q_sell)
    for is_buy in (True, False):
        for offer in (None, (3, s.step + 1, 10.5 if is_buy else 19.0)):
            for rel in (0.0, 0.4, 1.0):
                assert heuristic_action(s, bounds, goal, gaps, 2, is_buy, offer, rel, zero) == \
                    heuristic_action(s, bounds, goal, gaps, 2, is_buy, offer, rel)
    assert limit_price(10.0, True, 0.3, zero) == limit_price(10.0, True, 0.3) == 10.0 * (0.97 + 0.08 * 0.3)


def test_goal_offsets_move_only_the_role_and_side_they_name():
    middle = _at(10, inventory_input=10)  # cover = 10 / (10 lines x 10 days left) = 0.1, t/T = 0.5
    rule = heuristic_goal(middle)
    moved = heuristic_goal(middle, Strategy({"goal.middle.sell.p.bias": -0.1, "goal.middle.sell.p.time": -0.2,
                                             "goal.middle.buy.q.cover": 1.0}))
    np.testing.assert_allclose(moved.p_sell, rule.p_sell * (1 - 0.1 - 0.2 * 0.5))
    np.testing.assert_allclose(moved.q_buy, rule.q_buy + 10 * 1.0 * 0.1)
    np.testing.assert_array_equal(moved.p_buy, rule.p_buy)
    np.testing.assert_array_equal(moved.q_sell, rule.q_sell)
    other_role = heuristic_goal(middle, Strategy({"goal.first.sell.p.bias": -0.1, "goal.last.buy.q.bias": 1.0}))
    assert _goal_tuple(other_role) == _goal_tuple(rule)
    first = snap(can_buy=False, level=0)
    assert role_of(first) == "first"
    np.testing.assert_allclose(heuristic_goal(first, Strategy({"goal.first.sell.p.bias": -0.1})).p_sell,
                               heuristic_goal(first).p_sell * 0.9)


def test_the_end_game_ramps_over_its_window():
    terms = Strategy({"end.sell_discount": 0.4, "end.buy_cut": 1.0})  # window 5 days
    for step, ramp in ((10, 0.0), (15, 0.2), (19, 1.0)):
        s = _at(step)
        rule, end = heuristic_goal(s), heuristic_goal(s, terms)
        np.testing.assert_allclose(end.p_sell, rule.p_sell * (1 - 0.4 * ramp))
        np.testing.assert_allclose(end.q_buy, rule.q_buy * (1 - ramp), atol=1e-12)


def test_constants_reach_the_rules():
    s = Strategy({"limit.margin": 0.05, "limit.concession": 0.1, "teacher.gain": 0.3, "needs.top_up_days": 20})
    assert limit_price(10.0, True, 0.0, s) == pytest.approx(10.0 * (1 - 0.08))
    assert limit_price(10.0, False, 1.0, s) == pytest.approx(10.0 * (1 + 0.08 - 0.18))
    args = (np.array([5.0, 0, 0, 0]), np.array([True] * 4), False, 0, 0.5, 0.0, 10)
    assert teacher_alpha_from(*args, gain=1.0) == pytest.approx(np.tanh(np.arctanh(teacher_alpha_from(*args)) / 0.7))
    low = snap(inventory_input=0)
    assert day_needs(low, s)[0].sum() < day_needs(low)[0].sum()  # no top-up with 15 days left: the window is 23


def test_a_rules_bundle_carries_its_strategy_and_a_bad_one_is_refused_naming_the_manifest(tmp_path):
    offsets = {"goal.first.sell.p.bias": -0.1, "limit.concession": 0.05}
    path = save_rules_bundle(tmp_path / "b", Strategy(offsets))
    bundle = load_bundle(path)
    assert not bundle.has_networks and bundle.strategy == Strategy(offsets)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["l3_mode"] == "rules" and manifest["weights"] == {} and manifest["strategy"] == offsets
    manifest["strategy"]["limit.concession"] = 3.0
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"manifest.json: strategy: limit.concession = 3.0 is outside"):
        load_bundle(path)
    manifest["strategy"] = {}
    manifest["weights"] = {"planner": "planner.pt"}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="a rules bundle has no networks"):
        load_bundle(path)


def test_the_docs_carry_the_parameter_table():
    assert markdown_table() in (ROOT / "docs" / "online-learning.md").read_text()


@pytest.mark.slow
def test_the_template_at_zero_plays_exactly_as_the_rules_in_a_real_world(tmp_path):
    """The same scores to the last digit: no offsets, all offsets 0, a rules bundle without a strategy; and a
    strategy that moves the prices plays otherwise (the comparison can see a difference)."""
    from tasks.paired import PairedJob, play_paired

    empty = save_rules_bundle(tmp_path / "rules", Strategy())

    def score(params: dict) -> tuple:
        row = play_paired(PairedJob(world=0, seed=5, candidate="x", agent="LitaAgentHRL", params=params,
                                    opponents=("PenguinAgent", "AS0"), steps=15, agents_per_world=(4, 6)))
        assert row["error"] is None, row.get("traceback")
        return tuple(row["scores"]), row["counts"]["decisions"]

    rules = score({})
    assert rules[1] > 0
    assert score({"strategy": {name: 0.0 for name in PARAMS}}) == rules
    assert score({"bundle": str(empty)}) == rules
    moved = {"price.free_input_discount": -0.2, "limit.margin": 0.1, "limit.concession": 0.2,
             "goal.middle.sell.p.bias": -0.2, "goal.first.sell.p.bias": -0.2, "goal.last.buy.p.bias": 0.2}
    assert score({"strategy": moved}) != rules
