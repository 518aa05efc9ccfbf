"""The tournament mode of the evaluation (``hrlxf evaluate --mode tournament``): scml's own ``anac2024_std``.

Kept beside the paired evaluation (`tasks.evaluate`, the default) so that figures stay comparable
with the official results. Competitors: LitaAgentHRL with each bundle given (one per L3 mode),
LitaAgentHRL on rules alone, LitaAgentHS and PenguinAgent, with and against the 2025 winners. Every
one of ours (and Penguin) is audited inside the tournament's worker processes: the `AuditHook`
verdicts are written to files summed afterwards.

Rotations are real: in scml 0.8.4, ``anac_assigner_std`` with ``max_worlds_per_config`` set takes a
"fair" branch that rotates the same permutation by one step for every world, so every world of a
configuration gives each competitor the same factory (replays). Left at None, it rotates the
competitors over the configuration's slots, one world per rotation: each competitor holds each
competitor slot once. Which factory each competitor held in each world is read back from the played
worlds and reported (``assignments``, ``rotations``); the rotations of a configuration are averaged,
so intervals are over configurations. ``tournament.json``, ``tournament.md``, ``scores.png``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hrlxf_agent.audit import AuditHook
from hrlxf_agent.hrl import LitaAgentHRL
from hrlxf_agent.intercept import intercept
from hrlxf_agent.penguin import LitaAgentHS as _HS
from hrlxf_agent.registry import WINNERS_2025, resolve
from tasks.paired import slot_of

TOURNAMENT_SCHEMA_VERSION = 2
AUDIT_DIR_ENV = "HRLXF_EVAL_AUDIT"


class FileAuditHook(AuditHook):
    """The audit verdicts of one agent instance, kept in a JSON file (tournament workers are other processes)."""

    def __init__(self, agent: Any):
        super().__init__(agent)
        root = os.environ.get(AUDIT_DIR_ENV)
        self.path = Path(root) / f"{type(agent).__name__}-{uuid.uuid4().hex}.json" if root else None

    def write(self, agent: Any) -> None:
        if self.path is None:
            return
        c = self.counts
        doc = {"agent_type": type(agent).__name__, "decisions": c.decisions, "unsafe_any": c.unsafe_any,
               "illegal": c.illegal, "off_grid": c.off_grid}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.path)

    def on_day(self, agent: Any) -> None:
        self.write(agent)

    def on_batch(self, agent: Any, kind: str, offers: Any, responses: Any) -> Any:
        out = super().on_batch(agent, kind, offers, responses)
        if agent.awi.current_step >= agent.awi.n_steps - 1:  # no later on_day will write the last day
            self.write(agent)
        return out


def _audited(cls: type) -> type:
    return intercept(cls, FileAuditHook, "Evaluated")


# Module-level classes: the tournament's worker processes import competitors by name.
class LitaAgentHRLResidual(_audited(LitaAgentHRL)):  # type: ignore[misc]
    """LitaAgentHRL with a residual-mode bundle."""


class LitaAgentHRLDirect(_audited(LitaAgentHRL)):  # type: ignore[misc]
    """LitaAgentHRL with a direct-mode bundle."""


class LitaAgentHRLRules(_audited(LitaAgentHRL)):  # type: ignore[misc]
    """LitaAgentHRL with no bundle: the rule-based layers."""


class LitaAgentHS(_audited(_HS)):  # type: ignore[misc]
    """PenguinAgent behind the L1 shield."""


class PenguinAgent(_audited(resolve("PenguinAgent"))):  # type: ignore[misc]
    """The 2024 champion, audited."""


_BY_MODE = {"residual": LitaAgentHRLResidual, "direct": LitaAgentHRLDirect}
REFERENCE_AGENTS = (LitaAgentHRLRules, LitaAgentHS, PenguinAgent)  # what every bundle is measured beside


@dataclass
class TournamentConfig:
    configs: int = 4  # world configurations; each is played once per rotation of the competitors over its slots
    steps: int = 50
    opponents: tuple[str, ...] = WINNERS_2025
    parallelism: str = "parallel"  # inside one configuration's tournament
    baseline: str = "PenguinAgent"
    seed: int = 0

    def worlds(self, n_competitors: int) -> int:
        return self.configs * n_competitors

    def validate(self) -> None:
        if self.configs < 1:
            raise ValueError(f"configs must be >= 1, got {self.configs}")
        if self.steps < 3:
            raise ValueError(f"steps must be >= 3, got {self.steps}")
        if self.parallelism not in ("parallel", "serial"):
            raise ValueError(f"parallelism must be 'parallel' or 'serial', got {self.parallelism!r}")
        for name in self.opponents:
            resolve(name)

    @classmethod
    def smoke(cls) -> "TournamentConfig":
        return cls(configs=1, steps=10)


def competitors(bundles: Sequence[Path], config: TournamentConfig) -> tuple[list[type], list[dict[str, Any]]]:
    from hrlxf_agent.bundle import load_bundle

    types: list[type] = []
    params: list[dict[str, Any]] = []
    for path in bundles:
        bundle = load_bundle(path)  # a bad bundle fails here, before any world
        cls = _BY_MODE[bundle.manifest.l3_mode]
        if cls in types:
            raise ValueError(f"two bundles with L3 mode {bundle.manifest.l3_mode!r}: give one per mode")
        types.append(cls)
        params.append({"controller_params": {"bundle": str(bundle.path.resolve())}})
    for cls in REFERENCE_AGENTS:
        types.append(cls)
        params.append({})
    for name in config.opponents:
        types.append(resolve(name))
        params.append({})
    return types, params


def configuration_of(world: str) -> str:
    """scml names a tournament world ``<configuration>.<rotation>``."""
    return str(world).rsplit(".", 1)[0]


def _short(agent_type: str) -> str:
    return str(agent_type).split(".")[-1].split(":")[-1]


def rotation_check(assignments: dict[str, dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Per configuration: its worlds, how many distinct competitor -> factory assignments they had, and
    whether they are real rotations (every world's assignment differs from every other's)."""
    by_config: dict[str, list[tuple]] = {}
    for world, held in assignments.items():
        by_config.setdefault(configuration_of(world), []).append(tuple(sorted(held.items())))
    return {c: {"worlds": len(a), "distinct_assignments": len(set(a)), "real_rotations": len(set(a)) == len(a)}
            for c, a in sorted(by_config.items())}


