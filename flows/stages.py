"""The pipeline's stages as data: what each reads and writes, its config per profile, and how it runs.

Nothing here imports Prefect's engine: `flows/pipeline.py` runs `execute` as a
cached Prefect task and maps the collect worlds. To add a stage: one entry in
STAGES (name, code modules, input and output artifacts, a config per profile,
how to call it) and, if it writes a new artifact, one in ARTIFACTS.

How a stage writes its outputs (``mode``):

- ``collect``: one unit of work per world (``DONE`` last); the flow maps the
  missing worlds as tasks, this stage only summarizes.
- ``units``: the stage function updates its output tables in place, one
  atomic file or directory per input unit (world), each with its unit record
  (`tasks.unit_cache`: keyed by the unit's code, config and input content), so
  it rebuilds exactly the units whose record is missing or whose files are not
  the ones recorded, and deletes the outputs of input units that are gone; a
  forced run deletes everything first.
- ``fresh``: the function writes one directory, handed to it as
  ``.<name>.partial-<cache key>`` and renamed into place when it returns. A run
  killed in the middle resumes from that directory (training checkpoints) only
  when the cache key, so the inputs, config and code, is the same.
- ``publish``: the function writes a directory of its own choosing and
  returns it (the bundle: its id is the digest of its weights).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tasks.collect import DONE, PROFILES as COLLECT_PROFILES, CollectProfile
from tasks.code_version import code_version
from tasks.events import RAW_WORLDS
from tasks.fingerprint import MARKER, WHOLE, Layout, canonical, fingerprint, stage_key

PROFILE_NAMES = ("smoke", "default", "official")
FORCED = "forced"  # a stage's outputs deleted and rebuilt whatever the caches say (`--force`)
PER_WORLD = Layout(depth=2, suffix=".parquet")
MODEL = Layout(skip=("checkpoints",))


class ParameterError(ValueError):
    """A pipeline parameter that cannot run; raised before any task starts. The message lists valid values."""


class StageFailed(RuntimeError):
    """A stage raised; earlier stages' artifacts and cache records are untouched."""

    def __init__(self, stage: str, error: str):
        super().__init__(f"stage '{stage}' failed: {error}")
        self.stage, self.error = stage, error

    def __reduce__(self) -> tuple:
        return StageFailed, (self.stage, self.error)


@dataclass(frozen=True)
class Artifact:
    """A named directory under the data root (``path`` may hold {run_id}, {mode} or {bundle_name})."""

    path: str
    layout: Layout = WHOLE


ARTIFACTS: dict[str, Artifact] = {
    "raw": Artifact("raw", RAW_WORLDS),  # every complete world of every run (nightly ones too)
    "raw_run": Artifact("raw/{run_id}", Layout(depth=1, marker=DONE)),  # the worlds this pipeline collects
    "events": Artifact("lake/events", Layout(depth=2, extra=("quarantine.parquet",))),  # a world directory: converted
    "macro": Artifact("lake/macro", PER_WORLD),
    "micro": Artifact("lake/micro", PER_WORLD),
    "l4_distill": Artifact("lake/l4_distill", PER_WORLD),
    "goal_hat": Artifact("lake/goal_hat", PER_WORLD),
    "l2": Artifact("models/l2", MODEL),
    "l3": Artifact("models/l3-{mode}", MODEL),
    "l3_rules": Artifact("models/l3-rules", MODEL),
    "l4": Artifact("models/l4", MODEL),
    "bundle": Artifact("bundles/{bundle_name}"),
    "bundle_rules": Artifact("bundles/{bundle_rules_name}"),
    "finetuned": Artifact("bundles/{finetuned_name}"),
    "latest": Artifact("bundles/{latest_name}"),  # the bundle LATEST names when the pipeline starts (the flow sets it)
    "evaluation": Artifact("reports/evaluation/{bundle_name}"),
}


