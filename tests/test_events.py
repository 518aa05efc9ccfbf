"""tasks/events.py on real collected worlds: typed tables, incremental, quarantine with reasons."""

import json

import pyarrow.parquet as pq

from hrlxf_agent.snapshot import Snapshot
from schemas import arrow
from tasks.collect import CollectProfile, run_collect
from tasks.events import converted, run_events

SMALL = CollectProfile(worlds=3, steps=10, experts=("PenguinAgent", "AS0"), agents_per_world=(4, 6), workers=2)


def test_tables_are_typed_complete_incremental_and_bad_worlds_quarantined(tmp_path):
    raw, lake = tmp_path / "raw", tmp_path / "lake"
    run_collect(SMALL, raw, "r")
    first = run_events(raw, lake)
    assert first["converted"] == 3 and not first["quarantined"]
    world = lake / "events" / "r" / "w0000"
    for name, schema in arrow.TABLES.items():
        table = pq.read_table(world / f"{name}.parquet")
        assert table.schema.equals(schema, check_metadata=False), name
    meta = json.loads((raw / "r" / "w0000" / "world.json").read_text())
    days = pq.read_table(world / "days.parquet").to_pylist()
    assert len(days) == len(meta["agents"]) * 10
    snap = Snapshot.from_dict(json.loads(days[0]["snapshot_json"]))
    assert snap.n_steps == 10
    decisions = pq.read_table(world / "decisions.parquet")
    events = sum(1 for a in meta["agents"] for line in (raw / "r" / "w0000" / "events" / f"{a}.jsonl").open()
                 if json.loads(line)["type"] == "decision")
    assert decisions.num_rows == events
    assert decisions.column("batch").null_count == 0  # the threads of a batch can be grouped

    # a rerun with no new data writes nothing
    assert converted(lake / "events") == sorted((lake / "events" / "r").glob("w*"))  # no temporaries left
    mtimes = [(world / "days.parquet").stat().st_mtime_ns, (lake / "events" / "quarantine.parquet").stat().st_mtime_ns]
    again = run_events(raw, lake)
    assert again["converted"] == 0 and again["skipped"] == 3
    assert [(world / "days.parquet").stat().st_mtime_ns, (lake / "events" / "quarantine.parquet").stat().st_mtime_ns] == mtimes

    # new worlds: only those are converted; a truncated log is quarantined with its reason
    run_collect(CollectProfile(**{**SMALL.__dict__, "worlds": 5}), raw, "r")
    for log in (raw / "r" / "w0003" / "events").glob("*.jsonl"):  # a log written before decisions had a batch id
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        log.write_text("".join(json.dumps({k: v for k, v in e.items() if k != "batch"}) + "\n" for e in lines))
    bad = next((raw / "r" / "w0004" / "events").glob("*.jsonl"))
    bad.write_text(bad.read_text()[:-40])  # cut the last line in half
    third = run_events(raw, lake)
    assert third["converted"] == 1 and third["skipped"] == 3
    assert [q["world_id"] for q in third["quarantined"]] == ["w0004"] and "not JSON" in third["quarantined"][0]["reason"]
    quarantine = pq.read_table(lake / "events" / "quarantine.parquet").to_pylist()
    assert [(q["world_id"], "truncated" in q["reason"]) for q in quarantine] == [("w0004", True)]
    assert not (lake / "events" / "r" / "w0004").exists()
    old = pq.read_table(lake / "events" / "r" / "w0003" / "decisions.parquet").column("batch")
    assert len(old) > 0 and old.null_count == len(old)
