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
rule-based goal) is the micro table's (`tasks.tables.WorldLog`). Only the
running threads of a batch count; a batch with none, or a log without batch
ids (events v1 written before the tracker had them), gives no row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hrlxf_agent.state import THREAD_FEATURES, FeatureSpec, batch_thread_features
from tasks.micro import teacher_alphas
from tasks.tables import TABLES, WorldLog, fixed_list

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


def l4_distill_table(world: Path | WorldLog, spec: FeatureSpec | None = None) -> pa.Table:
    """The l4_distill table of one converted world: the agent's `batch_thread_features` and monitor per batch,
    its teacher on every thread at once (`tasks.micro.teacher_alphas`)."""
    log = world if isinstance(world, WorldLog) else WorldLog(world, spec or FeatureSpec())
    spec = log.builder.spec
    c = log.col
    keys: dict[str, list] = {name: [] for name in ("run_id", "world_id", "agent_id", "step", "batch", "version", "n_threads")}
    feats, partners_of, glob, ctx_ids, committed = [], [], [], [], []
    t_ctx, t_buy, t_offer, t_rel = [], [], [], []  # per thread, for the teacher
    for (agent_id, batch), threads in sorted(log.batches().items()):
        first = threads[0]
        k = log.context_id(agent_id, c["step"][first], c["version"][first])
        if k is None:
            continue
        ctx = log.contexts[k]
        partners = [c["partner"][i] for i in threads]
        is_buy = {c["partner"][i]: c["is_buy"][i] for i in threads}
        offer_of = {c["partner"][i]: ((c["in_q"][i], c["in_t"][i], c["in_p"][i]) if c["in_q"][i] is not None else None)
                    for i in threads}
        rel = {c["partner"][i]: c["rel_time"][i] or 0.0 for i in threads}
        feats.append(batch_thread_features(ctx.snap, ctx.bounds, ctx.remaining, partners, is_buy, offer_of, rel))
        glob.append(np.concatenate([ctx.static, log.broadcast(k, log.batch_rel_time((agent_id, batch)))]).astype(np.float32))
        for p in partners:
            t_ctx.append(k)
            t_buy.append(is_buy[p])
            t_offer.append(offer_of[p])
            t_rel.append(rel[p])
        partners_of.append(partners)
        ctx_ids.append(k)
        committed.append(ctx.committed)
        for name, v in (("run_id", c["run_id"][first]), ("world_id", c["world_id"][first]), ("agent_id", agent_id),
                        ("step", c["step"][first]), ("batch", batch), ("version", c["version"][first]),
                        ("n_threads", len(partners))):
            keys[name].append(v)
    schema = l4_distill_schema(spec)
    if not ctx_ids:
        return schema.empty_table()
    alpha = teacher_alphas(log, t_ctx, t_buy, t_offer, t_rel)
    offsets = pa.array(np.concatenate([[0], np.cumsum(keys["n_threads"])]).astype(np.int32))
    tradable = np.stack([x.tradable for x in log.contexts])[np.asarray(ctx_ids)].reshape(len(ctx_ids), -1)
    columns = {name: pa.array(v, type=schema.field(name).type) for name, v in keys.items()}
    columns.update({
        "threads": pa.ListArray.from_arrays(offsets * THREAD_FEATURES,
                                            pa.array(np.concatenate(feats).reshape(-1).astype(np.float32))),
        "partners": pa.ListArray.from_arrays(offsets, pa.array([p for ps in partners_of for p in ps], type=pa.string())),
        "global": fixed_list(np.stack(glob), len(spec.static) + len(spec.broadcast)),
        "teacher_alpha": pa.ListArray.from_arrays(offsets, pa.array(alpha.astype(np.float32))),
        "committed": fixed_list(np.stack(committed), 8), "tradable": fixed_list(tradable, 8),
    })
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def l4_distill_rows(world: Path, spec: FeatureSpec) -> list[dict[str, Any]]:
    """The l4_distill table of one converted world as rows (`l4_distill_table`)."""
    return l4_distill_table(world, spec).to_pylist()


TABLES["l4_distill"] = (l4_distill_schema, l4_distill_table)  # built beside the others of its world