@dataclass(frozen=True)
class Stage:
    name: str
    modules: tuple[str, ...]  # the code: its version is these modules and every project module they import
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    config: Callable[[str], Any] | None  # profile -> config (a dataclass); None: the stage has no settings
    run: Callable[[dict[str, Path], Any], Any]  # (paths by name, config) -> summary (publish: the path written)
    mode: str = "units"
    isolated: bool = False  # runs in a process of its own: it may overlap others, and seeds torch and its threads
    mapped: bool = False  # units: ``run`` takes (workers, dask_address) and maps its worlds on those processes


# ------------------------------------------------------------------------------- stage calls


def _events(p: dict[str, Path], config: Any, workers: int, dask_address: str | None) -> dict:
    from tasks.events import run_events

    summary = run_events(p["raw"], p["lake"], workers, dask_address)
    _raise_if_failed("events", summary["failed"])
    return {**summary, "quarantined": [f"{q['run_id']}/{q['world_id']}: {q['reason']}" for q in summary["quarantined"]]}


def _tables(p: dict[str, Path], spec: Any, workers: int, dask_address: str | None) -> dict:
    from tasks.world_tables import build_tables

    summary = build_tables(p["lake"], spec, workers=workers, dask_address=dask_address)
    _raise_if_failed("tables", summary["failed"])
    return summary


def _raise_if_failed(stage: str, failed: list[str]) -> None:
    """A world that failed (its process died, an unreadable file): the stage fails after the others are
    kept, so the next run (no cache record) builds only what is missing instead of training on a lake
    without it."""
    if failed:
        raise RuntimeError(f"{len(failed)} world(s) of {stage} failed: {'; '.join(failed[:3])}")


def _train_l2(p: dict[str, Path], config: Any) -> dict:
    from tasks.train_l2 import train_l2

    return _headline(train_l2(p["lake"], p["out"], config, progress=False))


def _backfill(p: dict[str, Path], config: Any, workers: int, dask_address: str | None) -> dict:
    from tasks.backfill import backfill

    return backfill(p["lake"], p["l2"], config, workers, dask_address)


def _train_l3(p: dict[str, Path], config: Any) -> dict:
    from tasks.train_l3 import train_l3

    return _headline(train_l3(p["lake"], p["out"], config, progress=False))


def _train_l4(p: dict[str, Path], config: Any) -> dict:
    from tasks.train_l4 import train_l4

    return _headline(train_l4(p["lake"], p["out"], config, progress=False))


def _bundle_of(l3: str) -> Callable[[dict[str, Path], Any], Path]:
    """The bundle stage of one L3 variant (the same L2 and L4 in every bundle)."""

    def bundle(p: dict[str, Path], config: Any) -> Path:
        from dataclasses import replace

        from tasks.bundle import assemble

        # LATEST moves only on the evaluation's evidence (the flow decides, `tasks.evaluate.decide_latest`)
        return assemble(p["l2"], p[l3], p["l4"], p["bundles"], replace(config, set_latest=False),
                        trained_on={"lake": str(p["lake"])})

    return bundle


def _evaluate(p: dict[str, Path], config: Any) -> dict:
    from tasks.evaluate import evaluate, find_pair, pipeline_candidates

    specs, pairs, _ = pipeline_candidates(p, BUNDLES, p["bundles"])
    # the flow mapped the (world, candidate) units as tasks already: summarize what they wrote
    doc = evaluate(config, p["out"], specs, worlds_dir=p["eval_worlds"], play=False, extra_pairs=pairs,
                   bundles_root=p["bundles"])
    if not doc["worlds"]["complete"]:  # no figure at all: the stage fails (a rerun plays the missing units)
        first = doc["worlds"]["dropped"][0]["errors"][0] if doc["worlds"]["dropped"] else {}
        raise RuntimeError(f"no world was played by every candidate ({len(doc['worlds']['dropped'])} dropped; "
                           f"first: {first.get('candidate')}: {first.get('error')})")
    return {"worlds": doc["worlds"]["complete"], "resolution": doc["power"]["resolution"],
            "scores": {n: a["score"]["mean"] for n, a in doc["agents"].items()},
            "vs_reference": {p_["a"]: [p_["mean"], p_["half_width"]] for p_ in doc["paired"] if p_["b"] == doc["reference"]},
            "pairs": {f"{a} - {b}": [d["mean"], d["half_width"]] for a, b in pairs if (d := find_pair(doc, a, b))}}


