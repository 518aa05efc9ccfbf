"""The Prefect pipeline on the smoke profile (4 worlds x 10 steps), through `hrlxf run` in child processes:
resume after kill -9 in collect, all cache hits on a rerun, downstream-only recomputation when raw worlds
are added (on a Dask cluster) or one stage's config changes, a failing stage, and the deployments of
prefect.yaml on a real server started by `make serve` (the refusals: test_pipeline_guards.py).

The first run and its resumption start Prefect's temporary API, as `make run` does; the other commands report
to the session's (`conftest.child_env`).

The tests share one data root and run in file order: each leaves it complete for the next.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, dask_processes, data_env, hrlxf_run as hrlxf

from tasks.fingerprint import fingerprint

BIN = Path(sys.executable).parent
STAGES = ["collect", "events", "tables", "train_l2", "backfill", "train_l3", "train_l3_rules", "train_l4",
          "bundle", "bundle_rules", "finetune", "evaluate"]


def states(r: dict) -> dict[str, str]:
    return {s["stage"]: s["state"] for s in r["report"]["stages"]}


def done_times(run: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in run.glob("*/DONE")}


def mtimes(paths) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in paths}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """A smoke pipeline whose first run is killed (kill -9, whole process group) once a world is complete,
    then run again to the end; both on Prefect's temporary API, as `make run` runs."""
    root = tmp_path_factory.mktemp("pipeline")
    run = root / "raw" / "smoke"
    cmd = [sys.executable, "-m", "flows.cli", "run", "--profile", "smoke", "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=data_env(root, ephemeral=True), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not done_times(run) and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = done_times(run)
    resumed = hrlxf(root, "--profile", "smoke", ephemeral=True)
    return {"root": root, "finished": finished, "resumed": resumed}


def test_a_run_killed_in_collect_resumes_without_redoing_finished_worlds(data):
    finished, r = data["finished"], data["resumed"]
    assert 1 <= len(finished) < 4, finished  # killed in the middle of collect
    assert r["rc"] == 0, r["err"][-3000:]
    after = done_times(data["root"] / "raw" / "smoke")
    assert len(after) == 4
    assert all(after[w] == t for w, t in finished.items())  # no finished world played again
    worlds = r["report"]["worlds"]
    assert worlds["skipped"] == len(finished) and worlds["played"] == 4 - len(finished) and not worlds["failed"]
    assert list(states(r)) == STAGES and all(s == "computed" for s in states(r).values()), states(r)
    evaluated = r["report"]["evaluation_units"]  # (world, candidate) units, mapped as tasks
    # the two offline bundles, the race's (the rules bundle: one smoke look commits nothing) and PenguinAgent
    assert evaluated["played"] == 4 and evaluated["workers"] and not evaluated["failed"], evaluated
    assert Path(r["report"]["bundle"], "manifest.json").is_file() and Path(r["report"]["evaluation"]).is_file()
    assert f"LATEST bundle: {r['report']['bundle']}" in r["out"] and f"evaluation: {r['report']['evaluation']}" in r["out"]
    latest = (data["root"] / "bundles" / "LATEST").read_text().strip()  # relative to bundles/: the root may move
    assert (data["root"] / "bundles" / latest).resolve() == Path(r["report"]["bundle"]).resolve()
    # no bundle shows evidence in one world: with no LATEST before, LATEST is the rules
    assert r["report"]["latest"]["move"] and r["report"]["latest"]["to"] == "hrlxf-rules", r["report"]["latest"]
    assert "LATEST is the rules" in r["report"]["latest"]["reason"] and "too few worlds" in r["report"]["latest"]["reason"]
    assert r["report"]["bundle"] in r["report"]["bundles"].values()  # the race's bundle: the rules


def test_a_second_run_with_nothing_changed_is_all_cache_hits_in_seconds(data):
    r = hrlxf(data["root"], "--profile", "smoke")
    assert r["rc"] == 0, r["err"][-3000:]
    assert all(s == "cached" for s in states(r).values()), states(r)
    assert r["report"]["worlds"]["played"] == 0 and r["report"]["evaluation_units"]["played"] == 0
    assert r["report"]["seconds"] < 15, r["report"]["seconds"]  # the flow itself; the rest is start-up
    assert r["report"]["bundle"] == data["resumed"]["report"]["bundle"]
    print(f"cached rerun: flow {r['report']['seconds']} s, command {r['wall']:.1f} s")


def cli(data: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=data_env(data), capture_output=True,
                          text=True, timeout=600)


def test_the_training_commands_are_the_flows_stages_with_its_cache(data):
    """`hrlxf train` runs the pipeline's own stages through its flow: what `hrlxf run` trained is a cache hit,
    a variant the pipeline does not train (the direct L3) is trained and bundled, and LATEST does not move."""
    root = data["root"]
    latest = (root / "bundles" / "LATEST").read_text()
    p = cli(root, "train", "all", "--smoke")
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads((root / "reports" / "pipeline" / "last.json").read_text())
    assert {s["stage"]: s["state"] for s in report["stages"]} == dict.fromkeys(
        ["train_l2", "backfill", "train_l3", "train_l3_rules", "train_l4", "bundle", "bundle_rules"], "cached")
    assert "train_l3_rules: val op accuracy" in p.stdout
    p = cli(root, "train", "l3", "--smoke", "--modes", "direct")
    assert p.returncode == 0, p.stderr[-3000:]
    assert (root / "models" / "l3-direct" / "metrics.json").is_file() and "| train_l3 | computed" in p.stdout
    p = cli(root, "bundle", "build", "--smoke", "--mode", "direct")
    assert p.returncode == 0, p.stderr[-3000:]
    bundle = Path(p.stdout.strip().splitlines()[-1].removeprefix("wrote "))
    assert bundle.name.startswith("hrlxf-direct-") and json.loads((bundle / "manifest.json").read_text())
    assert (root / "bundles" / "LATEST").read_text() == latest
    assert cli(root, "train", "l3", "--modes", "sideways").returncode == 2


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """A scheduler and two `dask worker` processes (two threads each) on loopback; yields (address, pids)."""
    home = tmp_path_factory.mktemp("dask")
    with dask_processes(home, [data_env(home)] * 2) as cluster:
        yield cluster


def test_collect_and_the_lake_run_on_two_dask_worker_processes_and_only_new_worlds_are_converted(
        data, dask_cluster, tmp_path):
    """A new run of worlds, played on a scheduler and two `dask worker` processes, like its events and tables,
    on a copy of the data root (the evaluation's units on a cluster: test_store): the new worlds' events and
    tables are built, the earlier worlds' are not rewritten."""
    address, pids = dask_cluster
    root = tmp_path / "root"
    shutil.copytree(data["root"], root, symlinks=True)
    old = mtimes([*root.glob("lake/events/smoke/*/days.parquet"), *root.glob("lake/macro/smoke/*.parquet"),
                  *root.glob("lake/micro/smoke/*.parquet")])
    r = hrlxf(root, "--profile", "smoke", "--run-id", "dask", "--dask-address", address, "--until", "tables")
    assert r["rc"] == 0, r["err"][-3000:]
    assert r["report"]["task_runner"] == f"dask {address}"
    worlds = r["report"]["worlds"]
    assert worlds["played"] == 4 and not worlds["failed"], worlds
    assert {int(w.rsplit(":", 1)[1]) for w in worlds["workers"]} <= pids, (worlds, pids)  # host:pid of each world
    assert len(set(worlds["workers"])) == 2  # both workers took worlds
    assert len(done_times(root / "raw" / "dask")) == 4
    assert states(r) == dict.fromkeys(("collect", "events", "tables"), "computed"), states(r)
    events, tables = (r["report"]["stages"][i]["summary"] for i in (1, 2))
    assert events["converted"] == 4 and events["skipped"] == 4  # only the new worlds were converted
    for lake_stage in (events, tables):  # their worlds too ran on the cluster's workers
        assert lake_stage["workers"] and {int(w.rsplit(":", 1)[1]) for w in lake_stage["workers"]} <= pids, lake_stage
    assert len(list(root.glob("lake/macro/dask/*.parquet"))) == 4
    assert mtimes(Path(p) for p in old) == old  # the earlier worlds' tables were not rewritten


def test_independent_stages_overlap_in_time(data):
    """The three trainings read the same tables and nothing of one another: the flow runs them at once
    (the resumed run, which computed every stage)."""
    report = data["resumed"]["report"]
    spans = {s["stage"]: s for s in report["stages"]}
    starts = {n: spans[n]["start_s"] for n in ("train_l3", "train_l3_rules", "train_l4")}
    ends = {n: spans[n]["end_s"] for n in starts}
    assert max(starts.values()) < min(ends.values()), (starts, ends)  # all three were running at one moment
    assert spans["backfill"]["end_s"] <= min(starts.values())  # and none started before what it reads
    assert all(s["peak_mb"] > 100 for s in report["stages"]), spans  # each stage's memory was measured
    assert report["worlds"]["peak_mb"] > 100 and report["evaluation_units"]["peak_mb"] > 100


def test_a_failing_stage_is_named_and_leaves_earlier_artifacts_and_caches_intact(data):
    root = data["root"]
    artifacts = {name: fingerprint(root / name) for name in ("raw", "lake", "models", "bundles")}
    records = sorted(p.name for p in (root / "prefect" / "results").iterdir())
    r = hrlxf(root, "--profile", "smoke", "--set", "train_l2.fit.min_train_rows=1000000")  # more than smoke has
    assert r["rc"] == 1
    assert "stage 'train_l2' failed" in r["err"] and "TrainingDataError" in r["err"], r["err"][-3000:]
    report = r["report"]
    assert report["status"] == "failed" and report["failed_stage"] == "train_l2"
    # what it reads ran before it; finetune, which reads nothing of the pipeline, beside it
    assert {s["stage"]: s["state"] for s in report["stages"]} == dict.fromkeys(
        ("collect", "events", "tables", "finetune"), "cached"), report["stages"]
    assert {name: fingerprint(root / name) for name in artifacts} == artifacts
    assert set(records) <= {p.name for p in (root / "prefect" / "results").iterdir()}  # every cache record kept


def test_a_changed_stage_config_recomputes_only_that_stage_and_the_ones_after(data):
    """(After the failing run above: the stages before train_l4 are still cache hits.)"""
    r = hrlxf(data["root"], "--profile", "smoke", "--set", "train_l4.fit.max_epochs=2")
    assert r["rc"] == 0, r["err"][-3000:]
    got = states(r)
    assert all(got[s] == "cached" for s in STAGES[:STAGES.index("train_l4")]), got
    assert all(got[s] == "computed" for s in ("train_l4", "bundle", "bundle_rules", "evaluate")), got
    assert got["finetune"] == "cached", got  # the race starts from the rules: no offline input
    # the old LATEST plays beside the new bundles; one smoke world cannot show a difference: LATEST stays
    latest = r["report"]["latest"]
    assert not latest["move"] and "too few worlds" in latest["reason"], latest
    # played: the two new offline bundles; the race's (the rules, also the old LATEST) and PenguinAgent are reused
    units = r["report"]["evaluation_units"]
    assert units["played"] == 2 and len(units["candidates"]) == 4, units


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(port: int, path: str, body: dict) -> list[dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _screenshot(url: str, out: Path) -> None:
    """The Prefect UI's page of a flow run (its graph of task runs) in headless Chromium, when installed."""
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_bin):
        return
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--window-size=1600,1000", "--enable-unsafe-swiftshader"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_bin), options=options)
    try:
        driver.get(url)
        time.sleep(15)  # the graph is drawn on a canvas once the task runs are fetched
        out.parent.mkdir(exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def test_make_serve_registers_the_deployments_and_full_pipeline_completes(data):
    """`make serve` (server on loopback, SQLite, a process worker, `prefect deploy --all`), then
    `prefect deployment run hrlxf/full-pipeline` with smoke parameters on the same data root."""
    root, port = data["root"], _free_port()
    log = root / "serve.log"
    env = data_env(root, ephemeral=True, PREFECT_PORT=str(port))
    with log.open("w") as out:
        serve = subprocess.Popen(["make", "-o", ".venv/.installed", f"BIN={BIN}", "serve"], cwd=ROOT, env=env,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    api = {**data_env(root), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    try:
        deadline = time.time() + 240
        while "Worker 'ProcessWorker" not in log.read_text():
            assert serve.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        ls = subprocess.run([BIN / "prefect", "deployment", "ls"], env=api, capture_output=True, text=True, timeout=120)
        for name in ("hrlxf/full-pipeline", "hrlxf/nightly-collect", "hrlxf/evaluate"):
            assert name in ls.stdout, ls.stdout
        nightly = subprocess.run([BIN / "prefect", "deployment", "inspect", "hrlxf/nightly-collect"], env=api,
                                 capture_output=True, text=True, timeout=120)
        assert "0 2 * * *" in nightly.stdout, nightly.stdout
        bad = subprocess.run([BIN / "prefect", "deployment", "run", "hrlxf/full-pipeline", "--param", "profile=bogus"],
                             env=api, capture_output=True, text=True, timeout=120)
        assert bad.returncode != 0 and "smoke" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
        run = subprocess.run([BIN / "prefect", "deployment", "run", "hrlxf/full-pipeline", "--param", "profile=smoke",
                              "--watch", "--watch-timeout", "600"], env=api, capture_output=True, text=True, timeout=660)
        assert run.returncode == 0 and "Completed" in run.stdout, (run.stdout + run.stderr)[-3000:]
        report = json.loads((root / "reports" / "pipeline" / "last.json").read_text())
        assert report["status"] == "completed" and [s["stage"] for s in report["stages"]] == STAGES
        flow_run = re.search(r"UUID: *([0-9a-f-]{36})", run.stdout).group(1)  # the run the deployment started
        runs = _api(port, "task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run]}}, "limit": 200})
        names = {t["id"]: t["name"] for t in runs}  # a stage whose cached outputs changed runs twice: both count
        # (a unit mapped inside a stage's task names it as its parent: nesting, not an edge of the graph)
        edges = {t["name"]: sorted({names[i["id"]] for k, ins in t["task_inputs"].items() if k != "__parents__"
                                    for i in ins}) for t in runs}
        # the graph the UI draws: each stage's edges are exactly the stages it reads from
        assert edges["train_l3"] == edges["train_l4"] == ["backfill", "events", "tables"], edges
        assert edges["evaluate"] == ["bundle", "bundle_rules", "finetune"] and edges["finetune"] == [], edges
        from flows.stages import STAGES as PLANNED, upstream

        # and no other edge: every stage's are its upstream stages, the world and evaluation units have none
        # (Prefect's inference by object id would draw stale ones: tasks.parallel.no_inferred_edges)
        assert {s.name: edges[s.name] for s in PLANNED} == {s.name: upstream(s, list(PLANNED)) for s in PLANNED}, edges
        assert not any(e for name, e in edges.items() if name not in {s.name for s in PLANNED}), edges
        _screenshot(f"http://127.0.0.1:{port}/runs/flow-run/{flow_run}", ROOT / "tests" / "artifacts" / "prefect-dag.png")
    finally:
        os.killpg(serve.pid, signal.SIGINT)  # the worker stops, then make stops the server
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
