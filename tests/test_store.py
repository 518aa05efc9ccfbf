"""An object-store data root (`tasks/store.py`) on a real S3 API: moto's server on loopback, s3fs as the client.

The pipeline runs through `hrlxf` in child processes with ``HRLXF_DATA=s3://...``: each "host" is a mirror of its
own (``HRLXF_MIRROR``), and so is each Dask worker, so the only way a world or a record reaches another host is
the store.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import child_env, dask_processes

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["collect", "events", "tables", "train_l2", "backfill", "train_l3", "train_l3_rules", "train_l4",
          "bundle", "bundle_rules", "finetune", "evaluate"]


@pytest.fixture(scope="module")
def s3() -> dict[str, str]:
    """An S3 endpoint (moto's server, in a thread of this process) with the bucket ``hrlxf``: the environment that
    points a client at it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        store_fs().mkdir("hrlxf")
        yield env
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        server.stop()


def store_fs():
    import fsspec

    return fsspec.filesystem("s3", skip_instance_cache=True)


def _env(s3: dict[str, str], url: str, mirror: Path, **extra: str) -> dict[str, str]:
    """A command's environment: the store, its mirror, and the session's Prefect API (`conftest.child_env`)."""
    return child_env(**{**s3, "HRLXF_DATA": url, "HRLXF_MIRROR": str(mirror), "PYTHONPATH": str(ROOT), **extra})


def hrlxf(env: dict[str, str], *args: str, timeout: float = 900) -> dict:
    """`hrlxf ...` in a child process: exit code, output, wall time and the run report in its mirror."""
    start = time.time()
    p = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout)
    last = Path(env["HRLXF_MIRROR"]) / "reports" / "pipeline" / "last.json"
    return {"rc": p.returncode, "out": p.stdout, "err": p.stderr, "wall": time.time() - start,
            "report": json.loads(last.read_text()) if last.exists() else None}


def states(r: dict) -> dict[str, str]:
    return {s["stage"]: s["state"] for s in r["report"]["stages"]}


def _write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def test_the_mirror_and_the_store_sync_what_either_changed(s3, tmp_path, monkeypatch):
    """Three-way sync: a pull takes what the store changed since the last sync and keeps the mirror's own
    changes; a push sends what the mirror changed and deletes what it deleted; local-only files stay local."""
    from tasks.store import StoreRoot

    monkeypatch.setenv("HRLXF_MIRROR", str(tmp_path / "a"))
    a, fs = StoreRoot("s3://hrlxf/sync", str(tmp_path / "a")), store_fs()
    _write(tmp_path / "a", {"raw/r/w0/DONE": b"", "raw/r/w0/world.json": b"{}", "lake/macro/r/w0.parquet": b"pq",
                            "prefect/home/prefect.db": b"sqlite", "lake/x.parquet.tmp": b"partial", "keep.txt": b"1"})
    assert a.push()["pushed"] == 4
    assert sorted(f.removeprefix("hrlxf/sync/") for f in fs.find("hrlxf/sync")) == [
        "keep.txt", "lake/macro/r/w0.parquet", "raw/r/w0/DONE", "raw/r/w0/world.json"]
    assert a.push()["pushed"] == 0 and a.pull()["pulled"] == 0  # nothing changed on either side

    fs.pipe("hrlxf/sync/raw/r/w0/world.json", b'{"changed": 1}')  # another host's change
    fs.rm("hrlxf/sync/keep.txt")  # ... and deletion
    (tmp_path / "a" / "lake/macro/r/w0.parquet").write_bytes(b"rebuilt here")
    assert a.pull() == {"pulled": 1, "deleted": 1, "conflicts": 0, "bytes": 14}
    assert (tmp_path / "a" / "raw/r/w0/world.json").read_bytes() == b'{"changed": 1}'
    assert not (tmp_path / "a" / "keep.txt").exists()
    assert (tmp_path / "a" / "lake/macro/r/w0.parquet").read_bytes() == b"rebuilt here"  # the mirror's change stands

    (tmp_path / "a" / "raw/r/w0/DONE").unlink()
    assert a.push() == {"pushed": 1, "deleted": 1, "bytes": 12}
    assert fs.cat("hrlxf/sync/lake/macro/r/w0.parquet") == b"rebuilt here"
    assert not fs.exists("hrlxf/sync/raw/r/w0/DONE")

    monkeypatch.setenv("HRLXF_MIRROR", str(tmp_path / "b"))  # a fresh mirror takes everything
    b = StoreRoot("s3://hrlxf/sync", str(tmp_path / "b"))
    assert b.pull()["pulled"] == 2 and not (tmp_path / "b" / "prefect").exists()


