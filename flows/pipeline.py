"""Prefect flows: ``hrlxf`` (the whole pipeline), ``collect`` (nightly collection) and ``evaluate``.

The stages form a DAG (`flows/stages.py` declares what each reads and writes)::

    collect -> events -> tables -> train_l2 -> backfill -> train_l3 (residual over L1's baseline) -> bundle
                                                         -> train_l3_rules (over the rules)     -> bundle_rules
                                                         -> train_l4 (into both bundles)
    finetune (the race over the strategy template, from the rules bundle; reads nothing the pipeline makes)
    bundle, bundle_rules, finetune -> evaluate (beside the rules bundle, the race's start and the LATEST the
    run started with)

Each stage starts when the stages it reads from end, so independent ones (the three trainings, the
fine-tuning) run at once; a stage that trains runs in a process of its own (its seeds and threads are
its own). Every stage is one Prefect task whose cache
key is `tasks.fingerprint.stage_key`: the stage's recipe (config, code version)
and the content fingerprints of its input artifacts, never their paths. Results
(the stage records: output paths, their fingerprints, a summary) are stored as
JSON under ``<data>/prefect/results``, so a cache hit holds across flow runs and
processes. A cached record is used only if its outputs still have the
fingerprints it recorded; otherwise the stage runs again, from scratch.

The worlds of collect, events and tables and the evaluation's units are mapped as tasks of their own
(``world-<id>``, ``events-<run>/<world>``, ``evaluate-w<world>-<candidate>``, ...) by the project's one
mapper, `tasks.parallel.run_jobs`: on a task runner, local threads (Prefect's ThreadPoolTaskRunner) by
default or a Dask cluster (prefect-dask's DaskTaskRunner) given its scheduler address; either way each
unit runs in a fresh process of its own (with one worker and no cluster, the lake's worlds run in the
stage's process, one after another). Finished worlds (``DONE``) are never submitted again, which is
how a killed run resumes.

The three flows share the flow name ``hrlxf`` so that their deployments in
``prefect.yaml`` are ``hrlxf/full-pipeline``, ``hrlxf/nightly-collect`` and
``hrlxf/evaluate``.
"""

from __future__ import annotations

import contextvars
import json
import os
import shutil
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Literal

from prefect import flow, get_run_logger, task
from prefect.utilities.annotations import quote
from tqdm import tqdm

from flows.stages import (
    ARTIFACTS, BUNDLES, BY_NAME, FORCED, PROFILE_NAMES, STAGE_NAMES, ParameterError, Plan, Stage, StageCall, StageFailed,
    check_collect_run, execute_stage, make_plan, overlapping, upstream,
)
from tasks.collect import DONE, CollectJob, collect_world, jobs_for, world_died, world_name
from tasks.evaluate import died as unit_died
from tasks.evaluate import (pipeline_candidates, play_unit, record_plan, resolve_candidates, todo, unit_name, units,
                            units_dir)
from tasks.fingerprint import StageInputsPolicy, fingerprint
from tasks.parallel import no_inferred_edges, peak_memory, run_jobs, shared_threads
from tasks.store import RUN_LOCK, DataRootBusy, StoreError, StoreRoot, data_store

Profile = Literal[PROFILE_NAMES]  # type: ignore[valid-type]
StageName = Literal[STAGE_NAMES]  # type: ignore[valid-type]


# ------------------------------------------------------------------------------- tasks


@task(name="stage", cache_policy=StageInputsPolicy(), persist_result=True, result_serializer="json",
      cache_result_in_memory=False)
def stage_task(call: StageCall) -> dict[str, Any]:
    return execute_stage(call)


# ------------------------------------------------------------------------------- helpers


def _play(todo: list[CollectJob], dask_address: str | None, workers: int) -> list[dict]:
    """Map the worlds as tasks (`tasks.parallel.run_jobs`); a world whose process died is marked FAILED
    (played again next run)."""
    with tqdm(total=len(todo), desc="collect worlds", unit="world", disable=None) as bar:
        return run_jobs(collect_world, todo, workers, world_died, progress=lambda _: bar.update(),
                        dask_address=dask_address, name=world_name)


def _error(state: Any) -> str:
    exc = state.result(raise_on_failure=False)
    return f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(state.message)


