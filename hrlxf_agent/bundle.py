"""Bundles: the trained layers the agent loads (schemas/bundle_manifest.schema.json).

A bundle is a directory: ``manifest.json`` + one state-dict file per network
(``planner.pt``, ``executor.pt``, ``coordinator.pt``), loaded with
``torch.load(..., weights_only=True)`` so no pickled code ever runs. A trained
bundle may also hold ``executor_bc.pt``, its L3 before AWR (the BC ablation:
``load_bundle(path, executor="bc")``).
``data/bundles/LATEST`` holds the name of the newest bundle.

A manifest may carry a ``strategy`` (`strategy`: offsets from the rule layers' constants and goals), which the
agent's rule layers play with. A *rules bundle* (``l3_mode: "rules"``) has no networks at all: it is the
rule layers with its strategy, what the search of `hrlxf_rl.racing` publishes.

Paths a manifest records (what a bundle was trained on, where a fine-tuned one
started) are relative to the bundle's directory when they lie under its data
root (``<data>/bundles/<id>`` -> ``../../models/l2``), so a data root can move;
`bundle_ref` reads them, and the absolute ones of older bundles as they are.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from hrlxf_models import Coordinator, CoordinatorConfig, Executor, ExecutorConfig, Planner, PlannerConfig

from .paths import bundles_root
from .snapshot import DEFAULT_HORIZON
from .state import FeatureSpec
from .strategy import Strategy, StrategyError

BUNDLE_SCHEMA_VERSION = 1
NETWORKS = ("planner", "executor", "coordinator")
EXECUTOR_WEIGHTS = {"final": "executor", "bc": "executor_bc"}  # which L3 weights a bundle plays with
_CONFIGS = {"planner": PlannerConfig, "executor": ExecutorConfig, "coordinator": CoordinatorConfig}
_MODULES = {"planner": Planner, "executor": Executor, "coordinator": Coordinator}


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and what is wrong."""


@dataclass
class Manifest:
    schema_version: int
    feature_fingerprint: str
    horizon: int
    l3_mode: str
    configs: dict[str, dict[str, Any]]
    weights: dict[str, str]
    metrics: dict[str, Any] = field(default_factory=dict)
    trained_on: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    features: dict[str, Any] = field(default_factory=dict)  # the FeatureSpec the networks were trained on
    strategy: dict[str, float] = field(default_factory=dict)  # offsets from the rules (`strategy.PARAMS`)


RULES_MODE = "rules"  # the l3_mode of a bundle with no networks: the rule layers and a strategy


@dataclass
class Bundle:
    path: Path
    manifest: Manifest
    planner: Planner | None  # None in a rules bundle (all three are, or none)
    executor: Executor | None
    coordinator: Coordinator | None
    strategy: Strategy = field(default_factory=Strategy)
    executor_fn: Any = None  # TorchScript forward of the executor (eager if it cannot be compiled)
    coordinator_fn: Any = None

    def __post_init__(self) -> None:
        if self.executor is not None:
            self.executor_fn = _compiled(self.executor)
        if self.coordinator is not None:
            self.coordinator_fn = _compiled(self.coordinator)

    @property
    def has_networks(self) -> bool:
        return self.planner is not None


def _compiled(module: torch.nn.Module) -> Any:
    """TorchScript cuts the Python overhead of these small networks by 20-40% per call."""
    try:
        return torch.jit.script(module.eval())
    except Exception:
        return module


def _data_root_of(bundle_dir: Path) -> Path:
    """The data root of a bundle at ``<data>/bundles/<id>``: its directory's grandparent."""
    return Path(bundle_dir).resolve().parent.parent


def relative_ref(target: str | os.PathLike, bundle_dir: Path) -> str:
    """How a manifest records the path ``target``: relative to ``bundle_dir`` when it lies under the bundle's data
    root (`_data_root_of`), else absolute."""
    target, bundle_dir = Path(target).resolve(), Path(bundle_dir).resolve()
    if target.is_relative_to(_data_root_of(bundle_dir)):
        return Path(os.path.relpath(target, bundle_dir)).as_posix()
    return str(target)


def bundle_ref(bundle_dir: str | os.PathLike, ref: str | os.PathLike) -> Path:
    """The path a manifest records as ``ref`` (relative to the bundle's directory, or absolute: older bundles)."""
    return Path(os.path.normpath(Path(bundle_dir) / ref))


