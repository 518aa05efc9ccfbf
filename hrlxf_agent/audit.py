"""The unsafe-action audit (DESIGN.md "Unsafe-action audit", seed 000 section 5.3.3).

A decision (an offer sent or an offer accepted) is unsafe when honouring it is
*certain* to fail given what the agent could observe, assuming partners honour
their contracts, and counting the earlier decisions of the same batch:

* unsafe_sell: the quantity due on the delivery day exceeds the most the
  factory could possibly deliver that day under scml 0.8.4's rules (see
  `physics`): n_lines, and today only the input it holds or could still get
  from the buy negotiations still running (their largest quantities). Later
  days can still be supplied, so only the lines bound them.
* unsafe_buy: its cost exceeds balance + receivables due by the delivery day
  - payables due by then (today's exogenous contracts included).

Illegal responses are counted apart: an ACCEPT with no offer from the partner
(or carrying another outcome), a REJECT without a counter-offer, an outcome
outside the negotiation's issue ranges, or a response type SAO does not allow
here. Offers with fractional values on scml's integer issues (PenguinAgent
offers unit prices like 16.8) are inside the ranges: counted as ``off_grid``. An outcome that is not three finite numbers is ``malformed_outcome``.
The bounds are physical limits; the shield's are tighter (`shield`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from negmas.sao import ResponseType

from . import physics
from .intercept import DecisionHook, Offers, Responses
from .snapshot import QUANTITY, TIME, UNIT_PRICE, Snapshot, snapshot_from_awi, well_formed


@dataclass
class AuditLimits:
    """The certain-failure limits of one snapshot, per day k, updated along a batch."""

    sell_room: np.ndarray  # most that can still be sold for day k without certain shortfall
    money: np.ndarray  # most that can still be spent on inputs delivered on day k (or before)
    step: int

    @classmethod
    def of(cls, snap: Snapshot) -> "AuditLimits":
        n = snap.n_lines
        inputs = physics.daily_inputs(snap)
        floor = physics.input_stock_floor(snap.inventory_input, inputs, n)
        still_obtainable = 0.0
        if snap.can_buy and snap.buy_issues is not None and snap.buy_issues.t_min <= snap.step:
            still_obtainable = snap.buy_issues.q_max * len(snap.buy_partners)
        possible = np.full(len(inputs), float(n))
        possible[0] = float(physics.deliverable(floor[0] + inputs[0] + still_obtainable, n))
        due = physics.daily_demand(snap)
        income = np.asarray(snap.sale_revenue, dtype=float)
        income[0] += snap.exogenous_output_revenue
        spend = np.asarray(snap.supply_cost, dtype=float)
        spend[0] += snap.exogenous_input_cost
        money = snap.balance + np.cumsum(income) - np.cumsum(spend)
        return cls(sell_room=possible - due, money=money, step=snap.step)

    def judge(self, is_buy: bool, outcome: tuple) -> tuple[bool, bool]:
        """(unsafe_buy, unsafe_sell) of committing ``outcome``; commits it to the limits."""
        q, t, p = float(outcome[QUANTITY]), int(outcome[TIME]), float(outcome[UNIT_PRICE])
        k = t - self.step
        if k < 0 or k >= len(self.sell_room):
            return (is_buy, not is_buy)  # a delivery day that cannot happen
        if is_buy:
            unsafe = q * p > self.money[k] + 1e-9
            self.money[k:] -= q * p  # a running balance: it lowers every later day too
            return (bool(unsafe), False)
        unsafe = q > self.sell_room[k] + 1e-9
        self.sell_room[k] -= q
        return (False, bool(unsafe))


@dataclass
class AuditCounts:
    decisions: int = 0
    accepts: int = 0
    offers: int = 0
    ends: int = 0
    unsafe_buy: int = 0
    unsafe_sell: int = 0
    unsafe_any: int = 0
    illegal: int = 0
    off_grid: int = 0  # offers with a fractional value on scml's integer issues (reported, not illegal)
    illegal_reasons: dict[str, int] = field(default_factory=dict)

    def add(self, other: "AuditCounts") -> None:
        for name in ("decisions", "accepts", "offers", "ends", "unsafe_buy", "unsafe_sell", "unsafe_any", "illegal", "off_grid"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.illegal_reasons.items():
            self.illegal_reasons[k] = self.illegal_reasons.get(k, 0) + v


def judge_batch(snap: Snapshot, offers: Offers, responses: Responses, is_buy: dict[str, bool]) -> list[dict[str, Any]]:
    """The verdict on every response of one batch, in the agent's order."""
    limits = AuditLimits.of(snap)
    verdicts = []
    for partner, r in responses.items():
        buy = is_buy.get(partner)
        issues = snap.buy_issues if buy else snap.sell_issues
        rec: dict[str, Any] = {"partner": partner, "is_buy": buy, "op": "end", "outcome": None,
                               "unsafe_buy": False, "unsafe_sell": False, "illegal": None, "off_grid": False}
        if buy is None:
            rec["illegal"] = "unknown_partner"
        elif r.response == ResponseType.END_NEGOTIATION:
            pass
        elif r.response == ResponseType.ACCEPT_OFFER:
            rec["op"] = "accept"
            offer = offers.get(partner)
            if offer is None:
                rec["illegal"] = "accept_without_offer"
            elif not well_formed(offer):
                rec["illegal"] = "accept_malformed_offer"
            else:
                rec["outcome"] = tuple(offer)
                if r.outcome is not None and tuple(r.outcome) != tuple(offer):
                    rec["illegal"] = "accept_other_outcome"
                rec["unsafe_buy"], rec["unsafe_sell"] = limits.judge(buy, offer)
        elif r.response == ResponseType.REJECT_OFFER:
            rec["op"] = "offer"
            if r.outcome is None:
                rec["illegal"] = "reject_without_counter"
            elif not well_formed(r.outcome):
                rec["illegal"] = "malformed_outcome"
                rec["outcome"] = tuple(r.outcome) if isinstance(r.outcome, (tuple, list)) else r.outcome
            else:
                rec["outcome"] = tuple(r.outcome)
                if issues is None or not issues.contains(r.outcome):
                    rec["illegal"] = "outside_issues"
                rec["off_grid"] = not issues.on_grid(r.outcome) if issues is not None else False
                rec["unsafe_buy"], rec["unsafe_sell"] = limits.judge(buy, r.outcome)
        else:
            rec["op"] = str(r.response.name).lower()
            rec["illegal"] = "bad_response_type"
        verdicts.append(rec)
    return verdicts


