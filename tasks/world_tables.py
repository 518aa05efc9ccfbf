"""Stage: converted worlds -> the training tables ``macro`` (`tasks.tables`), ``micro`` (`tasks.micro`) and
``l4_distill`` (`tasks.l4_distill``), one Parquet file per table per world.

Each table of each world is a unit with its own record (`tasks.unit_cache`): its key is the table's
recipe (its name, the FeatureSpec and the code version of its module: an edit to ``tasks/micro.py``
rebuilds micro and l4_distill, which imports it, not macro) and the converted world's content. The tables
of a world that are missing, out of date or not the files recorded are built in one task from one reading
of its events (`tasks.tables.WorldLog`: one Snapshot, rule goal and bounds per agent-day and version, shared
by them). A table file whose converted world is gone is deleted. Worlds are built one at a time per
process: time grows with the worlds, memory does not.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from hrlxf_agent.state import FeatureSpec
from tasks.events import converted
from tasks.fingerprint import Layout, relative_digests, units
from tasks.parallel import map_units, unit_figures
from tasks.tables import TABLES, WorldLog
from tasks.unit_cache import UnitCache, recipe, sweep, unit_key

#: the module that registers each table in `TABLES` (a world's unit imports them: it may run in a fresh process)
TABLE_MODULES = {"macro": "tasks.tables", "micro": "tasks.micro", "l4_distill": "tasks.l4_distill"}


@dataclass(frozen=True)
class WorldTablesJob:
    """The tables of one converted world to (re)build: a unit of `build_tables`."""

    world: str  # <lake>/events/<run_id>/<world_id>
    lake: str
    spec: FeatureSpec
    tables: tuple[str, ...]


def _out(lake: Path, name: str, world: Path) -> Path:
    return Path(lake) / name / world.parent.name / f"{world.name}.parquet"


def build_world(job: WorldTablesJob) -> dict[str, Any]:
    """``job.tables`` of one world from one reading of its events (`WorldLog`), each written atomically; returns
    the rows and the files written per table ({path in the lake: digest}), or the error that stopped it (named
    with the world; what it wrote before stays, being complete)."""
    world = Path(job.world)
    rows: dict[str, int] = {}
    files: dict[str, dict[str, str]] = {}
    try:
        for name in job.tables:
            importlib.import_module(TABLE_MODULES[name])
        log = WorldLog(world, job.spec)
        for name in job.tables:
            gc.disable()  # a world's log holds ~10^5 small objects and creates no cycles: no collector passes over them
            try:
                data = TABLES[name][1](log)
            finally:
                gc.enable()
            out = _out(Path(job.lake), name, world)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            pq.write_table(data, tmp)
            os.replace(tmp, out)
            rows[name] = data.num_rows
            files[name] = relative_digests(Path(job.lake), out)
        error = None
    except Exception as e:  # noqa: BLE001 - this world's, not the build's
        logging.getLogger(__name__).exception("tables of %s failed", world)
        error = f"{type(e).__name__}: {e}"
    return {"world": f"{world.parent.name}/{world.name}", "rows": rows, "files": files, "error": error}


def table_recipe(name: str, spec: FeatureSpec) -> str:
    """What decides a table's file of a world besides the world: the table, the features and its module's code."""
    return recipe(f"table:{name}", [TABLE_MODULES[name]], spec)


def build_tables(lake: Path, spec: FeatureSpec | None = None, tables: tuple[str, ...] = tuple(TABLE_MODULES),
                 workers: int = 1, dask_address: str | None = None) -> dict[str, Any]:
    """Every table in ``tables`` of every converted world whose unit record (`tasks.unit_cache`: this table's
    recipe and the world's content) is missing or whose file is not the one recorded, one world per unit,
    ``workers`` worlds at once or on the Dask cluster at ``dask_address`` (`tasks.parallel.map_units`: fresh
    processes); table files of worlds no longer converted are deleted. A world whose process died is named
    in ``failed`` and built by the next run; the others are kept.

    Returns ``{table: {"built", "skipped", "rows"}}``, ``failed``, ``swept`` and the units' figures
    (`tasks.parallel.unit_figures`)."""
    spec = spec or FeatureSpec()
    lake = Path(lake)
    cache, recipes = UnitCache(lake), {name: table_recipe(name, spec) for name in tables}
    content = units(lake / "events", Layout(depth=2))
    worlds = converted(lake / "events")
    jobs, keys_of = [], {}  # keys_of: run/world -> {table: its record's key}, for the tables to build
    for w in worlds:
        unit = f"{w.parent.name}/{w.name}"
        keys = {n: unit_key(r, unit, content[unit]) for n, r in recipes.items()}
        if todo := tuple(n for n in tables if not cache.done(keys[n])):
            keys_of[unit] = {n: keys[n] for n in todo}
            jobs.append(WorldTablesJob(str(w), str(lake), spec, todo))

    def died(job: WorldTablesJob) -> dict[str, Any]:
        world = Path(job.world)
        return {"world": f"{world.parent.name}/{world.name}", "rows": {}, "files": {}, "error": "its process died"}

    def record(r: dict[str, Any]) -> None:  # as each world ends: a run stopped midway keeps what it did
        for name, files in r["files"].items():
            cache.save(keys_of[r["world"]][name], files, rows=r["rows"][name])

    results = map_units(build_world, jobs, workers, died, desc="tables", dask_address=dask_address,
                        name=lambda j: f"tables-{Path(j.world).parent.name}/{Path(j.world).name}", on_row=record)
    present = {f"{w.parent.name}/{w.name}" for w in worlds}
    summary: dict[str, Any] = {name: {"built": sum(name in r["rows"] for r in results),
                                      "skipped": len(worlds) - sum(name in j.tables for j in jobs),
                                      "rows": sum(r["rows"].get(name, 0) for r in results)} for name in tables}
    summary["failed"] = sorted(f"{r['world']}: {r['error']}" for r in results if r["error"])
    summary["swept"] = sorted(f"{name}/{u}" for name in tables for u in sweep(lake / name, present))
    return summary | unit_figures(results)


def build_per_world(lake: Path, table: str, spec: FeatureSpec | None = None) -> dict[str, Any]:
    """``<lake>/<table>/<run_id>/<world_id>.parquet`` of every converted world not built yet or out of date
    (`build_tables` of this table alone, in this process); a world that fails raises, naming it."""
    summary = build_tables(lake, spec, (table,))
    if summary["failed"]:
        raise RuntimeError(f"{table}: {summary['failed'][0]}")
    return summary[table]


def build_macro(lake: Path, spec: FeatureSpec | None = None) -> dict[str, Any]:
    """The macro table of every converted world not built yet or out of date (`build_per_world`)."""
    return build_per_world(lake, "macro", spec)


def build_micro(lake: Path, spec: FeatureSpec | None = None) -> dict[str, Any]:
    """The micro table of every converted world not built yet or out of date (`build_per_world`)."""
    return build_per_world(lake, "micro", spec)


def build_l4_distill(lake: Path, spec: FeatureSpec | None = None) -> dict[str, Any]:
    """The l4_distill table of every converted world not built yet or out of date (`build_per_world`)."""
    return build_per_world(lake, "l4_distill", spec)
