"""The shield's bounds on hand-built snapshots (values worked out by hand from physics.py's rules)."""

import numpy as np
import pytest
from negmas.sao import ResponseType, SAOResponse

from conftest import per_day, snap
from hrlxf_agent.shield import SafetyShield, ShieldConfig, Thread

ACCEPT, REJECT, END = ResponseType.ACCEPT_OFFER, ResponseType.REJECT_OFFER, ResponseType.END_NEGOTIATION


def test_sell_today_is_bounded_by_secured_input_and_lines():
    s = snap(inventory_input=3, supply_qty=per_day(d0=4), sale_qty=per_day(d0=2, d2=9))
    b = SafetyShield().bounds(s)
    assert b.q_safe_sell[0] == 3 + 4 - 2  # stock + today's supplies - today's sales
    assert b.q_safe_sell[1] == 10  # later days: the lines (input can still be bought)
    assert b.q_safe_sell[2] == 1
    assert np.all(b.q_safe_sell[15:] == 0)  # past the last day (n_steps 20, step 5)


def test_output_stock_is_demand_not_supply_in_scml_084():
    b = SafetyShield().bounds(snap(inventory_input=10, inventory_output=4))
    assert b.q_safe_sell[0] == 10 - 4
    assert b.q_safe_sell[3] == 10 - 4


def test_lines_cap_every_day_whatever_the_stock():
    b = SafetyShield().bounds(snap(inventory_input=500))
    assert b.q_safe_sell[0] == 10


def test_first_level_counts_todays_exogenous_supply():
    s = snap(level=0, can_buy=False, exogenous_input_qty=6, exogenous_input_cost=60.0, buy_issues=None, buy_partners=())
    b = SafetyShield().bounds(s)
    assert b.q_safe_sell[0] == 6
    assert np.all(b.q_safe_buy == 0)
    assert b.b_free == pytest.approx(1000 - 60 - 2.0 * 6)  # payables + production cost of the 6 units


def test_buy_room_is_what_production_and_a_full_stock_could_use():
    s = snap(inventory_input=3, supply_qty=per_day(d0=2, d4=10, d5=12), supply_cost=per_day(d0=20, d4=100, d5=120))
    b = SafetyShield().bounds(s)
    assert b.q_safe_buy[0] == 2 * 10 - 3 - 2  # n produced + stock topped up to n
    assert b.q_safe_buy[4] == 20 - 3 - 10
    assert b.q_safe_buy[5] == 20 - 3 - 12
    # 12 > 10 lines: 2 units certainly reach the stock from day 6 on
    assert b.q_safe_buy[6] == 20 - 5
    assert b.b_free == pytest.approx(1000 - 240 - 2.0 * 24)  # payables + production cost (2 per unit)


def test_a_full_stock_needs_no_input_ever():
    b = SafetyShield().bounds(snap(inventory_input=10))
    assert not b.q_safe_buy.any()


def test_a_purchase_that_reaches_the_stock_lowers_later_days_in_the_batch():
    s = snap(balance=10_000.0)
    out = SafetyShield().clip_batch(
        s, _threads(s1=(15, 5, 10), s2=(18, 6, 10)),
        {"s1": SAOResponse(ACCEPT, (15, 5, 10)), "s2": SAOResponse(ACCEPT, (18, 6, 10))},
    )
    assert out["s1"].response == ACCEPT  # 15 of day 5's room of 20; 5 of them will be stored
    assert out["s2"] == SAOResponse(REJECT, (15, 6, 10))  # day 6: 20 - the 5 stored


def test_reserve_and_time_mask():
    s = snap(sale_qty=per_day(d2=10))
    b = SafetyShield(ShieldConfig(reserve_fraction=0.1)).bounds(s)
    assert b.b_free == pytest.approx(900)
    assert b.time_mask_sell[2] == -np.inf  # full day
    assert b.time_mask_sell[1] == 0 and b.time_mask_sell[0] == -np.inf  # nothing secured today
    assert np.all(np.isinf(b.time_mask_sell[11:]))  # outside the time issue (5..15)


def test_baseline_offer():
    s = snap(inventory_input=4)
    shield = SafetyShield()
    b = shield.bounds(s)
    buy = shield.baseline(s, b, True, 0)
    assert buy == (8, 5, 10)  # q = room (20 - 4) / 2, p = 0.95 x 10 -> 9.5 -> legal integer 10
    sell = shield.baseline(s, b, False, 1)
    assert sell == (5, 6, 21)  # q = 10 / 2, p = 1.05 x 20
    assert shield.baseline(snap(), shield.bounds(snap()), False, 0) is None  # nothing to sell today


def _threads(**offers):
    return {p: Thread(p, p.startswith("s"), o) for p, o in offers.items()}


def test_clip_batch_shares_one_day_across_threads():
    s = snap(inventory_input=5)
    out = SafetyShield().clip_batch(
        s,
        _threads(c1=(4, 5, 20), c2=(4, 5, 20)),
        {"c1": SAOResponse(ACCEPT, (4, 5, 20)), "c2": SAOResponse(ACCEPT, (4, 5, 20))},
    )
    assert out["c1"] == SAOResponse(ACCEPT, (4, 5, 20))
    assert out["c2"] == SAOResponse(REJECT, (1, 5, 20))  # only 1 unit of today's 5 left


