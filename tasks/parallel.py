"""Parallel units of work, each in a fresh process of its own, on local threads or a Dask cluster.

collect, the evaluation, the audit and the fine-tuning all map their worlds through `run_jobs`, and the
pipeline's world tasks call `in_own_process` the same way. A fresh process per unit, not a reused pool
worker, because a world's result must not depend on what ran before it: scml worlds replayed in a reused
worker process diverged (the same bundle in the same world configuration scored 0.621 and 0.726 in two
workers of one pool) while three fresh processes gave 0.7410 three times (docs/evaluation.md). It also
means a unit whose process dies loses only itself, on one machine as on a cluster.
`in_own_process` also runs a pipeline stage that overlaps others.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import threading
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


def fresh(fn: Callable[[J], dict], job: J, died: Callable[[J], dict]) -> dict:
    """``fn(job)`` in a fresh process with one math thread; ``died(job)`` if that process dies or raises."""
    try:
        return in_own_process(fn, job, threads=1)
    except Exception:  # noqa: BLE001 - the unit is lost, not the run
        return died(job)


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
        if not out.exists():
            raise ChildProcessError(f"{getattr(fn, '__qualname__', fn)} ran in process that died (exit code "
                                    f"{proc.returncode}) before it returned")
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
    """The other end of `in_own_process`: read (fn, args) from stdin, write (ok, value or exception)."""
    fn, args = pickle.loads(sys.stdin.buffer.read())
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


def shared_threads(concurrent: int) -> int:
    """Math threads for each of ``concurrent`` processes sharing this machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, concurrent))


if __name__ == "__main__":
    _child(sys.argv[1])
