"""Parallel units of work, each in a fresh process of its own, on local threads or a Dask cluster.

collect, the evaluation, the audit and the fine-tuning all map their worlds through `run_jobs`, and the
pipeline's world tasks call `in_fresh_process` the same way. A fresh process per unit, not a reused pool
worker, because a world's result must not depend on what ran before it: scml worlds replayed in a reused
worker process diverged (the same bundle in the same world configuration scored 0.621 and 0.726 in two
workers of one pool) while three fresh processes gave 0.7410 three times (docs/evaluation.md). It also
means a unit whose process dies loses only itself, on one machine as on a cluster. Locally a unit's
process is forked from a fork server that has imported what units need (`in_fresh_process`: ~2 s a
unit instead of 6 s of imports); on a Dask worker, a daemonic process, it is a subprocess
(`in_own_process`, which also runs a pipeline stage that overlaps others).
"""

from __future__ import annotations

import functools
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
from concurrent.futures import ThreadPoolExecutor, as_completed
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
) -> list[dict]:
    """``fn(job)`` for every job, each in a fresh process (`fresh`), ``workers`` at a time (or on the Dask
    cluster whose scheduler is at ``dask_address``); rows in completion order.

    ``fn`` must not raise (it returns its error in the row); a job whose process dies (or that raises)
    gets the row ``died(job)`` and the others go on.
    """
    rows: list[dict] = []

    def done(row: dict) -> None:
        rows.append(row)
        if progress:
            progress(row)

    if dask_address:
        run_on_dask(fn, jobs, dask_address, died, done)
        return rows
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="unit") as pool:
        for future in as_completed([pool.submit(fresh, fn, job, died) for job in jobs]):
            done(future.result())
    return rows


def map_units(fn: Callable[[J], dict], jobs: Sequence[J], workers: int, died: Callable[[J], dict],
              desc: str = "units", dask_address: str | None = None) -> list[dict]:
    """Pure per-world work (a world's events or tables) with a progress bar: `run_jobs` on the Dask cluster
    at ``dask_address`` or, when ``workers`` > 1, on that many local processes; otherwise in this process,
    one after another (exceptions raised here). Each row gets what `_measured` adds (`unit_figures` sums them)."""
    from tqdm import tqdm

    with tqdm(total=len(jobs), desc=desc, unit="world", disable=None) as bar:
        if dask_address or workers > 1:
            return run_jobs(functools.partial(_measured, fn, started=True), jobs, workers, died,
                            progress=lambda _: bar.update(), dask_address=dask_address)
        rows = []
        for job in jobs:
            rows.append(_measured(fn, job, started=False))
            bar.update()
        return rows


def _measured(fn: Callable[[J], dict], job: J, started: bool) -> dict:
    """``fn(job)``'s row with its CPU seconds, the peak memory of the process that ran it, and the ``host:pid``
    of that process or, when it was ``started`` for this unit, of its parent (the Dask worker, the local fork
    server): a unit of `map_units`."""
    cpu = time.process_time()
    row = fn(job)
    return {**row, "cpu_seconds": time.process_time() - cpu, "peak_mb": peak_mb(),
            "worker": f"{socket.gethostname()}:{os.getppid() if started else os.getpid()}"}


def unit_figures(rows: Sequence[dict]) -> dict[str, Any]:
    """What the units of `map_units` cost: their CPU seconds, the workers (host:pid) that ran them, and the
    largest peak memory of those processes (MB); a unit whose process died counts nothing."""
    return {"cpu_seconds": round(sum(r.get("cpu_seconds", 0.0) for r in rows), 2),
            "workers": sorted({r["worker"] for r in rows if "worker" in r}),
            "unit_peak_mb": round(max((r.get("peak_mb", 0.0) for r in rows), default=0.0))}


def fresh(fn: Callable[[J], dict], job: J, died: Callable[[J], dict]) -> dict:
    """``fn(job)`` in a fresh process (`in_fresh_process`); ``died(job)`` if that process dies or raises."""
    try:
        return in_fresh_process(fn, job)
    except Exception:  # noqa: BLE001 - the unit is lost, not the run
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


def run_on_dask(fn: Callable[[J], dict], jobs: Sequence[J], address: str, died: Callable[[J], dict],
                done: Callable[[dict], None]) -> None:
    """The same units of work on a Dask cluster, each in a fresh process on its worker (`fresh`), each row to
    ``done``; a lost worker fails its units only (``died(job)``)."""
    from distributed import Client, as_completed as dask_completed

    with Client(address) as client:
        futures = {client.submit(fresh, fn, job, died, pure=False): job for job in jobs}
        for fut in dask_completed(futures):
            try:
                row = fut.result()
            except Exception:  # the worker died or the task was lost
                row = died(futures[fut])
            done(row)


def in_own_process(fn: Callable[..., R], *args: Any, threads: int | None = None) -> R:
    """``fn(*args)`` in a fresh Python process, its exception raised here: what it seeds (random, numpy,
    torch), its environment and its signal handlers (a world's SIGALRM timeout) are its own, so two calls
    from two threads cannot mix them. ``threads`` caps its math threads (torch, OpenMP).

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
                proc.communicate(pickle.dumps((fn, args)))
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


def _child(result: str) -> None:
    """The other end of `in_own_process`: read (fn, args) from stdin, then `_run_and_write`."""
    fn, args = pickle.loads(sys.stdin.buffer.read())
    _run_and_write(result, fn, args)


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
