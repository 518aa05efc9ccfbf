"""The goal-dependent inputs of L3 and L4, rebuilt against the goal the agent will really have.

The tables are built before any L2 exists, so their broadcast c, goal gaps and
teacher alpha follow the rule goal; online they follow L2's goal. The training
stages join goal_hat (L2's cross-fitted prediction, `tasks.backfill`) and rebuild
them here from what the tables keep beside them (``committed``: signed today per
bucket / n_lines; the teacher's goal-free terms), with the agent's own functions
(`GlobalMonitor.broadcast`'s layout, `heuristics.teacher_alpha_from`).
`tests/test_micro.py` and `tests/test_l4_distill.py` check them against an agent whose L2 is a planner.
"""

from __future__ import annotations

import numpy as np

from hrlxf_agent.heuristics import bucket_index, teacher_alpha_from
from hrlxf_models.layouts import THREAD
from hrlxf_models.planner import N_BUCKETS, Q_BUY, Q_SELL

_GAP, _IS_BUY, _REL, _PRESENT, _DELTA, _BUDGET = (THREAD.index(n) for n in (
    "bucket_gap", "is_buy", "rel_time", "offer_present", "offer_delta", "budget_use"))


def goal_left(goal: np.ndarray, committed: np.ndarray) -> np.ndarray:
    """(N, 8) c[0:8]: the goal's quantity per bucket (buy, sell interleaved) less what was signed today."""
    g = np.asarray(goal, dtype=np.float64).reshape(-1, N_BUCKETS, 4)[:, :, [Q_BUY, Q_SELL]].reshape(-1, 2 * N_BUCKETS)
    return g - np.asarray(committed, dtype=np.float64)


def side_gaps(goal: np.ndarray, committed: np.ndarray, is_buy: np.ndarray) -> np.ndarray:
    """(N, 4): the goal left per bucket of each row's side, never below 0 (`GlobalMonitor.remaining` / n_lines)."""
    left = np.maximum(0.0, goal_left(goal, committed)).reshape(-1, N_BUCKETS, 2)
    return np.where(np.asarray(is_buy, bool)[:, None], left[:, :, 0], left[:, :, 1])


def broadcast_with_goal(broadcast: np.ndarray, goal: np.ndarray, committed: np.ndarray) -> np.ndarray:
    """c with its goal gaps (c[0:8]) against ``goal`` instead of the rule goal."""
    out = np.array(broadcast, dtype=np.float32, copy=True)
    out[:, : 2 * N_BUCKETS] = goal_left(goal, committed)
    return out


def alpha_with_goal(goal: np.ndarray, committed: np.ndarray, is_buy: np.ndarray, tradable: np.ndarray,
                    offer_delta: np.ndarray, rel_time: np.ndarray, budget: np.ndarray, horizon: int) -> np.ndarray:
    """The teacher's alpha per row against ``goal``; ``offer_delta`` is NaN where no offer was received."""
    has_offer = np.isfinite(offer_delta)
    delta = np.where(has_offer, np.nan_to_num(offer_delta), 0).astype(np.int64)
    return teacher_alpha_from(side_gaps(goal, committed, is_buy), np.asarray(tradable) > 0.5, has_offer, delta,
                              np.asarray(rel_time, float), np.asarray(budget, float), horizon).astype(np.float32)


def l4_with_goal(threads: np.ndarray, keep: np.ndarray, glob: np.ndarray, goal: np.ndarray, committed: np.ndarray,
                 tradable: np.ndarray, n_static: int, horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(threads, global, teacher alpha) of padded L4 batches (B, N, F) rebuilt against ``goal`` (B, 16):
    each thread's goal gap at its offer's bucket (today's without one), c[0:8], and the teacher."""
    threads = np.array(threads, dtype=np.float32, copy=True)
    glob = np.array(glob, dtype=np.float32, copy=True)
    glob[:, n_static:n_static + 2 * N_BUCKETS] = goal_left(goal, committed)
    B, N, _ = threads.shape
    t = threads.reshape(B * N, -1)
    rows = np.repeat(np.arange(B), N)
    is_buy = t[:, _IS_BUY] > 0.5
    present = t[:, _PRESENT] > 0.5
    delta = np.rint(t[:, _DELTA] * max(1, horizon)).astype(np.int64)  # encoded (day - step) / H
    gaps = side_gaps(goal[rows], committed[rows], is_buy)
    day = np.where(present, delta, 0)
    t[:, _GAP] = np.take_along_axis(gaps, bucket_index(horizon)[np.clip(day, 0, horizon)][:, None], 1)[:, 0]
    side_tradable = np.where(is_buy[:, None], tradable[rows, :N_BUCKETS], tradable[rows, N_BUCKETS:]) > 0.5
    alpha = teacher_alpha_from(gaps, side_tradable, present, delta, t[:, _REL], t[:, _BUDGET], horizon)
    alpha = np.where(keep.reshape(-1), alpha, 0.0).astype(np.float32).reshape(B, N)
    return t.reshape(B, N, -1), glob, alpha
