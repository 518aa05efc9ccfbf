"""The daily accounting of scml 0.8.4's standard world, in one place.

Every bound in the shield and the audit is derived from these rules, read from
scml 0.8.4 (`scml/oneshot/world.py`, `SCMLBaseWorld.simulation_step`, the
"update agent profits" loop, and `scml/oneshot/ufun.py`, `OneShotUFun.from_offers`):

* Each day is settled alone from the contracts whose delivery time is that day.
* Input offered to production that day = the day's input contracts + the day's
  exogenous supply + the *stored* input inventory (passed in by `make_ufun`).
  A cash check may cut it (cheapest units first) when the balance cannot pay.
* Demand that day = the day's sale contracts + the day's exogenous sales + the
  stored *output* inventory: the output stock is added as one more thing to
  deliver, it never serves a sale. (It stays 0 in practice: see below.)
* produced = min(input offered, n_lines, demand); shortfall = demand - produced.
  So at most n_lines units can be delivered on any day, whatever is in stock.
* After the day: input stock += max(0, executed inputs - produced) and
  output stock += max(0, produced - executed sales). The stock is **never
  decreased** (the quirk this module exists to isolate): a unit in the input
  stock is offered to production again every day, for free, and production
  draws on the day's new inputs first. Since produced <= executed sales +
  output stock, the output stock never leaves 0.

tests/test_physics_real.py replays every agent-day of real worlds with these
rules and gets the simulator's shortfalls and stocks exactly.

A later scml that consumes the stock needs `INPUT_STOCK_CONSUMED = True` here
and nothing else.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from .snapshot import Snapshot

#: scml 0.8.4 never takes produced units out of the stored input inventory.
INPUT_STOCK_CONSUMED = False


def produced(input_offered: float, n_lines: int, demand: float) -> float:
    """Units the simulator produces (and so delivers) on a day."""
    return max(0.0, min(input_offered, n_lines, demand))


def next_input_stock(stock: float, executed_inputs: float, made: float) -> float:
    """The stored input inventory at the start of the next day."""
    if INPUT_STOCK_CONSUMED:
        return max(0.0, stock + executed_inputs - made)
    return stock + max(0.0, executed_inputs - made)


def input_stock_floor(stock: float, inputs_per_day: Sequence[float], n_lines: int) -> np.ndarray:
    """A lower bound on the input stock at the start of each day k = 0..K-1.

    Holds whatever is sold later: production is at most n_lines a day, so at
    least ``inputs[k] - n_lines`` of day k's inputs stay (0.8.4), or the stock
    drains by at most n_lines a day (a world that consumes it).
    """
    inputs = np.asarray(inputs_per_day, dtype=float)
    out = np.empty(len(inputs))
    level = float(stock)
    for k, q in enumerate(inputs):
        out[k] = level
        if INPUT_STOCK_CONSUMED:
            level = max(0.0, level + q - n_lines)
        else:
            level = level + max(0.0, q - n_lines)
    return out


def deliverable(input_available: np.ndarray | float, n_lines: int) -> np.ndarray:
    """The most a factory can deliver on a day given the input it can offer to production."""
    return np.minimum(np.asarray(input_available, dtype=float), float(n_lines))


def daily_inputs(snap: "Snapshot") -> np.ndarray:
    """Input arriving each day k: signed supplies, plus today's exogenous supply (later ones are unknown)."""
    inputs = np.asarray(snap.supply_qty, dtype=float).copy()
    inputs[0] += snap.exogenous_input_qty
    return inputs


def daily_demand(snap: "Snapshot") -> np.ndarray:
    """What the simulator asks the factory to deliver each day k: signed sales, today's exogenous
    sales, and (0.8.4) the output stock, which counts as demand, never as supply."""
    due = np.asarray(snap.sale_qty, dtype=float) + float(snap.inventory_output)
    due[0] += snap.exogenous_output_qty
    return due


