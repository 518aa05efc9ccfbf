"""L1: the deterministic safety shield (DESIGN.md section 3, "L1 safety shield").

`SafetyShield.bounds` turns a Snapshot into how much more the agent may buy and
sell for each delivery day and how much money it may still commit;
`clip_batch` makes a whole batch of concurrent SAO responses fit those bounds
jointly and legal. Every bound comes from `physics` (scml 0.8.4's accounting),
not from the seeds' production-to-stock model:

* sell, day k: at most n_lines units can be delivered on a day, and only from
  input offered to production that day. Today (k = 0) the shield counts only
  input already secured (stock floor + signed supplies + exogenous supply),
  since today's open buy threads may still fail; later days can still be
  supplied (negotiations or exogenous supply), so their bound is the lines.
  Output stock is demand in 0.8.4, never supply. Days are independent.
* buy, day k: nothing once the stock floor reaches n_lines (it feeds full
  production every day for free), else at most ``2 n_lines - (stock floor +
  signed inputs)``: more is certain waste (`physics.buy_room`). Within a
  batch the room is recomputed after each purchase (one may reach the stock).
* money: scml cuts production when a day's input payments plus a contract's
  ``quantity x production_cost`` exceed the balance (`OneShotUFun.from_offers`,
  the cash check), so a unit bought costs its price plus the production cost.
  B_free = balance x (1 - reserve) - every committed payable (signed supplies
  and today's exogenous supply) - the production cost of every committed input
  unit; a batch never spends more, each unit at price + production cost. (The
  simulator charges only the contract's own units in each check: counting all
  of them is conservative, and exact for a day with one purchase.)
* bankrupt partners: their contracts are void (the Snapshot leaves them out);
  a thread with one is always ended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
from negmas.sao import ResponseType, SAOResponse

from . import physics
from .snapshot import QUANTITY, TIME, UNIT_PRICE, IssueRanges, Snapshot, well_formed

Outcome = tuple[int, int, int]


@dataclass(frozen=True)
class ShieldConfig:
    """Tunable margins of the shield (the physics is not tunable)."""

    reserve_fraction: float = 0.0  # share of the balance never committed to purchases
    baseline_buy_price: float = 0.95  # baseline offer price / market price, buying
    baseline_sell_price: float = 1.05  # baseline offer price / market price, selling


@dataclass(frozen=True)
class Bounds:
    """What may still be committed, per delivery day k = 0..H (index = day - step)."""

    q_safe_buy: np.ndarray
    q_safe_sell: np.ndarray
    b_free: float
    inputs: np.ndarray  # input committed per day (signed supplies + today's exogenous supply)
    stock: float  # input stock today
    days_left: np.ndarray
    n_lines: int
    unit_overhead: float  # production cost paid (in the cash check) per unit bought
    time_mask_buy: np.ndarray  # 0 where a buy of >= 1 unit is safe and the day is negotiable, else -inf
    time_mask_sell: np.ndarray


@dataclass(frozen=True)
class Thread:
    """One running negotiation in a batch, as the shield needs to see it."""

    partner: str
    is_buy: bool
    offer: Outcome | None  # the partner's standing offer, None if it has made none yet


class _Room:
    """Mutable remaining capacity while a batch is clipped."""

    def __init__(self, bounds: Bounds, step: int):
        self.bounds = bounds
        self.sell = bounds.q_safe_sell.astype(float).copy()
        self.inputs = bounds.inputs.astype(float).copy()
        self.bought = np.zeros_like(self.inputs)
        self.money = float(bounds.b_free)
        self.step = step

    def quantity_cap(self, is_buy: bool, t: int, price: float) -> int:
        """The most that may still be committed on day t at this price."""
        k = t - self.step
        if k < 0 or k >= len(self.sell):
            return 0
        if not is_buy:
            return int(math.floor(self.sell[k] + 1e-9))
        b = self.bounds
        # a purchase may reach the stock and so crowd out later days (physics.purchase_cap)
        cap = min(
            int(math.floor(max(0.0, b.q_safe_buy[k] - self.bought[k]) + 1e-9)),
            physics.purchase_cap(b.stock, self.inputs, self.bought, b.n_lines, b.days_left, k),
        )
        unit = price + b.unit_overhead
        if unit > 0:
            cap = min(cap, int(math.floor(self.money / unit + 1e-9)))
        return max(0, cap)

    def take(self, is_buy: bool, outcome: tuple) -> None:
        q, t, p = outcome[QUANTITY], int(outcome[TIME]), outcome[UNIT_PRICE]
        k = t - self.step
        if is_buy:
            self.inputs[k] += q
            self.bought[k] += q
            self.money -= q * (p + self.bounds.unit_overhead)
        else:
            self.sell[k] -= q


class SafetyShield:
    """Deterministic L1 bounds and the joint clip of a batch of responses."""

    def __init__(self, config: ShieldConfig | None = None):
        self.config = config or ShieldConfig()
        self._memo: tuple[Snapshot, Bounds] | None = None

    # ------------------------------------------------------------------ bounds
    def bounds(self, snap: Snapshot) -> Bounds:
        """The bounds of a snapshot (the last one is remembered: agent and hook ask for the same)."""
        if self._memo is not None and self._memo[0] is snap:
            return self._memo[1]
        b = self._bounds(snap)
        self._memo = (snap, b)
        return b

    def _bounds(self, snap: Snapshot) -> Bounds:
        n = snap.n_lines
        inputs = physics.daily_inputs(snap)
        due = physics.daily_demand(snap)
        days_left = np.asarray(snap.days_left(), dtype=float)
        alive = days_left > 0

        floor = physics.input_stock_floor(snap.inventory_input, inputs, n)
        secured = floor + inputs
        cap = np.full_like(due, float(n))
        cap[0] = float(physics.deliverable(secured[0], n))
        q_sell = np.where(alive & snap.can_sell, np.maximum(0.0, cap - due), 0.0)
        q_buy = physics.buy_room(floor, inputs, n, days_left) if snap.can_buy else np.zeros_like(inputs)

        payables = float(np.sum(snap.supply_cost)) + snap.exogenous_input_cost
        production = snap.production_cost * float(np.sum(inputs))
        b_free = max(0.0, snap.balance * (1.0 - self.config.reserve_fraction) - payables - production)
        return Bounds(
            q_safe_buy=q_buy,
            q_safe_sell=q_sell,
            b_free=b_free,
            inputs=inputs,
            stock=float(snap.inventory_input),
            days_left=days_left,
            n_lines=n,
            unit_overhead=float(snap.production_cost),
            time_mask_buy=self._time_mask(snap, q_buy, snap.buy_issues),
            time_mask_sell=self._time_mask(snap, q_sell, snap.sell_issues),
        )

    @staticmethod
    def _time_mask(snap: Snapshot, q_safe: np.ndarray, issues: IssueRanges | None) -> np.ndarray:
        mask = np.full(len(q_safe), -np.inf)
        if issues is None:
            return mask
        for k in range(len(q_safe)):
            t = snap.step + k
            if issues.t_min <= t <= issues.t_max and q_safe[k] >= 1:
                mask[k] = 0.0
        return mask

    # ---------------------------------------------------------------- baseline
    def baseline(self, snap: Snapshot, bounds: Bounds, is_buy: bool, delta: int) -> Outcome | None:
        """The simple safe offer of seed 004 section 1.3 for delivery day step + delta."""
        issues = snap.buy_issues if is_buy else snap.sell_issues
        if issues is None or delta < 0 or delta > snap.horizon:
            return None
        t = snap.step + delta
        if not issues.t_min <= t <= issues.t_max:
            return None
        if is_buy:
            price = issues.clamp_price(self.config.baseline_buy_price * snap.trading_price_in)
            unit = price + bounds.unit_overhead
            q = min(bounds.q_safe_buy[delta] / 2.0, bounds.b_free / unit if unit > 0 else math.inf)
            cap = min(bounds.q_safe_buy[delta], bounds.b_free / unit if unit > 0 else math.inf)
        else:
            price = issues.clamp_price(self.config.baseline_sell_price * snap.trading_price_out)
            q = bounds.q_safe_sell[delta] / 2.0
            cap = bounds.q_safe_sell[delta]
        q = int(min(max(math.floor(q), issues.q_min, 1), issues.q_max, math.floor(cap + 1e-9)))
        if q < max(1, issues.q_min):
            return None
        return (q, t, price)

    # -------------------------------------------------------------- clip_batch
    def clip_batch(
        self,
        snap: Snapshot,
        threads: Mapping[str, Thread],
        responses: Mapping[str, SAOResponse],
        alpha: Mapping[str, float] | None = None,
        reserved: Iterable[tuple[bool, Outcome]] = (),
        bounds: Bounds | None = None,
    ) -> dict[str, SAOResponse]:
        """Make one batch of responses safe together and legal.

        Certain deals first: every ACCEPT of an offer that fits is served before
        any counter-offer, in descending alpha. Then the counter-offers (and the
        ACCEPTs that did not fit, as smaller counters) in descending alpha, each
        capped at its alpha-weighted share of the room left on its side, so one
        thread cannot starve the others; a thread is ended only when no day has
        room for one unit. ``reserved`` are commitments outside the batch that
        may still bind (offers already sent and not yet answered). Threads with
        a bankrupt partner are ended. Responses for partners not in ``threads``
        are dropped (no such negotiation runs).
        """
        bounds = bounds if bounds is not None else self.bounds(snap)
        room = _Room(bounds, snap.step)
        for is_buy, outcome in reserved:
            if outcome is not None and 0 <= outcome[TIME] - snap.step < len(room.sell):
                room.take(is_buy, outcome)
        alpha = alpha or {}
        void = set(snap.bankrupt_partners)
        end = SAOResponse(ResponseType.END_NEGOTIATION, None)

        out: dict[str, SAOResponse] = {}
        wanted: dict[str, tuple | None] = {}
        by_alpha = sorted((p for p in responses if p in threads), key=lambda p: (-alpha.get(p, 0.0), p))
        for pid in by_alpha:
            thread, resp = threads[pid], responses[pid]
            issues = snap.buy_issues if thread.is_buy else snap.sell_issues
            if resp.response == ResponseType.END_NEGOTIATION or issues is None or pid in void:
                out[pid] = end
            elif resp.response == ResponseType.ACCEPT_OFFER and thread.offer is not None and well_formed(thread.offer):
                offer = tuple(thread.offer)  # ACCEPT carries the partner's offer exactly
                if room.quantity_cap(thread.is_buy, int(offer[TIME]), float(offer[UNIT_PRICE])) >= offer[QUANTITY]:
                    room.take(thread.is_buy, offer)
                    out[pid] = SAOResponse(ResponseType.ACCEPT_OFFER, offer)
                else:
                    wanted[pid] = offer
            else:
                wanted[pid] = tuple(resp.outcome) if well_formed(resp.outcome) else None

        weight = {p: max(0.05, 1.0 + alpha.get(p, 0.0)) for p in wanted}
        for pid in wanted:  # still in descending alpha
            thread = threads[pid]
            issues = snap.buy_issues if thread.is_buy else snap.sell_issues
            target = wanted[pid] or self._best_baseline(snap, bounds, thread.is_buy)
            waiting = sum(weight[p] for p in wanted if p not in out and threads[p].is_buy == thread.is_buy)
            counter = None if target is None else self._fit(room, issues, thread.is_buy, target, weight[pid] / waiting)
            if counter is None:
                out[pid] = end
                continue
            room.take(thread.is_buy, counter)
            out[pid] = SAOResponse(ResponseType.REJECT_OFFER, counter)
        return {p: out[p] for p in by_alpha}

    def _best_baseline(self, snap: Snapshot, bounds: Bounds, is_buy: bool) -> Outcome | None:
        for delta in range(snap.horizon + 1):
            o = self.baseline(snap, bounds, is_buy, delta)
            if o is not None:
                return o
        return None

    @staticmethod
    def _fit(room: _Room, issues: IssueRanges, is_buy: bool, wanted: tuple, share: float = 1.0) -> Outcome | None:
        """The closest legal, safe offer to ``wanted``: same day if it has room, else the nearest day
        that has; at most ``share`` of that day's room (but at least one unit)."""
        q = int(min(max(int(wanted[QUANTITY]), issues.q_min, 1), issues.q_max))
        price = issues.clamp_price(float(wanted[UNIT_PRICE]))
        t0 = int(min(max(int(wanted[TIME]), issues.t_min), issues.t_max))
        days = sorted(range(issues.t_min, issues.t_max + 1), key=lambda t: (abs(t - t0), t))
        q_floor = max(1, issues.q_min)
        for t in days:
            cap = min(room.quantity_cap(is_buy, t, price), issues.q_max)
            if cap >= q_floor:
                fair = max(q_floor, int(math.floor(cap * min(1.0, share) + 1e-9)))
                return (min(q, fair), t, price)
        return None
