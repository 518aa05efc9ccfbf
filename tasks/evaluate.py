"""Stage: evaluate trained bundles in scml's own standard-track tournament (``anac2024_std``).

Competitors: LitaAgentHRL with each bundle given (one per L3 mode), LitaAgentHRL
on rules alone, LitaAgentHS and PenguinAgent, with and against the 2025
winners. Every one of ours (and Penguin) is audited inside the tournament's
worker processes: the `AuditHook` verdicts are written to files the stage
sums afterwards. Every competitor plays every world; each configuration is
played once per rotation of the competitors over its slots, and its rotations
are averaged, so intervals and paired differences are over configurations.
``evaluation.json``: per agent the worlds, mean score and its 95% interval,
unsafe_any and illegal counts; the paired differences against PenguinAgent
and between the two L3 modes; ``scores.png``: the score distributions. `best_bundle` names the bundle that
scored best: the pipeline points ``LATEST`` at it.
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

EVALUATION_SCHEMA_VERSION = 1
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
class EvalConfig:
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
    def smoke(cls) -> "EvalConfig":
        return cls(configs=1, steps=10)


def competitors(bundles: Sequence[Path], config: EvalConfig) -> tuple[list[type], list[dict[str, Any]]]:
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


def interval(values: Sequence[float]) -> dict[str, float]:
    """Mean and a Student-t 95% interval of the mean (few configurations: not the normal 1.96)."""
    from scipy.stats import t

    x = np.asarray(values, float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    half = float(t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": mean, "ci95": [mean - half, mean + half], "half_width": half, "n": n}


def configuration_of(world: str) -> str:
    """scml names a tournament world ``<configuration>.<rotation>``."""
    return str(world).rsplit(".", 1)[0]


def summarize(scores: Any, audits: list[dict[str, Any]], config: EvalConfig) -> dict[str, Any]:
    """Per agent type: mean score and interval, audit sums, paired differences.

    The rotations of one configuration share its market, so they are averaged
    first: the intervals are over configurations (n = configs), not worlds.
    """
    per_world = scores.groupby(["agent_type", "world"])["score"].mean().unstack("agent_type")
    per_world.columns = [str(c).split(".")[-1].split(":")[-1] for c in per_world.columns]
    per_config = per_world.groupby([configuration_of(w) for w in per_world.index]).mean()
    agents: dict[str, Any] = {}
    for name in per_world.columns:
        entry: dict[str, Any] = {"worlds": int(per_world[name].notna().sum()),
                                 "score": interval(per_config[name].dropna().tolist()),
                                 "world_scores": interval(per_world[name].dropna().tolist())}
        mine = [a for a in audits if a["agent_type"] == name]
        if mine:
            entry.update({k: int(sum(a[k] for a in mine)) for k in ("decisions", "unsafe_any", "illegal", "off_grid")})
        agents[name] = entry
    pairs = [(name, config.baseline) for name in per_world.columns if name != config.baseline]
    if {"LitaAgentHRLResidual", "LitaAgentHRLDirect"} <= set(per_world.columns):
        pairs.append(("LitaAgentHRLResidual", "LitaAgentHRLDirect"))
    paired = {f"{a} - {b}": interval((per_config[a] - per_config[b]).dropna().tolist())
              for a, b in pairs if a in per_config and b in per_config}
    return {"schema_version": EVALUATION_SCHEMA_VERSION, "config": asdict(config), "worlds": int(len(per_world)),
            "configurations": int(len(per_config)), "agents": agents, "paired": paired,
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


def best_bundle(doc: dict[str, Any]) -> str | None:
    """The evaluated bundle whose agent scored the highest mean (the one worth playing), if any."""
    scored = [(doc["agents"][name]["score"]["mean"], path) for name, path in doc.get("bundles", {}).items()
              if name in doc.get("agents", {})]
    return max(scored)[1] if scored else None


def markdown(doc: dict[str, Any]) -> str:
    from tasks.report import md_table

    rows = []
    for name, a in sorted(doc["agents"].items(), key=lambda kv: -kv[1]["score"]["mean"]):
        s = a["score"]
        rows.append([name, a["worlds"], f"{s['mean']:.4f}", f"± {s['half_width']:.4f}",
                     a.get("unsafe_any", "-"), a.get("illegal", "-"), a.get("decisions", "-")])
    lines = [f"{doc['worlds']} worlds = {doc.get('configurations', '?')} configurations x rotations; "
             "intervals over configurations (Student t)", "",
             *md_table(["agent", "worlds", "mean score", "95% CI", "unsafe_any", "illegal", "decisions"], rows)]
    lines += ["", *md_table(["paired difference (per configuration)", "mean", "95% CI", "configurations"],
                            [[k, f"{v['mean']:+.4f}", f"± {v['half_width']:.4f}", v["n"]] for k, v in doc["paired"].items()])]
    return "\n".join(lines)


@dataclass(frozen=True)
class ConfigurationJob:
    """One world configuration's tournament (all its rotations): the unit a task runner spreads."""

    bundles: tuple[str, ...]
    config: EvalConfig
    index: int
    out_dir: str  # where ``c<index>.json`` goes (the tournament's files beside it)

    @property
    def result(self) -> Path:
        return Path(self.out_dir) / f"c{self.index:03d}.json"


def configuration_jobs(bundles: Sequence[Path], worlds_dir: Path, config: EvalConfig) -> list[ConfigurationJob]:
    """The configurations of this evaluation not played yet (a rerun plays only the missing ones)."""
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
            # every competitor in every world (paired comparisons), rotated over the slots of the configuration
            competitors=types, competitor_params=params, n_configs=1, n_competitors_per_world=len(types),
            max_worlds_per_config=len(types), n_runs_per_world=1, n_steps=config.steps,
            tournament_path=str(root / "tournament"), parallelism=config.parallelism, compact=True, verbose=False,
            tournament_progress_callback=(lambda *_: progress()) if progress is not None else None,
        )
    finally:
        if old is None:
            os.environ.pop(AUDIT_DIR_ENV, None)
        else:
            os.environ[AUDIT_DIR_ENV] = old
    scores = results.scores[["agent_type", "world", "score"]].astype({"agent_type": str, "world": str})
    doc = {"index": job.index, "scores": scores.to_dict(orient="records"),
           "audits": [json.loads(f.read_text()) for f in sorted(audit_dir.glob("*.json"))],
           "bundles": {cls.__name__: p["controller_params"]["bundle"] for cls, p in zip(types, params) if p}}
    tmp = job.result.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, job.result)
    return {"index": job.index, "worlds": int(scores["world"].nunique())}


def evaluate(bundles: Sequence[Path] | Path, out: Path, config: EvalConfig, progress: bool = True,
             worlds_dir: Path | None = None) -> dict[str, Any]:
    """Play every configuration not played yet in ``worlds_dir`` (default ``out/configurations``; the
    pipeline maps them as tasks first), then write ``out/evaluation.json``, ``evaluation.md``, ``scores.png``."""
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
        bar = tqdm(total=len(todo) * n_types, desc="evaluate worlds", unit="world")
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
    tmp = out / "evaluation.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, out / "evaluation.json")
    (out / "evaluation.md").write_text(markdown(doc) + "\n")
    plot(doc, out / "scores.png")
    return doc
