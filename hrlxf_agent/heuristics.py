"""Rule-based L2 / L3 / L4 and the L4 GlobalMonitor (DESIGN.md "Heuristic fallbacks").

They play a full world with no bundle, stand in for a model that fails, and
serve as the priors the neural layers start from. They follow scml 0.8.4's
physics (`physics`): the input stock never drains, so a factory that fills
its stock to n_lines once never needs to buy again, and a day can deliver at
most n_lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from negmas.sao import ResponseType, SAOResponse

from hrlxf_models.layouts import BROADCAST
from hrlxf_models.planner import GOAL_DIM, N_BUCKETS, P_BUY, P_SELL, Q_BUY, Q_SELL, bucket_edges

from . import physics
from .shield import Bounds
from .snapshot import QUANTITY, TIME, UNIT_PRICE, IssueRanges, Snapshot
from .state import budget_use
from .strategy import RULES, Strategy

#: L2 label urgency weights per bucket (seed 004), reused as the coordinator's urgency
BUCKET_URGENCY = (0.637, 0.212, 0.106, 0.045)
BROADCAST_DIM = len(BROADCAST)


@dataclass
class Goal:
    """The day's targets per delivery bucket, in game units (quantities, unit prices)."""

    q_buy: np.ndarray
    p_buy: np.ndarray
    q_sell: np.ndarray
    p_sell: np.ndarray

    def vector(self, snap: Snapshot) -> np.ndarray:
        """The normalised 16-vector L2 emits: quantities / n_lines, prices / catalog price."""
        g = np.zeros((N_BUCKETS, 4), dtype=np.float32)
        g[:, Q_BUY] = self.q_buy / snap.n_lines
        g[:, P_BUY] = self.p_buy / max(snap.catalog_price_in, 1e-6)
        g[:, Q_SELL] = self.q_sell / snap.n_lines
        g[:, P_SELL] = self.p_sell / max(snap.catalog_price_out, 1e-6)
        return g.reshape(GOAL_DIM)

    @classmethod
    def from_vector(cls, g: np.ndarray, snap: Snapshot) -> "Goal":
        """The goal of a (float32) vector; values are snapped to 1e-4 so that the rule goal sent through a
        network unchanged (an untrained planner) comes back as the same numbers, not 9.9999995."""
        g = np.round(np.asarray(g, dtype=float).reshape(N_BUCKETS, 4) * [snap.n_lines, snap.catalog_price_in,
                                                                         snap.n_lines, snap.catalog_price_out], 4)
        g = g / [snap.n_lines, max(snap.catalog_price_in, 1e-6), snap.n_lines, max(snap.catalog_price_out, 1e-6)]
        return cls(
            q_buy=g[:, Q_BUY] * snap.n_lines * snap.can_buy,
            p_buy=g[:, P_BUY] * snap.catalog_price_in,
            q_sell=g[:, Q_SELL] * snap.n_lines * snap.can_sell,
            p_sell=g[:, P_SELL] * snap.catalog_price_out,
        )


@lru_cache(maxsize=8)
def bucket_index(horizon: int) -> np.ndarray:
    """bucket of every day offset 0..H (shared, read-only)."""
    out = np.zeros(horizon + 1, dtype=int)
    for b, (lo, hi) in enumerate(bucket_edges(horizon)):
        out[lo : min(hi, horizon) + 1] = b
    out.setflags(write=False)
    return out


def day_needs(snap: Snapshot, strategy: Strategy = RULES) -> tuple[np.ndarray, np.ndarray]:
    """(buy, sell) quantities worth trading for each day k = 0..H.

    Buy: input for the day's planned production (full lines when the factory
    can sell its output, else the day's known demand) beyond stock + signed
    inputs; plus, while the stock is below n_lines and days remain, enough
    to top it up (0.8.4: only input beyond the day's production reaches the
    stock, and a full stock feeds every later day for free). Never beyond
    the shield's room. Sell: the lines' free capacity, today only what
    secured input allows, later days what input is held or planned (half the
    planned purchases, which may fail: ``needs.purchase_share``); first-level
    factories expect today's exogenous supply again.
    """
    key = (id(snap), strategy.needs_key())
    memo = _needs_memo.get(key)
    if memo is not None and memo[0] is snap:
        return memo[1], memo[2]
    buy, sell = _day_needs(snap, *strategy.needs_key())
    buy.setflags(write=False)
    sell.setflags(write=False)
    if len(_needs_memo) >= 4:
        try:  # the oldest (another thread may have dropped it first)
            _needs_memo.pop(next(iter(_needs_memo)), None)
        except (StopIteration, RuntimeError):
            pass
    _needs_memo[key] = (snap, buy, sell)  # holds the snapshot: its id is not reused while remembered
    return buy, sell


