"""What an agent observes at one decision: a plain, validated, loggable record.

The same `Snapshot` is built online from the AWI, written by the tracker and
rebuilt offline from the log, so every feature and bound is a function of it
alone (DESIGN.md section 2).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Iterable, Mapping

import numpy as np

#: Planning horizon H: commitment arrays cover days t .. t+H. scml's std worlds negotiate at most
#: 10 days ahead (`SCML2024StdWorld` horizon; the `time` issue never reaches further), so days beyond
#: it carry nothing.
DEFAULT_HORIZON = 10

QUANTITY, TIME, UNIT_PRICE = 0, 1, 2


@dataclass(frozen=True)
class IssueRanges:
    """The negotiation issues of one side today (inclusive ranges)."""

    q_min: int
    q_max: int
    t_min: int
    t_max: int
    p_min: float
    p_max: float

    def __post_init__(self) -> None:
        for name in ("q_min", "q_max", "t_min", "t_max", "p_min", "p_max"):
            _check_number(f"issues.{name}", getattr(self, name))
        if self.q_min > self.q_max:
            raise ValueError(f"issues.q_min ({self.q_min}) > issues.q_max ({self.q_max})")
        if self.t_min > self.t_max:
            raise ValueError(f"issues.t_min ({self.t_min}) > issues.t_max ({self.t_max})")
        if self.p_min > self.p_max:
            raise ValueError(f"issues.p_min ({self.p_min}) > issues.p_max ({self.p_max})")

    def contains(self, outcome: tuple) -> bool:
        """Does the outcome lie inside these ranges? (Off-grid values, e.g. a price
        of 16.8 on scml's integer price issue, are inside; `on_grid` tells them apart.)"""
        q, t, p = outcome[QUANTITY], outcome[TIME], outcome[UNIT_PRICE]
        return self.q_min <= q <= self.q_max and self.t_min <= t <= self.t_max and self.p_min <= p <= self.p_max

    @staticmethod
    def on_grid(outcome: tuple) -> bool:
        """Are all three values integers, as scml's issues are?"""
        return all(_integral(x) for x in outcome[:3])

    def clamp_price(self, price: float) -> int:
        """The legal (integer) unit price nearest to ``price``."""
        return int(min(max(round(price), math.ceil(self.p_min)), math.floor(self.p_max)))

    @classmethod
    def from_issues(cls, issues: Any) -> "IssueRanges | None":
        if not issues:
            return None
        q, t, p = issues[QUANTITY], issues[TIME], issues[UNIT_PRICE]
        return cls(
            int(q.min_value), int(q.max_value), int(t.min_value), int(t.max_value),
            float(p.min_value), float(p.max_value),
        )


@dataclass(frozen=True)
class Snapshot:
    """One agent's view of its factory and market at one moment.

    Per-day arrays have length H+1: index k is day ``step + k``. Quantities
    already signed include deals accepted earlier today (the AWI registers a
    deal as soon as its negotiation succeeds). Money is in the game's units.
    Only ``balance`` may be negative (a bankrupt factory).
    """

    step: int
    n_steps: int
    n_lines: int
    level: int
    can_buy: bool
    can_sell: bool
    balance: float
    inventory_input: int
    inventory_output: int
    exogenous_input_qty: int
    exogenous_input_cost: float
    exogenous_output_qty: int
    exogenous_output_revenue: float
    supply_qty: tuple[float, ...]
    supply_cost: tuple[float, ...]
    sale_qty: tuple[float, ...]
    sale_revenue: tuple[float, ...]
    production_cost: float
    storage_cost: float
    shortfall_penalty: float
    trading_price_in: float
    trading_price_out: float
    catalog_price_in: float
    catalog_price_out: float
    buy_issues: IssueRanges | None
    sell_issues: IssueRanges | None
    buy_partners: tuple[str, ...] = ()
    sell_partners: tuple[str, ...] = ()
    initial_balance: float = 0.0  # the balance the score is relative to; 0 if the builder did not know it
    partner_offers: tuple[tuple[str, bool, int, int, float], ...] = ()  # (partner, we_buy, q, t, p) on the table
    bankrupt_partners: tuple[str, ...] = ()  # their contracts are void; never trade with them
    version: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not _plainly_valid(self):  # the usual case checked at once; otherwise field by field, naming the bad one
            for f in fields(self):
                value = getattr(self, f.name)
                if f.name in _UNCHECKED:
                    continue
                if isinstance(value, tuple):
                    _check_days(f.name, value)
                elif not isinstance(value, bool):
                    _check_number(f.name, value, allow_negative=(f.name == "balance"))
        if self.n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {self.n_steps}")
        if self.n_lines < 1:
            raise ValueError(f"n_lines must be >= 1, got {self.n_lines}")
        if self.step >= self.n_steps:
            raise ValueError(f"step ({self.step}) must be < n_steps ({self.n_steps})")
        n = len(self.supply_qty)
        if n < 1:
            raise ValueError("supply_qty must cover at least today (length >= 1)")
        for name in ("supply_cost", "sale_qty", "sale_revenue"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has length {len(getattr(self, name))}, supply_qty has {n}")
        for i, o in enumerate(self.partner_offers):
            if len(o) != 5 or not well_formed(o[2:]) or o[2] < 0:
                raise ValueError(f"partner_offers[{i}] must be (partner, we_buy, q >= 0, t, p), got {o!r}")
        for side, issues in (("buy_issues", self.buy_issues), ("sell_issues", self.sell_issues)):
            if issues is not None and issues.t_min < self.step:
                raise ValueError(f"{side}.t_min ({issues.t_min}) is before step {self.step}")
        if self.can_buy and self.exogenous_input_qty > 0:
            raise ValueError("exogenous_input_qty > 0 but can_buy: only the first level gets exogenous supplies")
        if self.can_sell and self.exogenous_output_qty > 0:
            raise ValueError("exogenous_output_qty > 0 but can_sell: only the last level gets exogenous sales")

    @property
    def horizon(self) -> int:
        """H: the last day index k of the per-day arrays."""
        return len(self.supply_qty) - 1

    def within(self, horizon: int) -> "Snapshot":
        """This snapshot with its per-day arrays cut to days 0..horizon (logs written with a longer H)."""
        if self.horizon <= horizon:
            return self
        k = horizon + 1
        return replace(self, supply_qty=self.supply_qty[:k], supply_cost=self.supply_cost[:k],
                       sale_qty=self.sale_qty[:k], sale_revenue=self.sale_revenue[:k])

    def days_left(self) -> list[int]:
        """Days of the game left from each day k on (0 past the end)."""
        return [max(0, self.n_steps - (self.step + k)) for k in range(self.horizon + 1)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Snapshot":
        d = dict(d)
        for side in ("buy_issues", "sell_issues"):
            if d.get(side) is not None:
                d[side] = IssueRanges(**d[side])
        for name in ("supply_qty", "supply_cost", "sale_qty", "sale_revenue", "buy_partners", "sell_partners",
                     "bankrupt_partners"):
            d[name] = tuple(d.get(name, ()))
        d["partner_offers"] = tuple(tuple(o) for o in d.get("partner_offers", ()))
        return cls(**d)


#: Snapshot fields the per-field check leaves to the checks after it
_UNCHECKED = frozenset(("buy_issues", "sell_issues", "buy_partners", "sell_partners", "partner_offers",
                        "bankrupt_partners", "extra"))
_CHECKED = tuple(f.name for f in fields(Snapshot) if f.name not in _UNCHECKED)


def _plainly_valid(snap: Snapshot) -> bool:
    """True when every checked field is plainly fine, so the per-field check of `Snapshot.__post_init__` would pass
    (a sufficient test: False only sends the snapshot to that check): numbers are int / float, finite and >= 0
    (the balance may be negative), per-day tuples hold such numbers; bools are not checked."""
    total = 0.0
    try:
        for name in _CHECKED:
            value = getattr(snap, name)
            if isinstance(value, tuple):
                if not value or not min(value) >= 0:
                    return False
                total += sum(value)
            elif isinstance(value, bool):
                continue
            elif isinstance(value, (int, float)):
                if not (value >= 0 or name == "balance"):
                    return False
                total += value
            else:
                return False
    except (TypeError, ValueError, OverflowError):
        return False
    return math.isfinite(total)  # no NaN or inf anywhere (a finite sum that overflows only takes the long way)


def well_formed(outcome: Any) -> bool:
    """Is ``outcome`` a (quantity, time, unit_price) of finite numbers? (Some experts send None prices.)"""
    try:
        head = outcome[:3]
        if len(head) < 3 or any(isinstance(x, (str, bytes)) for x in head):
            return False
        return all(math.isfinite(float(x)) for x in head)
    except (TypeError, ValueError):
        return False


def _integral(x: Any) -> bool:
    try:
        return float(x) == int(x)
    except (TypeError, ValueError, OverflowError):
        return False


def _check_days(name: str, values: tuple) -> None:
    """A per-day tuple: finite and >= 0 (vectorised; the message names the first bad day)."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        bad = next(i for i, v in enumerate(values) if not isinstance(v, (int, float)))
        raise ValueError(f"{name}[{bad}] must be a number, got {values[bad]!r}") from None
    bad = np.flatnonzero(~np.isfinite(arr) | (arr < 0))
    if len(bad):
        i = int(bad[0])
        reason = "finite" if not np.isfinite(arr[i]) else ">= 0"
        raise ValueError(f"{name}[{i}] must be {reason}, got {values[i]}")


def _check_number(name: str, value: Any, allow_negative: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if value < 0 and not allow_negative:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _per_day(
    by_day: Mapping[int, Mapping[str, float]], today: Mapping[str, float], step: int, horizon: int,
    void: frozenset[str] = frozenset(),
) -> tuple[float, ...]:
    """Per-day totals over partners, leaving out the ``void`` ones (bankrupt: scml nullified their contracts)."""
    def total(per_partner: Mapping[str, float]) -> float:
        return float(sum(v for p, v in per_partner.items() if p not in void))

    return tuple([total(today)] + [total(by_day.get(step + k, {})) for k in range(1, horizon + 1)])


def _active(details: Mapping[str, Any], ignore: Iterable[str] = ()) -> tuple[str, ...]:
    ignored = set(ignore)
    alive = []
    for partner, info in details.items():
        state = getattr(getattr(info, "nmi", None), "state", None)
        if partner in ignored or (state is not None and (state.ended or state.agreement is not None)):
            continue
        alive.append(partner)
    return tuple(sorted(alive))


def _fresh(issues: IssueRanges | None, step: int) -> IssueRanges | None:
    """Today's issues, or None when scml still shows an earlier day's.

    scml refreshes the issues when it opens the day's negotiations, and only
    for products traded between factories (the raw material's and the final
    product's keep day 0's); between two steps they are yesterday's.
    """
    return issues if issues is not None and issues.t_min >= step else None


def snapshot_from_awi(
    awi: Any,
    horizon: int = DEFAULT_HORIZON,
    version: int = 0,
    initial_balance: float = 0.0,
    offers: Mapping[str, Any] | None = None,
) -> Snapshot:
    """Build the Snapshot of a live `StdAWI` (what the agent can see right now).

    ``initial_balance`` is not on the AWI: an agent records its balance in
    ``init`` and passes it. ``offers`` are the partners' standing offers of the
    batch being decided (partner -> outcome).

    A partner's bankruptcy makes scml nullify its contracts not yet executed
    (`scml/oneshot/world.py`, the profit update after ``is_bankrupt`` is set;
    `OneShotUFun.from_contracts` skips nullified ones), but the AWI's
    ``future_supplies`` / ``future_sales`` keep them: they are left out here.
    """
    step = int(awi.current_step)
    suppliers = set(awi.my_suppliers)
    bankrupt = frozenset(p for p in (*awi.my_suppliers, *awi.my_consumers) if awi.is_bankrupt(p))
    details = awi.current_negotiation_details
    profile = awi.profile
    in_p, out_p = awi.my_input_product, awi.my_output_product
    trading, catalog = awi.trading_prices, awi.catalog_prices
    return Snapshot(
        step=step,
        n_steps=int(awi.n_steps),
        n_lines=int(awi.n_lines),
        level=int(awi.level),
        can_buy=not awi.is_first_level,
        can_sell=not awi.is_last_level,
        balance=float(awi.current_balance),
        inventory_input=int(awi.current_inventory_input),
        inventory_output=int(awi.current_inventory_output),
        exogenous_input_qty=int(awi.current_exogenous_input_quantity),
        exogenous_input_cost=float(awi.current_exogenous_input_price),
        exogenous_output_qty=int(awi.current_exogenous_output_quantity),
        exogenous_output_revenue=float(awi.current_exogenous_output_price),
        supply_qty=_per_day(awi.future_supplies, awi.supplies, step, horizon, bankrupt),
        supply_cost=_per_day(awi.future_supplies_cost, awi.supplies_cost, step, horizon, bankrupt),
        sale_qty=_per_day(awi.future_sales, awi.sales, step, horizon, bankrupt),
        sale_revenue=_per_day(awi.future_sales_cost, awi.sales_cost, step, horizon, bankrupt),
        production_cost=float(profile.cost),
        storage_cost=float(awi.current_storage_cost),
        shortfall_penalty=float(awi.current_shortfall_penalty),
        trading_price_in=float(trading[in_p]),
        trading_price_out=float(trading[out_p]),
        catalog_price_in=float(catalog[in_p]),
        catalog_price_out=float(catalog[out_p]),
        buy_issues=None if awi.is_first_level else _fresh(IssueRanges.from_issues(awi.current_input_issues), step),
        sell_issues=None if awi.is_last_level else _fresh(IssueRanges.from_issues(awi.current_output_issues), step),
        buy_partners=_active(details.get("buy", {}), bankrupt),
        sell_partners=_active(details.get("sell", {}), bankrupt),
        initial_balance=float(initial_balance),
        partner_offers=tuple(
            (p, p in suppliers, int(o[QUANTITY]), int(o[TIME]), float(o[UNIT_PRICE]))
            for p, o in sorted((offers or {}).items())
            if o is not None and well_formed(o)
        ),
        bankrupt_partners=tuple(sorted(bankrupt)),
        version=version,
    )
