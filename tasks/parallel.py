"""Parallel units of work where one dying worker fails only its own unit: local processes (loky) or a
Dask cluster. collect, the evaluation, the audit and the fine-tuning rollouts all map through `run_jobs`."""

from __future__ import annotations

from concurrent.futures import as_completed
from typing import Any, Callable, Sequence, TypeVar

J = TypeVar("J")

#: agents iterate over sets of partner ids: a fixed hash seed makes worlds repeatable
WORKER_ENV = {"PYTHONHASHSEED": "0"}


def run_jobs(
    fn: Callable[[J], dict],
    jobs: Sequence[J],
    workers: int,
    died: Callable[[J], dict],
    progress: Callable[[dict], None] | None = None,
    dask_address: str | None = None,
) -> list[dict]:
    """``fn(job)`` for every job on ``workers`` processes (or on the Dask cluster whose scheduler is at
    ``dask_address``); rows in completion order.

    ``fn`` must not raise (it returns its error in the row). When a worker
    process dies, loky fails every job in flight with it, so those run again
    one by one, each in a fresh process: the culprit dies again and gets the
    row ``died(job)``, the others complete.
    """
    rows: list[dict] = []

    def done(row: dict) -> None:
        rows.append(row)
        if progress:
            progress(row)

    if dask_address:
        run_on_dask(fn, jobs, dask_address, died, done)
        return rows
    if workers <= 1:
        for job in jobs:
            done(fn(job))
        return rows
    for job in _run_pool(fn, list(jobs), workers, done):
        if _run_pool(fn, [job], 1, done):  # it died again, alone: it is the culprit
            done(died(job))
    return rows


def _run_pool(fn: Callable[[Any], dict], jobs: list, workers: int, done: Callable[[dict], None]) -> list:
    """Run ``jobs`` on a fresh pool; return the jobs lost to a dying worker."""
    from loky import ProcessPoolExecutor

    lost = []
    with ProcessPoolExecutor(max_workers=workers, env=WORKER_ENV) as executor:
        futures = {executor.submit(fn, job): job for job in jobs}
        for fut in as_completed(futures):
            try:
                done(fut.result())
            except Exception:  # TerminatedWorkerError / BrokenProcessPool: some worker died
                lost.append(futures[fut])
    return lost


def run_on_dask(fn: Callable[[J], dict], jobs: Sequence[J], address: str, died: Callable[[J], dict],
                done: Callable[[dict], None]) -> None:
    """The same units of work on a Dask cluster, each row to ``done``; a lost worker fails its unit only
    (``died(job)``)."""
    from distributed import Client, as_completed as dask_completed

    with Client(address) as client:
        futures = {client.submit(fn, job, pure=False): job for job in jobs}
        for fut in dask_completed(futures):
            try:
                row = fut.result()
            except Exception:  # the worker died or the task was lost
                row = died(futures[fut])
            done(row)
