"""Property tests: no clipped batch ever exceeds the bounds or answers illegally."""

import math

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from negmas.sao import ResponseType, SAOResponse

from hrlxf_agent.audit import judge_batch
from hrlxf_agent.shield import SafetyShield, Thread
from hrlxf_agent.snapshot import IssueRanges, Snapshot

H = 10
ACCEPT, REJECT, END = ResponseType.ACCEPT_OFFER, ResponseType.REJECT_OFFER, ResponseType.END_NEGOTIATION


@st.composite
def snapshots(draw):
    n_steps = draw(st.integers(5, 40))
    step = draw(st.integers(0, n_steps - 1))
    n = draw(st.integers(1, 15))
    level = draw(st.sampled_from(["first", "mid", "last"]))
    can_buy, can_sell = level != "first", level != "last"
    days = st.lists(st.integers(0, 2 * n), min_size=H + 1, max_size=H + 1)
    t_max = min(step + H, n_steps - 1)
    issues = lambda lo, hi: IssueRanges(1, 3 * n, step, t_max, lo, hi)  # noqa: E731
    supply = draw(days) if can_buy else [0] * (H + 1)
    sales = draw(days) if can_sell else [0] * (H + 1)
    return Snapshot(
        step=step, n_steps=n_steps, n_lines=n, level={"first": 0, "mid": 1, "last": 2}[level],
        can_buy=can_buy, can_sell=can_sell, balance=draw(st.floats(-100, 5000)),
        inventory_input=draw(st.integers(0, 3 * n)), inventory_output=draw(st.integers(0, 2)),
        exogenous_input_qty=0 if can_buy else draw(st.integers(0, 2 * n)), exogenous_input_cost=0.0,
        exogenous_output_qty=0 if can_sell else draw(st.integers(0, 2 * n)), exogenous_output_revenue=0.0,
        supply_qty=tuple(map(float, supply)), supply_cost=tuple(10.0 * q for q in supply),
        sale_qty=tuple(map(float, sales)), sale_revenue=tuple(20.0 * q for q in sales),
        production_cost=1.0, storage_cost=0.01, shortfall_penalty=0.5,
        trading_price_in=10.0, trading_price_out=20.0, catalog_price_in=10.0, catalog_price_out=20.0,
        buy_issues=issues(8, 12) if can_buy else None, sell_issues=issues(18, 22) if can_sell else None,
        buy_partners=("s0", "s1", "s2") if can_buy else (), sell_partners=("c0", "c1", "c2") if can_sell else (),
        bankrupt_partners=tuple(draw(st.sets(st.sampled_from(["s2", "c2"]), max_size=1))),
    )


@st.composite
def batches(draw):
    s = draw(snapshots())
    partners = list(s.buy_partners) + list(s.sell_partners)
    outcome = st.tuples(st.integers(-2, 50), st.integers(s.step - 2, s.step + H + 3), st.floats(0, 40))
    threads, responses = {}, {}
    for p in partners:
        offer = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3 * s.n_lines), st.integers(s.step, min(s.step + H, s.n_steps - 1)), st.integers(8, 22))))
        threads[p] = Thread(p, p.startswith("s"), offer)
        kind = draw(st.sampled_from([ACCEPT, REJECT, END]))
        responses[p] = SAOResponse(kind, draw(st.one_of(st.none(), outcome)))
    alpha = {p: draw(st.floats(-1, 1)) for p in partners}
    return s, threads, responses, alpha