def test_a_file_changed_on_both_sides_keeps_the_mirrors_copy_and_symlinked_directories_sync(s3, tmp_path, monkeypatch):
    from tasks.store import StoreRoot

    monkeypatch.setenv("HRLXF_MIRROR", str(tmp_path / "m"))
    m, fs = StoreRoot("s3://hrlxf/both", str(tmp_path / "m")), store_fs()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "lake").symlink_to(tmp_path / "elsewhere")  # a lake on another disk
    _write(tmp_path / "m", {"lake/macro/w0.parquet": b"pq", "models/l2/metrics.json": b"mine"})
    assert m.push()["pushed"] == 2 and fs.cat("hrlxf/both/lake/macro/w0.parquet") == b"pq"
    assert m.push() == {"pushed": 0, "deleted": 0, "bytes": 0}  # the files behind the symlink are still there

    fs.pipe("hrlxf/both/models/l2/metrics.json", b"theirs")
    (tmp_path / "m" / "models/l2/metrics.json").write_bytes(b"mine, again")
    assert m.pull()["conflicts"] == 1
    assert (tmp_path / "m" / "models/l2/metrics.json").read_bytes() == b"theirs"
    [kept] = (tmp_path / "m" / "models/l2").glob(".metrics.json.conflict-*")
    assert kept.read_bytes() == b"mine, again"
    assert m.push()["pushed"] == 0 and not any("conflict" in f for f in fs.find("hrlxf/both"))  # never synced


def test_a_directory_redone_from_scratch_is_pulled_again_even_with_the_same_bytes(s3, tmp_path, monkeypatch):
    """`--force collect` on a store: the worlds are deleted here and in the store, played again (on workers,
    byte for byte the same), and must come back into the mirror, not look deleted to the next push."""
    import shutil

    from tasks.store import StoreRoot

    monkeypatch.setenv("HRLXF_MIRROR", str(tmp_path / "host"))
    host, fs = StoreRoot("s3://hrlxf/redo", str(tmp_path / "host")), store_fs()
    world = {"raw/run/w0/world.json": b"{}", "raw/run/w0/DONE": b""}
    _write(tmp_path / "host", world)
    host.push()
    shutil.rmtree(tmp_path / "host" / "raw" / "run")
    host.forget("raw/run")
    assert not fs.exists("hrlxf/redo/raw/run/w0/DONE")
    for rel, data in world.items():  # what a worker sends
        fs.pipe(f"hrlxf/redo/{rel}", data)
    assert host.pull("raw/run")["pulled"] == 2 and (tmp_path / "host" / "raw/run/w0/DONE").is_file()
    assert host.push() == {"pushed": 0, "deleted": 0, "bytes": 0} and fs.exists("hrlxf/redo/raw/run/w0/DONE")


def _eventually(done, seconds: float = 60) -> bool:
    """Whether ``done()`` holds within ``seconds`` (a loaded machine may be slow to run the renewing thread)."""
    deadline = time.time() + seconds
    while not done() and time.time() < deadline:
        time.sleep(0.1)
    return done()


def test_a_run_whose_lease_another_run_took_stops_renewing_it_and_leaves_it(s3, monkeypatch):
    import tasks.store as store

    monkeypatch.setattr(store, "RENEW_SECONDS", 0.2)
    root, fs = store.StoreRoot("s3://hrlxf/lease", "/nonexistent"), store_fs()
    who = {"pid": 1, "host": "here"}

    def lost(check) -> bool:
        try:
            check()
        except store.StoreError as e:
            assert "this run lost the store's lease" in str(e)
            return True
        return False

    with root.leased(who) as check:
        first = json.loads(fs.cat("hrlxf/lease/.hrlxf-run.lease"))
        assert _eventually(lambda: json.loads(fs.cat("hrlxf/lease/.hrlxf-run.lease"))["expires"] > first["expires"])
        assert not lost(check)  # still this run's
        fs.pipe("hrlxf/lease/.hrlxf-run.lease", json.dumps({"pid": 2, "host": "there", "expires": 1e12}).encode())
        assert _eventually(lambda: lost(check))
    assert json.loads(fs.cat("hrlxf/lease/.hrlxf-run.lease"))["host"] == "there"  # not renewed over, not deleted


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_store_that_cannot_be_used_fails_before_any_world_starts(s3, tmp_path):
    url = "s3://hrlxf/unreachable"
    r = hrlxf(_env(s3, url, tmp_path / "m", AWS_ENDPOINT_URL=f"http://127.0.0.1:{_closed_port()}"),
              "run", "--profile", "smoke")
    assert r["rc"] == 2, r["err"][-3000:]
    assert f"HRLXF_DATA='{url}': the store cannot be used: EndpointConnectionError: Could not connect" in r["err"]
    assert not (tmp_path / "m" / "raw").exists()
    r = hrlxf(_env(s3, "s3://no-such-bucket/root", tmp_path / "n"), "run", "--profile", "smoke")
    assert r["rc"] == 2 and "HRLXF_DATA='s3://no-such-bucket/root': the store cannot be used" in r["err"], r["err"][-3000:]
    assert "bucket does not exist" in r["err"] and not (tmp_path / "n" / "raw").exists()


