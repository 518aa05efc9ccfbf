import math

import pytest

from conftest import agents_of, make_world, per_day, snap
from hrlxf_agent.snapshot import IssueRanges, Snapshot, snapshot_from_awi


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("inventory_input", -1, "inventory_input must be >= 0"),
        ("production_cost", math.nan, "production_cost must be finite"),
        ("trading_price_in", -3.0, "trading_price_in must be >= 0"),
        ("supply_qty", per_day(d2=-4), r"supply_qty\[2\] must be >= 0"),
        ("sale_revenue", (1.0, 2.0), "sale_revenue has length 2"),
        ("step", 20, r"step \(20\) must be < n_steps"),
        ("n_lines", 0, "n_lines must be >= 1"),
        ("exogenous_input_qty", 3, "only the first level gets exogenous supplies"),
    ],
)
def test_bad_fields_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        snap(**{field: value})


def test_negative_balance_is_allowed_for_a_bankrupt_factory():
    assert snap(balance=-50.0).balance == -50.0


def test_issue_ranges_must_be_ordered():
    with pytest.raises(ValueError, match="q_min"):
        IssueRanges(5, 2, 0, 1, 1, 2)
    with pytest.raises(ValueError, match="t_min .* is before step"):
        snap(buy_issues=IssueRanges(1, 5, 3, 8, 1, 2))


def test_round_trip_through_a_dict():
    s = snap(supply_qty=per_day(d1=3), supply_cost=per_day(d1=30))
    assert Snapshot.from_dict(s.to_dict()) == s


def _penguin():
    from scml_agents import get_agents

    return {c.__name__: c for c in get_agents(2024, track="std", as_class=True)}["PenguinAgent"]


def test_built_from_a_live_awi_matches_the_awi():
    """Checked from inside real negotiations, where the agent builds it."""
    checked = []

    class Checking(_penguin()):
        def counter_all(self, offers, states):
            awi = self.awi
            s = snapshot_from_awi(awi, horizon=10)
            t = awi.current_step
            assert s.step == t and s.n_lines == awi.n_lines and s.n_steps == awi.n_steps
            assert s.inventory_input == awi.current_inventory_input
            assert s.exogenous_input_qty == awi.current_exogenous_input_quantity
            assert s.exogenous_output_qty == awi.current_exogenous_output_quantity
            for k in range(11):
                assert s.supply_qty[k] == awi.total_supplies_at(t + k)
                assert s.sale_qty[k] == awi.total_sales_at(t + k)
            assert (s.buy_issues is None) == awi.is_first_level
            assert (s.sell_issues is None) == awi.is_last_level
            issues = awi.current_output_issues if s.can_sell else awi.current_input_issues
            ranges = s.sell_issues if s.can_sell else s.buy_issues
            assert (ranges.t_min, ranges.t_max) == (issues[1].min_value, issues[1].max_value)
            assert set(offers) <= set(s.buy_partners) | set(s.sell_partners)
            checked.append(t)
            return super().counter_all(offers, states)

    world = make_world([Checking, _penguin()], steps=12, seed=3)
    world.run()
    assert len(set(checked)) >= 5


def test_between_steps_stale_issues_are_dropped():
    """Between two steps scml still shows yesterday's issues: the snapshot says there are none."""
    world = make_world([_penguin()], steps=10, seed=3)
    for _ in range(4):
        world.step()
    for agent in agents_of(world, _penguin()).values():
        s = snapshot_from_awi(agent.awi, horizon=10)
        assert s.buy_issues is None and s.sell_issues is None
