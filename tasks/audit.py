"""Stage: the unsafe-action audit, run in real SCML2024StdWorld worlds.

Paired design: world configuration i (seed + i) is generated once with a
marker type in the audited slots; each audited agent then plays that same
configuration (same factories, exogenous contracts and opponents, same seeds)
in those slots, so scores are compared world by world, not across luck.
One (world, agent) pair is one unit of work, run in a separate process.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hrlxf_agent.registry import WINNERS_2025, resolve_all
from tasks import parallel
from tasks.report import md_table

AUDIT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class AuditConfig:
    """What to audit and against whom."""

    agents: tuple[str, ...] = ("PenguinAgent", "LitaAgentH", "LitaAgentHS")
    opponents: tuple[str, ...] = WINNERS_2025
    worlds: int = 8
    steps: int = 50
    seed: int = 0
    workers: int = 2
    agent_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.agents:
            raise ValueError("agents: give at least one agent to audit")
        if self.worlds < 1:
            raise ValueError(f"worlds must be >= 1, got {self.worlds}")
        if self.steps < 3:
            raise ValueError(f"steps must be >= 3, got {self.steps}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        resolve_all(list(self.agents) + list(self.opponents))  # unknown names fail here


@dataclass(frozen=True)
class WorldJob:
    world: int
    seed: int
    agent: str
    opponents: tuple[str, ...]
    steps: int
    params: dict[str, Any]


class _Slot:
    """Marks the audited slots while a configuration is generated (never played)."""


def world_config(seed: int, opponent_types: list[type], steps: int) -> tuple[dict[str, Any], list[int]]:
    """A std world configuration and the indices of its audited slots (at least one)."""
    from scml.std import SCML2024StdWorld
    from scml.std.agents import RandomStdAgent

    marker = type("AuditedSlot", (RandomStdAgent, _Slot), {})
    for attempt in range(100):
        s = seed + 100_003 * attempt
        random.seed(s)
        np.random.seed(s % (2**32))
        config = SCML2024StdWorld.generate(agent_types=[marker, *opponent_types], n_steps=steps)
        slots = [i for i, p in enumerate(config["agent_params"]) if p.get("controller_type") is marker]
        if slots:
            return config, slots
    raise RuntimeError(f"no audited slot in 100 configurations from seed {seed}")


def build_world(seed: int, subject: type, params: dict[str, Any], opponent_types: list[type], steps: int) -> Any:
    """The world of configuration ``seed`` with ``subject`` in the audited slots, seeded to play the same way."""
    from scml.std import SCML2024StdWorld

    config, slots = world_config(seed, opponent_types, steps)
    for i in slots:
        config["agent_params"][i]["controller_type"] = subject
        if params:
            config["agent_params"][i]["controller_params"] = dict(params)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    return SCML2024StdWorld(**config, construct_graphs=False)


def run_world(job: WorldJob) -> dict[str, Any]:
    """Play one audited world; never raises (a crash is returned as the row's error)."""
    start = time.perf_counter()
    row: dict[str, Any] = {"world": job.world, "seed": job.seed, "agent": job.agent, "error": None}
    try:
        from hrlxf_agent.audit import AuditCounts, audited

        classes = resolve_all([job.agent, *job.opponents])
        subject = audited(classes[job.agent])
        world = build_world(job.seed, subject, job.params, [classes[o] for o in job.opponents], job.steps)
        world.run()
        scores = world.scores()
        counts = AuditCounts()
        mine = []
        for aid, adapter in world.agents.items():
            obj = getattr(adapter, "_obj", None)
            if isinstance(obj, subject):
                counts.add(obj.hook().counts)
                mine.append(float(scores[aid]))
        row.update(scores=mine, score=float(np.mean(mine)), counts=asdict(counts), n_agents=len(world.agents) - 2)
    except Exception as e:  # one crashing world never stops the others
        row["error"] = f"{type(e).__name__}: {e}"
        row["traceback"] = traceback.format_exc(limit=8)
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def jobs_for(config: AuditConfig) -> list[WorldJob]:
    return [
        WorldJob(w, config.seed * 1000 + w, a, tuple(config.opponents), config.steps, config.agent_params.get(a, {}))
        for w in range(config.worlds)
        for a in config.agents
    ]


def run_jobs(jobs: list[WorldJob], workers: int, progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Every audited world on ``workers`` processes, sorted by world and agent."""
    def died(job: WorldJob) -> dict:
        return {"world": job.world, "seed": job.seed, "agent": job.agent, "seconds": None,
                "error": "the worker process died while playing this world (also when run alone)"}

    rows = parallel.run_jobs(run_world, jobs, workers, died, progress)
    return sorted(rows, key=lambda r: (r["world"], r["agent"]))


def summarize(config: AuditConfig, rows: list[dict]) -> dict[str, Any]:
    """The audit.json document (shape: schemas/audit.schema.json)."""
    agents: dict[str, Any] = {}
    for name in config.agents:
        ok = [r for r in rows if r["agent"] == name and r["error"] is None]
        scores = [r["score"] for r in ok]
        total: dict[str, Any] = {"decisions": 0, "accepts": 0, "offers": 0, "ends": 0, "unsafe_buy": 0,
                                 "unsafe_sell": 0, "unsafe_any": 0, "illegal": 0, "off_grid": 0, "illegal_reasons": {}}
        for r in ok:
            for k, v in r["counts"].items():
                if k == "illegal_reasons":
                    for reason, n in v.items():
                        total[k][reason] = total[k].get(reason, 0) + n
                else:
                    total[k] += v
        agents[name] = {
            "worlds": len(ok),
            "failed_worlds": sum(1 for r in rows if r["agent"] == name and r["error"] is not None),
            **total,
            "unsafe_rate": total["unsafe_any"] / total["decisions"] if total["decisions"] else 0.0,
            "score_mean": float(np.mean(scores)) if scores else math.nan,
            "score_std": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
            "scores": scores,
        }
    return {
        "schema_version": AUDIT_SCHEMA_VERSION,
        "paired": paired_differences(config.agents, rows),
        "config": {**asdict(config), "agents": list(config.agents), "opponents": list(config.opponents)},
        "agents": agents,
        "failed": [{k: r.get(k) for k in ("world", "seed", "agent", "error", "traceback")} for r in rows if r["error"] is not None],
        "per_world": [{k: r.get(k) for k in ("world", "seed", "agent", "score", "seconds", "error")} for r in rows],
    }


def paired_differences(agents: tuple[str, ...], rows: list[dict]) -> dict[str, Any]:
    """Each agent's score minus the first agent's, world by world (same configuration and seeds)."""
    if len(agents) < 2:
        return {}
    score = {(r["world"], r["agent"]): r["score"] for r in rows if r["error"] is None}
    base, out = agents[0], {}
    for name in agents[1:]:
        d = np.array([score[(w, name)] - score[(w, base)] for (w, a) in score if a == base and (w, name) in score])
        out[name] = {
            "baseline": base, "worlds": int(len(d)),
            "mean_diff": float(d.mean()) if len(d) else math.nan,
            "stderr": float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan,
            "wins": int((d > 0).sum()), "losses": int((d < 0).sum()),
        }
    return out


def markdown_table(doc: dict[str, Any]) -> str:
    cfg = doc["config"]
    lines = [f"Audit: {cfg['worlds']} worlds x {cfg['steps']} steps, seed {cfg['seed']}, against {', '.join(cfg['opponents'])}", ""]
    lines += md_table(
        ["agent", "worlds", "decisions", "unsafe_buy", "unsafe_sell", "unsafe_any", "unsafe_rate", "illegal", "score mean", "score std"],
        [[name, a["worlds"], a["decisions"], a["unsafe_buy"], a["unsafe_sell"], a["unsafe_any"], f"{100 * a['unsafe_rate']:.2f}%",
          a["illegal"], f"{a['score_mean']:.4f}", f"{a['score_std']:.4f}"] for name, a in doc["agents"].items()],
    )
    if doc.get("paired"):
        lines += [""] + md_table(
            ["paired, same worlds", "minus", "mean diff", "std err", "wins", "losses"],
            [[name, p["baseline"], f"{p['mean_diff']:+.4f}", f"{p['stderr']:.4f}", p["wins"], p["losses"]] for name, p in doc["paired"].items()],
            left=2,
        )
    if doc["failed"]:
        lines += ["", "Failed worlds:", ""] + [f"- world {f['world']} ({f['agent']}): {f['error']}" for f in doc["failed"]]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_audit(config: AuditConfig, out_dir: Path, progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Run every world, write ``audit.json`` and ``audit.md`` into ``out_dir``, return the document."""
    config.validate()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = run_jobs(jobs_for(config), config.workers, progress)
    doc = summarize(config, rows)
    write_atomic(out_dir / "audit.json", json.dumps(doc, indent=2, default=float))
    write_atomic(out_dir / "audit.md", markdown_table(doc))
    return doc