def buy_room(
    stock_floor: np.ndarray, inputs: np.ndarray, n_lines: int, days_left: np.ndarray
) -> np.ndarray:
    """The most input that could still be of use, bought for delivery on day k.

    0.8.4: a stock of n_lines already feeds full production every day for
    free, so once the stock floor reaches n_lines any purchase is certain
    waste. Below it, a day's input is of use when produced (at most n_lines)
    or when it tops the stock up to n_lines (production takes the day's new
    inputs first; leftover = inputs - produced): more than ``2 n_lines -
    stock - inputs`` is waste whatever is sold. (Between ``n_lines - present``
    and ``n_lines`` a purchase even vanishes on a day the lines are busy, but
    stock is worth building, so the shield leaves that to the policy.)
    A world that consumes its stock has the seeds' processing capacity
    instead: n_lines a day for the remaining days, less the backlog and every
    later commitment (reverse cumulative min over later days).
    """
    stock_floor = np.asarray(stock_floor, dtype=float)
    inputs = np.asarray(inputs, dtype=float)
    alive = np.asarray(days_left, dtype=float) > 0
    if not INPUT_STOCK_CONSUMED:
        room = np.where(stock_floor >= n_lines, 0.0, 2.0 * n_lines - stock_floor - inputs)
        return np.where(alive, np.maximum(0.0, room), 0.0)
    backlog = np.empty(len(inputs))
    level = float(stock_floor[0]) if len(inputs) else 0.0
    for k, q in enumerate(inputs):
        backlog[k] = level
        level = max(0.0, level + q - n_lines)
    later = np.cumsum(inputs[::-1])[::-1]
    slack = n_lines * np.maximum(0.0, np.asarray(days_left, dtype=float)) - backlog - later
    return np.where(alive, np.maximum(0.0, reverse_cummin(slack)), 0.0)


def purchases_of_use(
    stock: float, inputs: np.ndarray, purchases: np.ndarray, n_lines: int, days_left: np.ndarray
) -> bool:
    """Is every purchase (already counted in ``inputs``) within the room left by the rest?"""
    inputs = np.asarray(inputs, dtype=float)
    purchases = np.asarray(purchases, dtype=float)
    floor = input_stock_floor(stock, inputs, n_lines)
    room = buy_room(floor, inputs - purchases, n_lines, days_left)
    return bool(np.all(purchases <= room + 1e-9))


def purchase_cap(
    stock: float, inputs: np.ndarray, purchases: np.ndarray, n_lines: int, days_left: np.ndarray, k: int
) -> int:
    """The largest integer purchase for day k that keeps it and every purchase already made of use.

    ``inputs`` already count ``purchases``. 0.8.4 in closed form: a purchase on
    day j is of use while the stock floor F[j] < n and F[j] + inputs[j] <= 2n
    (`buy_room`); adding q on day k raises day k's inputs by q and every later
    floor by the part of day k's inputs above the lines. A world that consumes
    its stock has no such form: search the largest q `purchases_of_use` accepts.
    """
    inputs = np.asarray(inputs, dtype=float)
    purchases = np.asarray(purchases, dtype=float)
    n = float(n_lines)
    if not 0 <= k < len(inputs) or days_left[k] <= 0:
        return 0
    if INPUT_STOCK_CONSUMED:
        return _search_cap(stock, inputs, purchases, n_lines, days_left, k)
    floor = input_stock_floor(stock, inputs, n_lines)
    if floor[k] >= n:
        return 0
    cap = 2.0 * n - floor[k] - inputs[k]
    later = np.flatnonzero(purchases[k + 1 :] > 0) + k + 1
    if len(later):
        # later floors may rise by less than n - F (stay below the lines) and by at most 2n - F - inputs
        rise = min(float(np.min(np.ceil(n - floor[later]) - 1.0)), float(np.min(2.0 * n - floor[later] - inputs[later])))
        if rise < 0:
            return 0
        cap = min(cap, rise + max(0.0, n - inputs[k]))  # day k's inputs up to the lines add nothing to later floors
    return max(0, int(math.floor(cap + 1e-9)))


def _search_cap(stock, inputs, purchases, n_lines, days_left, k) -> int:
    def of_use(q: int) -> bool:
        i, b = inputs.copy(), purchases.copy()
        i[k] += q
        b[k] += q
        return purchases_of_use(stock, i, b, n_lines, days_left)

    lo, hi = 0, int(2 * n_lines + 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if of_use(mid) else (lo, mid - 1)
    return lo


def reverse_cummin(x: np.ndarray) -> np.ndarray:
    """y[k] = min(x[k:]): what can be added at day k without breaking any later day."""
    return np.minimum.accumulate(np.asarray(x, dtype=float)[::-1])[::-1]