@settings(max_examples=300, deadline=None)
@given(batches())
def test_clipped_batch_respects_every_bound_and_is_legal(batch):
    s, threads, responses, alpha = batch
    shield = SafetyShield()
    bounds = shield.bounds(s)
    out = shield.clip_batch(s, threads, responses, alpha=alpha)
    assert set(out) == set(responses)
    used_buy = np.zeros(H + 1)
    used_sell = np.zeros(H + 1)
    spent = 0.0
    for p, r in out.items():
        t = threads[p]
        issues = s.buy_issues if t.is_buy else s.sell_issues
        if r.response == END:
            assert r.outcome is None
            continue
        assert p not in s.bankrupt_partners
        if r.response == ACCEPT:
            assert t.offer is not None and tuple(r.outcome) == tuple(t.offer)
        else:
            assert r.response == REJECT and r.outcome is not None
            assert issues.contains(r.outcome) and issues.on_grid(r.outcome) and r.outcome[0] >= 1
        q, day, price = r.outcome
        k = day - s.step
        if t.is_buy:
            used_buy[k] += q
            spent += q * (price + s.production_cost)
        else:
            used_sell[k] += q
    assert np.all(used_buy <= np.floor(bounds.q_safe_buy + 1e-9))
    # with the batch's purchases signed, none of them is certain waste
    from hrlxf_agent import physics

    inputs = np.asarray(s.supply_qty) + used_buy
    inputs[0] += s.exogenous_input_qty
    floor = physics.input_stock_floor(s.inventory_input, inputs, s.n_lines)
    for k in np.nonzero(used_buy)[0]:
        assert floor[k] < s.n_lines and floor[k] + inputs[k] <= 2 * s.n_lines
    assert np.all(used_sell <= np.floor(bounds.q_safe_sell + 1e-9))
    assert spent <= bounds.b_free + 1e-6
    # what the shield lets through is never unsafe by the (looser) audit either
    sides = {p: th.is_buy for p, th in threads.items()}
    offers = {p: th.offer for p, th in threads.items()}
    for v in judge_batch(s, offers, out, sides):
        assert not v["unsafe_buy"] and not v["unsafe_sell"] and v["illegal"] is None, v


@settings(max_examples=200, deadline=None)
@given(snapshots())
def test_bounds_are_finite_non_negative_and_zero_past_the_end(s):
    b = SafetyShield().bounds(s)
    for arr in (b.q_safe_buy, b.q_safe_sell):
        assert np.all(arr >= 0) and np.all(np.isfinite(arr))
    last = s.n_steps - 1 - s.step
    assert np.all(b.q_safe_sell[last + 1 :] == 0) and np.all(b.q_safe_buy[last + 1 :] == 0)
    assert b.b_free >= 0 and not math.isnan(b.b_free)
    assert np.all(b.q_safe_sell <= s.n_lines)


@settings(max_examples=500, deadline=None)
@given(
    st.integers(1, 12), st.integers(0, 15),
    st.lists(st.integers(0, 15), min_size=8, max_size=8),
    st.lists(st.sampled_from([0, 0, 0, 0, 1, 2, 4]), min_size=8, max_size=8),
    st.integers(0, 7), st.integers(0, 8),
)
def test_closed_form_purchase_cap_is_the_largest_purchase_of_use(n, stock, signed, bought, k, ended_from):
    """physics.purchase_cap against a search over physics.purchases_of_use (the definition)."""
    from hrlxf_agent import physics

    stock = stock * n // 10  # stock and signed inputs drawn in tenths of the lines
    days_left = np.asarray([max(0, ended_from - d) for d in range(8)], float)
    purchases = np.where(days_left > 0, np.asarray(bought, float), 0.0)
    inputs = np.asarray(signed, float) * n // 10 + purchases
    assume(physics.purchases_of_use(stock, inputs, purchases, n, days_left))  # the batch so far is of use
    cap = physics.purchase_cap(stock, inputs, purchases, n, days_left, k)

    def of_use(q):
        i, b = inputs.copy(), purchases.copy()
        i[k] += q
        b[k] += q
        return physics.purchases_of_use(stock, i, b, n, days_left)

    expected = max((q for q in range(0, 4 * n + 2) if all(of_use(x) for x in range(0, q + 1))), default=0)
    assert cap == expected