def test_alpha_orders_the_clip():
    s = snap(inventory_input=5)
    out = SafetyShield().clip_batch(
        s,
        _threads(c1=(4, 5, 20), c2=(4, 5, 20)),
        {"c1": SAOResponse(ACCEPT, (4, 5, 20)), "c2": SAOResponse(ACCEPT, (4, 5, 20))},
        alpha={"c2": 0.9, "c1": -0.5},
    )
    assert out["c2"].response == ACCEPT and out["c1"] == SAOResponse(REJECT, (1, 5, 20))


def test_unsafe_offer_moves_to_a_safe_day_and_nothing_safe_ends():
    s = snap(sale_qty=per_day(d1=10))
    shield = SafetyShield()
    out = shield.clip_batch(s, _threads(c1=None), {"c1": SAOResponse(REJECT, (3, 6, 20))})
    assert out["c1"] == SAOResponse(REJECT, (3, 7, 20))  # day 6 is full; day 7 is the nearest with room
    full = snap(sale_qty=tuple([10.0] * 11))
    out = shield.clip_batch(full, _threads(c1=(2, 5, 20)), {"c1": SAOResponse(ACCEPT, (2, 5, 20))})
    assert out["c1"] == SAOResponse(END, None)


def test_illegal_responses_are_made_legal():
    s = snap(inventory_input=8)
    shield = SafetyShield()
    out = shield.clip_batch(
        s,
        _threads(c1=None, c2=(2, 5, 20), s1=(2, 5, 10)),
        {
            "c1": SAOResponse(ACCEPT, None),  # accept with no offer to accept
            "c2": SAOResponse(REJECT, None),  # reject without a counter
            "s1": SAOResponse(REJECT, (0, 99, 3.7)),  # outside every range
            "x9": SAOResponse(ACCEPT, (1, 5, 1)),  # no such negotiation
        },
    )
    assert set(out) == {"c1", "c2", "s1"}
    for pid, r in out.items():
        issues = s.buy_issues if pid.startswith("s") else s.sell_issues
        assert r.response == REJECT and issues.contains(r.outcome) and issues.on_grid(r.outcome)
        assert r.outcome[0] >= 1
    assert out["s1"].outcome == (1, 15, 9)


def test_budget_binds_purchases_at_price_plus_production_cost():
    s = snap(balance=120.0)
    out = SafetyShield().clip_batch(
        s, _threads(s1=(8, 5, 10), s2=(8, 5, 10)),
        {"s1": SAOResponse(ACCEPT, (8, 5, 10)), "s2": SAOResponse(ACCEPT, (8, 5, 10))},
    )
    assert out["s1"].response == ACCEPT
    assert out["s2"] == SAOResponse(REJECT, (2, 5, 10))  # 120 - 8 x (10 + 2) buys 2 more at 10 + 2


def test_counter_offers_share_the_room_instead_of_ending_threads():
    s = snap()  # empty stock: room 20 today for four suppliers
    wants = {f"s{i}": SAOResponse(REJECT, (10, 5, 10)) for i in range(4)}
    out = SafetyShield().clip_batch(s, _threads(**{p: None for p in wants}), wants)
    quantities = [out[p].outcome[0] for p in sorted(out) if out[p].response == REJECT]
    assert len(quantities) == 4 and sum(quantities) <= 20  # nobody ended; 5 each, not 10 + 10 + END + END
    assert quantities == [5, 5, 5, 5]


def test_alpha_weights_the_shares():
    s = snap()
    wants = {"s1": SAOResponse(REJECT, (20, 5, 10)), "s2": SAOResponse(REJECT, (20, 5, 10))}
    out = SafetyShield().clip_batch(s, _threads(s1=None, s2=None), wants, alpha={"s1": 0.5, "s2": -0.5})
    assert out["s1"].outcome[0] == 15 and out["s2"].outcome[0] == 5  # weights 1.5 : 0.5 of 20


def test_a_certain_deal_is_served_before_speculative_offers_whatever_their_alpha():
    s = snap(inventory_input=5)  # 5 sellable today
    out = SafetyShield().clip_batch(
        s, _threads(c1=None, c2=(4, 5, 20)),
        {"c1": SAOResponse(REJECT, (5, 5, 22)), "c2": SAOResponse(ACCEPT, (4, 5, 20))},
        alpha={"c1": 0.99, "c2": -0.99},
    )
    assert out["c2"] == SAOResponse(ACCEPT, (4, 5, 20))
    assert out["c1"] == SAOResponse(REJECT, (1, 5, 22))


def test_a_bankrupt_partner_is_ended():
    s = snap(inventory_input=5, bankrupt_partners=("c1",))
    out = SafetyShield().clip_batch(s, _threads(c1=(1, 5, 20)), {"c1": SAOResponse(ACCEPT, (1, 5, 20))})
    assert out["c1"] == SAOResponse(END, None)


def test_reserved_offers_count_against_the_bounds():
    s = snap(inventory_input=5)
    out = SafetyShield().clip_batch(
        s, _threads(c1=(5, 5, 20)), {"c1": SAOResponse(ACCEPT, (5, 5, 20))}, reserved=[(False, (3, 5, 20))]
    )
    assert out["c1"] == SAOResponse(REJECT, (2, 5, 20))
