"""Process-parallel units of work (loky) where one dying worker fails only its own unit."""

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
) -> list[dict]:
    """``fn(job)`` for every job on ``workers`` processes; rows in completion order.

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
