"""The statistics of paired comparisons: a mean with its interval, and what a run can resolve.

Differences are taken world by world (the same configuration, slots and seeds
for both agents), so the market of a world cancels. The interval of their mean
is Student's t (worlds are few; not the normal 1.96) with a percentile
bootstrap beside it, which does not lean on normality. Fewer than
`MIN_SAMPLES` values give no interval: the figures say so instead.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

MIN_SAMPLES = 3  # below this a t interval (1 degree of freedom: x12.7) says nothing worth printing
BOOTSTRAP_RESAMPLES = 10_000


def too_few(n: int) -> str:
    return f"too few worlds for an interval ({n}; at least {MIN_SAMPLES} are needed)"


def mean_interval(values: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """Mean, sd, Student-t 95% interval, percentile-bootstrap 95% interval, and the power of the sample.

    ``half_width`` is the smallest difference from 0 this sample resolves at 95%;
    ``mde80`` the smallest true difference it would find 80% of the time
    ((t_0.975 + t_0.80) x sd / sqrt(n)). With fewer than `MIN_SAMPLES` values the
    interval fields are None and ``note`` says why.
    """
    from scipy.stats import t

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(len(x))
    out: dict[str, Any] = {"n": n, "mean": float(x.mean()) if n else None, "sd": float(x.std(ddof=1)) if n > 1 else None,
                           "half_width": None, "ci95": None, "bootstrap_ci95": None, "mde80": None, "note": None}
    if n < MIN_SAMPLES:
        out["note"] = too_few(n)
        return out
    se = out["sd"] / math.sqrt(n)
    half = float(t.ppf(0.975, n - 1) * se)
    rng = np.random.default_rng(seed)
    boots = x[rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))].mean(axis=1)
    out.update(half_width=half, ci95=[out["mean"] - half, out["mean"] + half],
               bootstrap_ci95=[float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))],
               mde80=float((t.ppf(0.975, n - 1) + t.ppf(0.80, n - 1)) * se))
    return out


def paired_difference(a: Sequence[float], b: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """``a - b`` world by world (``a[i]`` and ``b[i]`` from the same world): its interval, wins and losses."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    out = mean_interval(d.tolist(), seed)
    out.update(wins=int((d > 0).sum()), losses=int((d < 0).sum()), ties=int((d == 0).sum()))
    return out


def excludes_zero(diff: dict[str, Any]) -> int:
    """+1 if the interval lies above 0, -1 if below, 0 if it holds 0 or there is none."""
    ci = diff.get("ci95")
    if not ci:
        return 0
    return 1 if ci[0] > 0 else -1 if ci[1] < 0 else 0
