"""Stage: L4 distillation. The coordinator fits the rule teacher's alpha per thread.

One row of the l4_distill table is one batch decision: the features of its
threads, the global features (x_static ++ broadcast c) and the teacher's alpha.
Rows are padded to the largest batch; the loss is the MSE over the real threads.

The coordinator is a residual over the teacher it reads (`hrlxf_models.coordinator`):
offline, the teacher is the only target there is, so the residual stays near 0
and the coordinator orders threads as the teacher does (the rank agreement says
how closely); one epoch checks the data path. Online learning trains the residual.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from hrlxf_agent.state import FeatureSpec
from hrlxf_models.coordinator import THREAD_FEATURES, Coordinator, CoordinatorConfig
from tasks.goal_inputs import l4_with_goal
from tasks.training import (
    Batches, FitConfig, RowStore, Split, TrainingDataError, expert_agents, expert_worlds, fit_module, list_array,
    load_best, loss_module, read_schema, require_rows, row_files, split_counts, table_files, world_split,
    write_stage_output,
)


@dataclass
class L4Config:
    coordinator: CoordinatorConfig = field(default_factory=CoordinatorConfig)
    fit: FitConfig = field(default_factory=lambda: FitConfig(max_epochs=1, batch_size=256, patience=1))  # ~1 min an epoch
    min_relative_score: float = 0.0  # the teacher is a rule: every expert's batches teach it

    @classmethod
    def smoke(cls) -> "L4Config":
        return cls(fit=FitConfig(max_epochs=1, batch_size=64, min_train_rows=20, min_val_rows=5))


#: the l4_distill columns the coordinator's arrays are built from
L4_COLUMNS = ["run_id", "world_id", "agent_id", "step", "n_threads", "threads", "global", "teacher_alpha", "committed",
              "tradable"]


def load_l4(lake: Path, config: L4Config,
            store: Path | None = None) -> tuple[tuple[np.ndarray, ...], Split, pl.DataFrame]:
    """(threads (B,N,F), keep (B,N), global (B,G), alpha (B,N)) padded to the largest batch of the experts; the
    split by world; the rows' world keys. Built one world at a time, in memory or memory-mapped in ``store``
    (`training.RowStore`), as L3's rows are."""
    lake = Path(lake)
    files = table_files(lake, "l4_distill")
    for f in files:
        names = read_schema(f).names
        if missing_col := next((c for c in L4_COLUMNS if c not in names), None):
            raise TrainingDataError(f"{f}: column {missing_col!r} missing (rebuild with `hrlxf tables`)")
    experts = expert_agents(lake, config.min_relative_score)
    batches = pl.col("n_threads") > 0
    widest = max(int(df["n_threads"].max()) for df in
                 expert_worlds(lake, "l4_distill", ["run_id", "world_id", "agent_id", "n_threads"], experts, batches,
                               goal_hat=False))
    rows, world_keys = RowStore(store), []
    for df in expert_worlds(lake, "l4_distill", L4_COLUMNS, experts, batches):
        rows.add(_l4_arrays(df, widest, config))
        world_keys.append(df.select("run_id", "world_id"))
    a = rows.joined()
    world = pl.concat(world_keys)
    return (a["threads"], a["keep"], a["global"], a["alpha"]), world_split(world, config.fit), world


def _l4_arrays(df: pl.DataFrame, widest: int, config: L4Config) -> dict[str, np.ndarray]:
    """One world's batches as padded arrays, with the goal-dependent inputs and the teacher rebuilt against
    goal_hat, as the agent computes them online."""
    n = df["n_threads"].to_numpy()
    B, N, F = len(df), widest, THREAD_FEATURES
    threads = np.zeros((B, N, F), np.float32)
    alpha = np.zeros((B, N), np.float32)
    keep = np.arange(N)[None, :] < n[:, None]
    threads[keep] = df["threads"].explode().to_numpy().astype(np.float32).reshape(-1, F)
    alpha[keep] = df["teacher_alpha"].explode().to_numpy().astype(np.float32)
    glob = list_array(df, "global", config.coordinator.global_dim)
    spec = FeatureSpec()
    threads, glob, alpha = l4_with_goal(threads, keep, glob, list_array(df, "goal_hat", 16), list_array(df, "committed", 8),
                                        list_array(df, "tradable", 8), len(spec.static), spec.horizon)
    return {"threads": threads, "keep": keep, "global": glob, "alpha": alpha}