def run_stage(call: StageCall, force: bool, results: Path, refresh: bool = False,
              after: list[Any] | None = None) -> tuple[dict, str, float, Any]:
    """Run (or reuse) one stage: (record, how, seconds, its Prefect state); how is cached / computed /
    rebuilt: <why>. ``force`` rebuilds its outputs from scratch; ``refresh`` only skips the cache lookup;
    ``after``: the states of the stages it waited for (the edges of the flow's graph in the UI)."""
    start = time.perf_counter()
    if force:
        call = replace(call, rebuild=FORCED)
    task_ = stage_task.with_options(name=call.stage, task_run_name=call.stage, result_storage=results,
                                    refresh_cache=force or refresh)
    # quote: the graph's edges are the stages waited for, not Prefect's guesses from objects in the call
    state = task_(quote(call), return_state=True, wait_for=after or None)
    if not state.is_completed():
        raise StageFailed(call.stage, _error(state))
    record = state.result()
    if state.name == "Cached":
        data = Path(call.data)
        changed = [name for name, fp in record["fingerprints"].items()
                   if fingerprint(data / record["outputs"][name], ARTIFACTS[name].layout) != fp]
        if not changed:
            return record, "cached", time.perf_counter() - start, state
        call = replace(call, rebuild=f"{', '.join(changed)} changed since the cached run")
        state = task_.with_options(refresh_cache=True)(quote(call), return_state=True, wait_for=after or None)
        if not state.is_completed():
            raise StageFailed(call.stage, _error(state))
        record = state.result()
    how = f"rebuilt: {record['rebuilt']}" if record.get("rebuilt") else "computed"
    return record, how, time.perf_counter() - start, state


def _fields(plan: Plan, paths: dict[str, Path]) -> dict[str, str]:
    return {"run_id": plan.run_id, "mode": getattr(plan.configs.get("train_l3"), "mode", "residual"),
            "bundle_name": paths["bundle"].name if "bundle" in paths else "none",
            **{f"{k}_name": paths[k].name if k in paths else "none" for k in BUNDLES if k != "bundle"}}


def _evaluation_worlds(plan: Plan, paths: dict[str, Path], dask_address: str | None,
                       store: StoreRoot | None = None) -> tuple[Path, dict]:
    """Map the evaluation's (world, candidate) units not played yet as tasks; return where their rows are.

    The directory is keyed by what makes a world and by the evaluate stage's code version; the rows are
    named by what plays (`tasks.candidates.content_digest`: code, bundle weights, releases), so a rerun plays only what is
    missing, other bundles never reuse rows, and more worlds or candidates extend the same directory.
    A unit whose process died writes nothing: it is reported as failed and played on the next run.
    With an object-store root the bundles go to the store first (a worker fetches the ones it plays), each
    unit sends its row there, and the rows are pulled back.
    """
    config = plan.configs["evaluate"]
    specs, _, _ = pipeline_candidates(paths, BUNDLES, plan.data / "bundles")
    candidates = resolve_candidates(config, specs, plan.data / "bundles")
    worlds_dir = units_dir(plan.data / "reports" / "evaluation-worlds", config, code=plan.code["evaluate"]["digest"])
    if "evaluate" in plan.force and worlds_dir.exists():
        shutil.rmtree(worlds_dir)  # forced: play every unit again
    every = units(config, candidates, worlds_dir)
    record_plan(worlds_dir, config, candidates)
    missing = [replace(u, store=store) for u in todo(every)]
    if store is not None and missing:
        store.push("bundles")  # what the workers fetch
    with tqdm(total=len(missing), desc="evaluation units", unit="unit", disable=None) as bar:
        rows = run_jobs(play_unit, missing, plan.workers, unit_died, progress=lambda _: bar.update(),
                        dask_address=dask_address, name=unit_name)
    if store is not None and rows:
        store.pull(store.rel(worlds_dir))
    info = {"played": len(rows), "skipped": len(every) - len(rows), "dir": str(worlds_dir),
            "candidates": [c.label for c in candidates],
            "failed": [{"world": r["world"], "candidate": r["agent"], "error": r["error"]} for r in rows if r["error"]],
            "workers": sorted({r["worker"] for r in rows if "worker" in r})}
    return worlds_dir, info


