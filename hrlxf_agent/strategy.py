"""The strategy template: every constant of the rule layers that shapes a decision, and goal offsets per role
that depend on the situation, as named offsets from today's rules (DESIGN.md section 5).

An offset of 0 is today's rules, exactly: `RULES` (no offsets) computes every number as the rules did, to the
last bit, and a strategy whose offsets are all 0 is `RULES`. A strategy is what the search of
`hrlxf_rl.racing` moves and what a bundle's manifest carries (``strategy``); the agent reads it in
`heuristics` (the rule goal, the rule executor, the teacher of L4).

The parameters (`PARAMS`; docs/online-learning.md has the same table, `markdown_table`):

- constants of the rules: the price goals against the market, the limit price and how it concedes, the
  opening curve, what a seller counts on buying, when the stock is topped up, the teacher's gain;
- goal offsets ``goal.<role>.<side>.<q|p>.<term>`` for each role (first, middle, last level) and each side it
  trades (a first-level factory only sells, a last-level one only buys): ``bias + cover x stock cover + time x
  t/T``, added to the rule goal's quantity per delivery bucket (in lines) or multiplying its price
  (``1 + ...``). Stock cover is the input stock / (lines x days left), capped at `COVER_CAP`: scml 0.8.4 never
  draws the input stock down (`physics`), so a cover of 1 means the lines can run to the end for free;
- the end game: stock is worth nothing when the world ends, so in the last ``end.window`` days the sell price
  goal may fall (``end.sell_discount``) and the buy goal shrink (``end.buy_cut``), linearly to the last day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping

if TYPE_CHECKING:
    from .heuristics import Goal
    from .snapshot import Snapshot

#: stock cover is capped here: beyond two lifetimes of free input nothing changes
COVER_CAP = 2.0
#: a price goal never falls below this share of the rule's price
PRICE_FLOOR = 0.05
ROLES = ("first", "middle", "last")
#: the sides each role trades on
ROLE_SIDES = {"first": ("sell",), "middle": ("buy", "sell"), "last": ("buy",)}
TERMS = ("bias", "cover", "time")


@dataclass(frozen=True)
class Param:
    """One parameter: its value in play is ``base + offset``, the offset within [low, high]."""

    base: float  # today's rule value (what offset 0 plays)
    low: float
    high: float
    unit: str
    meaning: str


def _goal_params() -> dict[str, Param]:
    out = {}
    for role in ROLES:
        for side in ROLE_SIDES[role]:
            for term, per in zip(TERMS, ("", " per unit of stock cover", " per unit of t/T")):
                out[f"goal.{role}.{side}.q.{term}"] = Param(
                    0.0, -1.0, 1.0, "lines / bucket",
                    f"more (or less) to {side} per delivery bucket than the rule goal, {role}-level factories{per}")
                out[f"goal.{role}.{side}.p.{term}"] = Param(
                    0.0, -0.3, 0.3, "x rule price",
                    f"the {side} price goal x (1 + this), {role}-level factories{per}")
    return out


PARAMS: dict[str, Param] = {
    "price.free_input_discount": Param(0.90, -0.30, 0.10, "x trading price",
                                       "sell price goal / market once the input stock feeds the lines"),
    "price.fill_premium": Param(1.05, -0.10, 0.20, "x trading price",
                                "buy price goal / market while the input stock is being filled"),
    "limit.margin": Param(0.03, -0.10, 0.15, "x goal price",
                          "how far inside the goal the limit price starts (a buyer's below it, a seller's above)"),
    "limit.concession": Param(0.08, -0.08, 0.30, "x goal price",
                              "how far the limit price moves toward the partner over a negotiation"),
    "opening.exponent": Param(0.5, -0.4, 1.5, "exponent",
                              "the opening price moves from the best end to the limit as (relative time)^this"),
    "needs.purchase_share": Param(0.5, -0.5, 0.5, "share",
                                  "of today's planned purchases a factory counts as input to sell"),
    "needs.top_up_days": Param(3.0, -3.0, 20.0, "days",
                               "the input stock is topped up to the lines only while more days than this remain"),
    "teacher.gain": Param(0.7, -0.6, 1.3, "1 / score",
                          "L4's rule priority is tanh(gain x score): how unequal the threads' shares are"),
    "end.window": Param(5.0, -4.0, 25.0, "days", "the end game's last days (the two terms below ramp over them)"),
    "end.sell_discount": Param(0.0, -0.2, 0.5, "x price goal",
                               "the sell price goal falls by this share on the last day, linearly from the window's start"),
    "end.buy_cut": Param(0.0, 0.0, 1.0, "x quantity goal",
                         "the buy goal shrinks by this share on the last day, linearly from the window's start"),
    **_goal_params(),
}


class StrategyError(ValueError):
    """A strategy that cannot be played: the message names the parameter."""


def check_offsets(offsets: Mapping[str, float]) -> dict[str, float]:
    """The offsets as floats, each known and within its range; a StrategyError names the first that is not."""
    if not isinstance(offsets, Mapping):
        raise StrategyError(f"strategy: expected parameter -> offset, got {type(offsets).__name__}")
    out = {}
    for name, value in offsets.items():
        param = PARAMS.get(name)
        if param is None:
            close = [p for p in PARAMS if p.split(".")[0] == str(name).split(".")[0]] or list(PARAMS)[:8]
            raise StrategyError(f"strategy: unknown parameter {name!r} (e.g. {', '.join(close[:6])}; all in "
                                f"hrlxf_agent.strategy.PARAMS)")
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise StrategyError(f"strategy: {name} = {value!r} is not a number") from None
        if not (math.isfinite(x) and param.low <= x <= param.high):
            raise StrategyError(f"strategy: {name} = {value!r} is outside its range [{param.low}, {param.high}] "
                                f"({param.unit})")
        out[name] = x
    return out


class Strategy:
    """Offsets from the rules, checked, with the values the rules read precomputed (``base + offset``, so an
    offset of 0 gives the base to the last bit)."""

    __slots__ = ("offsets", "free_input_discount", "fill_premium", "limit_buy_start", "limit_sell_start",
                 "concession", "opening_exponent", "purchase_share", "top_up_days", "teacher_gain", "end_window",
                 "end_sell_discount", "end_buy_cut", "_goal")

    def __init__(self, offsets: Mapping[str, float] | None = None):
        d = {k: v for k, v in check_offsets(offsets or {}).items() if v != 0.0}
        self.offsets: dict[str, float] = dict(sorted(d.items()))

        def value(name: str) -> float:
            return PARAMS[name].base + d.get(name, 0.0)

        self.free_input_discount = value("price.free_input_discount")
        self.fill_premium = value("price.fill_premium")
        margin = d.get("limit.margin", 0.0)
        self.limit_buy_start = 1.0 - PARAMS["limit.margin"].base - margin if margin else 0.97
        self.limit_sell_start = 1.0 + PARAMS["limit.margin"].base + margin if margin else 1.03
        self.concession = value("limit.concession")
        self.opening_exponent = value("opening.exponent")
        self.purchase_share = value("needs.purchase_share")
        self.top_up_days = value("needs.top_up_days")
        self.teacher_gain = value("teacher.gain")
        self.end_window = value("end.window")
        self.end_sell_discount = value("end.sell_discount")
        self.end_buy_cut = value("end.buy_cut")
        #: (role, side, "q" | "p") -> (bias, cover, time), only those with an offset
        self._goal: dict[tuple[str, str, str], tuple[float, float, float]] = {}
        for name, x in d.items():
            if name.startswith("goal."):
                _, role, side, kind, term = name.split(".")
                terms = list(self._goal.get((role, side, kind), (0.0, 0.0, 0.0)))
                terms[TERMS.index(term)] = x
                self._goal[(role, side, kind)] = tuple(terms)  # type: ignore[assignment]

    def __bool__(self) -> bool:
        """False for the rules themselves."""
        return bool(self.offsets)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Strategy) and other.offsets == self.offsets

    def __hash__(self) -> int:
        return hash(tuple(self.offsets.items()))

    def __repr__(self) -> str:
        return f"Strategy({self.offsets})"

    def needs_key(self) -> tuple[float, float]:
        """What `heuristics.day_needs` reads of the strategy (its memo's key)."""
        return self.purchase_share, self.top_up_days

    def with_offsets(self, changes: Mapping[str, float]) -> "Strategy":
        """This strategy with some offsets replaced."""
        return Strategy({**self.offsets, **changes})

    def adjust_goal(self, goal: "Goal", snap: "Snapshot") -> "Goal":
        """The rule goal moved by the goal offsets of this factory's role and by the end game (a new Goal)."""
        from .heuristics import Goal

        if not self:
            return goal
        n = float(snap.n_lines)
        days_left = max(1, snap.n_steps - snap.step)
        cover = min(COVER_CAP, snap.inventory_input / (n * days_left))
        progress = snap.step / max(1, snap.n_steps)
        role = role_of(snap)
        q_buy, p_buy, q_sell, p_sell = (goal.q_buy.copy(), goal.p_buy.copy(), goal.q_sell.copy(), goal.p_sell.copy())
        for side, q, p in (("buy", q_buy, p_buy), ("sell", q_sell, p_sell)):
            if side not in ROLE_SIDES[role]:
                continue
            qb, qc, qt = self._goal.get((role, side, "q"), (0.0, 0.0, 0.0))
            pb, pc, pt = self._goal.get((role, side, "p"), (0.0, 0.0, 0.0))
            q += n * (qb + qc * cover + qt * progress)
            p *= max(PRICE_FLOOR, 1.0 + pb + pc * cover + pt * progress)
        ramp = min(1.0, max(0.0, (self.end_window - days_left + 1) / max(1.0, self.end_window)))
        p_sell *= max(PRICE_FLOOR, 1.0 - self.end_sell_discount * ramp)
        q_buy *= max(0.0, 1.0 - self.end_buy_cut * ramp)
        return Goal(q_buy=q_buy.clip(min=0.0) * snap.can_buy, p_buy=p_buy,
                    q_sell=q_sell.clip(min=0.0) * snap.can_sell, p_sell=p_sell)


#: today's rules
RULES = Strategy()


def role_of(snap: "Snapshot") -> str:
    """first (buys only from the exogenous market), last (sells only to it) or middle."""
    return "first" if not snap.can_buy else "last" if not snap.can_sell else "middle"


def strategy_of(*layers: Mapping[str, float] | None) -> Strategy:
    """The strategy of several layers of offsets, later ones replacing earlier ones (a bundle's, then a
    candidate's own)."""
    merged: dict[str, float] = {}
    for layer in layers:
        merged.update(layer or {})
    return Strategy(merged)


def markdown_table(names: Iterable[str] | None = None) -> str:
    """The parameters as a Markdown table (docs/online-learning.md carries it; a test keeps them equal)."""
    rows = ["| parameter | rule value | offset range | unit | meaning |", "|---|---|---|---|---|"]
    for name in names or PARAMS:
        p = PARAMS[name]
        rows.append(f"| `{name}` | {p.base:g} | [{p.low:g}, {p.high:g}] | {p.unit} | {p.meaning} |")
    return "\n".join(rows)