#: `day_needs` of the last few snapshots, by identity and strategy (the rule goal and the goal label ask for the
#: same morning)
_needs_memo: dict[tuple[int, tuple[float, float]], tuple[Snapshot, np.ndarray, np.ndarray]] = {}


def _day_needs(snap: Snapshot, purchase_share: float = 0.5, top_up_days: float = 3) -> tuple[np.ndarray, np.ndarray]:
    K = snap.horizon + 1
    n = float(snap.n_lines)
    inputs, due = physics.daily_inputs(snap), physics.daily_demand(snap)
    floor = physics.input_stock_floor(snap.inventory_input, inputs, snap.n_lines)
    days_left = np.asarray(snap.days_left(), float)
    alive = days_left > 0
    present = floor + inputs
    buy = np.zeros(K)
    sell = np.zeros(K)
    if snap.can_buy:
        planned = np.maximum(due, n) if snap.can_sell else due.copy()
        if not snap.can_sell:  # last level: tomorrow's exogenous demand is unknown, expect today's
            planned[1:] = np.maximum(planned[1:], min(n, snap.exogenous_output_qty))
        buy = np.maximum(0.0, np.minimum(n, planned) - present)
        first = int(np.argmax(alive)) if alive.any() else 0
        if floor[first] < n and days_left[first] > top_up_days:
            buy[first] += n - floor[first]
        buy = np.minimum(buy, physics.buy_room(floor, inputs, snap.n_lines, days_left))
    if snap.can_sell:
        expected_in = present + (purchase_share * buy if snap.can_buy else 0.0)
        if not snap.can_buy:
            expected_in[1:] += snap.exogenous_input_qty
        sell = np.maximum(0.0, np.minimum(n, expected_in) - due)
        sell[0] = max(0.0, min(n, present[0]) - due[0])
    return np.where(alive, buy, 0.0), np.where(alive, sell, 0.0)


def heuristic_goal(snap: Snapshot, strategy: Strategy = RULES) -> Goal:
    """L2 by rules: bucketed needs; prices around the market.

    A factory whose stock already feeds its lines (0.8.4: stock is never
    consumed) makes each extra unit for the production cost alone, so it sells
    a little under the market rather than keep idle lines; one still filling
    its stock pays a little over the market to get there sooner. A strategy
    (`strategy`) sets those two factors and moves the goal by role and situation.
    """
    buy, sell = day_needs(snap, strategy)
    idx = bucket_index(snap.horizon)
    q_buy = np.bincount(idx, weights=buy, minlength=N_BUCKETS)[:N_BUCKETS]
    q_sell = np.bincount(idx, weights=sell, minlength=N_BUCKETS)[:N_BUCKETS]
    stock_full = snap.inventory_input >= snap.n_lines
    goal = Goal(
        q_buy=q_buy * snap.can_buy,
        p_buy=np.full(N_BUCKETS, snap.trading_price_in * (1.0 if stock_full else strategy.fill_premium)),
        q_sell=q_sell * snap.can_sell,
        p_sell=np.full(N_BUCKETS, snap.trading_price_out * (strategy.free_input_discount if stock_full else 1.0)),
    )
    return strategy.adjust_goal(goal, snap)


