"""Stage: raw tracker logs -> typed Parquet event tables (schemas/arrow.py).

One unit of work is one complete raw world (``DONE``). Its tables are written
to a temporary directory and renamed into ``<lake>/events/<run_id>/<world_id>/``:
a world directory under its final name is a converted world (`converted`), and
a rerun never duplicates rows. A world is converted again only when its unit
record (`tasks.unit_cache`: the version of `tasks.convert`, the unit's code, and the raw world's content)
is missing or its tables are not the ones recorded; a converted world whose raw
world is gone is kept (the lake may outlive the raw logs). A world whose log is truncated, corrupt,
of an unknown schema version or contradicts itself is quarantined with its
reason (``<lake>/events/quarantine.parquet``); the others go on.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas import arrow
from tasks.collect import DONE
from tasks.convert import WorldJob, convert_world
from tasks.fingerprint import Layout, units
from tasks.parallel import map_units, unit_figures
from tasks.unit_cache import UnitCache, recipe, unit_key


def converted(events: Path) -> list[Path]:
    """Every converted world ``<events>/<run_id>/<world_id>``: a directory exists under its final name only once
    all its tables are written (the rename is the commit); temporaries start with a dot."""
    return sorted(p for p in Path(events).glob("*/*") if p.is_dir() and not p.name.startswith(".")
                  and not p.parent.name.startswith("."))


#: the units of a raw directory: ``<run_id>/<world_id>`` once it holds ``DONE`` (collect's last write)
RAW_WORLDS = Layout(depth=2, marker=DONE)


def _died(job: WorldJob) -> dict[str, Any]:
    return {"run_id": job.run_id, "world_id": job.world_id, "error": "its process died", "bad": False, "rows": {}}


def run_events(raw: Path, lake: Path, workers: int = 1, dask_address: str | None = None) -> dict[str, Any]:
    """Convert every complete raw world not converted yet by this code from its present content (its unit
    record, `tasks.unit_cache`), ``workers`` worlds at once or on the Dask cluster at ``dask_address``
    (`tasks.parallel.map_units`); quarantine the bad ones with their reason. A world that failed otherwise
    (its process died, a full disk) is named in ``failed`` and converted by the next run."""
    root = Path(lake) / "events"
    cache, code = UnitCache(Path(lake)), recipe("events", ["tasks.convert"])
    content = units(Path(raw), RAW_WORLDS)  # {run_id/world_id: digest} of the complete raw worlds
    jobs, keys = [], {}  # keys: (run_id, world_id) -> its record's key, for the worlds to convert
    for unit, digest in sorted(content.items()):
        key = unit_key(code, unit, digest)
        if not cache.done(key):
            run_id, world_id = unit.split("/")
            keys[(run_id, world_id)] = key
            jobs.append(WorldJob(run_id, world_id, str(Path(raw) / unit), str(root / unit)))
    skipped = len(content) - len(jobs)

    def record(r: dict[str, Any]) -> None:  # as each world ends: a run stopped midway keeps what it did
        if r["error"] is None:
            cache.save(keys[(r["run_id"], r["world_id"])], {f"events/{r['run_id']}/{r['world_id']}": r["digest"]},
                       rows=r["rows"])

    results = sorted(map_units(convert_world, jobs, workers, _died, desc="events", dask_address=dask_address,
                               name=lambda j: f"events-{j.run_id}/{j.world_id}", on_row=record),
                     key=lambda r: (r["run_id"], r["world_id"]))
    results += _quarantine_unreadable_orphans(root, set(content))
    rows_written = {name: sum(r["rows"].get(name, 0) for r in results) for name in arrow.TABLES}
    quarantined = [{"run_id": r["run_id"], "world_id": r["world_id"], "reason": r["error"]} for r in results if r["bad"]]
    _update_quarantine(root, quarantined)
    return {"converted": sum(r["error"] is None for r in results), "skipped": skipped, "quarantined": quarantined,
            "failed": [f"{r['run_id']}/{r['world_id']}: {r['error']}" for r in results if r["error"] and not r["bad"]],
            "rows": rows_written, **unit_figures(results)}


QUARANTINED = ".quarantined"  # <lake>/events/.quarantined/<run_id>/<world_id>: set aside, not converted


def _quarantine_unreadable_orphans(root: Path, raw: set[str]) -> list[dict[str, Any]]:
    """Converted worlds whose raw world (``run_id/world_id`` in ``raw``) is gone cannot be converted again:
    one with a table missing or not readable Parquet (its footer; overwritten, truncated) is moved to
    ``<root>/.quarantined/`` and quarantined with its reason, so the tables after it no longer read it.
    Checked only when the events stage runs (its inputs or outputs changed): six footers per such world."""
    rows = []
    for world in converted(root):
        if f"{world.parent.name}/{world.name}" in raw:
            continue
        reason = None
        for name in arrow.TABLES:
            try:
                pq.ParquetFile(world / f"{name}.parquet").metadata
            except (OSError, pa.ArrowInvalid) as e:
                reason = f"{name}.parquet: missing or not readable Parquet ({e})"
                break
        if reason:
            to = root / QUARANTINED / world.parent.name / world.name
            shutil.rmtree(to, ignore_errors=True)
            to.parent.mkdir(parents=True, exist_ok=True)
            os.replace(world, to)
            rows.append({"run_id": world.parent.name, "world_id": world.name, "bad": True, "rows": {},
                         "error": f"{reason} and the raw world is gone; set aside in {to}"})
    return rows


def _update_quarantine(root: Path, new: list[dict[str, Any]]) -> None:
    """The quarantine table holds the latest reason of every world that could not be converted."""
    path = root / "quarantine.parquet"
    old = pq.read_table(path).to_pylist() if path.exists() else []
    done = {(p.parent.name, p.name) for p in converted(root)}
    merged = {(r["run_id"], r["world_id"]): r for r in old + new}
    keep = [r for k, r in sorted(merged.items()) if k not in done]
    if path.exists() and keep == old:
        return  # nothing changed: a rerun with no new data writes nothing
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.Table.from_pylist(keep, schema=arrow.QUARANTINE), tmp)
    os.replace(tmp, path)