def _relative_paths(obj: Any, bundle_dir: Path) -> Any:
    """``obj`` (a manifest's metrics or trained_on) with every absolute path under the data root made relative."""
    if isinstance(obj, dict):
        return {k: _relative_paths(v, bundle_dir) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relative_paths(v, bundle_dir) for v in obj]
    if isinstance(obj, os.PathLike) or (isinstance(obj, str) and obj.startswith("/") and "\n" not in obj):
        return relative_ref(obj, bundle_dir)
    return obj


def save_bundle(
    out_dir: Path,
    planner: Planner,
    executor: Executor,
    coordinator: Coordinator,
    metrics: dict[str, Any] | None = None,
    trained_on: dict[str, Any] | None = None,
    executor_bc: dict[str, torch.Tensor] | None = None,
    strategy: Strategy | None = None,
) -> Path:
    """Write a bundle atomically (a temporary directory renamed into place); ``executor_bc``: L3's BC weights;
    ``strategy``: the rule layers' offsets it plays with. Absolute paths under the data root in ``metrics`` and
    ``trained_on`` are recorded relative to ``out_dir``."""
    out_dir = Path(out_dir)
    spec = FeatureSpec(horizon=planner.config.horizon)
    manifest = Manifest(
        schema_version=BUNDLE_SCHEMA_VERSION,
        feature_fingerprint=spec.fingerprint,
        horizon=spec.horizon,
        l3_mode=executor.config.mode,
        configs={"planner": asdict(planner.config), "executor": asdict(executor.config), "coordinator": asdict(coordinator.config)},
        weights={name: f"{name}.pt" for name in NETWORKS} | ({"executor_bc": "executor_bc.pt"} if executor_bc else {}),
        metrics=_relative_paths(metrics or {}, out_dir),
        trained_on=_relative_paths(trained_on or {}, out_dir),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        features=asdict(spec),
        strategy=dict((strategy or Strategy()).offsets),
    )
    files = {manifest.weights[name]: module.state_dict() for name, module in zip(NETWORKS, (planner, executor, coordinator))}
    if executor_bc:
        files[manifest.weights["executor_bc"]] = executor_bc
    return _write(out_dir, manifest, files)


def save_rules_bundle(out_dir: Path, strategy: Strategy, horizon: int = DEFAULT_HORIZON,
                      metrics: dict[str, Any] | None = None, trained_on: dict[str, Any] | None = None) -> Path:
    """Write a rules bundle: no networks, the rule layers with ``strategy`` (a search's result)."""
    out_dir = Path(out_dir)
    spec = FeatureSpec(horizon=horizon)
    manifest = Manifest(
        schema_version=BUNDLE_SCHEMA_VERSION, feature_fingerprint=spec.fingerprint, horizon=spec.horizon,
        l3_mode=RULES_MODE, configs={}, weights={}, metrics=_relative_paths(metrics or {}, out_dir),
        trained_on=_relative_paths(trained_on or {}, out_dir),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), features=asdict(spec),
        strategy=dict(strategy.offsets))
    return _write(out_dir, manifest, {})