class AuditHook(DecisionHook):
    """Records every decision of one agent with its verdict; changes nothing."""

    def __init__(self, agent: Any, keep_records: bool = False):
        self.counts = AuditCounts()
        self.keep_records = keep_records
        self.records: list[dict[str, Any]] = []
        self.threads: set[tuple[int, str]] = set()  # (day, partner) of every negotiation the agent decided in

    def on_batch(self, agent: Any, kind: str, offers: Offers, responses: Responses) -> Responses:
        awi = agent.awi
        snap = snapshot_from_awi(awi, horizon=int(awi.horizon))
        suppliers = set(awi.my_suppliers)
        consumers = set(awi.my_consumers)
        sides = {p: True for p in suppliers} | {p: False for p in consumers}
        for rec in judge_batch(snap, offers, responses, sides):
            self.threads.add((snap.step, rec["partner"]))
            c = self.counts
            if rec["op"] == "end":
                c.ends += 1
            else:
                c.decisions += 1
                c.accepts += rec["op"] == "accept"
                c.offers += rec["op"] == "offer"
            c.unsafe_buy += rec["unsafe_buy"]
            c.unsafe_sell += rec["unsafe_sell"]
            c.unsafe_any += rec["unsafe_buy"] or rec["unsafe_sell"]
            c.off_grid += rec["off_grid"]
            if rec["illegal"]:
                c.illegal += 1
                c.illegal_reasons[rec["illegal"]] = c.illegal_reasons.get(rec["illegal"], 0) + 1
            if self.keep_records and (rec["op"] != "end" or rec["illegal"]):
                self.records.append({"step": snap.step, "kind": kind, **rec})
        return responses


def audited(cls: type, keep_records: bool = False) -> type:
    """``cls`` with every decision audited (works on any StdAgent / StdSyncAgent class)."""
    from .intercept import intercept

    suffix = "AuditedR" if keep_records else "Audited"
    return intercept(cls, lambda agent: AuditHook(agent, keep_records), suffix)