def _finetune(p: dict[str, Path], config: Any) -> Path:
    from tasks.race import race_stage

    # the run directory is keyed by the stage's cache key: a killed run replays only the rows it lacks
    return race_stage(config, p["work"], p["bundles"])


def _finetune_config(profile: str) -> Any:
    from tasks.race import PROFILES

    return PROFILES["smoke" if profile == "smoke" else "default" if profile == "default" else "long"]()


def _headline(metrics: dict) -> dict:
    """What a run report needs of a training stage's metrics (the full set is in its metrics.json)."""
    keep = ("best_val_loss", "epochs", "mode", "val", "final", "val_mean_baseline")
    return {k: metrics[k] for k in keep if k in metrics}


def _preset(module: str, cls: str, **kwargs: Any) -> Callable[[str], Any]:
    """A config class's ``smoke()`` preset for the smoke profile, its defaults otherwise."""

    def make(profile: str) -> Any:
        import importlib

        c = getattr(importlib.import_module(module), cls)
        return c.smoke(**kwargs) if profile == "smoke" else c(**kwargs)

    return make


def _feature_spec(profile: str) -> Any:
    from hrlxf_agent.state import FeatureSpec

    return FeatureSpec()


def _eval_config(profile: str) -> Any:
    from tasks.evaluate import EvalConfig

    # beside the new bundles: the rules bundle (the race's start) and LATEST (`tasks.evaluate.pipeline_candidates`)
    return {"smoke": EvalConfig.smoke(candidates=("PenguinAgent",)),
            "default": EvalConfig(candidates=("PenguinAgent",)),
            "official": EvalConfig(worlds=48, steps=100, candidates=("PenguinAgent",))}[profile]


#: the bundles one pipeline run makes: L3 residual over L1's baseline and over the rules (offline), and the
#: fine-tuned one (online, from the untrained residual over the rules). The direct L3 is left to
#: `hrlxf train --modes direct`: level with the residual in every measurement, it cost 7 of the main
#: command's 45 minutes that the online stage needs.
BUNDLES = ("bundle", "bundle_rules", "finetuned")

