"""Stage: raw tracker logs -> typed Parquet event tables (schemas/arrow.py).

One unit of work is one complete raw world (``DONE``). Its tables are written
to a temporary directory and renamed into ``<lake>/events/<run_id>/<world_id>/``
with ``_SUCCESS`` last, so a world already converted is never converted again
and a rerun never duplicates rows. A world whose log is truncated, corrupt,
of an unknown schema version or contradicts itself is quarantined with its
reason (``<lake>/events/quarantine.parquet``); the others go on.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from hrlxf_agent.tracker import EVENTS_SCHEMA_VERSION
from schemas import arrow
from tasks.collect import DONE

SUCCESS = "_SUCCESS"


class BadWorld(ValueError):
    """A raw world that cannot be trusted; the message is the quarantine reason."""


def raw_worlds(raw: Path) -> Iterator[tuple[str, str, Path]]:
    """(run_id, world_id, dir) of every complete raw world."""
    for done in sorted(Path(raw).glob(f"*/*/{DONE}")):
        yield done.parent.parent.name, done.parent.name, done.parent


def _outcome(prefix: str, o: Any) -> dict[str, Any]:
    if o is None:
        return {f"{prefix}_q": None, f"{prefix}_t": None, f"{prefix}_p": None}
    return {f"{prefix}_q": int(o[0]), f"{prefix}_t": int(o[1]), f"{prefix}_p": float(o[2])}


def world_tables(run_id: str, world_id: str, world: Path) -> dict[str, list[dict[str, Any]]]:
    """Parse one raw world into rows per table; raise BadWorld with the reason when it cannot be trusted."""
    try:
        meta = json.loads((world / "world.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BadWorld(f"world.json unreadable: {e}") from None
    keys = {"run_id": run_id, "world_id": world_id}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in arrow.TABLES}
    for aid, info in meta.get("agents", {}).items():
        path = world / "events" / f"{aid}.jsonl"
        if not path.exists():
            raise BadWorld(f"events/{aid}.jsonl missing")
        deals, init, seq = 0, None, 0
        for n, line in enumerate(path.read_text().splitlines(), 1):
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                raise BadWorld(f"events/{aid}.jsonl line {n}: not JSON (truncated?)") from None
            if e.get("v") != EVENTS_SCHEMA_VERSION:
                raise BadWorld(f"events/{aid}.jsonl line {n}: schema version {e.get('v')!r}, this code reads {EVENTS_SCHEMA_VERSION}")
            kind = e.get("type")
            try:
                if kind == "agent_initialized":
                    init = e
                elif kind == "day_snapshot":
                    rows["days"].append({**keys, "agent_id": aid, "step": e["step"], "version": e["version"],
                                         "snapshot_json": json.dumps(e["snapshot"], separators=(",", ":"))})
                elif kind == "decision":
                    if e["version"] != deals:
                        raise BadWorld(f"events/{aid}.jsonl line {n}: decision saw version {e['version']} after {deals} deals")
                    rows["decisions"].append({
                        **keys, "agent_id": aid, "seq": seq, "step": e["step"], "version": e["version"], "batch": e.get("batch"), "kind": e["kind"],
                        "partner": e["partner"], "negotiation_id": e["negotiation_id"], "is_buy": e["is_buy"],
                        "round": e["round"], "rel_time": e["rel_time"], **_outcome("in", e["offer_in"]), "op": e["op"],
                        **_outcome("out", e["offer_out"]),
                    })
                    seq += 1
                elif kind == "negotiation_end":
                    deals += bool(e["success"])
                    rows["outcomes"].append({**keys, "agent_id": aid, "step": e["step"], "partner": e["partner"],
                                             "success": e["success"], "version": e["version"], **_outcome("agreement", e["agreement"])})
                else:
                    raise BadWorld(f"events/{aid}.jsonl line {n}: unknown event type {kind!r}")
            except KeyError as missing:
                raise BadWorld(f"events/{aid}.jsonl line {n}: {kind} without field {missing}") from None
        if init is None:
            raise BadWorld(f"events/{aid}.jsonl: no agent_initialized event")
        daily = meta.get("daily", {}).get(aid, {})
        for step, (short, stock, balance) in enumerate(zip(daily.get("shortfall_quantity", []), daily.get("inventory_input", []),
                                                           daily.get("balance", []))):
            rows["daily"].append({**keys, "agent_id": aid, "step": step, "shortfall_quantity": short,
                                  "inventory_input": stock, "balance": balance})
        rows["agents"].append({**keys, "agent_id": aid, "agent_class": info["class"], "module": info["module"],
                               "level": init["level"], "can_buy": init["can_buy"], "can_sell": init["can_sell"],
                               "n_lines": init["n_lines"], "n_steps": init["n_steps"],
                               "initial_balance": init["initial_balance"], "score": meta["scores"].get(aid)})
    try:
        for line in (world / "contracts.jsonl").read_text().splitlines():
            c = json.loads(line)
            rows["contracts"].append({**keys, "contract_id": c["id"], "seller": c["seller"], "buyer": c["buyer"],
                                      "delivery_time": c["delivery_time"], "quantity": c["quantity"],
                                      "unit_price": float(c["unit_price"]), "signed_at": c["signed_at"],
                                      "executed_at": c["executed_at"], "nullified_at": c["nullified_at"]})
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise BadWorld(f"contracts.jsonl unreadable: {type(e).__name__}: {e}") from None
    return rows


def write_world(out: Path, rows: dict[str, list[dict[str, Any]]]) -> None:
    """All tables of one world, atomically (temporary directory, rename, ``_SUCCESS`` last)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, schema in arrow.TABLES.items():
            pq.write_table(pa.Table.from_pylist(rows[name], schema=schema), tmp / f"{name}.parquet")
        (tmp / SUCCESS).write_text("")
        if out.exists():
            shutil.rmtree(out)  # a partial earlier attempt (no _SUCCESS): replaced whole
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def run_events(raw: Path, lake: Path, progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Convert every complete raw world not converted yet; quarantine the bad ones with their reason."""
    root = Path(lake) / "events"
    converted, skipped, quarantined = 0, 0, []
    rows_written = {name: 0 for name in arrow.TABLES}
    for run_id, world_id, world in raw_worlds(raw):
        out = root / run_id / world_id
        if (out / SUCCESS).exists():
            skipped += 1
            continue
        try:
            rows = world_tables(run_id, world_id, world)
        except BadWorld as e:
            quarantined.append({"run_id": run_id, "world_id": world_id, "reason": str(e)})
            row = {"world_id": world_id, "error": str(e)}
        else:
            write_world(out, rows)
            converted += 1
            for name, r in rows.items():
                rows_written[name] += len(r)
            row = {"world_id": world_id, "error": None}
        if progress:
            progress(row)
    _update_quarantine(root, quarantined)
    return {"converted": converted, "skipped": skipped, "quarantined": quarantined, "rows": rows_written}


def _update_quarantine(root: Path, new: list[dict[str, Any]]) -> None:
    """The quarantine table holds the latest reason of every world that could not be converted."""
    path = root / "quarantine.parquet"
    old = pq.read_table(path).to_pylist() if path.exists() else []
    converted = {(p.parent.parent.name, p.parent.name) for p in root.glob(f"*/*/{SUCCESS}")}
    merged = {(r["run_id"], r["world_id"]): r for r in old + new}
    keep = [r for k, r in sorted(merged.items()) if k not in converted]
    if path.exists() and keep == old:
        return  # nothing changed: a rerun with no new data writes nothing
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.Table.from_pylist(keep, schema=arrow.QUARANTINE), tmp)
    os.replace(tmp, path)
