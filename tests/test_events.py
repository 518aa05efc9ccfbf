"""tasks/events.py on real collected worlds: typed tables, incremental, quarantine with reasons."""

import json
import os
import socket

import pyarrow.parquet as pq
import pytest

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


def test_worlds_mapped_on_worker_processes_give_the_same_bytes(tmp_path):
    """events and the three tables built on 2 worker processes equal, file for file, what one process builds;
    a bad world found in a worker is quarantined there and the others are kept; a rerun builds nothing."""
    from tasks.world_tables import build_tables

    raw = tmp_path / "raw"
    run_collect(SMALL, raw, "r")
    bad = next((raw / "r" / "w0002" / "events").glob("*.jsonl"))
    bad.write_text(bad.read_text()[:-40])
    lakes = {w: tmp_path / f"lake{w}" for w in (1, 2)}
    for workers, lake in lakes.items():
        events = run_events(raw, lake, workers)
        assert events["converted"] == 2 and [q["world_id"] for q in events["quarantined"]] == ["w0002"], events
        tables = build_tables(lake, workers=workers)
        assert {n: tables[n]["built"] for n in ("macro", "micro", "l4_distill")} == {"macro": 2, "micro": 2, "l4_distill": 2}
        assert tables["failed"] == [] and tables["cpu_seconds"] > 0
    files = sorted(p.relative_to(lakes[1]) for p in lakes[1].rglob("*.parquet"))
    assert len(files) == 2 * len(arrow.TABLES) + 1 + 3 * 2  # events, quarantine, three tables of two worlds
    assert files == sorted(p.relative_to(lakes[2]) for p in lakes[2].rglob("*.parquet"))
    for f in files:
        assert (lakes[1] / f).read_bytes() == (lakes[2] / f).read_bytes(), f
    again = build_tables(lakes[2], workers=2)
    assert again["macro"] == {"built": 0, "skipped": 2, "rows": 0} and run_events(raw, lakes[2], 2)["converted"] == 0
    assert len(again["workers"]) == 0 and len(build_tables(lakes[1], workers=1)["workers"]) == 0

    # a world that fails in its worker is named with its error; the other world is built beside it
    for name in ("macro", "micro", "l4_distill"):
        for world in ("w0000", "w0001"):
            (lakes[2] / name / "r" / f"{world}.parquet").unlink()
    (lakes[2] / "events" / "r" / "w0001" / "decisions.parquet").write_text("not parquet")
    broken = build_tables(lakes[2], workers=2)
    assert broken["macro"]["built"] == 1 and (lakes[2] / "macro" / "r" / "w0000.parquet").exists()
    assert len(broken["failed"]) == 1 and broken["failed"][0].startswith("r/w0001: ArrowInvalid"), broken["failed"]
    assert broken["workers"] == [f"{socket.gethostname()}:{os.getpid()}"]  # the process whose task threads ran them
    from flows.stages import _tables  # the pipeline's stage fails then, so that its next run builds what is missing

    with pytest.raises(RuntimeError, match=r"1 world\(s\) of tables failed: r/w0001: ArrowInvalid"):
        _tables({"lake": lakes[2]}, None, 2, None)


def test_bench_tables_times_this_code_at_two_scales_and_a_mapped_baseline_beside_it(tmp_path):
    """`hrlxf bench tables` on a one-world run: 2x holds twice the worlds and events of 1x, and the baseline
    (this checkout again, mapped the same way) is timed beside this code at 1x."""
    from pathlib import Path

    from tasks.bench_tables import Config, render, run_bench

    raw = tmp_path / "raw"
    run_collect(CollectProfile(worlds=1, steps=10, experts=("PenguinAgent", "AS0"), agents_per_world=(4, 5),
                               workers=1), raw, "r")
    root = Path(__file__).resolve().parents[1]
    doc = run_bench(Config(raw=str(raw), run_id="r", scales=(1, 2), baseline=str(root), baseline_scales=(1,),
                           baseline_mapped=True, workers=2))
    rows = {(r["code"], r["scale"]): r for r in doc["results"]}
    assert set(rows) == {("this", "1x"), ("this", "2x"), ("baseline", "1x")}
    one, two = rows[("this", "1x")], rows[("this", "2x")]
    assert (two["worlds"], two["events"]) == (2 * one["worlds"], 2 * one["events"]) and one["events"] > 0
    for row in (one, rows[("baseline", "1x")]):
        assert row["workers"] == 2 and row["cpu_seconds"] > 0 and row["unit_peak_mb"] > 0
        assert 0 < row["rerun_seconds"] < row["seconds"] and row["rerun_built"] == 0  # nothing new: all found done
    assert rows[("baseline", "1x")]["speedup"] > 0 and "| baseline | 1x |" in render(doc)


