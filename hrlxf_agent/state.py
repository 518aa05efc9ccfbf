"""StateBuilder: a Snapshot -> the tensors every layer reads (seed 002 section 2.1).

A pure function of the Snapshot: the agent calls it online, the tables stage
calls it on logged snapshots, and the features are equal (one implementation).
Every normalisation uses only the Snapshot's own fields:

* quantities are divided by n_lines (a full day of production is 1);
* prices are divided by the catalog price of the same product;
* money is divided by the initial balance (the score's denominator), or by
  the current balance when the Snapshot does not carry it (a positive
  stand-in: 1.0 means "as at the start").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np
from negmas.sao import ResponseType, SAOResponse

from hrlxf_models import layouts
from hrlxf_models.planner import BUCKET_STARTS, GOAL_LAYOUT

from . import physics
from .snapshot import DEFAULT_HORIZON, Snapshot

STATIC_FEATURES = layouts.STATIC
TEMPORAL_CHANNELS = layouts.TEMPORAL
#: source weights of the blended price of a day: signed deals, offers on the table, spot (seed 002)
PRICE_BLEND = (0.6, 0.3, 0.1)


@dataclass(frozen=True)
class FeatureSpec:
    """Everything a bundle's networks read: its fingerprint ties a bundle to these exact features."""

    horizon: int = DEFAULT_HORIZON
    version: int = 2
    static: tuple[str, ...] = layouts.STATIC
    temporal: tuple[str, ...] = layouts.TEMPORAL
    round: tuple[str, ...] = layouts.ROUND
    thread: tuple[str, ...] = layouts.THREAD
    broadcast: tuple[str, ...] = layouts.BROADCAST
    goal: tuple[str, ...] = GOAL_LAYOUT
    bucket_starts: tuple[int, ...] = BUCKET_STARTS
    normalisation: str = layouts.NORMALISATION

    @property
    def fingerprint(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def differences(self, recorded: dict) -> list[str]:
        """The fields where a recorded spec (a bundle manifest's ``features``) differs from this one."""
        mine = json.loads(json.dumps(asdict(self)))
        return [f"{k}: bundle {recorded.get(k)!r}, this code {v!r}" for k, v in mine.items() if recorded.get(k) != v]


@dataclass(frozen=True)
class MacroState:
    """The day-scale input of L2 (and the global context of L3/L4)."""

    x_static: np.ndarray  # (12,)
    x_temporal: np.ndarray  # (H+1, 10)
    x_role: np.ndarray  # (2,) multi-hot [can_buy, can_sell]


@dataclass(frozen=True)
class StateBuilder:
    spec: FeatureSpec = field(default_factory=FeatureSpec)

    def macro(self, snap: Snapshot) -> MacroState:
        return MacroState(self.static(snap), self.temporal(snap), self.role_multi_hot(snap))

    @staticmethod
    def role_multi_hot(snap: Snapshot) -> np.ndarray:
        return np.array([float(snap.can_buy), float(snap.can_sell)], dtype=np.float32)

    @staticmethod
    def role_one_hot(is_buy: bool) -> np.ndarray:
        """L3/L4: the direction of one negotiation, [buyer, seller]."""
        return np.array([1.0, 0.0] if is_buy else [0.0, 1.0], dtype=np.float32)

    @staticmethod
    def money_scale(snap: Snapshot) -> float:
        scale = snap.initial_balance if snap.initial_balance > 0 else abs(snap.balance)
        return max(scale, 1.0)

    def static(self, snap: Snapshot) -> np.ndarray:
        n = float(snap.n_lines)
        cin, cout = max(snap.catalog_price_in, 1e-6), max(snap.catalog_price_out, 1e-6)
        x = [
            snap.step / snap.n_steps,
            (snap.n_steps - snap.step) / snap.n_steps,
            snap.balance / self.money_scale(snap),
            snap.inventory_input / n,
            snap.inventory_output / n,
            snap.exogenous_input_qty / n,
            snap.exogenous_output_qty / n,
            snap.trading_price_in / cin,
            snap.trading_price_out / cout,
            (snap.trading_price_out - snap.trading_price_in - snap.production_cost) / cout,
            snap.shortfall_penalty,
            snap.storage_cost,
        ]
        return np.asarray(x, dtype=np.float32)

    def temporal(self, snap: Snapshot) -> np.ndarray:
        H = self.spec.horizon
        K = H + 1
        n = float(snap.n_lines)
        supply, sales = _fit(snap.supply_qty, K), _fit(snap.sale_qty, K)
        deal_cost, deal_revenue = _fit(snap.supply_cost, K), _fit(snap.sale_revenue, K)
        inputs = _fit(physics.daily_inputs(snap), K)
        due = _fit(physics.daily_demand(snap), K, fill=float(snap.inventory_output))  # 0.8.4: output stock is demand
        cost, revenue = deal_cost.copy(), deal_revenue.copy()
        cost[0] += snap.exogenous_input_cost
        revenue[0] += snap.exogenous_output_revenue
        alive_days = [snap.step + k < snap.n_steps for k in range(K)]
        alive = np.array(alive_days)

        # day by day on Python floats (the same float64 arithmetic as on the arrays' items, without their overhead)
        made_days, stock_days = [], []
        stock = float(snap.inventory_input)
        for day_in, day_due, day_alive in zip(inputs.tolist(), due.tolist(), alive_days):
            day_made = physics.produced(stock + day_in, snap.n_lines, day_due) if day_alive else 0.0
            stock = physics.next_input_stock(stock, day_in, day_made) if day_alive else stock
            made_days.append(day_made)
            stock_days.append(stock)
        made = np.array(made_days, dtype=float)
        stock_proj = np.array(stock_days, dtype=float)
        cash = snap.balance + np.cumsum(revenue - cost - made * snap.production_cost)

        offered_buy_q, offered_buy_p = np.zeros(K), np.zeros(K)  # partners selling to us
        offered_sell_q, offered_sell_p = np.zeros(K), np.zeros(K)  # partners buying from us
        for _, we_buy, q, t, p in snap.partner_offers:
            k = t - snap.step
            if 0 <= k < K:
                if we_buy:
                    offered_buy_q[k] += q
                    offered_buy_p[k] += q * p
                else:
                    offered_sell_q[k] += q
                    offered_sell_p[k] += q * p

        X = np.zeros((K, len(TEMPORAL_CHANNELS)), dtype=np.float32)
        X[:, 0] = inputs / n
        X[:, 1] = due / n
        X[:, 2] = made / n
        X[:, 3] = stock_proj / n
        X[:, 4] = np.where(alive, np.maximum(0.0, n - due) / n, 0.0)
        X[:, 5] = cash / self.money_scale(snap)
        # both sides at once (row 0 buy, row 1 sell: the same elementwise arithmetic)
        X[:, 6:8] = _premium(np.array([deal_cost, deal_revenue]), np.array([supply, sales]),
                             np.array([offered_buy_p, offered_sell_p]), np.array([offered_buy_q, offered_sell_q]),
                             np.array([[snap.trading_price_in], [snap.trading_price_out]])).T
        X[:, 8] = np.clip((sales + offered_sell_q) / n, 0.0, 1.0)
        X[:, 9] = np.clip((supply + offered_buy_q) / n, 0.0, 1.0)
        X[~alive, :] = 0.0
        return X


def _fit(values, length: int, fill: float = 0.0) -> np.ndarray:
    out = np.full(length, fill)
    m = min(length, len(values))
    out[:m] = values[:m]
    return out


def _premium(deal_money: np.ndarray, deal_q: np.ndarray, offer_money: np.ndarray, offer_q: np.ndarray, spot) -> np.ndarray:
    """Relative premium of a day's blended price over spot: (blend - spot) / spot, 0 with no evidence
    (``spot``: a number, or one per row of the (rows, days) arrays as a column)."""
    spot = np.maximum(spot, 1e-6)
    w_deal, w_offer, w_spot = PRICE_BLEND
    with np.errstate(invalid="ignore", divide="ignore"):
        deal_p = np.where(deal_q > 0, deal_money / np.maximum(deal_q, 1e-9), 0.0)
        offer_p = np.where(offer_q > 0, offer_money / np.maximum(offer_q, 1e-9), 0.0)
    has_deal, has_offer = deal_q > 0, offer_q > 0
    weight = w_spot + w_deal * has_deal + w_offer * has_offer
    blend = (w_spot * spot + w_deal * deal_p * has_deal + w_offer * offer_p * has_offer) / weight
    return np.where(has_deal | has_offer, (blend - spot) / spot, 0.0)


ROUND_FEATURES = len(layouts.ROUND)
THREAD_FEATURES = len(layouts.THREAD)
OP_INDEX = {"accept": 0, "reject": 1, "end": 2}


def op_of(response: SAOResponse) -> str:
    """The L3 op of an SAO response: accept, reject (a counter-offer) or end."""
    return {ResponseType.ACCEPT_OFFER: "accept", ResponseType.REJECT_OFFER: "reject"}.get(response.response, "end")


def budget_use(b_free: float, is_buy: bool, offer: tuple | None) -> float:
    """The share of B_free a partner's offer to sell to us would take (0 for sales and without an offer)."""
    if is_buy and offer is not None and b_free > 0:
        return min(1.0, offer[0] * offer[2] / b_free)
    return 0.0


def _encode_offer(snap: Snapshot, offer: tuple | None, catalog: float, horizon: int) -> list[float]:
    if offer is None:
        return [0.0, 0.0, 0.0, 0.0]
    return [offer[0] / snap.n_lines, (offer[1] - snap.step) / max(1, horizon), offer[2] / max(catalog, 1e-6), 1.0]


def round_features(snap: Snapshot, is_buy: bool, offer_in: tuple | None, offer_out: tuple | None,
                   op: str | None, rel_time: float, horizon: int) -> np.ndarray:
    """One round of a thread for L3: the partner's offer, ours, our op, the negotiation's relative time."""
    catalog = snap.catalog_price_in if is_buy else snap.catalog_price_out
    ops = [0.0, 0.0, 0.0]
    if op in OP_INDEX:
        ops[OP_INDEX[op]] = 1.0
    x = _encode_offer(snap, offer_in, catalog, horizon) + _encode_offer(snap, offer_out, catalog, horizon) + ops + [rel_time]
    return np.asarray(x, dtype=np.float32)


def thread_features(snap: Snapshot, q_safe: np.ndarray, b_free: float, gap_of_bucket: float, is_buy: bool,
                    offer: tuple | None, rel_time: float, horizon: int) -> np.ndarray:
    """One active thread for L4: role, time, the partner's offer, the goal gap and room at its day, budget use."""
    return np.asarray(_thread_row(snap, q_safe, b_free, gap_of_bucket, is_buy, offer, rel_time, horizon), dtype=np.float32)


def _thread_row(snap: Snapshot, q_safe: np.ndarray, b_free: float, gap_of_bucket: float, is_buy: bool,
                offer: tuple | None, rel_time: float, horizon: int) -> list[float]:
    """`thread_features` as a list (a batch converts all its rows at once)."""
    catalog = snap.catalog_price_in if is_buy else snap.catalog_price_out
    enc = _encode_offer(snap, offer, catalog, horizon)
    k = int(offer[1]) - snap.step if offer is not None else 0
    room = float(q_safe[k]) if 0 <= k < len(q_safe) else 0.0
    budget = budget_use(b_free, is_buy, offer)
    return [float(is_buy), float(not is_buy), rel_time, enc[3], enc[0], enc[1], enc[2],
            gap_of_bucket / snap.n_lines, room / snap.n_lines, budget]


def batch_thread_features(snap: Snapshot, bounds, remaining: tuple[np.ndarray, np.ndarray], partners: list[str],
                          is_buy: dict[str, bool], offer_of: dict[str, tuple | None], rel: dict[str, float]) -> np.ndarray:
    """L4's input for a batch, (len(partners), 10) in ``partners`` order: each thread's `thread_features`,
    with the goal gap of the bucket of its offer's day (today without an offer). The agent and the
    l4_distill table both call this (one implementation)."""
    from .heuristics import bucket_index  # heuristics imports the shield; kept local so state stays a leaf module

    idx = bucket_index(snap.horizon)
    rows = []
    for p in partners:
        o = offer_of[p]
        k = int(o[1]) - snap.step if o is not None else 0
        gap = (remaining[0] if is_buy[p] else remaining[1])[idx[min(max(k, 0), snap.horizon)]]
        q_safe = bounds.q_safe_buy if is_buy[p] else bounds.q_safe_sell
        rows.append(_thread_row(snap, q_safe, bounds.b_free, gap, is_buy[p], o, rel[p], snap.horizon))
    return np.asarray(rows, dtype=np.float32) if rows else np.zeros((0, THREAD_FEATURES), dtype=np.float32)