def _write(out_dir: Path, manifest: Manifest, files: dict[str, dict[str, torch.Tensor]]) -> Path:
    """The manifest and the weight files, into a temporary directory renamed into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for file, state in files.items():
            torch.save(state, tmp / file)
        (tmp / "manifest.json").write_text(json.dumps(asdict(manifest), indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def set_latest(bundle_dir: Path, root: Path | None = None) -> None:
    """Point ``<root>/LATEST`` at ``bundle_dir`` (atomically): its path relative to ``root`` (its name, for a
    bundle in ``root``) when it is inside, so the data root can move; else its absolute path."""
    root = Path(root) if root is not None else bundles_root()
    root.mkdir(parents=True, exist_ok=True)
    target = Path(bundle_dir).resolve()
    try:
        name = target.relative_to(root.resolve()).as_posix()
    except ValueError:
        name = str(target)
    tmp = root / ".LATEST.tmp"
    tmp.write_text(name + "\n")
    os.replace(tmp, root / "LATEST")


def resolve_bundle(spec: str | os.PathLike | None) -> Path | None:
    """None -> no bundle; "latest" -> $HRLXF_BUNDLE or the bundle LATEST names; else the path."""
    if spec is None:
        return None
    if str(spec) == "latest":
        env = os.environ.get("HRLXF_BUNDLE")
        if env:
            return Path(env)
        latest = bundles_root() / "LATEST"
        if not latest.exists():
            raise BundleError(f"{latest}: no LATEST bundle (train one, or write one with `hrlxf bundle untrained --latest`)")
        name = latest.read_text().strip()
        path = Path(name)
        return path if path.is_absolute() else bundles_root() / name
    return Path(spec)


def load_bundle(spec: str | os.PathLike, executor: str = "final") -> Bundle:
    """Load and check a bundle; every problem is a BundleError naming the file.

    ``executor``: "final" (what the bundle plays) or "bc" (its L3 before AWR, for the ablation)."""
    if executor not in EXECUTOR_WEIGHTS:
        raise BundleError(f"executor weights {executor!r}: choose one of {', '.join(EXECUTOR_WEIGHTS)}")
    path = resolve_bundle(spec)
    assert path is not None
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: missing (not a bundle directory)")
    try:
        raw = json.loads(manifest_path.read_text())
        manifest = Manifest(**raw)
    except (json.JSONDecodeError, TypeError) as e:
        raise BundleError(f"{manifest_path}: not a valid manifest ({e})") from None
    if manifest.schema_version != BUNDLE_SCHEMA_VERSION:
        raise BundleError(f"{manifest_path}: schema_version {manifest.schema_version}, this code reads {BUNDLE_SCHEMA_VERSION}")
    spec = FeatureSpec(horizon=manifest.horizon)
    if manifest.feature_fingerprint != spec.fingerprint:
        differ = spec.differences(manifest.features) if manifest.features else [
            "features: not recorded (a bundle made before version 2 of the features: horizon 40, buckets from day 15)"]
        raise BundleError(f"{manifest_path}: made for other features than this StateBuilder's (feature_fingerprint "
                          f"{manifest.feature_fingerprint}, this code {spec.fingerprint}): " + "; ".join(differ))
    try:
        strategy = Strategy(manifest.strategy)
    except StrategyError as e:
        raise BundleError(f"{manifest_path}: {e}") from None
    if manifest.l3_mode == RULES_MODE:
        if manifest.weights:
            raise BundleError(f"{manifest_path}: a rules bundle has no networks, this one names weights")
        return Bundle(path, manifest, None, None, None, strategy)
    modules: dict[str, torch.nn.Module] = {}
    for name in NETWORKS:
        try:
            config = _CONFIGS[name](**manifest.configs[name])
            module = _MODULES[name](config)
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{manifest_path}: bad config for {name} ({e})") from None
        key = EXECUTOR_WEIGHTS[executor] if name == "executor" else name
        if key not in manifest.weights and key != name:
            raise BundleError(f"{manifest_path}: no {key} weights (bundles made before BC weights were kept have none)")
        file = path / manifest.weights.get(key, f"{name}.pt")
        if not file.is_file():
            raise BundleError(f"{file}: missing weights for {name}")
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt file, or pickled code refused by weights_only
            raise BundleError(f"{file}: not a loadable state dict ({type(e).__name__}: {e})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise BundleError(f"{file}: not a state dict of tensors")
        if name == "planner" and "role_goal" not in state:  # a bundle from before the per-role goal offsets
            state["role_goal"] = torch.zeros_like(module.get_parameter("role_goal"))
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise BundleError(f"{file}: does not fit the {name} config ({str(e).splitlines()[0]} ...)") from None
        module.eval()
        modules[name] = module
    return Bundle(path, manifest, modules["planner"], modules["executor"], modules["coordinator"],  # type: ignore[arg-type]
                  strategy)


#: the rules as a bundle (no networks, no offsets): where a race starts, and LATEST when nothing beats them
RULES_BUNDLE = "hrlxf-rules"


def rules_bundle(out_root: Path) -> Path:
    """``<out_root>/hrlxf-rules``, written if it is not there (or does not load as the rules)."""
    path = Path(out_root) / RULES_BUNDLE
    try:
        b = load_bundle(path)
        if not b.has_networks and not b.strategy:
            return path
    except BundleError:
        pass
    return save_rules_bundle(path, Strategy(), metrics={"trained": False},
                             trained_on={"note": "the rule layers behind L1, no strategy offsets"})


def write_untrained_bundle(out_dir: Path, mode: str = "residual", seed: int = 0, horizon: int = DEFAULT_HORIZON,
                           base: str = "baseline") -> Path:
    """Random weights (heads of L3 at zero), so the neural path can run before training exists.
    ``base="rules"`` (residual): the untrained L3 offers what the rule executor offers."""
    torch.manual_seed(seed)
    return save_bundle(
        out_dir,
        Planner(PlannerConfig(horizon=horizon)),
        Executor(ExecutorConfig(horizon=horizon, mode=mode, base=base)),
        Coordinator(CoordinatorConfig()),
        metrics={"trained": False},
        trained_on={"note": "untrained: random weights"},
    )