def summarize(scores: Any, audits: list[dict[str, Any]], config: TournamentConfig) -> dict[str, Any]:
    """Per agent type: mean score and interval, audit sums, paired differences, who held which factory.

    The rotations of one configuration share its market, so they are averaged
    first: the intervals are over configurations (n = configs), not worlds.
    """
    from tasks.stats import mean_interval

    per_world = scores.groupby(["agent_type", "world"])["score"].mean().unstack("agent_type")
    per_world.columns = [_short(c) for c in per_world.columns]
    per_config = per_world.groupby([configuration_of(w) for w in per_world.index]).mean()
    agents: dict[str, Any] = {}
    for name in per_world.columns:
        entry: dict[str, Any] = {"worlds": int(per_world[name].notna().sum()),
                                 "score": mean_interval(per_config[name].dropna().tolist()),
                                 "world_scores": mean_interval(per_world[name].dropna().tolist())}
        mine = [a for a in audits if a["agent_type"] == name]
        if mine:
            entry.update({k: int(sum(a[k] for a in mine)) for k in ("decisions", "unsafe_any", "illegal", "off_grid")})
        agents[name] = entry
    pairs = [(name, config.baseline) for name in per_world.columns if name != config.baseline]
    if {"LitaAgentHRLResidual", "LitaAgentHRLDirect"} <= set(per_world.columns):
        pairs.append(("LitaAgentHRLResidual", "LitaAgentHRLDirect"))
    paired = {f"{a} - {b}": mean_interval((per_config[a] - per_config[b]).dropna().tolist())
              for a, b in pairs if a in per_config and b in per_config}
    assignments: dict[str, dict[str, str]] = {}
    if "agent_name" in scores:
        for row in scores.itertuples():
            assignments.setdefault(str(row.world), {})[_short(row.agent_type)] = slot_of(row.agent_name)
    return {"schema_version": TOURNAMENT_SCHEMA_VERSION, "mode": "tournament", "config": asdict(config),
            "worlds": int(len(per_world)), "configurations": int(len(per_config)), "agents": agents, "paired": paired,
            "assignments": assignments, "rotations": rotation_check(assignments),
            "per_world": per_world.reset_index().to_dict(orient="list")}


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_world = doc["per_world"]
    names = sorted((k for k in per_world if k != "world"), key=lambda k: -doc["agents"][k]["score"]["mean"])
    data = [[v for v in per_world[k] if v is not None and not math.isnan(v)] for k in names]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(names) + 1.5))
    ax.boxplot(data, vert=False, showmeans=True)
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"mean score per world ({doc['worlds']} worlds, {doc['config']['steps']} steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pm(x: dict[str, Any]) -> str:
    return f"± {x['half_width']:.4f}" if x.get("half_width") is not None else "(too few)"


def markdown(doc: dict[str, Any]) -> str:
    from tasks.report import md_table

    rows = []
    for name, a in sorted(doc["agents"].items(), key=lambda kv: -kv[1]["score"]["mean"]):
        s = a["score"]
        rows.append([name, a["worlds"], f"{s['mean']:.4f}", _pm(s),
                     a.get("unsafe_any", "-"), a.get("illegal", "-"), a.get("decisions", "-")])
    lines = [f"Tournament (scml anac2024_std): {doc['worlds']} worlds = {doc.get('configurations', '?')} configurations "
             "x rotations; intervals over configurations (Student t)", "",
             *md_table(["agent", "worlds", "mean score", "95% CI", "unsafe_any", "illegal", "decisions"], rows)]
    lines += ["", *md_table(["paired difference (per configuration)", "mean", "95% CI", "configurations"],
                            [[k, f"{v['mean']:+.4f}", _pm(v), v["n"]] for k, v in doc["paired"].items()])]
    if doc.get("assignments"):
        names = sorted({n for held in doc["assignments"].values() for n in held})
        lines += ["", "Factory held by each competitor in each world (index@level):", "",
                  *md_table(["world", *names], [[w, *(held.get(n, "-") for n in names)]
                                                for w, held in sorted(doc["assignments"].items())])]
        bad = [c for c, r in doc["rotations"].items() if not r["real_rotations"]]
        lines += ["", "Rotations: " + (f"REPLAYS in {', '.join(bad)}" if bad else
                                       "every world of every configuration has its own assignment")]
    return "\n".join(lines)


