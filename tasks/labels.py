"""The L2 v2 goal labels (DESIGN.md section 3, seed 004) and the L2 reward parts of one agent-day.

Per delivery bucket b and side:
  Q_b = soft-bucketed quantity signed that day
        + 0.6 x the day's still-needed gap x urgency_b      (urgency 0.637 / 0.212 / 0.106 / 0.045)
        + 0.15 x the round-weighted quantity partners offered, only when that side made no deal;
  P_b = 0.65 deal VWAP + 0.25 mean price partners offered + 0.10 spot, re-weighted over the sources
        present; spot x 0.95 (buy) / 1.05 (sell) when there are no deals and no offers.
Soft buckets: a deal on the first or last day of a bucket gives 1/4 of its quantity to the
neighbouring bucket. The needed gap is the rule-based need (`heuristics.day_needs`, the 0.8.4
physics) of the morning snapshot minus what was signed. Quantities / n_lines, prices / catalog
price, as L2 emits them; the side the agent cannot negotiate is zero and masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hrlxf_agent.heuristics import BUCKET_URGENCY, bucket_index, day_needs
from hrlxf_agent.snapshot import Snapshot
from hrlxf_models.planner import N_BUCKETS, P_BUY, P_SELL, Q_BUY, Q_SELL, bucket_edges

GAP_WEIGHT, OFFER_WEIGHT = 0.6, 0.15
PRICE_WEIGHTS = (0.65, 0.25, 0.10)  # deals, offers, spot
SOFT_SHARE = 0.25


@dataclass(frozen=True)
class Trade:
    """A deal or an offer seen that day: side, delivery offset, quantity, unit price, weight."""

    is_buy: bool
    delta: int
    q: float
    p: float
    w: float = 1.0


def soft_bucket(delta: int, horizon: int) -> list[tuple[int, float]]:
    """(bucket, share) pairs of a delivery offset."""
    edges = bucket_edges(horizon)
    b = int(bucket_index(horizon)[min(max(delta, 0), horizon)])
    lo, hi = edges[b]
    if delta == hi and b + 1 < N_BUCKETS:
        return [(b, 1 - SOFT_SHARE), (b + 1, SOFT_SHARE)]
    if delta == lo and b > 0:
        return [(b, 1 - SOFT_SHARE), (b - 1, SOFT_SHARE)]
    return [(b, 1.0)]


def goal_label(snap: Snapshot, deals: list[Trade], offers: list[Trade]) -> tuple[np.ndarray, np.ndarray]:
    """(label (16,), mask (16,)) of one agent-day."""
    H = snap.horizon
    need_buy, need_sell = day_needs(snap)
    idx = bucket_index(H)
    need = {True: np.bincount(idx, weights=need_buy, minlength=N_BUCKETS)[:N_BUCKETS],
            False: np.bincount(idx, weights=need_sell, minlength=N_BUCKETS)[:N_BUCKETS]}
    spot = {True: snap.trading_price_in, False: snap.trading_price_out}
    catalog = {True: max(snap.catalog_price_in, 1e-6), False: max(snap.catalog_price_out, 1e-6)}
    label = np.zeros((N_BUCKETS, 4), dtype=np.float32)
    mask = np.zeros((N_BUCKETS, 4), dtype=np.float32)
    for is_buy, (qc, pc), allowed in ((True, (Q_BUY, P_BUY), snap.can_buy), (False, (Q_SELL, P_SELL), snap.can_sell)):
        if not allowed:
            continue
        mask[:, [qc, pc]] = 1.0
        signed, deal_money = np.zeros(N_BUCKETS), np.zeros(N_BUCKETS)
        offered, offer_money, offer_w = np.zeros(N_BUCKETS), np.zeros(N_BUCKETS), np.zeros(N_BUCKETS)
        mine = [d for d in deals if d.is_buy == is_buy]
        for d in mine:
            for b, share in soft_bucket(d.delta, H):
                signed[b] += share * d.q
                deal_money[b] += share * d.q * d.p
        for o in (o for o in offers if o.is_buy == is_buy):
            for b, share in soft_bucket(o.delta, H):
                offered[b] += share * o.w * o.q
                offer_money[b] += share * o.w * o.p
                offer_w[b] += share * o.w
        gap = np.maximum(0.0, need[is_buy] - signed)
        q = signed + GAP_WEIGHT * gap * np.asarray(BUCKET_URGENCY)
        if not mine:
            q += OFFER_WEIGHT * np.where(offer_w > 0, offered / np.maximum(offer_w, 1e-9), 0.0)
        for b in range(N_BUCKETS):
            sources = []
            if signed[b] > 0:
                sources.append((PRICE_WEIGHTS[0], deal_money[b] / signed[b]))
            if offer_w[b] > 0:
                sources.append((PRICE_WEIGHTS[1], offer_money[b] / offer_w[b]))
            if sources:
                sources.append((PRICE_WEIGHTS[2], spot[is_buy]))
                price = sum(w * p for w, p in sources) / sum(w for w, _ in sources)
            else:
                price = spot[is_buy] * (0.95 if is_buy else 1.05)
            label[b, pc] = price / catalog[is_buy]
        label[:, qc] = q / snap.n_lines
    return label.reshape(-1), mask.reshape(-1)


def potential(snap: Snapshot) -> float:
    """Phi: the stock at market value (DESIGN.md section 5)."""
    return snap.inventory_input * snap.trading_price_in + snap.inventory_output * snap.trading_price_out
