"""Stage: forensics tournaments, real expert worlds with every agent tracked.

Every world is one unit of work writing ``<raw>/<run_id>/<world_id>/``:
``events/<agent_id>.jsonl`` (the tracker), ``contracts.jsonl`` (every contract
of the world: signed, executed, nullified), ``world.json`` (configuration,
seed, agents, daily shortfalls, scores) and, last, the completion marker
``DONE``. A directory without ``DONE`` is partial: a rerun deletes and redoes
it, and never runs a completed world again (also after ``kill -9``). A world
that fails writes ``FAILED`` with its error and is retried on the next run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hrlxf_agent.registry import resolve_all
from tasks import parallel
from tasks.report import md_table
from tasks.store import StoreRoot

DONE, FAILED = "DONE", "FAILED"


@dataclass(frozen=True)
class CollectProfile:
    """How much expert data one collection run produces."""

    worlds: int
    steps: int
    experts: tuple[str, ...]
    agents_per_world: tuple[int, int] = (8, 12)  # factories drawn per world (excluding system agents)
    seed: int = 0
    workers: int = 2
    world_timeout: float = 900.0  # seconds a world may run before it is recorded as failed

    def validate(self) -> None:
        if self.worlds < 1 or self.steps < 3:
            raise ValueError(f"worlds must be >= 1 and steps >= 3, got {self.worlds}, {self.steps}")
        resolve_all(list(self.experts))  # an unknown name fails before any world starts


WINNERS = ("PenguinAgent", "AS0", "XenoSotaAgent", "UltraSuperMiracleSoraFinalAgentZ")
PROFILES = {
    "smoke": CollectProfile(worlds=4, steps=10, experts=WINNERS, agents_per_world=(6, 8), world_timeout=120.0),
    "default": CollectProfile(
        worlds=48, steps=50,
        experts=WINNERS + ("LitaAgentYR", "PonponAgent", "KATSUDONAgent", "PriceTrendStdAgent",
                           "CautiousStdAgent", "QuickDecisionAgent", "SyncRandomStdAgent"),
    ),
}
# for a submission: 4x the worlds of `default`, each twice as long (`hrlxf run --profile official`)
PROFILES["official"] = CollectProfile(worlds=192, steps=100, experts=PROFILES["default"].experts, world_timeout=1800.0)


@dataclass(frozen=True)
class CollectJob:
    world_id: str
    seed: int
    steps: int
    experts: tuple[str, ...]
    agents_per_world: tuple[int, int]
    out_dir: str
    timeout: float = 900.0
    store: StoreRoot | None = None  # an object-store root: the world is played in this process's mirror and sent


def world_dir(raw: Path, run_id: str, world_id: str) -> Path:
    return raw / run_id / world_id


def jobs_for(profile: CollectProfile, raw: Path, run_id: str) -> list[CollectJob]:
    return [
        CollectJob(f"w{i:04d}", profile.seed * 100_000 + i, profile.steps, profile.experts, profile.agents_per_world,
                   str(world_dir(raw, run_id, f"w{i:04d}")), profile.world_timeout)
        for i in range(profile.worlds)
    ]


def _write_json_atomic(path: Path, doc: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=float))
    os.replace(tmp, path)


class WorldTimeout(Exception):
    """A world ran past its time limit."""


@contextmanager
def time_limit(seconds: float):
    """Raise WorldTimeout in this (main) thread after ``seconds``; agents run in it with sync_calls."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise WorldTimeout(f"the world ran past its {seconds:.0f} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def save_world(world: Any, out: Path, agents: dict[str, dict[str, Any]], **meta: Any) -> None:
    """A played world's record beside its tracker logs (``tasks.events`` reads it): every contract
    (``contracts.jsonl``) and ``world.json`` with ``meta``, the tracked ``agents``, their scores and
    daily series. The caller writes ``DONE`` when the world is complete."""
    scores = {aid: float(s) for aid, s in world.scores().items() if aid in agents}
    with (out / "contracts.jsonl").open("w") as f:
        for c in world.saved_contracts:
            f.write(json.dumps({k: c.get(k) for k in ("id", "seller", "buyer", "delivery_time", "quantity", "unit_price",
                                                      "signed_at", "executed_at", "nullified_at", "breaches")}, default=str) + "\n")
    daily = {aid: {"shortfall_quantity": [int(x) for x in world.stats[f"shortfall_quantity_{aid}"]],
                   "inventory_input": [int(x) for x in world.stats[f"inventory_input_{aid}"]],
                   "balance": [float(x) for x in world.stats[f"balance_{aid}"]],
                   # money paid each day (scml's ufun): what the analyzer draws; `tasks.events` reads the three above
                   "storage_cost": [float(x) for x in world.stats[f"storage_cost_{aid}"]],
                   "shortfall_penalty": [float(x) for x in world.stats[f"shortfall_penalty_{aid}"]]} for aid in agents}
    _write_json_atomic(out / "world.json", {**meta, "agents": agents, "scores": scores, "daily": daily})


