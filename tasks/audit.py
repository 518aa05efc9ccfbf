"""Stage: the unsafe-action audit, run in real SCML2024StdWorld worlds.

Paired design (`tasks.paired`): world configuration i (seed + i) is generated
once; each audited agent then plays that same configuration (same factories,
exogenous contracts and opponents, same seeds) in the same slots, so scores are
compared world by world, not across luck. One (world, agent) pair is one unit
of work, run in a separate process.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl

from hrlxf_agent.registry import WINNERS_2025, resolve_all
from tasks import parallel
from tasks.paired import PairedJob, check_run_size, play_paired
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
    keep_logs: bool = True  # track the audited factories (``worlds/w<NNN>/<agent>/``) so `hrlxf analyze` replays them

    def validate(self) -> None:
        if not self.agents:
            raise ValueError("agents: give at least one agent to audit")
        check_run_size(self.worlds, self.steps, self.workers)
        resolve_all(list(self.agents) + list(self.opponents))  # unknown names fail here


def jobs_for(config: AuditConfig, out_dir: Path | None = None) -> list[PairedJob]:
    """One unit per (world, agent); with ``out_dir`` and ``keep_logs`` each is tracked under ``out_dir/worlds``."""
    def log_dir(w: int, a: str) -> str | None:
        return str(out_dir / "worlds" / f"w{w:03d}" / a) if out_dir is not None and config.keep_logs else None

    return [
        PairedJob(w, config.seed * 1000 + w, a, a, tuple(config.opponents), config.steps, config.agent_params.get(a, {}),
                  log_dir=log_dir(w, a))
        for w in range(config.worlds)
        for a in config.agents
    ]


DECISION_COLUMNS = {"world": pl.Int64, "seed": pl.Int64, "agent": pl.String, "agent_id": pl.String, "step": pl.Int64,
                    "kind": pl.String, "partner": pl.String, "is_buy": pl.Boolean, "op": pl.String, "q": pl.Float64,
                    "t": pl.Float64, "p": pl.Float64, "unsafe_buy": pl.Boolean, "unsafe_sell": pl.Boolean,
                    "illegal": pl.String, "off_grid": pl.Boolean}


def flagged_decisions(rows: list[dict]) -> pl.DataFrame:
    """Every unsafe or illegal decision of the audited agents, one row each (``decisions.parquet``)."""
    def number(outcome: Any, i: int) -> float | None:
        try:
            return float(outcome[i])
        except (TypeError, ValueError, IndexError, KeyError):
            return None  # no outcome, or a malformed one (that is why it is illegal)

    records = [{"world": r["world"], "seed": r["seed"], "agent": r["agent"], "agent_id": f["agent_id"], "step": f["step"],
                "kind": f["kind"], "partner": f["partner"], "is_buy": f["is_buy"], "op": f["op"],
                "q": number(f["outcome"], 0), "t": number(f["outcome"], 1), "p": number(f["outcome"], 2),
                "unsafe_buy": f["unsafe_buy"], "unsafe_sell": f["unsafe_sell"], "illegal": f["illegal"], "off_grid": f["off_grid"]}
               for r in rows if r["error"] is None for f in r.get("flagged", [])]
    return pl.DataFrame(records, schema=DECISION_COLUMNS)


def died(job: PairedJob) -> dict:
    """The row of a unit whose worker process died (also when run alone)."""
    return {"world": job.world, "seed": job.seed, "agent": job.candidate, "seconds": None,
            "error": "the worker process died while playing this world (also when run alone)"}


def run_jobs(jobs: list[PairedJob], workers: int, progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Every audited world on ``workers`` processes, sorted by world and agent."""
    rows = parallel.run_jobs(play_paired, jobs, workers, died, progress, name=lambda j: f"audit-w{j.world}-{j.candidate}")
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
    """Run every world, write ``audit.json``, ``audit.md`` and ``decisions.parquet`` (every unsafe or illegal
    decision) into ``out_dir`` and, with ``keep_logs``, the audited factories' tracker logs under ``worlds/``."""
    config.validate()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = run_jobs(jobs_for(config, out_dir), config.workers, progress)
    doc = summarize(config, rows)
    tmp = out_dir / "decisions.parquet.tmp"
    flagged_decisions(rows).write_parquet(tmp)
    os.replace(tmp, out_dir / "decisions.parquet")
    write_atomic(out_dir / "audit.json", json.dumps(doc, indent=2, default=float))
    write_atomic(out_dir / "audit.md", markdown_table(doc))
    return doc
