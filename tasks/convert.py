"""One raw world's tracker logs -> its typed Parquet event tables (schemas/arrow.py): the events stage's unit.

In a module of its own, apart from the stage that maps it (`tasks.events`), so that the unit records'
key (`tasks.unit_cache`) follows the code that decides a converted world's bytes and nothing else: an edit
to the mapper or to collect converts nothing again.
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
from tasks.fingerprint import digest_of


class BadWorld(ValueError):
    """A raw world that cannot be trusted; the message is the quarantine reason."""


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
    """One raw world to convert into ``out`` (a unit of `tasks.events.run_events`)."""

    run_id: str
    world_id: str
    raw: str
    out: str


def convert_world(job: WorldJob) -> dict[str, Any]:
    """One raw world's event tables, written atomically; a world that cannot be trusted comes back with its
    reason (``error``, ``bad``: quarantined), one that failed otherwise (a full disk) with its error, and
    either writes nothing."""
    try:
        tables = world_columns(job.run_id, job.world_id, Path(job.raw))
        write_world(Path(job.out), tables)
        digest = digest_of(Path(job.out))
    except BadWorld as e:  # a conversion of the world's earlier content is no longer its events
        shutil.rmtree(job.out, ignore_errors=True)
        return {"run_id": job.run_id, "world_id": job.world_id, "error": str(e), "bad": True, "rows": {}}
    except Exception as e:  # noqa: BLE001 - this world's, not the stage's: it is converted again next run
        logging.getLogger(__name__).exception("events of %s/%s failed", job.run_id, job.world_id)
        return {"run_id": job.run_id, "world_id": job.world_id, "error": f"{type(e).__name__}: {e}", "bad": False,
                "rows": {}}
    return {"run_id": job.run_id, "world_id": job.world_id, "error": None, "bad": False,
            "rows": {name: t.num_rows for name, t in tables.items()}, "digest": digest}
