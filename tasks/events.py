"""Stage: raw tracker logs -> typed Parquet event tables (schemas/arrow.py).

One unit of work is one complete raw world (``DONE``). Its tables are written
to a temporary directory and renamed into ``<lake>/events/<run_id>/<world_id>/``:
a world directory under its final name is a converted world (`converted`), and
a rerun never duplicates rows. A world is converted again only when its unit
record (`tasks.unit_cache`: this code's version and the raw world's content)
is missing or its tables are not the ones recorded; a converted world whose raw
world is gone is kept (the lake may outlive the raw logs). A world whose log is truncated, corrupt,
of an unknown schema version or contradicts itself is quarantined with its
reason (``<lake>/events/quarantine.parquet``); the others go on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from hrlxf_agent.tracker import EVENTS_SCHEMA_VERSION
from schemas import arrow
from tasks.collect import DONE
from tasks.fingerprint import Layout, units
from tasks.parallel import map_units, unit_figures
from tasks.unit_cache import UnitCache, digest_of, recipe, unit_key



class BadWorld(ValueError):
    """A raw world that cannot be trusted; the message is the quarantine reason."""


def converted(events: Path) -> list[Path]:
    """Every converted world ``<events>/<run_id>/<world_id>``: a directory exists under its final name only once
    all its tables are written (the rename is the commit); temporaries start with a dot."""
    return sorted(p for p in Path(events).glob("*/*") if p.is_dir() and not p.name.startswith(".")
                  and not p.parent.name.startswith("."))


#: the units of a raw directory: ``<run_id>/<world_id>`` once it holds ``DONE`` (collect's last write)
RAW_WORLDS = Layout(depth=2, marker=DONE)


def raw_worlds(raw: Path) -> Iterator[tuple[str, str, Path]]:
    """(run_id, world_id, dir) of every complete raw world."""
    for done in sorted(Path(raw).glob(f"*/*/{DONE}")):
        yield done.parent.parent.name, done.parent.name, done.parent


def _events(path: Path, aid: str) -> Iterator[dict[str, Any]]:
    """The events of one agent's log (one JSON document per line), parsed in one call; when that fails, line by
    line as they are read, so that the first bad line is named where the reader meets it."""
    lines = path.read_text().splitlines()
    try:
        events = json.loads("[" + ",".join(lines) + "]")
        if len(events) == len(lines) and all(type(e) is dict for e in events):
            return iter(events)
    except json.JSONDecodeError:
        pass
    return _line_by_line(lines, aid)


def _line_by_line(lines: list[str], aid: str) -> Iterator[Any]:
    for n, line in enumerate(lines, 1):
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            raise BadWorld(f"events/{aid}.jsonl line {n}: not JSON (truncated?)") from None


def world_columns(run_id: str, world_id: str, world: Path) -> dict[str, pa.Table]:
    """Parse one raw world into one Arrow table per event table (schemas/arrow.py), built column by column;
    raise BadWorld with the reason when it cannot be trusted."""
    try:
        meta = json.loads((world / "world.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BadWorld(f"world.json unreadable: {e}") from None
    rows: dict[str, list[tuple]] = {name: [] for name in arrow.TABLES}  # per table, row tuples in its schema's order
    days, decisions, ends = rows["days"].append, rows["decisions"].append, rows["outcomes"].append
    for aid, info in meta.get("agents", {}).items():
        path = world / "events" / f"{aid}.jsonl"
        if not path.exists():
            raise BadWorld(f"events/{aid}.jsonl missing")
        deals, init, seq = 0, None, 0
        for n, e in enumerate(_events(path, aid), 1):
            if e.get("v") != EVENTS_SCHEMA_VERSION:
                raise BadWorld(f"events/{aid}.jsonl line {n}: schema version {e.get('v')!r}, this code reads {EVENTS_SCHEMA_VERSION}")
            kind = e.get("type")
            try:
                if kind == "decision":
                    if e["version"] != deals:
                        raise BadWorld(f"events/{aid}.jsonl line {n}: decision saw version {e['version']} after {deals} deals")
                    decisions((run_id, world_id, aid, seq, e["step"], e["version"], e.get("batch"), e["kind"], e["partner"],
                               e["negotiation_id"], e["is_buy"], e["round"], e["rel_time"], *_outcome(e["offer_in"]), e["op"],
                               *_outcome(e["offer_out"])))
                    seq += 1
                elif kind == "negotiation_end":
                    deals += bool(e["success"])
                    ends((run_id, world_id, aid, e["step"], e["partner"], e["success"], e["version"], *_outcome(e["agreement"])))
                elif kind == "day_snapshot":
                    days((run_id, world_id, aid, e["step"], e["version"], json.dumps(e["snapshot"], separators=(",", ":"))))
                elif kind == "agent_initialized":
                    init = e
                else:
                    raise BadWorld(f"events/{aid}.jsonl line {n}: unknown event type {kind!r}")
            except KeyError as missing:
                raise BadWorld(f"events/{aid}.jsonl line {n}: {kind} without field {missing}") from None
        if init is None:
            raise BadWorld(f"events/{aid}.jsonl: no agent_initialized event")
        daily = meta.get("daily", {}).get(aid, {})
        for step, (short, stock, balance) in enumerate(zip(daily.get("shortfall_quantity", []), daily.get("inventory_input", []),
                                                           daily.get("balance", []))):
            rows["daily"].append((run_id, world_id, aid, step, short, stock, balance))
        rows["agents"].append((run_id, world_id, aid, info["class"], info["module"], init["level"], init["can_buy"],
                               init["can_sell"], init["n_lines"], init["n_steps"], init["initial_balance"], meta["scores"].get(aid)))
    try:
        for line in (world / "contracts.jsonl").read_text().splitlines():
            c = json.loads(line)
            rows["contracts"].append((run_id, world_id, c["id"], c["seller"], c["buyer"], c["delivery_time"], c["quantity"],
                                      float(c["unit_price"]), c["signed_at"], c["executed_at"], c["nullified_at"]))
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise BadWorld(f"contracts.jsonl unreadable: {type(e).__name__}: {e}") from None
    return {name: _table(rows[name], schema) for name, schema in arrow.TABLES.items()}


def _table(rows: list[tuple], schema: pa.Schema) -> pa.Table:
    """Row tuples (in the schema's field order) -> a table, column by column."""
    columns = list(zip(*rows)) if rows else [()] * len(schema)
    return pa.Table.from_arrays([pa.array(col, type=f.type) for col, f in zip(columns, schema)], schema=schema)


def _outcome(o: Any) -> tuple:
    if o is None:
        return None, None, None
    return int(o[0]), int(o[1]), float(o[2])


def world_tables(run_id: str, world_id: str, world: Path) -> dict[str, list[dict[str, Any]]]:
    """Parse one raw world into rows per table (`world_columns` as rows); raise BadWorld with the reason when it
    cannot be trusted."""
    return {name: table.to_pylist() for name, table in world_columns(run_id, world_id, world).items()}


def write_world(out: Path, rows: dict[str, pa.Table | list[dict[str, Any]]]) -> None:
    """All tables of one world (Arrow tables or rows), atomically (a temporary directory renamed into place)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, schema in arrow.TABLES.items():
            table = rows[name] if isinstance(rows[name], pa.Table) else pa.Table.from_pylist(rows[name], schema=schema)
            pq.write_table(table, tmp / f"{name}.parquet")
        if out.exists():
            shutil.rmtree(out)  # an earlier conversion of the same world (an analyzer cache rebuilt): replaced whole
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class WorldJob:
    """One raw world to convert into ``out`` (a unit of `run_events`)."""

    run_id: str
    world_id: str
    raw: str
    out: str
    key: str = ""  # its unit record's (`tasks.unit_cache`)


def convert_world(job: WorldJob) -> dict[str, Any]:
    """One raw world's event tables, written atomically; a world that cannot be trusted comes back with its
    reason (``error``, ``bad``: quarantined), one that failed otherwise (a full disk) with its error, and
    either writes nothing."""
    try:
        tables = world_columns(job.run_id, job.world_id, Path(job.raw))
        write_world(Path(job.out), tables)
    except BadWorld as e:  # a conversion of the world's earlier content is no longer its events
        shutil.rmtree(job.out, ignore_errors=True)
        return {"run_id": job.run_id, "world_id": job.world_id, "error": str(e), "bad": True, "rows": {}}
    except Exception as e:  # noqa: BLE001 - this world's, not the stage's: it is converted again next run
        logging.getLogger(__name__).exception("events of %s/%s failed", job.run_id, job.world_id)
        return {"run_id": job.run_id, "world_id": job.world_id, "error": f"{type(e).__name__}: {e}", "bad": False,
                "rows": {}}
    return {"run_id": job.run_id, "world_id": job.world_id, "error": None, "bad": False,
            "rows": {name: t.num_rows for name, t in tables.items()}, "digest": digest_of(Path(job.out))}


def _died(job: WorldJob) -> dict[str, Any]:
    return {"run_id": job.run_id, "world_id": job.world_id, "error": "its process died", "bad": False, "rows": {}}


def run_events(raw: Path, lake: Path, workers: int = 1, dask_address: str | None = None) -> dict[str, Any]:
    """Convert every complete raw world not converted yet by this code from its present content (its unit
    record, `tasks.unit_cache`), ``workers`` worlds at once or on the Dask cluster at ``dask_address``
    (`tasks.parallel.map_units`); quarantine the bad ones with their reason. A world that failed otherwise
    (its process died, a full disk) is named in ``failed`` and converted by the next run."""
    root = Path(lake) / "events"
    cache, code = UnitCache(Path(lake)), recipe("events", ["tasks.events"])
    content = units(Path(raw), RAW_WORLDS)
    jobs, skipped = [], 0
    for run_id, world_id, world in raw_worlds(raw):
        key = unit_key(code, f"{run_id}/{world_id}", content[f"{run_id}/{world_id}"])
        if cache.done(key):
            skipped += 1
        else:
            jobs.append(WorldJob(run_id, world_id, str(world), str(root / run_id / world_id), key))
    results = sorted(map_units(convert_world, jobs, workers, _died, desc="events", dask_address=dask_address,
                               name=lambda j: f"events-{j.run_id}/{j.world_id}"),
                     key=lambda r: (r["run_id"], r["world_id"]))
    keys = {(j.run_id, j.world_id): j.key for j in jobs}
    for r in results:
        if r["error"] is None:
            cache.save(keys[(r["run_id"], r["world_id"])], {f"events/{r['run_id']}/{r['world_id']}": r["digest"]},
                       rows=r["rows"])
    results += _quarantine_unreadable_orphans(root, {(run_id, world_id) for run_id, world_id, _ in raw_worlds(raw)})
    rows_written = {name: sum(r["rows"].get(name, 0) for r in results) for name in arrow.TABLES}
    quarantined = [{"run_id": r["run_id"], "world_id": r["world_id"], "reason": r["error"]} for r in results if r["bad"]]
    _update_quarantine(root, quarantined)
    return {"converted": sum(r["error"] is None for r in results), "skipped": skipped, "quarantined": quarantined,
            "failed": [f"{r['run_id']}/{r['world_id']}: {r['error']}" for r in results if r["error"] and not r["bad"]],
            "rows": rows_written, **unit_figures(results)}


QUARANTINED = ".quarantined"  # <lake>/events/.quarantined/<run_id>/<world_id>: set aside, not converted


def _quarantine_unreadable_orphans(root: Path, raw: set[tuple[str, str]]) -> list[dict[str, Any]]:
    """Converted worlds whose raw world is gone cannot be converted again: one with a table that is not
    readable Parquet (its footer; overwritten, truncated) is moved to ``<root>/.quarantined/`` and
    quarantined with its reason, so the tables after it no longer read it. Checked only when the events
    stage runs (its inputs or outputs changed)."""
    rows = []
    for world in converted(root):
        if (world.parent.name, world.name) in raw:
            continue
        for f in sorted(world.glob("*.parquet")):
            try:
                pq.ParquetFile(f).metadata
            except (OSError, pa.ArrowInvalid) as e:
                to = root / QUARANTINED / world.parent.name / world.name
                shutil.rmtree(to, ignore_errors=True)
                to.parent.mkdir(parents=True, exist_ok=True)
                os.replace(world, to)
                reason = f"{f.name}: not readable Parquet ({e}) and the raw world is gone; set aside in {to}"
                rows.append({"run_id": world.parent.name, "world_id": world.name, "error": reason, "bad": True,
                             "rows": {}})
                break
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