def test_unit_records_rebuild_exactly_the_units_whose_inputs_code_or_files_changed(tmp_path, monkeypatch):
    """Each world's events and each of its tables are done when their unit record (`tasks.unit_cache`) says so
    and their files are the ones recorded: a file written over, an input world changed, a table's code changed
    or a world gone upstream each rebuild (or delete) those units and nothing else."""
    from tasks import code_version as cv
    from tasks.world_tables import build_tables

    raw, lake = tmp_path / "raw", tmp_path / "lake"
    run_collect(SMALL, raw, "r")
    assert run_events(raw, lake)["converted"] == 3
    first = build_tables(lake)
    assert {n: first[n]["built"] for n in ("macro", "micro", "l4_distill")} == {"macro": 3, "micro": 3, "l4_distill": 3}
    original = {p: p.read_bytes() for p in lake.rglob("*.parquet")}

    def built(summary: dict) -> dict[str, int]:
        return {n: summary[n]["built"] for n in ("macro", "micro", "l4_distill")}

    # a table file written over with another (valid) table: that one file is rebuilt, to the same bytes
    micro = lake / "micro" / "r" / "w0000.parquet"
    micro.write_bytes((lake / "micro" / "r" / "w0001.parquet").read_bytes())
    assert built(build_tables(lake)) == {"macro": 0, "micro": 1, "l4_distill": 0}
    assert micro.read_bytes() == original[micro]

    # a raw world whose bytes changed (not its meaning) is converted again; its tables read the same events
    # content, so none is rebuilt (keys are content, not times)
    meta = raw / "r" / "w0001" / "world.json"
    meta.write_text(json.dumps(json.loads(meta.read_text()), indent=2))
    again = run_events(raw, lake)
    assert (again["converted"], again["skipped"]) == (1, 2)
    assert built(build_tables(lake)) == {"macro": 0, "micro": 0, "l4_distill": 0}

    # the code of tasks.micro changed: micro and l4_distill (which imports it) are rebuilt, macro is not
    real = cv.code_version

    def edited(modules: list[str]) -> dict:
        v = real(modules)
        return {**v, "digest": v["digest"] + "-micro-edited"} if "tasks.micro" in cv.module_closure(modules) else v

    monkeypatch.setattr(cv, "code_version", edited)
    assert built(build_tables(lake)) == {"macro": 0, "micro": 3, "l4_distill": 3}
    monkeypatch.undo()

    # a converted world gone (quarantined by hand): its table files are deleted
    import shutil

    shutil.rmtree(lake / "events" / "r" / "w0002")
    gone = build_tables(lake)
    assert gone["swept"] == ["l4_distill/r/w0002", "macro/r/w0002", "micro/r/w0002"]
    assert not any((lake / n / "r" / "w0002.parquet").exists() for n in ("macro", "micro", "l4_distill"))
    assert built(gone) == {"macro": 0, "micro": 0, "l4_distill": 0}

    # an events file of a converted world written over: converted again from its raw world (as is the world
    # deleted above, whose raw world is still there)
    days = lake / "events" / "r" / "w0001" / "days.parquet"
    days.write_text("not parquet")
    assert run_events(raw, lake)["converted"] == 2 and days.read_bytes() == original[days]

    # ... and when its raw world is gone, the converted world is set aside and quarantined with the reason
    shutil.rmtree(raw / "r" / "w0001")
    days.write_bytes(original[days][:100])
    orphan = run_events(raw, lake)
    assert [q["world_id"] for q in orphan["quarantined"]] == ["w0001"] and "raw world is gone" in orphan["quarantined"][0]["reason"]
    assert not (lake / "events" / "r" / "w0001").exists() and (lake / "events" / ".quarantined" / "r" / "w0001").is_dir()
    assert build_tables(lake)["swept"] == ["l4_distill/r/w0001", "macro/r/w0001", "micro/r/w0001"]

    # a raw world that became unreadable: quarantined, and its old conversion no longer counts
    bad = next((raw / "r" / "w0000" / "events").glob("*.jsonl"))
    bad.write_text(bad.read_text()[:-40])
    third = run_events(raw, lake)
    assert [q["world_id"] for q in third["quarantined"]] == ["w0000"] and not (lake / "events" / "r" / "w0000").exists()
