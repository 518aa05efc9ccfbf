"""The collect stage: complete worlds on disk, resume without redoing or losing a world (also after kill -9)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tasks.collect import DONE, FAILED, CollectProfile, collect_world, jobs_for, run_collect

SMALL = CollectProfile(worlds=3, steps=10, experts=("PenguinAgent", "AS0"), agents_per_world=(4, 6), workers=2)
ROOT = Path(__file__).resolve().parents[1]


def _done_times(run: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in run.glob(f"*/{DONE}")}


def test_worlds_are_complete_and_a_rerun_redoes_only_partial_ones(tmp_path):
    summary = run_collect(SMALL, tmp_path, "r1")
    assert summary["worlds_done"] == 3 and summary["worlds_failed"] == 0 and summary["events"] > 0
    run = tmp_path / "r1"
    for w in run.glob("w*"):
        meta = json.loads((w / "world.json").read_text())
        assert set(meta["agents"]) == {p.stem for p in (w / "events").glob("*.jsonl")}
        assert (w / "contracts.jsonl").exists() and (w / DONE).exists()
    before = _done_times(run)
    (run / "w0001" / DONE).unlink()  # as if the run died while writing w0001
    (run / "w0001" / "events" / "junk.jsonl").write_text("{half a line")
    again = run_collect(SMALL, tmp_path, "r1")
    assert again["worlds_skipped"] == 2 and again["worlds_done"] == 1
    after = _done_times(run)
    assert after["w0000"] == before["w0000"] and after["w0002"] == before["w0002"]
    assert not (run / "w0001" / "events" / "junk.jsonl").exists()
    assert run_collect(SMALL, tmp_path, "r1")["worlds_skipped"] == 3  # nothing left to do


def test_a_failing_world_is_marked_and_the_others_complete(tmp_path):
    profile = CollectProfile(worlds=2, steps=10, experts=("crashing_agents:RaisingAgent",), agents_per_world=(4, 4), workers=1)
    summary = run_collect(profile, tmp_path, "bad")
    assert summary["worlds_failed"] == 2 and "boom on day 2" in summary["failed"][0]["error"]
    assert (tmp_path / "bad" / "w0000" / FAILED).exists() and not (tmp_path / "bad" / "w0000" / DONE).exists()


def test_resume_after_kill_minus_9(tmp_path):
    env = dict(os.environ, HRLXF_DATA=str(tmp_path), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "flows.cli", "collect", "--profile", "smoke", "--run-id", "k"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run = tmp_path / "raw" / "k"
    deadline = time.time() + 120
    while time.time() < deadline and not list(run.glob(f"*/{DONE}")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = _done_times(run)
    assert 1 <= len(finished) < 4, finished  # killed mid-run
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    after = _done_times(run)
    assert len(after) == 4
    assert all(after[w] == t for w, t in finished.items())  # no world run twice
    summary = json.loads((run / "summary.json").read_text())
    assert summary["worlds_skipped"] == len(finished) and summary["worlds_failed"] == 0


def test_the_same_worlds_run_on_a_threaded_dask_worker(tmp_path):
    """Two worlds at once in the threads of one Dask worker process: each runs in a process of its own, so
    neither reseeds the other's random generators: the worlds are the ones local processes play."""
    from distributed import LocalCluster

    local = run_collect(SMALL, tmp_path, "local")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        summary = run_collect(SMALL, tmp_path, "dask", dask_address=cluster.scheduler_address)
    assert local["worlds_done"] == summary["worlds_done"] == 3 and summary["worlds_failed"] == 0

    def contracts(run: str, world: str) -> list[dict]:  # every field but the contract's uuid
        lines = (tmp_path / run / world / "contracts.jsonl").read_text().splitlines()
        return sorted((json.dumps({k: v for k, v in json.loads(line).items() if k != "id"}, sort_keys=True)
                       for line in lines))

    for world in ("w0000", "w0001", "w0002"):
        assert contracts("dask", world) == contracts("local", world), world


def test_a_hanging_world_times_out_on_a_threaded_dask_worker(tmp_path):
    """The world's SIGALRM limit needs a main thread: on a worker thread the world runs in its own process."""
    from distributed import LocalCluster

    profile = CollectProfile(worlds=1, steps=10, experts=("crashing_agents:HangingAgent",), agents_per_world=(4, 4),
                             workers=2, world_timeout=5.0)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        start = time.time()
        summary = run_collect(profile, tmp_path, "hang", dask_address=cluster.scheduler_address)
        assert time.time() - start < 90
    assert summary["worlds_failed"] == 1 and "limit" in summary["failed"][0]["error"]


def test_a_hanging_world_times_out_and_is_marked_failed(tmp_path):
    profile = CollectProfile(worlds=1, steps=10, experts=("crashing_agents:HangingAgent",), agents_per_world=(4, 4),
                             workers=2, world_timeout=5.0)
    start = time.time()
    summary = run_collect(profile, tmp_path, "hang")
    assert summary["worlds_failed"] == 1 and "limit" in summary["failed"][0]["error"]
    assert time.time() - start < 60
    assert (tmp_path / "hang" / "w0000" / FAILED).exists()


def test_an_unknown_agent_fails_before_any_world(tmp_path):
    import pytest

    from hrlxf_agent.registry import UnknownAgentError

    with pytest.raises(UnknownAgentError, match="NoSuchAgent"):
        run_collect(CollectProfile(worlds=2, steps=10, experts=("PenguinAgent", "NoSuchAgent")), tmp_path, "x")
    assert not (tmp_path / "x").exists()


def test_a_write_error_marks_the_world_failed_never_complete(tmp_path, monkeypatch):
    import errno

    from hrlxf_agent import tracker

    def full_disk(self):
        if self.buffer:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tracker.TrackerHook, "flush", full_disk)  # in this process: the world is played here
    profile = CollectProfile(worlds=1, steps=10, experts=("PenguinAgent", "AS0"), agents_per_world=(4, 4), workers=1)
    job, = jobs_for(profile, tmp_path, "disk")
    row = collect_world(job)
    assert "No space left" in row["error"]
    world = tmp_path / "disk" / "w0000"
    assert (world / FAILED).exists() and not (world / DONE).exists()
