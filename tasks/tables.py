"""Stage: event tables -> training tables. First part: ``macro`` features.

``macro`` has one row per agent-day: x_static (12), X_temporal ((H+1) x 10,
flattened row-major) and x_role (2), computed by calling the runtime
`StateBuilder` on the logged Snapshot, so offline features are the online ones
(tests/test_tables.py proves it on a live LitaAgentHRL). The v2 goal labels,
reward parts and the micro / l4_distill tables come next.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hrlxf_agent.snapshot import Snapshot
from hrlxf_agent.state import FeatureSpec, StateBuilder
from tasks.events import SUCCESS

MACRO_VERSION = 1


def macro_schema(spec: FeatureSpec) -> pa.Schema:
    k = (spec.horizon + 1) * len(spec.temporal)
    return pa.schema([
        pa.field("run_id", pa.string()), pa.field("world_id", pa.string()), pa.field("agent_id", pa.string()),
        pa.field("step", pa.int64()), pa.field("x_static", pa.list_(pa.float32(), len(spec.static))),
        pa.field("x_temporal", pa.list_(pa.float32(), k)), pa.field("x_role", pa.list_(pa.float32(), 2)),
    ], metadata={"version": str(MACRO_VERSION), "feature_fingerprint": spec.fingerprint, "horizon": str(spec.horizon)})


def macro_rows(days: list[dict[str, Any]], builder: StateBuilder) -> list[dict[str, Any]]:
    rows = []
    for d in days:
        m = builder.macro(Snapshot.from_dict(json.loads(d["snapshot_json"])))
        rows.append({"run_id": d["run_id"], "world_id": d["world_id"], "agent_id": d["agent_id"], "step": d["step"],
                     "x_static": m.x_static.tolist(), "x_temporal": m.x_temporal.reshape(-1).tolist(),
                     "x_role": m.x_role.tolist()})
    return rows


def build_macro(lake: Path, spec: FeatureSpec | None = None) -> dict[str, Any]:
    """``<lake>/macro/<run_id>/<world_id>.parquet`` for every converted world not built yet."""
    spec = spec or FeatureSpec()
    builder = StateBuilder(spec)
    schema = macro_schema(spec)
    built, skipped, rows_total = 0, 0, 0
    for ok in sorted((Path(lake) / "events").glob(f"*/*/{SUCCESS}")):
        world = ok.parent
        out = Path(lake) / "macro" / world.parent.name / f"{world.name}.parquet"
        if out.exists():
            skipped += 1
            continue
        rows = macro_rows(pq.read_table(world / "days.parquet").to_pylist(), builder)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
        os.replace(tmp, out)
        built += 1
        rows_total += len(rows)
    return {"built": built, "skipped": skipped, "rows": rows_total}


def macro_arrays(path: Path, spec: FeatureSpec | None = None) -> dict[str, np.ndarray]:
    """A macro file back as arrays: x_static (N,12), x_temporal (N,H+1,10), x_role (N,2)."""
    spec = spec or FeatureSpec()
    t = pq.read_table(path)
    n = t.num_rows
    return {
        "step": t.column("step").to_numpy(),
        "agent_id": np.asarray(t.column("agent_id").to_pylist()),
        "x_static": np.asarray(t.column("x_static").to_pylist(), dtype=np.float32).reshape(n, len(spec.static)),
        "x_temporal": np.asarray(t.column("x_temporal").to_pylist(), dtype=np.float32).reshape(n, spec.horizon + 1, len(spec.temporal)),
        "x_role": np.asarray(t.column("x_role").to_pylist(), dtype=np.float32).reshape(n, 2),
    }
