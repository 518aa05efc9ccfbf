"""Stage: event tables -> training tables: ``macro`` here, ``micro`` and ``l4_distill`` beside it.

``macro`` has one row per agent-day: x_static (12), X_temporal ((H+1) x 10,
flattened row-major) and x_role (2), computed by calling the runtime
`StateBuilder` on the logged Snapshot, so offline features are the online ones
(tests/test_tables.py proves it on a live LitaAgentHRL); the v2 goal label and
its mask (`tasks.labels`); the L2 reward parts: the day's cash delta, the
change of the potential Phi (stock at market value) to the next morning, and
the day's shortfall. ``tasks.micro`` (one row per decision: L3's inputs and
labels) and ``tasks.l4_distill`` (one row per batch: L4's inputs and the
teacher's alpha) are built per world by the same `build_per_world`.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hrlxf_agent.heuristics import heuristic_goal
from hrlxf_agent.snapshot import Snapshot
from hrlxf_agent.state import FeatureSpec, StateBuilder
from tasks.events import SUCCESS
from tasks.labels import Trade, goal_label, potential

MACRO_VERSION = 2  # 2: H = 10, buckets [0,1] [2,4] [5,7] [8,H]; rule_goal (the planner's base)


def macro_schema(spec: FeatureSpec) -> pa.Schema:
    k = (spec.horizon + 1) * len(spec.temporal)
    return pa.schema([
        pa.field("run_id", pa.string()), pa.field("world_id", pa.string()), pa.field("agent_id", pa.string()),
        pa.field("step", pa.int64()), pa.field("x_static", pa.list_(pa.float32(), len(spec.static))),
        pa.field("x_temporal", pa.list_(pa.float32(), k)), pa.field("x_role", pa.list_(pa.float32(), 2)),
        pa.field("goal", pa.list_(pa.float32(), 16)), pa.field("goal_mask", pa.list_(pa.float32(), 16)),
        pa.field("rule_goal", pa.list_(pa.float32(), 16)),
        pa.field("cash_delta", pa.float64()), pa.field("phi_delta", pa.float64()), pa.field("shortfall", pa.int64()),
    ], metadata={"version": str(MACRO_VERSION), "feature_fingerprint": spec.fingerprint, "horizon": str(spec.horizon)})


def macro_rows(world: Path, builder: StateBuilder) -> list[dict[str, Any]]:
    """Every agent-day of one converted world, with features, labels and reward parts."""
    days = pq.read_table(world / "days.parquet").to_pylist()
    decisions = pq.read_table(world / "decisions.parquet").to_pylist()
    outcomes = pq.read_table(world / "outcomes.parquet").to_pylist()
    daily = {(r["agent_id"], r["step"]): r for r in pq.read_table(world / "daily.parquet").to_pylist()}
    side = {(d["agent_id"], d["partner"]): d["is_buy"] for d in decisions}
    offers: dict[tuple[str, int], list[Trade]] = defaultdict(list)
    for d in decisions:
        if d["in_q"] is not None:
            w = max(d["rel_time"] or 0.0, 0.05)  # later rounds say more about where the market is
            offers[(d["agent_id"], d["step"])].append(Trade(d["is_buy"], d["in_t"] - d["step"], d["in_q"], d["in_p"], w))
    deals: dict[tuple[str, int], list[Trade]] = defaultdict(list)
    for o in outcomes:
        if o["success"] and (o["agent_id"], o["partner"]) in side:
            deals[(o["agent_id"], o["step"])].append(
                Trade(side[(o["agent_id"], o["partner"])], o["agreement_t"] - o["step"], o["agreement_q"], o["agreement_p"]))
    H = builder.spec.horizon
    snaps = {(d["agent_id"], d["step"]): Snapshot.from_dict(json.loads(d["snapshot_json"])).within(H) for d in days}
    rows = []
    for d in days:
        key = (d["agent_id"], d["step"])
        snap = snaps[key]
        m = builder.macro(snap)
        goal, mask = goal_label(snap, deals.get(key, []), offers.get(key, []))
        nxt = snaps.get((d["agent_id"], d["step"] + 1))
        today, before = daily.get(key), daily.get((d["agent_id"], d["step"] - 1))
        cash = (today["balance"] - (before["balance"] if before else snap.balance)) if today else None
        rows.append({"run_id": d["run_id"], "world_id": d["world_id"], "agent_id": d["agent_id"], "step": d["step"],
                     "x_static": m.x_static.tolist(), "x_temporal": m.x_temporal.reshape(-1).tolist(),
                     "x_role": m.x_role.tolist(), "goal": goal.tolist(), "goal_mask": mask.tolist(),
                     "rule_goal": heuristic_goal(snap).vector(snap).tolist(),
                     "cash_delta": cash, "phi_delta": (potential(nxt) - potential(snap)) if nxt else 0.0,
                     "shortfall": today["shortfall_quantity"] if today else None})
    return rows


def current(path: Path, schema: pa.Schema) -> bool:
    """A table file written with this schema's metadata (version, feature fingerprint): it need not be rebuilt."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return False
    return all(meta.get(k) == v for k, v in (schema.metadata or {}).items())


def build_per_world(lake: Path, table: str, rows_of: Callable[[Path], list[dict[str, Any]]], schema: pa.Schema) -> dict[str, Any]:
    """``<lake>/<table>/<run_id>/<world_id>.parquet`` for every converted world not built yet, or built by an
    older version of the table or of the features (atomic writes)."""
    built, skipped, total = 0, 0, 0
    for ok in sorted((Path(lake) / "events").glob(f"*/*/{SUCCESS}")):
        world = ok.parent
        out = Path(lake) / table / world.parent.name / f"{world.name}.parquet"
        if out.exists() and current(out, schema):
            skipped += 1
            continue
        rows = rows_of(world)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
        os.replace(tmp, out)
        built += 1
        total += len(rows)
    return {"built": built, "skipped": skipped, "rows": total}


def build_macro(lake: Path, spec: FeatureSpec | None = None) -> dict[str, Any]:
    """The macro table of every converted world not built yet."""
    spec = spec or FeatureSpec()
    builder = StateBuilder(spec)
    return build_per_world(lake, "macro", lambda world: macro_rows(world, builder), macro_schema(spec))


def macro_arrays(path: Path, spec: FeatureSpec | None = None) -> dict[str, np.ndarray]:
    """A macro file back as arrays: x_static (N,12), x_temporal (N,H+1,10), x_role (N,2), rule_goal (N,16)."""
    spec = spec or FeatureSpec()
    t = pq.read_table(path)
    n = t.num_rows
    return {
        "step": t.column("step").to_numpy(),
        "agent_id": np.asarray(t.column("agent_id").to_pylist()),
        "x_static": np.asarray(t.column("x_static").to_pylist(), dtype=np.float32).reshape(n, len(spec.static)),
        "x_temporal": np.asarray(t.column("x_temporal").to_pylist(), dtype=np.float32).reshape(n, spec.horizon + 1, len(spec.temporal)),
        "x_role": np.asarray(t.column("x_role").to_pylist(), dtype=np.float32).reshape(n, 2),
        "rule_goal": np.asarray(t.column("rule_goal").to_pylist(), dtype=np.float32).reshape(n, 16),
    }