STAGES: tuple[Stage, ...] = (
    Stage("collect", ("tasks.collect",), (), ("raw_run",), lambda profile: COLLECT_PROFILES[profile], run=lambda p, c: {},
          mode="collect"),
    Stage("events", ("tasks.events",), ("raw",), ("events",), None, _events, mapped=True),
    Stage("tables", ("tasks.world_tables",), ("events",), ("macro", "micro", "l4_distill"),
          _feature_spec, _tables, mapped=True),
    Stage("train_l2", ("tasks.train_l2",), ("macro", "events"), ("l2",), _preset("tasks.train_l2", "L2Config"), _train_l2,
          mode="fresh", isolated=True),
    Stage("backfill", ("tasks.backfill",), ("macro", "l2"), ("goal_hat",), _preset("tasks.backfill", "BackfillConfig"),
          _backfill, mapped=True),
    Stage("train_l3", ("tasks.train_l3",), ("micro", "goal_hat", "events"), ("l3",), _preset("tasks.train_l3", "L3Config"),
          _train_l3, mode="fresh", isolated=True),
    Stage("train_l3_rules", ("tasks.train_l3",), ("micro", "goal_hat", "events"), ("l3_rules",),
          _preset("tasks.train_l3", "L3Config", base="rules"), _train_l3, mode="fresh", isolated=True),
    Stage("train_l4", ("tasks.train_l4",), ("l4_distill", "goal_hat", "events"), ("l4",), _preset("tasks.train_l4", "L4Config"),
          _train_l4, mode="fresh", isolated=True),
    Stage("bundle", ("tasks.bundle",), ("l2", "l3", "l4"), ("bundle",), _preset("tasks.bundle", "BundleConfig"),
          _bundle_of("l3"), mode="publish"),
    Stage("bundle_rules", ("tasks.bundle",), ("l2", "l3_rules", "l4"), ("bundle_rules",),
          _preset("tasks.bundle", "BundleConfig"), _bundle_of("l3_rules"), mode="publish"),
    Stage("finetune", ("tasks.race",), (), ("finetuned",), _finetune_config, _finetune, mode="publish",
          isolated=True),
    Stage("evaluate", ("tasks.evaluate",), BUNDLES + ("latest",), ("evaluation",), _eval_config,
          _evaluate, mode="fresh"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
BY_NAME = {s.name: s for s in STAGES}
#: the stage that writes each artifact (every run's raw worlds include the one collect writes)
PRODUCER = {out: s.name for s in STAGES for out in s.outputs} | {"raw": "collect"}


def upstream(stage: Stage, planned: list[Stage]) -> list[str]:
    """The planned stages whose outputs ``stage`` reads: it starts when they end (the flow's DAG)."""
    names = {s.name for s in planned}
    return sorted({PRODUCER[i] for i in stage.inputs if PRODUCER.get(i) in names} - {stage.name})


def overlapping(planned: list[Stage]) -> int:
    """How many isolated stages of the plan may run at once (at most): those that are neither upstream nor
    downstream of one another (their processes share the cores)."""
    before: dict[str, set[str]] = {}
    for s in planned:  # the plan is in topological order
        before[s.name] = set().union(*({u, *before[u]} for u in upstream(s, planned)))
    iso = [s.name for s in planned if s.isolated]
    return max((sum(1 for b in iso if b == a or (a not in before[b] and b not in before[a])) for a in iso), default=1)

#: settings without a validate() of their own: (stage, dotted field) -> (min, max)
RANGES: dict[tuple[str, str], tuple[float | None, float | None]] = {
    ("collect", "worlds"): (1, 100_000), ("collect", "steps"): (3, 1_000), ("collect", "workers"): (1, 256),
    ("collect", "world_timeout"): (1, None), ("collect", "seed"): (0, None),
    ("tables", "horizon"): (1, 40),  # logs hold at least today + 10 (std's horizon); older ones today + 40
    ("backfill", "horizon"): (1, 40), ("train_l2", "planner.horizon"): (1, 40), ("train_l3", "executor.horizon"): (1, 40),
    ("train_l3_rules", "executor.horizon"): (1, 40),
    ("evaluate", "worlds"): (1, 10_000), ("evaluate", "steps"): (3, 1_000), ("evaluate", "workers"): (1, 256),
}
#: settings that must agree across stages: the feature horizon, and the one split by world of every training
_TRAININGS = ("train_l2", "train_l3", "train_l3_rules", "train_l4")
SAME: dict[str, tuple[tuple[str, str], ...]] = {
    "the feature horizon": (("tables", "horizon"), ("train_l2", "planner.horizon"), ("backfill", "horizon"),
                            ("train_l3", "executor.horizon"), ("train_l3_rules", "executor.horizon")),
    **{f"the split by world ({f})": tuple((s, f"fit.{f}") for s in _TRAININGS) for f in ("val_fraction", "test_fraction", "seed")},
}
#: collect settings that do not change what a world holds (left out of its cache key and of a run's identity)
COLLECT_RUNTIME = ("workers", "world_timeout")


# ------------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """A validated pipeline run: what runs, with which configs and recipes, on which data."""

    profile: str
    run_id: str
    data: Path
    stages: list[Stage]
    configs: dict[str, Any]
    recipes: dict[str, str]
    code: dict[str, dict]
    force: tuple[str, ...]
    workers: int


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _coerce(value: Any, current: Any, where: str) -> Any:
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        raise ParameterError(f"{where} expects true or false, got {value!r}")
    if isinstance(current, int):
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ParameterError(f"{where} expects an integer, got {value!r}")
        return int(value)
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParameterError(f"{where} expects a number, got {value!r}")
        return float(value)
    if isinstance(current, str):
        if not isinstance(value, str):
            raise ParameterError(f"{where} expects a string, got {value!r}")
        return value
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParameterError(f"{where} expects a list, got {value!r}")
        return tuple(value)
    raise ParameterError(f"{where} cannot be set from the command line")


def override(config: Any, dotted: str, value: Any, stage: str, where: str = "") -> Any:
    """``config`` with the (possibly nested) field ``dotted`` set to ``value``; unknown names list the valid ones."""
    head, _, rest = dotted.partition(".")
    where = f"{where or stage}.{head}"
    if config is None or not dataclasses.is_dataclass(config):
        raise ParameterError(f"{where.rpartition('.')[0]} has no settings")
    names = [f.name for f in dataclasses.fields(config)]
    if head not in names:
        raise ParameterError(f"{where.rpartition('.')[0]} has no setting {head!r}; valid: {', '.join(names)}")
    current = getattr(config, head)
    new = override(current, rest, value, stage, where) if rest else _coerce(value, current, where)
    return dataclasses.replace(config, **{head: new})


def _validate(stage: str, config: Any) -> None:
    for (s, dotted), (lo, hi) in RANGES.items():
        if s != stage:
            continue
        v = _get(config, dotted)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            span = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise ParameterError(f"{stage}.{dotted} = {v} is out of range: valid {span}")

    def walk(obj: Any) -> None:
        if dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                walk(getattr(obj, f.name))
            if callable(getattr(obj, "validate", None)):
                try:
                    obj.validate()
                except ParameterError:
                    raise
                except Exception as e:  # ValueError, UnknownAgentError (it lists the known agents)
                    raise ParameterError(f"{stage}: {e}") from None

    walk(config)


def collect_identity(profile: CollectProfile) -> dict:
    """What decides the content of a run's worlds (more worlds extend a run; these may not change)."""
    return {k: v for k, v in json.loads(canonical(profile)).items() if k not in ("worlds", "__type__", *COLLECT_RUNTIME)}


def check_collect_run(run_dir: Path, profile: CollectProfile) -> None:
    """A run id names one recipe: refuse to add worlds of another one to it."""
    want = collect_identity(profile)
    marker = run_dir / MARKER
    if marker.exists():
        have = json.loads(marker.read_text()).get("identity", {})
    else:  # a run collected before the pipeline existed: read what one of its worlds says
        world = next(iter(sorted(run_dir.glob(f"*/{DONE}"))), None)
        if world is None:
            return
        meta = json.loads((world.parent / "world.json").read_text())
        have = {**want, "steps": meta.get("n_steps"), "experts": meta.get("experts", want["experts"])}
    diff = {k: (have.get(k), want[k]) for k in want if have.get(k) != want[k]}
    if diff:
        text = ", ".join(f"{k} {a!r} (now {b!r})" for k, (a, b) in diff.items())
        raise ParameterError(f"{run_dir} holds worlds collected with {text}: give another run id, or --force collect "
                             f"to replay the run")


def make_plan(profile: str = "default", force: list[str] | tuple[str, ...] | None = None,
              overrides: dict[str, dict[str, Any]] | None = None, until: str | None = None, run_id: str | None = None,
              workers: int | None = None, data: Path | None = None, only: list[str] | None = None) -> Plan:
    """Validate every parameter and build each stage's config and recipe; nothing runs and nothing is written.
    ``until`` stops after a stage; ``only`` runs just the stages named (their inputs must exist)."""
    from hrlxf_agent.paths import data_root

    if profile not in PROFILE_NAMES:
        raise ParameterError(f"unknown profile {profile!r}: valid profiles are {', '.join(PROFILE_NAMES)}")
    force = tuple(force or ())
    for name in (*force, *([until] if until else []), *(overrides or {}), *(only or ())):
        if name not in BY_NAME:
            raise ParameterError(f"unknown stage {name!r}: valid stages are {', '.join(STAGE_NAMES)}")
    if workers is not None and not 1 <= workers <= 256:
        raise ParameterError(f"workers = {workers} is out of range: valid [1, 256]")
    run_id = run_id or profile
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise ParameterError(f"run id {run_id!r}: give a plain directory name")
    stages = list(STAGES[: STAGE_NAMES.index(until) + 1]) if until else list(STAGES)
    if only:
        stages = [s for s in stages if s.name in only]
    configs: dict[str, Any] = {}
    for s in STAGES:
        configs[s.name] = s.config(profile) if s.config else None
        for dotted, value in (overrides or {}).get(s.name, {}).items():
            configs[s.name] = override(configs[s.name], dotted, value, s.name)
    if workers is not None:
        configs["collect"] = dataclasses.replace(configs["collect"], workers=workers)
    for s in stages:
        _validate(s.name, configs[s.name])
    for what, fields in SAME.items():
        values = {f"{s}.{d}": _get(configs[s], d) for s, d in fields if s in {x.name for x in stages}}
        if len(set(values.values())) > 1:
            raise ParameterError(f"{what} must be the same in every stage: "
                                 + ", ".join(f"{k} = {v}" for k, v in values.items()))
    data = Path(data or data_root()).resolve()
    if "collect" in {s.name for s in stages} and "collect" not in force:
        check_collect_run(data / "raw" / run_id, configs["collect"])
    code = {s.name: code_version(list(s.modules)) for s in stages}
    recipes = {s.name: recipe(s.name, configs[s.name], code[s.name]["digest"]) for s in stages}
    return Plan(profile, run_id, data, stages, configs, recipes, code, force,
                configs["collect"].workers)


def key_config(stage: str, config: Any) -> Any:
    """The part of a config that decides a stage's outputs."""
    doc = json.loads(canonical(config))
    if stage == "collect":
        doc = {k: v for k, v in doc.items() if k not in COLLECT_RUNTIME}
    if stage in ("evaluate", "finetune"):
        doc = {k: v for k, v in doc.items() if k != "workers"}
    return doc


def recipe(stage: str, config: Any, code_digest: str) -> str:
    return hashlib.sha256(canonical({"stage": stage, "config": key_config(stage, config), "code": code_digest}).encode()).hexdigest()


# ------------------------------------------------------------------------------- running one stage


@dataclass
class StageCall:
    """Everything one stage run needs (the Prefect task's only parameter; its cache key reads recipe and inputs)."""

    stage: str
    data: str  # the data root, absolute
    recipe: str
    config: Any
    inputs: dict[str, tuple[str, Layout]]  # name -> (absolute path, layout)
    outputs: dict[str, tuple[str, Layout]]
    paths: dict[str, str] = field(default_factory=dict)  # lake, raw, bundles, ... (absolute)
    # why the outputs are rebuilt: FORCED deletes them first; another reason (outputs changed since the cached
    # run) rebuilds a fresh or publish stage from scratch and a units stage's changed units (their records)
    rebuild: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # collect: the rows of the worlds played now
    threads: int | None = None  # an isolated stage's math threads (the flow's share of the cores)
    # a mapped stage's worker processes, or the Dask cluster of the run (not in the cache key: the outputs
    # do not depend on where the worlds ran)
    workers: int = 1
    dask_address: str | None = None


def _rel(path: Path, data: Path) -> str:
    try:
        return Path(path).resolve().relative_to(data).as_posix()
    except ValueError:
        return str(Path(path).resolve())


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _write_marker(directory: Path, doc: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, directory / MARKER)


def _swap(new: Path, final: Path) -> None:
    """Put ``new`` where ``final`` is (the old one is renamed away first, then deleted)."""
    old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def execute_stage(call: StageCall) -> dict[str, Any]:
    """`execute`, in a process of its own for an isolated stage (it may overlap others)."""
    if BY_NAME[call.stage].isolated:
        from tasks.parallel import in_own_process

        # the caller's flow and task run go along: what the stage maps (rollouts) is this run's
        return in_own_process(execute, call, threads=call.threads, prefect_context=True)
    return execute(call)


def execute(call: StageCall) -> dict[str, Any]:
    """Run one stage; returns its record (what the cache stores): outputs, their fingerprints, a summary,
    its seconds and the peak memory of its process tree (``peak_mb``)."""
    from tasks.parallel import peak_memory

    with peak_memory() as memory:
        record = _execute(call)
    return record | {"peak_mb": memory["peak_mb"]}


def _execute(call: StageCall) -> dict[str, Any]:
    from tasks.collect import summarize

    stage = BY_NAME[call.stage]
    data = Path(call.data)
    start = time.perf_counter()
    inputs = {name: fingerprint(Path(p), layout) for name, (p, layout) in call.inputs.items()}
    key = stage_key(call.recipe, inputs)
    paths = {name: Path(p) for name, (p, _) in call.inputs.items()}
    paths.update({name: Path(p) for name, (p, _) in call.outputs.items()})
    paths.update({name: Path(p) for name, p in call.paths.items()})
    rebuilt = call.rebuild
    outputs = {name: Path(p) for name, (p, _) in call.outputs.items()}
    if stage.mode == "collect":
        profile, run_id = call.config, call.extra["run_id"]
        summary = summarize(profile, data / "raw", run_id, call.extra["rows"], call.extra["skipped"], call.extra["seconds"])
        complete = len(list((data / "raw" / run_id).glob(f"*/{DONE}")))
        if complete == 0:
            errors = "; ".join(f"{f['world_id']}: {f['error']}" for f in summary["failed"][:3])
            raise RuntimeError(f"no world of run {run_id!r} completed ({errors})")
        _write_marker(data / "raw" / run_id, {"stage": "collect", "identity": collect_identity(profile)})
        summary = {k: summary[k] for k in ("worlds_done", "worlds_failed", "worlds_skipped", "failed", "events", "bytes",
                                           "seconds", "worlds_per_hour")} | {"worlds_complete": complete}
    elif stage.mode == "units":
        if call.rebuild == FORCED:  # otherwise each unit's record says what to rebuild (`tasks.unit_cache`)
            for out in outputs.values():
                _remove(out)
        summary = (stage.run(paths, call.config, call.workers, call.dask_address) if stage.mapped
                   else stage.run(paths, call.config))
    elif stage.mode == "fresh":
        (name, final), = outputs.items()
        partial = final.parent / f".{final.name}.partial-{key[:16]}"
        if call.rebuild:
            _remove(partial)
        partial.mkdir(parents=True, exist_ok=True)
        summary = stage.run({**paths, "out": partial}, call.config)
        _swap(partial, final)
    elif stage.mode == "publish":
        (name, _), = outputs.items()
        # a scratch directory of this cache key (the fine-tuning run: resumed by a rerun of the same key)
        work = {"work": data / "models" / f"{stage.name}-{key[:16]}", "data": data}
        outputs[name] = Path(stage.run({**paths, **work}, call.config)).resolve()
        summary = {"path": _rel(outputs[name], data)}
    else:
        raise ValueError(f"unknown stage mode {stage.mode!r}")
    return {
        "stage": stage.name, "key": key, "recipe": call.recipe, "inputs": inputs,
        "outputs": {name: _rel(p, data) for name, p in outputs.items()},
        "fingerprints": {name: fingerprint(p, ARTIFACTS[name].layout) for name, p in outputs.items()},
        "rebuilt": rebuilt, "summary": json.loads(canonical(summary)),
        "seconds": round(time.perf_counter() - start, 2),
    }
