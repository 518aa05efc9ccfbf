"""Stage: goal_hat backfill. The trained L2 predicts the goal of every agent-day in macro.

L3 is conditioned on the goal L2 gives it online, not on the hindsight label,
so its training rows must carry what the trained planner would have said that
morning, from a planner that never saw the world: each world's goal_hat comes
from the fold planner of its cross-fitting fold (`train_l2.crossfit_fold`), the
test worlds' (and those of a fold too small to fit) from the bundle's planner. Written as ``<lake>/goal_hat/<run_id>/<world_id>.parquet`` (run_id,
world_id, agent_id, step, goal_hat[16]) with the digest of the planner's weights that made it in the
metadata. Each world is a unit with its record (`tasks.unit_cache`: the code of `tasks.goal_hat` and the config, the
macro file's content and that planner's weights): it is recomputed only when one of them changed, it is new or its file is
not the one recorded; a goal_hat file whose macro file is gone is deleted.
The L3 stage joins it onto micro's ``goal`` column (``goal_filled`` true).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.fingerprint import file_digest
from tasks.goal_hat import BackfillJob, backfill_world
from tasks.parallel import map_units, unit_figures
from tasks.train_l2 import crossfit_fold
from tasks.training import TrainingDataError, table_files, world_position
from tasks.unit_cache import UnitCache, recipe, sweep, unit_key


@dataclass
class BackfillConfig:
    horizon: int = 10

    @classmethod
    def smoke(cls) -> "BackfillConfig":
        return cls()


def backfill(lake: Path, l2_dir: Path, config: BackfillConfig, workers: int = 1,
             dask_address: str | None = None) -> dict[str, Any]:
    """goal_hat for every macro file whose unit record (`tasks.goal_hat`'s code and the config, the file's
    content, the weights of the planner its world gets) is missing or whose goal_hat file is not the one recorded, a world per unit (`map_units`:
    ``workers`` fresh processes or the Dask cluster at ``dask_address``; one worker: here, one after another);
    goal_hat files of macro files gone are deleted. Raises TrainingDataError naming the worlds that failed,
    after the others are written. Returns counts."""
    lake, l2_dir = Path(lake), Path(l2_dir)
    main = l2_dir / "planner.pt"
    if not main.is_file():
        raise TrainingDataError(f"{main}: missing (run the train_l2 stage first)")
    metrics = json.loads((l2_dir / "metrics.json").read_text())
    crossfit = metrics.get("crossfit") or {"folds": 1, "seed": 0, "test_fraction": 0.0, "trained": []}
    cache, code = UnitCache(lake), recipe("backfill", ["tasks.goal_hat"], config)
    macros = table_files(lake, "macro")
    jobs, keys = [], {}
    for macro in macros:
        unit = f"{macro.parent.name}/{macro.stem}"
        planner, in_sample = main, False
        if world_position(unit, crossfit["seed"]) >= crossfit["test_fraction"]:  # not a test world
            fold = crossfit_fold(unit, crossfit["folds"], crossfit["seed"])
            if fold in crossfit["trained"]:
                planner = l2_dir / f"planner_fold{fold}.pt"
            else:
                in_sample = True
        digest = file_digest(planner)  # the planner of this world's goals (another fold retrained: no change)
        key = unit_key(code, unit, file_digest(macro), digest)
        if cache.done(key):  # this planner's, this code's, from this macro file (a corrupt file is rebuilt)
            continue
        keys[unit] = key
        jobs.append(BackfillJob(str(macro), str(lake / "goal_hat" / macro.parent.name / macro.name), str(lake),
                                str(planner), config.horizon, digest, in_sample))

    def died(job: BackfillJob) -> dict[str, Any]:
        return {"world": f"{Path(job.macro).parent.name}/{Path(job.macro).stem}", "rows": 0, "in_sample": 0,
                "files": {}, "error": "its process died"}

    def record(r: dict[str, Any]) -> None:  # as each world ends: a run stopped midway keeps what it did
        if r["error"] is None:
            cache.save(keys[r["world"]], r["files"], rows=r["rows"])

    results = map_units(backfill_world, jobs, workers, died, desc="backfill", dask_address=dask_address,
                        name=lambda j: f"backfill-{Path(j.macro).parent.name}/{Path(j.macro).stem}", on_row=record)
    swept = sweep(lake / "goal_hat", {f"{m.parent.name}/{m.stem}" for m in macros})
    failed = sorted(f"{r['world']}: {r['error']}" for r in results if r["error"])
    if failed:
        raise TrainingDataError(f"goal_hat of {len(failed)} world(s) failed (the others are written): "
                                + "; ".join(failed[:3]))
    return {"built": len(results), "skipped": len(macros) - len(jobs), "rows": sum(r["rows"] for r in results),
            "in_sample_rows": sum(r["in_sample"] for r in results), "swept": swept,
            **unit_figures(results)}
