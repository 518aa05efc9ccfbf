"""Stage part: the ``l4_distill`` table, one row per batch decision of an expert agent.

What the L4 coordinator reads online (`HRLPolicy._coordinate`) and the rule
teacher's answer, for distilling the teacher into the coordinator: ``threads``
(n_threads x 10, flattened row-major: `state.batch_thread_features`, the
function the agent calls), ``partners`` (the same order: sorted, as the agent
sorts its running threads), ``global`` (24 = x_static ++ broadcast c) and
``teacher_alpha`` (`heuristics.teacher_alpha` per thread), and what rebuilds the
goal-dependent ones against L2's goal at training time (`tasks.goal_inputs`):
``committed`` (signed today per bucket / n_lines, laid out as c[0:8]) and
``tradable`` (the buckets each side can still trade: buy 4, then sell 4). The context of a
batch (Snapshot with the day's deals, bounds, monitor against the morning's
rule-based goal) is the micro table's (`tasks.micro.WorldLog`). Only the
running threads of a batch count; a batch with none, or a log without batch
ids (events v1 written before the tracker had them), gives no row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hrlxf_agent.heuristics import teacher_alpha, tradable_buckets
from hrlxf_agent.state import THREAD_FEATURES, FeatureSpec, batch_thread_features
from tasks.micro import WorldLog, mean_rel_time, offer_in

L4_DISTILL_VERSION = 2  # 2: H = 10; committed, tradable


def l4_distill_schema(spec: FeatureSpec) -> pa.Schema:
    f32 = pa.float32()
    return pa.schema([
        pa.field("run_id", pa.string()), pa.field("world_id", pa.string()), pa.field("agent_id", pa.string()),
        pa.field("step", pa.int64()), pa.field("batch", pa.int64()), pa.field("version", pa.int64()),
        pa.field("n_threads", pa.int64()), pa.field("threads", pa.list_(f32)), pa.field("partners", pa.list_(pa.string())),
        pa.field("global", pa.list_(f32, len(spec.static) + len(spec.broadcast))), pa.field("teacher_alpha", pa.list_(f32)),
        pa.field("committed", pa.list_(f32, 8)), pa.field("tradable", pa.list_(f32, 8)),
    ], metadata={"version": str(L4_DISTILL_VERSION), "feature_fingerprint": spec.fingerprint,
                 "thread_features": str(THREAD_FEATURES)})


def l4_distill_rows(world: Path, spec: FeatureSpec) -> list[dict[str, Any]]:
    log = WorldLog(world, spec)
    rows = []
    for (agent_id, batch), threads in sorted(log.batches().items()):
        first = threads[0]
        ctx = log.context(first)
        if ctx is None:
            continue
        partners = [d["partner"] for d in threads]
        is_buy = {d["partner"]: d["is_buy"] for d in threads}
        offer_of = {d["partner"]: offer_in(d) for d in threads}
        rel = {d["partner"]: d["rel_time"] or 0.0 for d in threads}
        feats = batch_thread_features(ctx.snap, ctx.bounds, ctx.remaining, partners, is_buy, offer_of, rel)
        c = log.broadcast(ctx, mean_rel_time(threads))
        alpha = [teacher_alpha(ctx.snap, ctx.bounds, ctx.remaining, is_buy[p], offer_of[p], rel[p]) for p in partners]
        rows.append({
            "run_id": first["run_id"], "world_id": first["world_id"], "agent_id": agent_id, "step": first["step"],
            "batch": batch, "version": first["version"], "n_threads": len(partners),
            "threads": feats.reshape(-1).tolist(), "partners": partners,
            "global": np.concatenate([ctx.static, c]).astype(np.float32).tolist(), "teacher_alpha": alpha,
            "committed": ctx.committed.tolist(),
            "tradable": np.concatenate([tradable_buckets(ctx.snap, ctx.bounds.time_mask_buy),
                                        tradable_buckets(ctx.snap, ctx.bounds.time_mask_sell)]).astype(np.float32).tolist(),
        })
    return rows


def build_l4_distill(lake: Path, spec: FeatureSpec | None = None) -> dict[str, Any]:
    """The l4_distill table of every converted world not built yet."""
    from tasks.tables import build_per_world

    spec = spec or FeatureSpec()
    return build_per_world(lake, "l4_distill", lambda world: l4_distill_rows(world, spec), l4_distill_schema(spec))