def test_a_pipeline_on_an_object_store_keeps_its_worlds_and_records_there(s3, tmp_path):
    """The smoke pipeline with its worlds and evaluation units on two Dask workers, each with a mirror of its own:
    they send what they play to the store, fetch the bundles they evaluate from it, and the run pulls their
    results; a second "host" with an empty mirror then finds every stage cached and plays nothing."""
    url = "s3://hrlxf/pipeline"
    workers = [_env(s3, url, tmp_path / f"worker{i}") for i in (1, 2)]
    with dask_processes(tmp_path, workers) as (address, pids):
        r = hrlxf(_env(s3, url, tmp_path / "host1"), "run", "--profile", "smoke", "--dask-address", address)
    assert r["rc"] == 0, r["err"][-3000:]
    assert r["report"]["store"] == url and all(s == "computed" for s in states(r).values()), states(r)
    worlds, units = r["report"]["worlds"], r["report"]["evaluation_units"]
    # the two offline bundles, the race's (the rules bundle) and PenguinAgent
    assert worlds["played"] == 4 and units["played"] == 4 and not worlds["failed"] and not units["failed"]
    for played in (worlds["workers"], units["workers"]):  # host:pid of the worker process that ran each unit
        assert {int(w.rsplit(":", 1)[1]) for w in played} <= pids, (played, pids)
    fs = store_fs()
    store = {f.removeprefix("hrlxf/pipeline/") for f in fs.find("hrlxf/pipeline")}
    assert {f"raw/smoke/w000{i}/DONE" for i in range(4)} <= store
    assert sum(f.startswith("prefect/results/") for f in store) >= len(STAGES)  # the stages' and units' records
    assert ".hrlxf-run.lease" not in store  # released
    played_on = {p.parent.name for i in (1, 2) for p in (tmp_path / f"worker{i}" / "raw" / "smoke").glob("*/DONE")}
    assert played_on == {f"w000{i}" for i in range(4)}  # every world was played in a worker's own mirror ...
    assert len(list((tmp_path / "host1" / "lake" / "macro" / "smoke").glob("*.parquet"))) == 4  # ... and converted here
    fetched = {p.parent.name for i in (1, 2) for p in (tmp_path / f"worker{i}" / "bundles").glob("*/manifest.json")}
    assert fetched and fetched <= {Path(b).name for b in r["report"]["bundles"].values()} | {"hrlxf-rules"}

    again = hrlxf(_env(s3, url, tmp_path / "host2"), "run", "--profile", "smoke")
    assert again["rc"] == 0, again["err"][-3000:]
    assert all(s == "cached" for s in states(again).values()), states(again)
    assert again["report"]["worlds"]["played"] == 0 and again["report"]["evaluation_units"]["played"] == 0
    assert Path(again["report"]["bundle"]).name == Path(r["report"]["bundle"]).name
    print(f"object store: first run {r['wall']:.1f} s (flow {r['report']['seconds']} s); from an empty mirror, "
          f"all cached: {again['wall']:.1f} s (flow {again['report']['seconds']} s)")


def test_a_store_another_run_holds_is_refused_naming_that_run_until_its_lease_expires(s3, tmp_path):
    url, fs = "s3://hrlxf/held", store_fs()
    fs.pipe("hrlxf/held/.hrlxf-run.lease", json.dumps({"flow": "hrlxf", "pid": 4242, "host": "elsewhere",
                                                       "expires": time.time() + 600}).encode())
    r = hrlxf(_env(s3, url, tmp_path / "m"), "collect", "--profile", "smoke")
    assert r["rc"] == 2, r["err"][-3000:]
    assert f"{url} is held by another pipeline run: " in r["err"] and '"host": "elsewhere"' in r["err"]
    assert '"pid": 4242' in r["err"] and not (tmp_path / "m" / "raw").exists()
    fs.pipe("hrlxf/held/.hrlxf-run.lease", json.dumps({"pid": 4242, "host": "elsewhere",
                                                       "expires": time.time() - 1}).encode())  # its run died
    r = hrlxf(_env(s3, url, tmp_path / "m"), "collect", "--profile", "smoke")
    assert r["rc"] == 0 and r["report"]["worlds"]["played"] == 4, r["err"][-3000:]
    assert not fs.exists("hrlxf/held/.hrlxf-run.lease")


def test_a_run_whose_stage_fails_still_sends_what_it_finished_to_the_store(s3, tmp_path):
    url, fs = "s3://hrlxf/failing", store_fs()
    r = hrlxf(_env(s3, url, tmp_path / "m"), "run", "--profile", "smoke", "--until", "train_l2",
              "--set", "train_l2.fit.min_train_rows=1000000")  # more rows than smoke has
    assert r["rc"] == 1 and "stage 'train_l2' failed" in r["err"], r["err"][-3000:]
    store = {f.removeprefix("hrlxf/failing/") for f in fs.find("hrlxf/failing")}
    assert {f"raw/smoke/w000{i}/DONE" for i in range(4)} <= store
    assert sum(f.startswith("lake/macro/smoke/") for f in store) == 4 and "reports/pipeline/last.json" in store
    assert json.loads(fs.cat("hrlxf/failing/reports/pipeline/last.json"))["failed_stage"] == "train_l2"
    assert ".hrlxf-run.lease" not in store