def _call(plan: Plan, name: str, paths: dict[str, Path], extra: dict | None = None,
          more_paths: dict[str, Path] | None = None, threads: int | None = None,
          dask_address: str | None = None) -> StageCall:
    stage = BY_NAME[name]
    fields = _fields(plan, paths)
    outputs = {}
    for out in stage.outputs:
        path = paths[out] if out.startswith("bundle") and out in paths else plan.data / ARTIFACTS[out].path.format(**fields)
        outputs[out] = (str(path), ARTIFACTS[out].layout)
    return StageCall(
        stage=name, data=str(plan.data), recipe=plan.recipes[name], config=plan.configs[name],
        # the evaluate flow has one bundle; the full pipeline both L3 modes' (an input not made is not read)
        inputs={i: (str(paths[i]), ARTIFACTS[i].layout) for i in stage.inputs if i in paths}, outputs=outputs,
        paths={**{k: str(plan.data / k) for k in ("raw", "lake", "models", "bundles")},
               **{k: str(v) for k, v in (more_paths or {}).items()}}, extra=extra or {}, threads=threads,
        workers=plan.workers, dask_address=dask_address,
    )


def current_latest(bundles: Path) -> Path | None:
    """The bundle directory ``<bundles>/LATEST`` names, if it names one that exists."""
    from hrlxf_agent.bundle import BundleError, load_bundle

    if not (bundles / "LATEST").is_file():
        return None
    name = Path((bundles / "LATEST").read_text().strip())
    path = name if name.is_absolute() else bundles / name
    try:
        return load_bundle(path).path.resolve()
    except BundleError:
        return None  # a LATEST that does not load is no bundle to defend


def _move_latest(plan: Plan, report: dict, current: Path | None) -> dict | None:
    """LATEST moves only on the evaluation's evidence (`tasks.evaluate.decide_latest`): to a bundle that beats
    the rules and the current LATEST; with no LATEST and no such bundle, to the rules bundle."""
    from hrlxf_agent.bundle import set_latest
    from tasks.evaluate import decide_latest
    from hrlxf_agent.bundle import rules_bundle

    if report["evaluation"]:
        doc = json.loads(Path(report["evaluation"]).read_text())
        new = [Path(p).resolve().name for p in report["bundles"].values()]
        rules = rules_bundle(plan.data / "bundles").name
        decision = decide_latest(doc, current.name if current is not None else None, new, rules)
        if decision["move"]:
            set_latest(Path(doc["agents"][decision["to"]]["bundle"]), plan.data / "bundles")
        return decision
    if current is None and report["bundles"]:  # trained, not evaluated: no evidence for any bundle
        rules = rules_bundle(plan.data / "bundles")
        set_latest(rules, plan.data / "bundles")
        return {"move": True, "to": rules.name, "reason": "there was no LATEST and no evaluation: LATEST is the rules"}
    return None


def _write_report(plan: Plan, report: dict) -> Path:
    out = plan.data / "reports" / "pipeline"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{report['started'].replace(':', '').replace('-', '')}-{report['flow']}-{plan.profile}.json"
    for p in (path, out / "last.json"):
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1, default=str))
        os.replace(tmp, p)
    return path


@contextmanager
def holding(data: Path, who: dict[str, Any]) -> Iterator[None]:
    """One pipeline run per data root: two would delete each other's outputs (a forced stage, a partial world).

    An exclusive POSIX lock (``lockf``) on ``DATA/.hrlxf-run.lock``, which names the run holding it; the
    kernel releases it when the run ends or its process dies, even by kill -9, and the processes it starts
    never hold it. A second run refuses at once, naming the first. (A data root shared over NFS needs a lock
    its server honours; see docs/pipeline.md.)"""
    import fcntl

    data.mkdir(parents=True, exist_ok=True)
    with open(data / RUN_LOCK, "a+") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "a run that did not say who it is"
            raise DataRootBusy(f"{data} is held by another pipeline run: {holder}; wait for it to end, "
                               f"or give this run another data root (HRLXF_DATA)") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps(who) + "\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)


