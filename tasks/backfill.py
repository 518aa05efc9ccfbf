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


def backfill(lake: Path, l2_dir: Path, config: BackfillConfig) -> dict[str, Any]:
    """goal_hat for every macro agent-day whose world or planner is new (its unit record); returns counts."""
    lake = Path(lake)
    spec = FeatureSpec(horizon=config.horizon)
    planner = load_planner(l2_dir, PlannerConfig(horizon=config.horizon))
    metrics = json.loads((Path(l2_dir) / "metrics.json").read_text())
    crossfit = metrics.get("crossfit") or {"folds": 1, "seed": 0, "test_fraction": 0.0, "trained": []}
    folds = {f: load_planner(l2_dir, PlannerConfig(horizon=config.horizon), f"planner_fold{f}.pt")
             for f in crossfit["trained"]}
    digest = "+".join(file_digest(p) for p in sorted(Path(l2_dir).glob("planner*.pt")))
    schema = goal_hat_schema(digest)
    cache, code = UnitCache(lake), recipe("backfill", ["tasks.backfill"], config)
    built = skipped = rows = in_sample = 0
    macros = table_files(lake, "macro")
    for macro in macros:
        out = lake / "goal_hat" / macro.parent.name / macro.name
        record = unit_key(code, f"{macro.parent.name}/{macro.name}", file_digest(macro), digest)
        if cache.done(record):  # this planner's, this code's, from this macro file (a corrupt file is rebuilt)
            skipped += 1
            continue
        a = macro_arrays(macro, spec)
        t = pq.read_table(macro, columns=["run_id", "world_id", "agent_id", "step"])
        which = planner
        if t.num_rows:
            key = f"{t.column('run_id')[0].as_py()}/{t.column('world_id')[0].as_py()}"
            if world_position(key, crossfit["seed"]) >= crossfit["test_fraction"]:  # not a test world
                fold = crossfit_fold(key, crossfit["folds"], crossfit["seed"])
                which = folds.get(fold, planner)
                in_sample += t.num_rows if fold not in folds else 0
        goals = predict_goals(which, a["x_static"], a["x_temporal"], a["x_role"], a["rule_goal"])
        table = pa.table({
            "run_id": t.column("run_id"), "world_id": t.column("world_id"), "agent_id": t.column("agent_id"),
            "step": t.column("step"),
            "goal_hat": pa.FixedSizeListArray.from_arrays(pa.array(goals.reshape(-1), pa.float32()), GOAL_DIM),
        }).cast(schema)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, out)
        cache.save(record, written(lake, out), rows=len(goals))
        built += 1
        rows += len(goals)
    swept = sweep(lake / "goal_hat", {f"{m.parent.name}/{m.name.removesuffix('.parquet')}" for m in macros})
    return {"built": built, "skipped": skipped, "rows": rows, "in_sample_rows": in_sample, "planner_digest": digest,
            "swept": swept}
