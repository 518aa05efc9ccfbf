"""tasks.parallel's measurement of a stage's memory: its worker processes count, a stage running in a
process of its own (`in_own_process`) does not count for its caller."""

import subprocess
import sys
import time

from tasks.parallel import in_own_process, peak_memory

HOLD = "import sys, time; b = bytearray({mb} * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep({s})"


def _hold(mb: int, seconds: float) -> int:
    """A child process holding ``mb`` MB resident for ``seconds``."""
    return subprocess.run([sys.executable, "-c", HOLD.format(mb=mb, s=seconds)], check=True).returncode


def test_a_worker_processes_memory_counts_in_the_peak():
    with peak_memory(interval=0.05) as alone:
        time.sleep(0.3)
    with peak_memory(interval=0.05) as with_child:
        _hold(400, 1.0)
    assert with_child["peak_mb"] - alone["peak_mb"] > 350, (alone, with_child)


def test_a_stage_in_its_own_process_is_not_counted_by_its_caller():
    with peak_memory(interval=0.05) as alone:
        time.sleep(0.3)
    with peak_memory(interval=0.05) as caller:
        in_own_process(_hold, 400, 1.5)
    assert caller["peak_mb"] - alone["peak_mb"] < 150, (alone, caller)  # python of its own: ~40 MB at most


def _square(x: int) -> dict:
    return {"x": x * x}


def _died(x: int) -> dict:
    return {"x": None}


def _map_in_own_process() -> list[dict]:
    from tasks.parallel import run_jobs

    return run_jobs(_square, [2, 3], 2, _died, name=lambda x: f"square-{x}")


def test_tasks_mapped_in_a_stage_process_are_the_callers_flow_runs():
    """A stage in a process of its own (the fine-tuning) maps its units as tasks of the flow run that called it,
    children of the calling task: the UI shows them under the run, not as runs of no flow."""
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.context import FlowRunContext, TaskRunContext

    @task(name="stage")
    def stage() -> tuple[list[dict], str]:
        return in_own_process(_map_in_own_process, prefect_context=True), str(TaskRunContext.get().task_run.id)

    @flow(name="own-process-context")
    def run() -> tuple[list[dict], str, str]:
        rows, stage_id = stage()
        return rows, stage_id, str(FlowRunContext.get().flow_run.id)

    rows, stage_id, flow_run = run()
    assert sorted(r["x"] for r in rows) == [4, 9]
    with get_client(sync_client=True) as client:
        deadline, units = time.time() + 30, []
        while len(units) < 2 and time.time() < deadline:  # the API records task runs from events: a moment later
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run])))
            units = [r for r in runs if r.name.startswith("square-")]
            time.sleep(0.5)
    assert sorted(r.name for r in units) == ["square-2", "square-3"], [r.name for r in runs]
    assert all(str(r.flow_run_id) == flow_run for r in units)
    assert all(str(r.task_inputs.get("__parents__", [None])[0].id) == stage_id for r in units), units


NESTED_API = """
import threading
from prefect.server.api.server import SubprocessASGIServer
from tasks.parallel import prefect_api
entered, leave, urls = threading.Event(), threading.Event(), []

def second_user():  # another stage's units, in a thread of its own (it sees the URL in the environment only)
    with prefect_api() as url:
        urls.append(url)
        entered.set()
        leave.wait(60)

with prefect_api() as first:
    other = threading.Thread(target=second_user)
    other.start()
    assert entered.wait(60)
assert urls == [first] and SubprocessASGIServer().running, "the first user stopped the server the second uses"
leave.set()
other.join()
assert not SubprocessASGIServer().running, "the last user left the server running"
print("ok")
"""


def test_a_temporary_api_lives_until_its_last_user_leaves():
    """With no PREFECT_API_URL, blocks of `prefect_api` share one temporary server, stopped by the last."""
    import os
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", NESTED_API], cwd=root, env={**env, "PYTHONPATH": str(root)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
