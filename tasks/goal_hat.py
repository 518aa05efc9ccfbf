"""One world's goal_hat from its macro file and a trained planner: the backfill stage's unit.

In a module of its own, apart from the stage that picks each world's planner and maps the worlds
(`tasks.backfill`), so that the unit records' key (`tasks.unit_cache`) follows the code that decides a
goal_hat file's bytes: an edit to the mapper recomputes no goal.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from hrlxf_agent.state import FeatureSpec
from hrlxf_models.planner import GOAL_DIM, Planner, PlannerConfig
from tasks.fingerprint import relative_digests
from tasks.tables import macro_arrays
from tasks.train_l2 import predict_goals
from tasks.training import TrainingDataError

GOAL_HAT_VERSION = 1


def goal_hat_schema(planner_digest: str) -> pa.Schema:
    return pa.schema([
        pa.field("run_id", pa.string()), pa.field("world_id", pa.string()), pa.field("agent_id", pa.string()),
        pa.field("step", pa.int64()), pa.field("goal_hat", pa.list_(pa.float32(), GOAL_DIM)),
    ], metadata={"version": str(GOAL_HAT_VERSION), "planner_digest": planner_digest})


def load_planner(l2_dir: Path, config: PlannerConfig, name: str = "planner.pt") -> Planner:
    weights = Path(l2_dir) / name
    if not weights.is_file():
        raise TrainingDataError(f"{weights}: missing (run the train_l2 stage first)")
    planner = Planner(config)
    planner.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return planner.eval()


@dataclass(frozen=True)
class BackfillJob:
    """One macro file's goal_hat to write: a unit of `tasks.backfill.backfill` (``planner``: the weights file to use)."""

    macro: str
    out: str
    lake: str
    planner: str
    horizon: int
    planner_digest: str
    in_sample: bool  # its fold's planner was not trained: the bundle's planner saw the world


@functools.lru_cache(maxsize=8)
def _planner(path: str, digest: str, horizon: int) -> Planner:
    """A planner loaded once per process and weights (one worker runs every world here)."""
    return load_planner(Path(path).parent, PlannerConfig(horizon=horizon), Path(path).name)


def backfill_world(job: BackfillJob) -> dict[str, Any]:
    """goal_hat of one macro file, written atomically; the error (named with the world) instead of raising."""
    world = f"{Path(job.macro).parent.name}/{Path(job.macro).stem}"
    try:
        spec = FeatureSpec(horizon=job.horizon)
        planner = _planner(job.planner, job.planner_digest, job.horizon)
        a = macro_arrays(Path(job.macro), spec)
        t = pq.read_table(job.macro, columns=["run_id", "world_id", "agent_id", "step"])
        goals = predict_goals(planner, a["x_static"], a["x_temporal"], a["x_role"], a["rule_goal"])
        table = pa.table({
            "run_id": t.column("run_id"), "world_id": t.column("world_id"), "agent_id": t.column("agent_id"),
            "step": t.column("step"),
            "goal_hat": pa.FixedSizeListArray.from_arrays(pa.array(goals.reshape(-1), pa.float32()), GOAL_DIM),
        }).cast(goal_hat_schema(job.planner_digest))
        out = Path(job.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, out)
        return {"world": world, "rows": len(goals), "in_sample": len(goals) if job.in_sample else 0,
                "files": relative_digests(Path(job.lake), out), "error": None}
    except Exception as e:  # noqa: BLE001 - this world's, not the stage's
        return {"world": world, "rows": 0, "in_sample": 0, "files": {}, "error": f"{type(e).__name__}: {e}"}