def new_world(config: dict[str, Any]) -> Any:
    """The std world of ``config`` as every world of ours is played (collection, paired units, rollouts).

    - ``sync_calls=True``: negmas calls agents directly instead of in a timeout thread per call
      (identical scores and contracts, about 6% faster on 50-step worlds); the unit's own time limit
      replaces the per-call ones.
    - No negotiation records: scml forces ``save_negotiations`` on, and negmas then turns every
      finished negotiation into a flattened pandas record that only its own ``save_stats`` reads
      (nothing of ours does, no agent can). That was about 35% of a world's time at scml's own sizes
      (profile in docs/evaluation.md); the scores and contracts are the same
      (tests/test_paired_worlds.py).
    """
    from scml.std import SCML2024StdWorld

    world = SCML2024StdWorld(**config, construct_graphs=False, sync_calls=True)
    world.save_negotiations = False
    return world


def collect_world(job: CollectJob) -> dict[str, Any]:
    """Play and log one world; never raises (a failure is returned and marked FAILED on disk).

    The world is built by `new_world` (sync calls, no negotiation records); the world's own time
    limit (``job.timeout``) replaces negmas' per-call ones.
    """
    from scml.std import SCML2024StdWorld

    from hrlxf_agent.tracker import tracked

    out = job.store.here(job.out_dir) if job.store else Path(job.out_dir)
    start = time.perf_counter()
    row: dict[str, Any] = {"world_id": job.world_id, "seed": job.seed, "error": None, "events": 0, "bytes": 0}
    try:
        if out.exists():
            shutil.rmtree(out)  # a partial or failed world is redone from scratch
        if job.store is not None:
            job.store.forget(job.store.rel(out), state=False)  # ... in the store too (the host's sync state is its own)
        events = out / "events"
        events.mkdir(parents=True)
        random.seed(job.seed)
        np.random.seed(job.seed % (2**32))
        classes = resolve_all(list(job.experts))
        types = [tracked(classes[name], events) for name in job.experts]
        n_agents = random.randint(*job.agents_per_world)
        n_processes = random.choice((2, 3))
        per_process = [n_agents // n_processes + (1 if i < n_agents % n_processes else 0) for i in range(n_processes)]
        config = SCML2024StdWorld.generate(agent_types=types, n_steps=job.steps, n_processes=n_processes,
                                           n_agents_per_process=per_process)
        world = new_world(config)
        with time_limit(job.timeout):
            world.run()
        agents = {}
        for aid, adapter in world.agents.items():
            obj = getattr(adapter, "_obj", None)
            if obj is None or not hasattr(obj, "hook"):
                continue
            obj.hook().close()
            base = type(obj).__mro__[1]
            agents[aid] = {"class": base.__name__, "module": f"{base.__module__}.{base.__name__}", "level": int(obj.awi.level)}
        save_world(world, out, agents, world_id=job.world_id, seed=job.seed, n_steps=job.steps, n_processes=n_processes,
                   experts=list(job.experts))
        files = list(events.glob("*.jsonl"))
        row["events"] = sum(sum(1 for _ in f.open()) for f in files)
        row["bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        row["agents"] = {aid: a["class"] for aid, a in agents.items()}
        (out / DONE).write_text(json.dumps({"events": row["events"], "bytes": row["bytes"]}))  # last: the world is complete
        if job.store is not None:
            try:
                job.store.send_tree(out)  # DONE last: the store, not this host, says the world is done
            except Exception:
                (out / DONE).unlink()  # not in the store: not done (played again next run)
                raise
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {e}"
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / FAILED).write_text(row["error"] + "\n" + traceback.format_exc(limit=8))
        except OSError:
            pass  # a full disk: the world stays without DONE and is redone next time
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def world_name(job: CollectJob) -> str:
    """The name of a world's task (in the Prefect UI)."""
    return f"world-{job.world_id}"


def world_died(job: CollectJob) -> dict:
    """The row of a world whose process died (or whose Dask worker was lost): marked FAILED, played again by
    the next run."""
    Path(job.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(job.out_dir) / FAILED).write_text("the worker process died while playing this world\n")
    return {"world_id": job.world_id, "seed": job.seed, "error": "worker process died", "events": 0, "bytes": 0,
            "seconds": None}


def run_collect(
    profile: CollectProfile,
    raw: Path,
    run_id: str,
    progress: Callable[[dict], None] | None = None,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Collect every world of the profile not already complete (on local processes, or a Dask
    cluster given its scheduler address); the summary is also written to ``<run>/summary.json``."""
    profile.validate()
    jobs = jobs_for(profile, raw, run_id)
    todo = [j for j in jobs if not (Path(j.out_dir) / DONE).exists()]
    skipped = len(jobs) - len(todo)

    start = time.perf_counter()
    rows = parallel.run_jobs(collect_world, todo, profile.workers, world_died, progress, dask_address, name=world_name)
    return summarize(profile, raw, run_id, rows, skipped, time.perf_counter() - start)


def summarize(profile: CollectProfile, raw: Path, run_id: str, rows: list[dict], skipped: int, seconds: float) -> dict[str, Any]:
    """The run's summary from the rows of the worlds played now (also by the Prefect flow's mapped world
    tasks); written to ``<run>/summary.json``."""
    jobs = jobs_for(profile, raw, run_id)
    done = [r for r in rows if r["error"] is None]
    by_type: dict[str, int] = {}
    for r in done:
        counts = _events_per_agent(Path(next(j.out_dir for j in jobs if j.world_id == r["world_id"])))
        for cls, n in counts.items():
            by_type[cls] = by_type.get(cls, 0) + n
    summary = {
        "run_id": run_id, "profile": {**asdict(profile), "experts": list(profile.experts)},
        "worlds_done": len(done), "worlds_failed": len(rows) - len(done), "worlds_skipped": skipped,
        "failed": [{"world_id": r["world_id"], "error": r["error"]} for r in rows if r["error"]],
        "seconds": round(seconds, 1),
        "worlds_per_hour": round(3600 * len(done) / seconds, 1) if done and seconds > 0 else None,
        "events": sum(r["events"] for r in done), "bytes": sum(r["bytes"] for r in done),
        "bytes_per_world_step": round(sum(r["bytes"] for r in done) / max(1, len(done) * profile.steps), 1),
        "events_per_agent_type": dict(sorted(by_type.items())),
    }
    (raw / run_id).mkdir(parents=True, exist_ok=True)
    _write_json_atomic(raw / run_id / "summary.json", summary)
    return summary


def _events_per_agent(world: Path) -> dict[str, int]:
    meta = json.loads((world / "world.json").read_text())
    out: dict[str, int] = {}
    for aid, a in meta["agents"].items():
        f = world / "events" / f"{aid}.jsonl"
        out[a["class"]] = out.get(a["class"], 0) + (sum(1 for _ in f.open()) if f.exists() else 0)
    return out


def render(summary: dict[str, Any]) -> str:
    lines = [f"collect {summary['run_id']}: {summary['worlds_done']} done, {summary['worlds_failed']} failed, "
             f"{summary['worlds_skipped']} skipped (already complete) in {summary['seconds']} s; "
             f"{summary['events']} events, {summary['bytes']} bytes ({summary['bytes_per_world_step']} per world-step)", ""]
    lines += md_table(["agent type", "events"], [[k, v] for k, v in summary["events_per_agent_type"].items()])
    for f in summary["failed"]:
        lines.append(f"FAILED {f['world_id']}: {f['error']}")
    return "\n".join(lines)