def run_pipeline(plan: Plan, dask_address: str | None = None, flow_name: str = "hrlxf",
                 bundle: str | None = None) -> dict[str, Any]:
    """Run the plan's stages in order inside the current flow, holding the data root (and, on an object-store
    root, the store's lease, with the mirror pulled before and pushed after: `tasks.store`); write and return
    the run report. ``bundle``: the bundle to evaluate (a path or ``latest``), resolved once the data is here."""
    who = {"flow": flow_name, "profile": plan.profile, "pid": os.getpid(), "host": socket.gethostname(),
           "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    store = data_store()
    if store is not None and Path(store.mirror) != plan.data:
        store = None  # a plan on another root than HRLXF_DATA's
    if store is None:
        path = _bundle(bundle)  # before anything is written
        with holding(plan.data, who):
            return _run_stages(plan, dask_address, flow_name, path, None)
    with holding(plan.data, who):
        with store.leased(who) as check:  # first: an unreachable store fails here, before any world starts
            logger = get_run_logger()
            pulled = _sync(store, "pull", store.pull)
            logger.info(f"{store.url}: pulled {pulled['pulled']} files ({pulled['bytes']} bytes), deleted "
                        f"{pulled['deleted']}, {pulled['conflicts']} conflicts into {plan.data}")
            if "collect" in {s.name for s in plan.stages} and "collect" not in plan.force:
                check_collect_run(plan.data / "raw" / plan.run_id, plan.configs["collect"])  # the store's run
            try:
                report = _run_stages(plan, dask_address, flow_name, _bundle(bundle), store)
            except BaseException:  # what finished goes to the store for a rerun on any host; the failure stands
                try:
                    _push(store, check, logger)
                except Exception as e:
                    logger.warning(f"{store.url}: not pushed after the failure ({type(e).__name__}: {e}); "
                                   f"the mirror {plan.data} keeps it for the next run from this host")
                raise
            _push(store, check, logger)
            return report


def _bundle(spec: str | None) -> Path | None:
    from hrlxf_agent.bundle import BundleError, load_bundle

    if spec is None:
        return None
    try:
        return load_bundle(spec).path.resolve()
    except BundleError as e:
        raise ParameterError(str(e)) from None


def _sync(store: StoreRoot, what: str, fn: Any) -> dict[str, int]:
    try:
        return fn()
    except StoreError:
        raise
    except Exception as e:
        raise StoreError(f"{store.url}: {what} with the mirror {store.mirror} failed: {type(e).__name__}: {e}") from e


def _push(store: StoreRoot, check: Any, logger: Any) -> None:
    check()  # a run that lost the lease writes nothing into the store
    pushed = _sync(store, "push", store.push)
    logger.info(f"{store.url}: pushed {pushed['pushed']} files ({pushed['bytes']} bytes), deleted {pushed['deleted']}")


class UpstreamFailed(RuntimeError):
    """A stage did not start: a stage it reads from failed (that one is the run's failure)."""


def _run_stages(plan: Plan, dask_address: str | None, flow_name: str, bundle: Path | None,
                store: StoreRoot | None) -> dict[str, Any]:
    """Every planned stage in a thread of its own that starts when the stages it reads from end, so stages
    that do not depend on one another (the trainings, the fine-tuning) run at once and the flow's graph in
    the Prefect UI is the pipeline's DAG. With an object-store root (``store``) only collect's worlds and the
    evaluation's units go to a Dask cluster: they sync their own files with the store (`tasks.store`)."""
    logger = get_run_logger()
    no_inferred_edges()  # the graph's edges are the stages each waits for
    results = plan.data / "prefect" / "results"
    started = datetime.now(timezone.utc)
    report: dict[str, Any] = {
        "flow": flow_name, "profile": plan.profile, "run_id": plan.run_id, "data": str(plan.data),
        "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "status": "running", "failed_stage": None, "error": None,
        "task_runner": f"dask {dask_address}" if dask_address else f"processes x{plan.workers}",
        "store": store.url if store else None,
        "stages": [], "worlds": None, "evaluation_units": None, "bundle": None, "evaluation": None, "latest": None,
    }
    paths: dict[str, Path] = {name: plan.data / a.path for name, a in ARTIFACTS.items() if "{" not in a.path}
    if bundle is not None:
        paths["bundle"] = bundle
    fields = _fields(plan, paths)  # (the flow sets LATEST's own)
    for name, a in ARTIFACTS.items():  # one named by the config (models/l3-<mode>) that an earlier run made
        if name not in paths and "{" in a.path and "{latest_name}" not in a.path:
            if (made := plan.data / a.path.format_map(fields)).exists():
                paths[name] = made
    lock = threading.Lock()  # guards paths and report between the stage threads
    latest_at_start = current_latest(plan.data / "bundles")
    threads = shared_threads(overlapping(plan.stages))

    def run(stage: Stage, waited: list[Any]) -> tuple[dict, str, float, Any]:
        forced = stage.name in plan.force
        with lock:
            now = dict(paths)
        if stage.mode == "collect":
            run_dir = plan.data / "raw" / plan.run_id
            if forced and run_dir.exists():
                shutil.rmtree(run_dir)
            if forced and store is not None:
                store.forget(f"raw/{plan.run_id}")  # the same worlds played again must not look deleted here
            jobs = jobs_for(plan.configs["collect"], plan.data / "raw", plan.run_id)
            missing = [replace(j, store=store) for j in jobs if not (Path(j.out_dir) / DONE).exists()]
            t0 = time.perf_counter()
            with peak_memory() as memory:  # the local worker processes' too (not a Dask cluster's)
                rows = _play(missing, dask_address, plan.workers) if missing else []
            if store is not None and rows:
                store.pull(f"raw/{plan.run_id}")  # the worlds the workers sent to the store
            with lock:
                report["worlds"] = {
                    "played": len(rows), "skipped": len(jobs) - len(missing),
                    "failed": [{"world_id": r["world_id"], "error": r["error"]} for r in rows if r["error"]],
                    "seconds": round(time.perf_counter() - t0, 2), "peak_mb": memory["peak_mb"],
                    "workers": sorted({r["worker"] for r in rows if "worker" in r})}
            call = _call(plan, "collect", now, {"rows": rows, "skipped": len(jobs) - len(missing),
                                                "seconds": time.perf_counter() - t0, "run_id": plan.run_id})
            return run_stage(call, forced, results, refresh=bool(rows), after=waited)  # worlds played: a new summary
        if stage.name == "evaluate":
            if latest_at_start is not None and latest_at_start not in {now[k].resolve() for k in BUNDLES if k in now}:
                now["latest"] = latest_at_start  # played beside the new bundles: LATEST moves only on evidence
            t0 = time.perf_counter()
            with peak_memory() as memory:
                worlds, units_info = _evaluation_worlds(plan, now, dask_address, store)
            units_info |= {"seconds": round(time.perf_counter() - t0, 2), "peak_mb": memory["peak_mb"]}
            with lock:
                report["evaluation_units"] = units_info
            record, how, seconds, state = run_stage(
                _call(plan, stage.name, now, more_paths={"eval_worlds": worlds}), forced, results, after=waited)
            return record, how, seconds + time.perf_counter() - t0, state
        # (with a store, the other stages' units would need the store's files on the workers: they run here)
        return run_stage(_call(plan, stage.name, now, threads=threads, dask_address=None if store else dask_address),
                         forced, results, after=waited)

    spans: dict[str, tuple[float, float]] = {}  # stage -> (start, end) in seconds after the run started
    t_run = time.perf_counter()

    def after(stage: Stage, waits: list[Future]) -> tuple[dict, str, float, Any]:
        states = []
        for name, fut in zip(upstream(stage, plan.stages), waits):
            try:
                states.append(fut.result()[3])
            except Exception:
                raise UpstreamFailed(f"{stage.name} did not run: {name} failed") from None
        t0 = time.perf_counter() - t_run
        record, how, seconds, state = run(stage, states)
        spans[stage.name] = (round(t0, 2), round(time.perf_counter() - t_run, 2))
        with lock:
            for name, rel in record["outputs"].items():
                paths[name] = plan.data / rel
        logger.info(f"{stage.name}: {how} in {seconds:.1f} s -> {', '.join(record['outputs'].values())}")
        return record, how, seconds, state

    futures: dict[str, Future] = {}
    failed: tuple[str, BaseException] | None = None
    try:
        with ThreadPoolExecutor(max_workers=len(plan.stages), thread_name_prefix="stage") as pool:
            for stage in plan.stages:  # in topological order: every upstream future exists already
                waits = [futures[u] for u in upstream(stage, plan.stages)]
                futures[stage.name] = pool.submit(contextvars.copy_context().run, after, stage, waits)
        for stage in plan.stages:
            try:
                record, how, seconds, _ = futures[stage.name].result()
            except UpstreamFailed:
                continue
            except Exception as e:
                failed = failed or (stage.name, e)
                continue
            report["stages"].append({"stage": stage.name, "state": how, "seconds": round(seconds, 2),
                                     "start_s": spans[stage.name][0], "end_s": spans[stage.name][1],
                                     "peak_mb": record.get("peak_mb"),
                                     "key": record["key"], "outputs": record["outputs"], "summary": record["summary"]})
        if failed:
            raise failed[1]
        ran = {s.name for s in plan.stages}
        if "evaluation" in paths and "evaluate" in ran:
            report["evaluation"] = str(paths["evaluation"] / "evaluation.json")
        report["bundles"] = {k: str(paths[k]) for k in BUNDLES if k in paths}  # made or given
        report["latest"] = _move_latest(plan, report, latest_at_start)
        report["bundle"] = str(current_latest(plan.data / "bundles") or "") or None
        report["status"] = "completed"
    except StageFailed as e:
        report.update(status="failed", failed_stage=e.stage, error=e.error)
        raise
    except Exception as e:
        current = failed[0] if failed else None
        report.update(status="failed", failed_stage=current, error=f"{type(e).__name__}: {e}")
        if current is not None:
            raise StageFailed(current, f"{type(e).__name__}: {e}") from e
        raise
    finally:
        report["seconds"] = round((datetime.now(timezone.utc) - started).total_seconds(), 2)
        report["report"] = str(_write_report(plan, report))
    return report


# ------------------------------------------------------------------------------- flows


@flow(name="hrlxf", flow_run_name="pipeline-{profile}", log_prints=True)
def hrlxf(profile: Profile = "default", force: list[StageName] | None = None, dask_address: str | None = None,
          overrides: dict[str, dict[str, Any]] | None = None, until: StageName | None = None, run_id: str | None = None,
          workers: int | None = None, only: list[StageName] | None = None) -> dict[str, Any]:
    """The whole pipeline, collect -> ... -> evaluate.

    profile: smoke (4 worlds x 10 steps, one-epoch training), default or official.
    force: stages to recompute from scratch whatever the cache says.
    dask_address: run the collect worlds on this Dask scheduler (tcp://host:port) instead of local processes.
    overrides: per-stage settings, e.g. {"train_l2": {"fit.max_epochs": 5}}.
    until: stop after this stage.
    run_id: the collect run under DATA/raw (default: the profile name).
    workers: local world processes (default: the profile's).
    only: run just these stages, reading what earlier runs made (`hrlxf train`, `hrlxf bundle build`).
    """
    plan = make_plan(profile, force, overrides, until, run_id, workers, only=only)  # ParameterError before any task runs
    return run_pipeline(plan, dask_address)


def _nightly_date() -> datetime:
    from prefect.runtime import flow_run

    start = flow_run.scheduled_start_time
    return datetime.fromtimestamp(start.timestamp(), timezone.utc) if start else datetime.now(timezone.utc)


@flow(name="hrlxf", flow_run_name="collect-{profile}", log_prints=True)
def collect(profile: Profile = "default", run_id: str | None = None, seed: int | None = None, worlds: int | None = None,
            dask_address: str | None = None, workers: int | None = None) -> dict[str, Any]:
    """Nightly collection: one new run of expert worlds, ``nightly-YYYYMMDD`` with a seed from that date by
    default. The next full-pipeline run converts and trains on it with everything else under DATA/raw."""
    day = _nightly_date()
    settings: dict[str, Any] = {"seed": int(day.strftime("%Y%m%d")) if seed is None else seed}
    if worlds is not None:
        settings["worlds"] = worlds
    plan = make_plan(profile, overrides={"collect": settings}, until="collect",
                     run_id=run_id or f"nightly-{day:%Y%m%d}", workers=workers)
    return run_pipeline(plan, dask_address, flow_name="collect")


@flow(name="hrlxf", flow_run_name="evaluate-{profile}", log_prints=True)
def evaluate(bundle: str = "latest", profile: Profile = "default", overrides: dict[str, dict[str, Any]] | None = None,
             force: bool = False) -> dict[str, Any]:
    """Evaluate a bundle (a path, or 'latest') in paired worlds beside the profile's candidates and the current
    LATEST (which it replaces only if better with an interval that excludes 0); cached on the bundles' content."""
    plan = make_plan(profile, overrides=overrides, force=["evaluate"] if force else None, only=["evaluate"])
    return run_pipeline(plan, flow_name="evaluate", bundle=bundle)  # resolved once an object store is pulled
