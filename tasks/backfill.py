"""Stage: goal_hat backfill. The trained L2 predicts the goal of every agent-day in macro.

L3 is conditioned on the goal L2 gives it online, not on the hindsight label,
so its training rows must carry what the trained planner would have said that
morning, from a planner that never saw the world: each world's goal_hat comes
from the fold planner of its cross-fitting fold (`train_l2.crossfit_fold`), the
test worlds' (and those of a fold too small to fit) from the bundle's planner. Written as ``<lake>/goal_hat/<run_id>/<world_id>.parquet`` (run_id,
world_id, agent_id, step, goal_hat[16]) with the planner's weight digest in the
metadata. Each world is a unit with its record (`tasks.unit_cache`: this code and config, the macro file's
content and the planners' weights): it is recomputed only when one of them changed, it is new or its file is
not the one recorded; a goal_hat file whose macro file is gone is deleted.
The L3 stage joins it onto micro's ``goal`` column (``goal_filled`` true).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from hrlxf_agent.state import FeatureSpec
from hrlxf_models.planner import GOAL_DIM, Planner, PlannerConfig
from tasks.fingerprint import file_digest
from tasks.tables import macro_arrays
from tasks.train_l2 import crossfit_fold, predict_goals
from tasks.parallel import map_units, unit_figures
from tasks.training import TrainingDataError, table_files, world_position
from tasks.unit_cache import UnitCache, recipe, sweep, unit_key, written

GOAL_HAT_VERSION = 1


@dataclass
class BackfillConfig:
    horizon: int = 10

    @classmethod
    def smoke(cls) -> "BackfillConfig":
        return cls()


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
    """One macro file's goal_hat to write: a unit of `backfill` (``planner``: the weights file to use)."""

    macro: str
    out: str
    lake: str
    planner: str
    horizon: int
    planner_digest: str
    in_sample: bool  # its fold's planner was not trained: the bundle's planner saw the world


def backfill_world(job: BackfillJob) -> dict[str, Any]:
    """goal_hat of one macro file, written atomically; the error (named with the world) instead of raising."""
    world = f"{Path(job.macro).parent.name}/{Path(job.macro).stem}"
    try:
        spec = FeatureSpec(horizon=job.horizon)
        planner = load_planner(Path(job.planner).parent, PlannerConfig(horizon=job.horizon), Path(job.planner).name)
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
                "files": written(Path(job.lake), out), "error": None}
    except Exception as e:  # noqa: BLE001 - this world's, not the stage's
        return {"world": world, "rows": 0, "in_sample": 0, "files": {}, "error": f"{type(e).__name__}: {e}"}


def backfill(lake: Path, l2_dir: Path, config: BackfillConfig, workers: int = 1,
             dask_address: str | None = None) -> dict[str, Any]:
    """goal_hat for every macro file whose unit record (this code and config, the file's content, the planners'
    weights) is missing or whose goal_hat file is not the one recorded, a world per unit (`map_units`:
    ``workers`` fresh processes or the Dask cluster at ``dask_address``; one worker: here, one after another);
    goal_hat files of macro files gone are deleted. Raises TrainingDataError naming the worlds that failed,
    after the others are written. Returns counts."""
    lake, l2_dir = Path(lake), Path(l2_dir)
    main = l2_dir / "planner.pt"
    if not main.is_file():
        raise TrainingDataError(f"{main}: missing (run the train_l2 stage first)")
    metrics = json.loads((l2_dir / "metrics.json").read_text())
    crossfit = metrics.get("crossfit") or {"folds": 1, "seed": 0, "test_fraction": 0.0, "trained": []}
    digest = "+".join(file_digest(p) for p in sorted(l2_dir.glob("planner*.pt")))
    cache, code = UnitCache(lake), recipe("backfill", ["tasks.backfill"], config)
    macros = table_files(lake, "macro")
    jobs, keys = [], {}
    for macro in macros:
        unit = f"{macro.parent.name}/{macro.stem}"
        key = unit_key(code, unit, file_digest(macro), digest)
        if cache.done(key):  # this planner's, this code's, from this macro file (a corrupt file is rebuilt)
            continue
        planner, in_sample = main, False
        if world_position(unit, crossfit["seed"]) >= crossfit["test_fraction"]:  # not a test world
            fold = crossfit_fold(unit, crossfit["folds"], crossfit["seed"])
            if fold in crossfit["trained"]:
                planner = l2_dir / f"planner_fold{fold}.pt"
            else:
                in_sample = True
        keys[unit] = key
        jobs.append(BackfillJob(str(macro), str(lake / "goal_hat" / macro.parent.name / macro.name), str(lake),
                                str(planner), config.horizon, digest, in_sample))

    def died(job: BackfillJob) -> dict[str, Any]:
        return {"world": f"{Path(job.macro).parent.name}/{Path(job.macro).stem}", "rows": 0, "in_sample": 0,
                "files": {}, "error": "its process died"}

    results = map_units(backfill_world, jobs, workers, died, desc="backfill", dask_address=dask_address,
                        name=lambda j: f"backfill-{Path(j.macro).parent.name}/{Path(j.macro).stem}")
    for r in results:
        if r["error"] is None:
            cache.save(keys[r["world"]], r["files"], rows=r["rows"])
    swept = sweep(lake / "goal_hat", {f"{m.parent.name}/{m.stem}" for m in macros})
    failed = sorted(f"{r['world']}: {r['error']}" for r in results if r["error"])
    if failed:
        raise TrainingDataError(f"goal_hat of {len(failed)} world(s) failed (the others are written): "
                                + "; ".join(failed[:3]))
    return {"built": len(results), "skipped": len(macros) - len(jobs), "rows": sum(r["rows"] for r in results),
            "in_sample_rows": sum(r["in_sample"] for r in results), "planner_digest": digest, "swept": swept,
            **unit_figures(results)}
