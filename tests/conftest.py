"""Shared helpers: short real worlds (10-20 steps) and hand-built snapshots."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from hrlxf_agent.snapshot import IssueRanges, Snapshot

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]


def make_world(types: list[type], steps: int = 15, seed: int = 0, **generate_kwargs):
    """A real SCML2024StdWorld with the given agent types (seeded)."""
    from scml.std import SCML2024StdWorld

    random.seed(seed)
    np.random.seed(seed)
    config = SCML2024StdWorld.generate(agent_types=types, n_steps=steps, **generate_kwargs)
    return SCML2024StdWorld(**config, construct_graphs=False)


def agents_of(world, cls: type) -> dict[str, object]:
    """The agent objects of a class in a world, by id."""
    return {aid: a._obj for aid, a in world.agents.items() if isinstance(getattr(a, "_obj", None), cls)}


def snap(**overrides) -> Snapshot:
    """A consistent mid-level snapshot: step 5 of 20, 10 lines, horizon 10."""
    h = overrides.pop("horizon", 10)
    base = dict(
        step=5, n_steps=20, n_lines=10, level=1, can_buy=True, can_sell=True, balance=1000.0,
        inventory_input=0, inventory_output=0, exogenous_input_qty=0, exogenous_input_cost=0.0,
        exogenous_output_qty=0, exogenous_output_revenue=0.0,
        supply_qty=(0.0,) * (h + 1), supply_cost=(0.0,) * (h + 1),
        sale_qty=(0.0,) * (h + 1), sale_revenue=(0.0,) * (h + 1),
        production_cost=2.0, storage_cost=0.02, shortfall_penalty=0.5,
        trading_price_in=10.0, trading_price_out=20.0, catalog_price_in=10.0, catalog_price_out=20.0,
        buy_issues=IssueRanges(1, 30, 5, 15, 9, 11), sell_issues=IssueRanges(1, 30, 5, 15, 18, 22),
        buy_partners=("s1", "s2"), sell_partners=("c1", "c2"),
    )
    base.update(overrides)
    return Snapshot(**base)


def per_day(h: int = 10, **values: float) -> tuple[float, ...]:
    """A per-day tuple with values at day offsets given as d0=.., d3=.."""
    out = [0.0] * (h + 1)
    for key, v in values.items():
        out[int(key[1:])] = float(v)
    return tuple(out)


@pytest.fixture(scope="session", autouse=True)
def prefect_api_for_the_session():
    """One Prefect API for every mapped unit of the suite (`tasks.parallel.run_jobs`), instead of a temporary
    server started by each call (~8 s). Pipeline tests run their flows in processes of their own, on theirs."""
    from tasks.parallel import prefect_api

    with prefect_api() as url:
        yield url


def child_env(ephemeral: bool = False, **extra: str) -> dict[str, str]:
    """The environment of a command a test runs in a child process: this one without Prefect's settings,
    except the session's API (started above; a command that starts its own temporary server spends 10-40 s
    on it). ``ephemeral``: no API either, so the command starts its own, as `make run` does on a fresh machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    if not ephemeral and os.environ.get("PREFECT_API_URL"):
        env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"]
    return {**env, **extra}


def data_env(data: Path, ephemeral: bool = False, **extra: str) -> dict[str, str]:
    """`child_env` for a command on the data root ``data``, importing this checkout."""
    return child_env(ephemeral, HRLXF_DATA=str(data), PYTHONPATH=str(ROOT), **extra)


def hrlxf_run(data: Path, *args: str, timeout: float = 900, ephemeral: bool = False) -> dict:
    """`hrlxf run ...` in a child process: its exit code, output, wall time and the run report. It reports to
    the session's Prefect API unless ``ephemeral`` (then it starts its own, as on a fresh machine)."""
    start = time.time()
    p = subprocess.run([sys.executable, "-m", "flows.cli", "run", *args], cwd=ROOT, env=data_env(data, ephemeral),
                       capture_output=True, text=True, timeout=timeout)
    last = data / "reports" / "pipeline" / "last.json"
    report = json.loads(last.read_text()) if last.exists() else None
    return {"rc": p.returncode, "out": p.stdout, "err": p.stderr, "wall": time.time() - start, "report": report}


@contextmanager
def dask_processes(home: Path, worker_envs: list[dict[str, str]]) -> Iterator[tuple[str, set[int]]]:
    """A `dask scheduler` and one `dask worker` process (two threads) per environment, on loopback; yields
    (the scheduler's address, the workers' pids)."""
    from distributed import Client

    bin_ = Path(sys.executable).parent
    file = home / "scheduler.json"
    procs = [subprocess.Popen([bin_ / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", file], cwd=home, env=worker_envs[0], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 60
        while not file.exists() and time.time() < deadline:
            time.sleep(0.2)
        procs += [subprocess.Popen([bin_ / "dask", "worker", "--scheduler-file", file, "--nthreads", "2",
                                    "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{i}"], cwd=home, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                  for i, env in enumerate(worker_envs, 1)]
        address = json.loads(file.read_text())["address"]
        with Client(address, timeout=60) as client:
            client.wait_for_workers(len(worker_envs), timeout=120)
            pids = set(client.run(os.getpid).values())
        yield address, pids
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


@pytest.fixture
def base_snapshot() -> Snapshot:
    return snap()


__all__ = ["make_world", "agents_of", "snap", "per_day", "replace", "dask_processes", "child_env", "data_env",
           "hrlxf_run", "ROOT"]