class GlobalMonitor:
    """L4 rules: what the day committed against the goal, and the broadcast c."""

    def __init__(self) -> None:
        self.goal: Goal | None = None
        self.start: Snapshot | None = None

    def reset(self, snap: Snapshot, goal: Goal) -> None:
        self.goal, self.start = goal, snap

    def committed_today(self, snap: Snapshot) -> tuple[np.ndarray, np.ndarray]:
        """Quantities signed since the day started, per bucket (buy, sell)."""
        if self.start is None or self.start.step != snap.step:
            return np.zeros(N_BUCKETS), np.zeros(N_BUCKETS)
        idx = bucket_index(snap.horizon)
        K = min(len(snap.supply_qty), len(self.start.supply_qty))
        dbuy = np.asarray(snap.supply_qty[:K]) - np.asarray(self.start.supply_qty[:K])
        dsell = np.asarray(snap.sale_qty[:K]) - np.asarray(self.start.sale_qty[:K])
        return (np.bincount(idx[:K], weights=dbuy, minlength=N_BUCKETS)[:N_BUCKETS],
                np.bincount(idx[:K], weights=dsell, minlength=N_BUCKETS)[:N_BUCKETS])

    def remaining(self, snap: Snapshot, committed: tuple[np.ndarray, np.ndarray] | None = None,
                  goal: Goal | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The goal left per bucket (``committed``: `committed_today(snap)` if the caller has it; ``goal``:
        another goal than the day's, e.g. the rule goal the rule executor plays against)."""
        goal = goal or self.goal or heuristic_goal(snap)
        cb, cs = committed if committed is not None else self.committed_today(snap)
        return np.maximum(0.0, goal.q_buy - cb), np.maximum(0.0, goal.q_sell - cs)

    def broadcast(self, snap: Snapshot, bounds: Bounds, money_scale: float, rel_time: float,
                  committed: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        goal = self.goal or heuristic_goal(snap)
        cb, cs = committed if committed is not None else self.committed_today(snap)
        n = float(snap.n_lines)
        c = np.zeros(BROADCAST_DIM, dtype=np.float32)
        c[0:8:2] = (goal.q_buy - cb) / n
        c[1:8:2] = (goal.q_sell - cs) / n
        c[8] = bounds.b_free / money_scale
        c[9] = bounds.q_safe_buy[0] / n
        c[10] = bounds.q_safe_sell[0] / n
        c[11] = rel_time
        return c


def tradable_buckets(snap: Snapshot, time_mask: np.ndarray) -> np.ndarray:
    """Which goal buckets hold a day this side can still trade today (negotiable and safe)."""
    idx = bucket_index(snap.horizon)
    open_days = np.isfinite(np.asarray(time_mask[: snap.horizon + 1], dtype=float))
    return np.bincount(idx[open_days], minlength=N_BUCKETS)[:N_BUCKETS] > 0


#: the teacher's score -> alpha = tanh(TEACHER_GAIN x score): a score in about [-2.5, 2.5] spreads over (-1, 1)
TEACHER_GAIN = 0.7


def teacher_alpha(snap: Snapshot, bounds: Bounds, remaining: tuple[np.ndarray, np.ndarray], is_buy: bool,
                  offer: tuple | None, rel_time: float, strategy: Strategy = RULES) -> float:
    """The heuristic priority of one thread in (-1, 1) (`teacher_alpha_from` on this snapshot's terms)."""
    gaps = (remaining[0] if is_buy else remaining[1]) / float(snap.n_lines)
    tradable = tradable_buckets(snap, bounds.time_mask_buy if is_buy else bounds.time_mask_sell)
    has_offer = offer is not None
    delta = int(offer[TIME]) - snap.step if has_offer else 0
    return float(teacher_alpha_from(gaps, tradable, has_offer, delta, rel_time, budget_use(bounds.b_free, is_buy, offer),
                                    snap.horizon, strategy.teacher_gain))


#: a goal gap (in n_lines) below this is none: float32 goals and float64 commitments need not cancel exactly
GAP_EPSILON = 1e-6


def teacher_alpha_from(gaps: np.ndarray, tradable: np.ndarray, has_offer, offer_delta, rel_time, budget,
                       horizon: int, gain: float = TEACHER_GAIN) -> np.ndarray:
    """The teacher on arrays (one thread, or many rows at once: the training stages rebuild it against
    L2's goal from table columns). ``gaps`` (..., 4): the side's goal left per bucket / n_lines;
    ``tradable`` (..., 4): buckets the side can still trade; the offer's delivery offset when there is one.

    The priority: urgency of the goal gap, how near the delivery is, how late in the negotiation, budget
    pressure. Only tradable buckets count and each gap is a share of what its bucket can hold (n_lines a
    day), so the urgency lies in [0, 1] whatever the goal asks; every term is centred, and the gain keeps
    tanh out of saturation: alphas spread over (-1, 1) and rank threads. Without an offer, the thread is
    taken at the first tradable bucket that still needs something.
    """
    gaps = np.asarray(gaps, dtype=float)
    tradable = np.asarray(tradable, dtype=bool)
    edges = bucket_edges(horizon)
    starts = np.asarray([lo for lo, _ in edges])
    days = np.asarray([min(hi, horizon) - lo + 1 for lo, hi in edges], dtype=float)
    needy = (gaps > GAP_EPSILON) & tradable
    default = np.where(needy.any(axis=-1), starts[np.argmax(needy, axis=-1)], 0)
    delta = np.where(has_offer, offer_delta, default)
    b = bucket_index(horizon)[np.clip(delta, 0, horizon)]
    weights = np.asarray(BUCKET_URGENCY) * tradable
    total = weights.sum(axis=-1)
    fill = np.clip(gaps / days, 0.0, 1.0)
    urgency = np.where(total > 0, (weights * fill).sum(axis=-1) / np.maximum(total, 1e-12), 0.0)
    near = 1.0 - np.minimum(1.0, np.maximum(0, delta) / max(1, horizon))
    at = np.take_along_axis(needy, np.expand_dims(b, -1), axis=-1)[..., 0]
    wanted = np.where(at, 1.0, -1.0)
    score = 1.5 * (2 * urgency - 1) + 0.5 * (2 * near - 1) + 0.3 * (2 * np.asarray(rel_time) - 1) \
        - 0.8 * np.asarray(budget) + 0.5 * wanted
    return np.tanh(gain * score)


def rule_offer_for(rule: SAOResponse | None, day: int) -> tuple | None:
    """The rule executor's counter-offer when it is for ``day`` (the base of an L3 residual over the rules;
    otherwise L1's baseline is the base)."""
    if rule is not None and rule.response == ResponseType.REJECT_OFFER and rule.outcome[TIME] == day:
        return tuple(rule.outcome)
    return None


def limit_price(goal_price: float, is_buy: bool, rel_time: float, strategy: Strategy = RULES) -> float:
    """The worst price acceptable at this point of a negotiation (concedes with time)."""
    s = strategy
    return goal_price * ((s.limit_buy_start + s.concession * rel_time) if is_buy
                         else (s.limit_sell_start - s.concession * rel_time))


def opening_price(issues: IssueRanges, goal_price: float, is_buy: bool, rel_time: float,
                  strategy: Strategy = RULES) -> float:
    """From the best end of the price range toward the goal price as the negotiation runs
    (starting halfway when the goal is already at the far end of the range)."""
    best = issues.p_min if is_buy else issues.p_max
    target = limit_price(goal_price, is_buy, 1.0, strategy)
    if (target >= issues.p_max) if is_buy else (target <= issues.p_min):
        best = (issues.p_min + issues.p_max) / 2
    return best + (target - best) * min(1.0, rel_time) ** strategy.opening_exponent


def heuristic_action(
    snap: Snapshot,
    bounds: Bounds,
    goal: Goal,
    remaining: tuple[np.ndarray, np.ndarray],
    n_threads_side: int,
    is_buy: bool,
    offer: tuple | None,
    rel_time: float,
    strategy: Strategy = RULES,
) -> tuple[SAOResponse, int]:
    """L3 by rules for one thread: (response, chosen delivery offset).

    Accept an offer whose bucket still needs it at an acceptable price (a
    smaller counter at the same day and price when it needs less); otherwise
    offer the thread's share of the most urgent need at a conceding price; END
    when this side needs nothing more today.
    """
    issues = snap.buy_issues if is_buy else snap.sell_issues
    if issues is None:
        return SAOResponse(ResponseType.END_NEGOTIATION, None), 0
    gaps = remaining[0] if is_buy else remaining[1]
    mask = bounds.time_mask_buy if is_buy else bounds.time_mask_sell
    idx = bucket_index(snap.horizon)
    prices = goal.p_buy if is_buy else goal.p_sell
    if offer is not None:
        k = int(offer[TIME]) - snap.step
        if 0 <= k <= snap.horizon and np.isfinite(mask[k]):
            b = idx[k]
            ok_price = offer[UNIT_PRICE] <= limit_price(prices[b], True, rel_time, strategy) if is_buy else \
                offer[UNIT_PRICE] >= limit_price(prices[b], False, rel_time, strategy)
            if ok_price and gaps[b] >= 1:
                if offer[QUANTITY] <= gaps[b] + 0.5:
                    return SAOResponse(ResponseType.ACCEPT_OFFER, tuple(offer)), k
                q = int(max(1, math.floor(gaps[b])))
                return SAOResponse(ResponseType.REJECT_OFFER, (q, int(offer[TIME]), offer[UNIT_PRICE])), k
    # the days this side can trade today whose bucket still needs >= 1; the earliest bucket, then the earliest
    # day in it: buckets grow with the day, so that is the first such day
    days = np.isfinite(np.asarray(mask[: snap.horizon + 1], dtype=float)) & (np.asarray(gaps)[idx] >= 1)
    k = int(days.argmax())
    if not days[k]:
        return SAOResponse(ResponseType.END_NEGOTIATION, None), 0
    b = idx[k]
    share = max(1, math.ceil(gaps[b] / max(1, n_threads_side)))
    q = int(min(share, issues.q_max))
    p = issues.clamp_price(opening_price(issues, prices[b], is_buy, rel_time, strategy))
    return SAOResponse(ResponseType.REJECT_OFFER, (q, snap.step + k, p)), k