def _module(config: L4Config) -> Any:
    def loss(coordinator: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        threads, keep, glob, alpha = batch
        keep = keep.to(torch.bool)
        return ((coordinator(threads, keep, glob, alpha) - alpha) ** 2)[keep].mean()

    return loss_module(Coordinator(config.coordinator), loss, config.fit)


def alpha_metrics(coordinator: Coordinator, arrays: tuple[np.ndarray, ...], rows: np.ndarray,
                  chunk: int = 8192) -> dict[str, float]:
    """The coordinator against the teacher on ``rows``, gathered and run ``chunk`` batches at a time: in one
    pass over the official profile's 1 M batches its activations took 17.6 GB."""
    idx = np.flatnonzero(rows)
    errors, teachers, counts = [], [], [0, 0, []]
    coordinator.eval()
    with torch.inference_mode():
        for i in range(0, len(idx), chunk):
            threads, keep, glob, alpha = (np.ascontiguousarray(a[idx[i:i + chunk]]) for a in arrays)
            pred = coordinator(*(torch.from_numpy(x) for x in (threads, keep, glob, alpha))).numpy()
            errors.append((pred - alpha)[keep])
            teachers.append(alpha[keep])
            _rank_counts(pred, alpha, keep, counts)
    err = np.concatenate(errors) if errors else np.zeros(0, np.float32)
    teacher = np.concatenate(teachers) if teachers else np.zeros(0, np.float32)
    agree, total, shares = counts
    return {"batches": int(len(idx)), "threads": int(len(teacher)), "mae": float(np.abs(err).mean()),
            "mse": float((err ** 2).mean()), "teacher_variance": float(teacher.var()),
            "teacher_spread": _spread(teacher),
            "rank_agreement": agree / total if total else float("nan"),
            "rank_agreement_per_batch": float(np.mean(shares)) if shares else float("nan")}


def _spread(alpha: np.ndarray) -> dict[str, float]:
    """Where the teacher's alphas lie: a teacher saturated at +-1 teaches one bit."""
    q = np.percentile(alpha, [5, 50, 95]) if len(alpha) else [float("nan")] * 3
    return {"p05": float(q[0]), "p50": float(q[1]), "p95": float(q[2]),
            "saturated": float(np.mean(np.abs(alpha) > 0.999)) if len(alpha) else float("nan")}


def _rank_counts(pred: np.ndarray, alpha: np.ndarray, keep: np.ndarray, counts: list) -> None:
    """How often the coordinator orders a batch's threads as the teacher does (L1 clips in this order): adds
    the agreeing and all thread pairs, and each batch's share, to ``counts`` ([agree, total, shares])."""
    for p, a, k in zip(pred, alpha, keep):
        p, a = p[k], a[k]
        if len(a) < 2:
            continue
        dp, da = np.sign(p[:, None] - p[None, :]), np.sign(a[:, None] - a[None, :])
        upper = np.triu(np.ones_like(dp, dtype=bool), 1) & (da != 0)
        if upper.any():
            hits = int((dp[upper] == da[upper]).sum())
            counts[0] += hits
            counts[1] += int(upper.sum())
            counts[2].append(hits / int(upper.sum()))


def train_l4(lake: Path, out: Path, config: L4Config, progress: bool = True) -> dict[str, Any]:
    """l4_distill -> ``out/coordinator.pt`` + ``out/metrics.json``; returns the metrics."""
    with row_files(out) as store:
        return _train_l4(Path(lake), Path(out), config, progress, store)


def _train_l4(lake: Path, out: Path, config: L4Config, progress: bool, store: Path) -> dict[str, Any]:
    arrays, split, keys = load_l4(Path(lake), config, store)
    tr, val, test = split.train, split.val, split.test
    require_rows("L4 (l4_distill batches)", int(tr.sum()), int(val.sum()), config.fit)
    module = _module(config)
    result = fit_module(module, Batches.of(arrays, tr), Batches.of(arrays, val), config.fit, Path(out), progress)
    load_best(module, result)
    coordinator = module.net.eval()
    metrics = {"stage": "train_l4", "config": asdict(config), "epochs": result.epochs, "best_val_loss": result.best_val_loss,
               "history": result.history, "train": alpha_metrics(coordinator, arrays, tr),
               "val": alpha_metrics(coordinator, arrays, val),
               "test": alpha_metrics(coordinator, arrays, test) if test.any() else None, "split": split_counts(split, keys)}
    write_stage_output(Path(out), {"coordinator": coordinator.state_dict()}, metrics)
    return metrics