@dataclass(frozen=True)
class ConfigurationJob:
    """One world configuration's tournament (all its rotations): the unit a task runner spreads."""

    bundles: tuple[str, ...]
    config: TournamentConfig
    index: int
    out_dir: str  # where ``c<index>.json`` goes (the tournament's files beside it)

    @property
    def result(self) -> Path:
        return Path(self.out_dir) / f"c{self.index:03d}.json"


def configuration_jobs(bundles: Sequence[Path], worlds_dir: Path, config: TournamentConfig) -> list[ConfigurationJob]:
    """The configurations not played yet (a rerun plays only the missing ones)."""
    names = tuple(str(Path(b).resolve()) for b in bundles)
    jobs = [ConfigurationJob(names, config, i, str(worlds_dir)) for i in range(config.configs)]
    return [j for j in jobs if not j.result.exists()]


def play_configuration(job: ConfigurationJob, progress: Any = None) -> dict[str, Any]:
    """Play one configuration in scml's ``anac2024_std``; write its scores and audit verdicts to ``job.result``."""
    import random

    from scml.utils import anac2024_std

    config = job.config
    root = Path(job.out_dir) / f"c{job.index:03d}"
    audit_dir = root / "audit"
    shutil.rmtree(root, ignore_errors=True)  # a half-played configuration is played again
    audit_dir.mkdir(parents=True)
    types, params = competitors([Path(b) for b in job.bundles], config)
    seed = config.seed * 100_003 + job.index  # the configuration scml generates depends on these generators
    random.seed(seed)
    np.random.seed(seed % 2**32)
    old = os.environ.get(AUDIT_DIR_ENV)
    os.environ[AUDIT_DIR_ENV] = str(audit_dir.resolve())
    try:
        results = anac2024_std(
            # every competitor in every world, rotated over the configuration's slots: max_worlds_per_config
            # left at None, scml's fair branch (any number given) replays one assignment (module docstring)
            competitors=types, competitor_params=params, n_configs=1, n_competitors_per_world=len(types),
            max_worlds_per_config=None, n_runs_per_world=1, n_steps=config.steps,
            tournament_path=str(root / "tournament"), parallelism=config.parallelism, compact=True, verbose=False,
            tournament_progress_callback=(lambda *_: progress()) if progress is not None else None,
        )
    finally:
        if old is None:
            os.environ.pop(AUDIT_DIR_ENV, None)
        else:
            os.environ[AUDIT_DIR_ENV] = old
    scores = results.scores[["agent_type", "agent_name", "world", "score"]].astype(
        {"agent_type": str, "agent_name": str, "world": str})
    doc = {"index": job.index, "scores": scores.to_dict(orient="records"),
           "audits": [json.loads(f.read_text()) for f in sorted(audit_dir.glob("*.json"))],
           "bundles": {cls.__name__: p["controller_params"]["bundle"] for cls, p in zip(types, params) if p}}
    tmp = job.result.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, job.result)
    return {"index": job.index, "worlds": int(scores["world"].nunique())}


def run_tournament(bundles: Sequence[Path] | Path, out: Path, config: TournamentConfig, progress: bool = True,
                   worlds_dir: Path | None = None) -> dict[str, Any]:
    """Play every configuration not played yet in ``worlds_dir`` (default ``out/configurations``), then
    write ``out/tournament.json``, ``tournament.md`` and ``scores.png``."""
    import pandas as pd

    config.validate()
    bundles = [bundles] if isinstance(bundles, (str, Path)) else list(bundles)
    out = Path(out)
    worlds_dir = Path(worlds_dir) if worlds_dir is not None else out / "configurations"
    worlds_dir.mkdir(parents=True, exist_ok=True)
    todo = configuration_jobs(bundles, worlds_dir, config)
    bar = None
    if progress and todo:
        from tqdm import tqdm

        n_types = len(bundles) + len(REFERENCE_AGENTS) + len(config.opponents)  # one world per rotation
        bar = tqdm(total=len(todo) * n_types, desc="tournament worlds", unit="world")
    try:
        for job in todo:
            play_configuration(job, (lambda: bar.update(1)) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    played = [json.loads((worlds_dir / f"c{i:03d}.json").read_text()) for i in range(config.configs)]
    scores = pd.DataFrame([row for doc in played for row in doc["scores"]])
    doc = summarize(scores, [a for d in played for a in d["audits"]], config)
    doc["bundles"] = played[0]["bundles"]
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "tournament.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, out / "tournament.json")
    (out / "tournament.md").write_text(markdown(doc) + "\n")
    plot(doc, out / "scores.png")
    return doc
