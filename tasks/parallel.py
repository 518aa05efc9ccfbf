"""Parallel units of work, each in a fresh process of its own, mapped as Prefect tasks on a task runner.

`run_jobs` is the project's one mapper: collect's worlds, the lake's (events, tables), the evaluation's
units, the audit's worlds and the fine-tuning's rollouts are each a Prefect task on Prefect's
ThreadPoolTaskRunner here or prefect-dask's DaskTaskRunner on a cluster, and each task runs its unit in
a fresh process. A fresh process per unit, not a reused pool worker, because a world's result must not
depend on what ran before it: scml worlds replayed in a reused worker process diverged (the same bundle in
the same world configuration scored 0.621 and 0.726 in two workers of one pool) while three fresh
processes gave 0.7410 three times (docs/evaluation.md). It also means a unit whose process dies loses only
itself, on one machine as on a cluster, and that units on a Dask worker with several threads share no
seeds, environment or signal handlers. Locally a unit's process is forked from a fork server that has
imported what units need (`in_fresh_process`: ~2 s a unit instead of 6 s of imports); on a Dask worker, a
daemonic process, it is a subprocess (`in_own_process`, which also runs a pipeline stage that overlaps
others).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import psutil

J = TypeVar("J")
R = TypeVar("R")

#: agents iterate over sets of partner ids: a fixed hash seed makes worlds repeatable
WORKER_ENV = {"PYTHONHASHSEED": "0"}

#: pids of the `in_own_process` children alive now: their memory is theirs, not their caller's
_OWN_PROCESSES: set[int] = set()


def run_jobs(
    fn: Callable[[J], dict],
    jobs: Sequence[J],
    workers: int,
    died: Callable[[J], dict],
    progress: Callable[[dict], None] | None = None,
    dask_address: str | None = None,
    name: Callable[[J], str] | None = None,
) -> list[dict]:
    """``fn(job)`` for every job as a Prefect task (``name(job)`` its run's name) on a task runner: ``workers``
    local threads (Prefect's ThreadPoolTaskRunner) or the Dask cluster whose scheduler is at ``dask_address``
    (prefect-dask's DaskTaskRunner); each task runs its job in a fresh process (`fresh`). Rows in completion
    order, each with the ``worker`` (host:pid) whose task ran it.

    The one mapper of the project: the pipeline's worlds, the lake's, the evaluation's, the audit's and the
    fine-tuning's rollouts. Inside a flow the tasks are the run's (mapped from inside a stage's task, the
    lake's worlds and the rollouts, they are that task's children in the UI); outside one they report to
    the API of `prefect_api`. ``fn`` must not raise (it returns its error in the row);
    a job whose process dies (or whose task or Dask worker is lost) gets the row ``died(job)`` and the others
    go on.
    """
    from prefect.context import SyncClientContext
    from prefect.futures import as_completed

    rows: list[dict] = []
    if not jobs:
        return rows
    no_inferred_edges()  # the parameters are not quoted: DaskTaskRunner hands a quoted value over as a tuple
    # one API client for the tasks of this call (the runner's threads inherit it): without one, each task
    # made its own, ~30 ms of CPU a task (most of it loading the TLS certificates)
    with prefect_api(), SyncClientContext.get_or_create(), \
            _runner(max(1, min(workers, len(jobs))), dask_address) as runner:
        futures = {}
        for job in jobs:
            label = name(job) if name else f"{getattr(fn, '__name__', 'unit')}-{len(futures)}"
            futures[runner.submit(_unit_task(), {"fn": fn, "job": job, "died": died, "name": label})] = job
        for future in as_completed(list(futures)):
            try:
                row = future.result()
            except Exception as e:  # noqa: BLE001 - the task or its Dask worker was lost: the job only
                logging.getLogger(__name__).warning("%r lost: %s: %s", futures[future], type(e).__name__, e)
                row = died(futures[future])
            rows.append(row)
            if progress:
                progress(row)
    return rows


class _NoLinks(dict):
    """A flow run's ``run_results`` that keeps nothing (`no_inferred_edges`)."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def no_inferred_edges() -> None:
    """Stop Prefect from linking result objects to the tasks that returned them in the current flow run.

    Prefect draws an edge to a task whose result object a new task's parameters hold, found by ``id``; for a
    plain dict result (a stage's record, a world's row) CPython recycles that id once the dict is freed, so a
    new object drew edges to tasks it never read (train_l4 -> evaluate; PrefectHQ/prefect#20558). Those
    links (``FlowRunContext.run_results``) serve nothing else, so the run keeps none, and its edges are the
    stages each task waits for (``wait_for``). Clearing them before each submission left a window in which
    another stage's thread could link a result."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is not None and not isinstance(ctx.run_results, _NoLinks):
        ctx.run_results = _NoLinks()


@functools.cache
def _unit_task() -> Any:
    """The Prefect task of one unit (made on first use: importing this module does not import Prefect, which
    the fork server's units do not need)."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    def unit(fn: Callable[[J], dict], job: J, died: Callable[[J], dict], name: str) -> dict:
        return {**fresh(fn, job, died), "worker": f"{socket.gethostname()}:{os.getpid()}"}

    return task(unit, name="unit", task_run_name="{name}", cache_policy=NO_CACHE, persist_result=False)


def _runner(workers: int, dask_address: str | None) -> Any:
    """A task runner: ``workers`` threads here (each waits on the fresh process of its unit), or the Dask
    cluster at ``dask_address``."""
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=workers)


#: the temporary API server `prefect_api` started, and how many blocks use it now
_API_LOCK = threading.Lock()
_API: dict[str, Any] = {"server": None, "users": 0}


@contextmanager
def prefect_api() -> Iterator[str]:
    """The Prefect API the tasks of this process report to: PREFECT_API_URL if set, else Prefect's server
    started here, in a process of its own (otherwise every worker process would start one), and stopped when
    the last block using it ends; a server this process already ran (a flow's own) is used, never stopped.
    Tasks outside a flow (the audit's worlds) log to the console only."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import (
        PREFECT_API_URL, PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW, temporary_settings,
    )

    quiet = {PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"}

    with _API_LOCK:
        server = _API["server"]  # ours, still in use (another thread's block): one more user
        if server is None and PREFECT_API_URL.value():
            url = PREFECT_API_URL.value()  # a server someone else runs
        else:
            if server is None:
                server = SubprocessASGIServer()  # Prefect's one instance per process
                if not server.running:
                    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry
                    server.start(timeout=int(os.environ.get("HRLXF_PREFECT_STARTUP_TIMEOUT", "120")))
                    os.environ["PREFECT_API_URL"] = server.api_url  # for the processes it starts (a stage's own)
                    _API["server"] = server
            url = server.api_url
        ours = server is not None and _API["server"] is server
        _API["users"] += ours
    try:
        with temporary_settings({PREFECT_API_URL: url, **quiet}):
            yield url
    finally:
        with _API_LOCK:
            _API["users"] -= ours
            last = ours and _API["users"] == 0
            if last:
                _API["server"] = None
        if last:
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            for worker in (APILogWorker, EventsWorker):  # deliver what is queued before the API goes away
                worker.drain_all(timeout=10)
            os.environ.pop("PREFECT_API_URL", None)
            server.stop()


def map_units(fn: Callable[[J], dict], jobs: Sequence[J], workers: int, died: Callable[[J], dict],
              desc: str = "units", dask_address: str | None = None,
              name: Callable[[J], str] | None = None, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Pure per-world work (a world's events, tables or goal_hat) with a progress bar: `run_jobs` on the Dask
    cluster at ``dask_address`` or, when ``workers`` > 1, on that many local processes; otherwise in this
    process, one after another (exceptions raised here). Each row gets what `_measured` adds (`unit_figures`
    sums them) and ``name(job)`` names its task; ``on_row(row)`` runs here as each unit ends (its record is
    written then, not after the last unit)."""
    from tqdm import tqdm

    with tqdm(total=len(jobs), desc=desc, unit="world", disable=None) as bar:
        def done(row: dict) -> None:
            if on_row:
                on_row(row)
            bar.update()

        if dask_address or workers > 1:
            return run_jobs(functools.partial(_measured, fn), jobs, workers, died, progress=done,
                            dask_address=dask_address, name=name)
        rows = []
        for job in jobs:
            rows.append({**_measured(fn, job), "worker": f"{socket.gethostname()}:{os.getpid()}"})
            done(rows[-1])
        return rows


def _measured(fn: Callable[[J], dict], job: J) -> dict:
    """``fn(job)``'s row with its CPU seconds and the peak memory of the process that ran it: a unit of
    `map_units`."""
    cpu = time.process_time()
    row = fn(job)
    return {**row, "cpu_seconds": time.process_time() - cpu, "peak_mb": peak_mb()}


def unit_figures(rows: Sequence[dict]) -> dict[str, Any]:
    """What the units of `map_units` cost: their CPU seconds, the workers (host:pid of the processes whose
    tasks ran them), and the largest peak memory of the units' processes (MB); a unit whose process died
    counts nothing."""
    return {"cpu_seconds": round(sum(r.get("cpu_seconds", 0.0) for r in rows), 2),
            "workers": sorted({r["worker"] for r in rows if "worker" in r}),
            "unit_peak_mb": round(max((r.get("peak_mb", 0.0) for r in rows), default=0.0))}


def fresh(fn: Callable[[J], dict], job: J, died: Callable[[J], dict]) -> dict:
    """``fn(job)`` in a fresh process (`in_fresh_process`); ``died(job)`` if that process dies or raises."""
    try:
        return in_fresh_process(fn, job)
    except Exception as e:  # noqa: BLE001 - the unit is lost, not the run
        logging.getLogger(__name__).warning("%r lost: %s: %s", job, type(e).__name__, e)
        return died(job)


@functools.cache
def _fork_server() -> Any:
    """multiprocessing's fork server context, with `tasks.preload.PRELOAD` to import and `WORKER_ENV` in its environment
    (the server starts with the first unit; a second call racing the first sets the same things)."""
    os.environ.update(WORKER_ENV)  # read by the server's interpreter at its start, so by every unit's
    from tasks.preload import PRELOAD

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx


def in_fresh_process(fn: Callable[..., R], *args: Any) -> R:
    """``fn(*args)`` in a process forked from a fork server that has imported `tasks.preload.PRELOAD` and nothing
    else ran in: every call starts from the same state (a world replays the same whatever ran before it) for the price of a
    fork, not of the imports (6 s of CPU). One math thread. On a daemonic process (a Dask worker), whose
    children multiprocessing refuses, `in_own_process` instead."""
    if multiprocessing.current_process().daemon:
        return in_own_process(fn, *args, threads=1)
    with tempfile.TemporaryDirectory(prefix="hrlxf-unit-") as tmp:
        out = Path(tmp) / "result.pickle"
        proc = _fork_server().Process(target=_run_and_write, args=(str(out), fn, args, 1), daemon=False)
        proc.start()  # not one of _OWN_PROCESSES: a unit's memory is its caller's (the stage that maps units)
        proc.join()
        return _result(out, fn, proc.exitcode)


def in_own_process(fn: Callable[..., R], *args: Any, threads: int | None = None, prefect_context: bool = False) -> R:
    """``fn(*args)`` in a fresh Python process, its exception raised here: what it seeds (random, numpy,
    torch), its environment and its signal handlers (a world's SIGALRM timeout) are its own, so two calls
    from two threads cannot mix them. ``threads`` caps its math threads (torch, OpenMP). With
    ``prefect_context``, the caller's flow and task run go with it (`prefect_context_of_caller`): tasks it
    maps (the fine-tuning's rollouts) are that run's, children of the calling stage in the UI.

    A plain subprocess (``python -m tasks.parallel``, arguments and result pickled), not a multiprocessing
    pool: a Dask worker is a daemonic process, which multiprocessing forbids to have children."""
    # the caller's import path, as multiprocessing's spawn hands it over
    env = {**os.environ, **WORKER_ENV, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory(prefix="hrlxf-call-") as tmp:
        out = Path(tmp) / "result.pickle"
        with subprocess.Popen([sys.executable, "-m", "tasks.parallel", str(out)], stdin=subprocess.PIPE,
                              env=env) as proc:
            _OWN_PROCESSES.add(proc.pid)
            try:
                proc.communicate(pickle.dumps((fn, args, prefect_context_of_caller() if prefect_context else None)))
            finally:
                _OWN_PROCESSES.discard(proc.pid)
        return _result(out, fn, proc.returncode)


def _result(out: Path, fn: Callable, exitcode: int | None) -> Any:
    if not out.exists():
        raise ChildProcessError(f"{getattr(fn, '__qualname__', fn)} ran in process that died (exit code "
                                f"{exitcode}) before it returned")
    ok, value = pickle.loads(out.read_bytes())
    if ok:
        return value
    raise value


def _tree_rss(root: psutil.Process) -> int:
    """Resident bytes of ``root`` and its descendants, without the `in_own_process` children's trees."""
    total, todo = 0, [root]
    while todo:
        proc = todo.pop()
        try:
            total += proc.memory_info().rss
            todo += [c for c in proc.children() if c.pid not in _OWN_PROCESSES]
        except psutil.Error:  # ended while being measured
            pass
    return total


@contextmanager
def peak_memory(interval: float = 0.25) -> Iterator[dict[str, float]]:
    """Yields a dict whose ``peak_mb`` is, after the block, the most resident memory (MB) this process and
    its worker processes held together while it ran, sampled every ``interval`` s. A stage running in a
    process of its own (`in_own_process`) is measured there, and left out of its caller's figure; a block
    that overlaps others of the same process shares their workers' memory."""
    me, result, done = psutil.Process(), {"peak_mb": 0.0}, threading.Event()

    def sample() -> None:
        while True:
            result["peak_mb"] = max(result["peak_mb"], _tree_rss(me) / 2**20)
            if done.wait(interval):
                return

    sampler = threading.Thread(target=sample, name="peak-memory", daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        result["peak_mb"] = round(max(result["peak_mb"], _tree_rss(me) / 2**20), 1)


def prefect_context_of_caller() -> bytes | None:
    """The Prefect flow and task run this thread is in, serialized for another process (Prefect's own
    ``serialize_context``, as its Dask task runner ships it; cloudpickle, for the flow object), or None."""
    if "prefect" not in sys.modules:
        return None
    from prefect.context import FlowRunContext, serialize_context

    if FlowRunContext.get() is None:
        return None
    import cloudpickle

    try:
        return cloudpickle.dumps(serialize_context())
    except Exception as e:  # noqa: BLE001 - the work matters more than where the UI shows its tasks
        logging.getLogger(__name__).warning("the child runs outside the flow run: %s: %s", type(e).__name__, e)
        return None


def _child(result: str) -> None:
    """The other end of `in_own_process`: read (fn, args, Prefect context) from stdin, then `_run_and_write`
    (inside the caller's flow and task run when given, whose queued events and logs are sent before exit)."""
    fn, args, context = pickle.loads(sys.stdin.buffer.read())
    if context is None:
        _run_and_write(result, fn, args)
        return
    from contextlib import ExitStack

    from prefect.context import hydrated_context
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with ExitStack() as stack:
        try:
            stack.enter_context(hydrated_context(pickle.loads(context)))
        except Exception as e:  # noqa: BLE001 - the work matters more than where the UI shows its tasks
            print(f"{getattr(fn, '__qualname__', fn)}: outside the caller's flow run ({type(e).__name__}: {e})",
                  file=sys.stderr)
        try:
            _run_and_write(result, fn, args)
        finally:
            for worker in (APILogWorker, EventsWorker):
                worker.drain_all(timeout=10)


def _run_and_write(result: str, fn: Callable, args: tuple, threads: int | None = None) -> None:
    """Run ``fn(*args)`` and write (ok, value or exception) to ``result`` atomically."""
    if threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    try:
        doc = (True, fn(*args))
    except BaseException as e:  # noqa: BLE001 - handed to the caller, which raises it
        e.add_note("".join(traceback.format_exception(e)).rstrip())
        doc = (False, e)
    try:
        data = pickle.dumps(doc)
    except Exception:  # an exception that does not pickle: its text does
        data = pickle.dumps((False, RuntimeError("".join(traceback.format_exception(doc[1])))))
    tmp = Path(result + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, result)


def peak_mb() -> float:
    """This process's most resident memory so far, MB (``ru_maxrss``; a forked unit counts the pages it shares
    with the fork server)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def shared_threads(concurrent: int) -> int:
    """Math threads for each of ``concurrent`` processes sharing this machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, concurrent))


if __name__ == "__main__":
    _child(sys.argv[1])
