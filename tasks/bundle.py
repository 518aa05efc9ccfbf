"""Stage: the trained layers -> a versioned bundle the agent loads (`hrlxf_agent.bundle`).

Reads ``planner.pt`` / ``executor.pt`` / ``coordinator.pt`` and the ``metrics.json``
(with the configs) the training stages wrote, rebuilds each network from its
config so a mismatch fails here rather than in a world, and writes
``<bundles>/<id>/`` with the metrics and what the layers were trained on; the
id is the content digest of the weights, so the same training gives the same
bundle. ``LATEST`` is updated atomically when asked.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hrlxf_agent.bundle import load_bundle, save_bundle, set_latest
from hrlxf_models import Coordinator, CoordinatorConfig, Executor, ExecutorConfig, Planner, PlannerConfig
from hrlxf_models.executor import variant_of
from tasks.training import TrainingDataError


@dataclass
class BundleConfig:
    set_latest: bool = True
    prefix: str = "hrlxf"

    @classmethod
    def smoke(cls) -> "BundleConfig":
        return cls()


def _stage(path: Path, weights: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    w, m = Path(path) / weights, Path(path) / "metrics.json"
    for f in (w, m):
        if not f.is_file():
            raise TrainingDataError(f"{f}: missing (run the stage that writes it first)")
    return torch.load(w, map_location="cpu", weights_only=True), json.loads(m.read_text())


def _built(module_cls: type, config_cls: type, section: dict[str, Any], state: dict[str, torch.Tensor]) -> Any:
    module = module_cls(config_cls(**section))
    module.load_state_dict(state)
    return module.eval()


def headline(l2: dict[str, Any], l3: dict[str, Any], l4: dict[str, Any]) -> dict[str, Any]:
    """The figures a person compares across bundles (also the README table)."""
    v3 = l3["final"]
    return {
        "l2_val_mse": l2["val"]["mse"], "l2_val_mean_baseline_mse": l2["val_mean_baseline"]["mse"],
        "l2_val_q_mae_items": l2["val"]["q_mae_items"], "l2_val_p_mae_catalog_share": l2["val"]["p_mae_catalog_share"],
        "l3_mode": l3["mode"], "l3_val_op_accuracy": v3["op_accuracy"], "l3_val_op_majority": v3["op_majority_baseline"],
        "l3_val_delta_accuracy": v3["delta_accuracy"], "l3_val_q_mae_items": v3["q_mae_items"],
        "l3_val_p_mae_catalog_share": v3["p_mae_catalog_share"],
        "l4_val_mae": l4["val"]["mae"], "l4_val_rank_agreement": l4["val"]["rank_agreement"],
    }


def bundle_name(executor: Executor, states: tuple[dict[str, torch.Tensor], ...]) -> str:
    """``<variant>-<digest of the weights>``: the same weights, the same name."""
    h = hashlib.blake2b(digest_size=6)
    for state in states:
        for k in sorted(state):
            h.update(k.encode())
            h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    variant = {"rules": "residual-rules"}.get(variant_of(executor.config), executor.config.mode)
    return f"{variant}-{h.hexdigest()}"


def assemble(l2: Path, l3: Path, l4: Path, out_root: Path, config: BundleConfig,
             trained_on: dict[str, Any] | None = None) -> Path:
    """A bundle directory from the three stage outputs; returns its path (loaded once to prove it works)."""
    p_state, p_metrics = _stage(l2, "planner.pt")
    e_state, e_metrics = _stage(l3, "executor.pt")
    c_state, c_metrics = _stage(l4, "coordinator.pt")
    planner = _built(Planner, PlannerConfig, p_metrics["config"]["planner"], p_state)
    executor = _built(Executor, ExecutorConfig, e_metrics["config"]["executor"], e_state)
    coordinator = _built(Coordinator, CoordinatorConfig, c_metrics["config"]["coordinator"], c_state)
    bundle_id = f"{config.prefix}-{bundle_name(executor, (p_state, e_state, c_state))}"
    metrics = {"trained": True, "headline": headline(p_metrics, e_metrics, c_metrics),
               "l2": p_metrics, "l3": e_metrics, "l4": c_metrics}
    bc_file = Path(l3) / "executor_bc.pt"
    executor_bc = torch.load(bc_file, map_location="cpu", weights_only=True) if bc_file.is_file() else None
    out = save_bundle(Path(out_root) / bundle_id, planner, executor, coordinator, metrics=metrics, executor_bc=executor_bc,
                      trained_on={"stages": {"l2": str(l2), "l3": str(l3), "l4": str(l4)}, **(trained_on or {})})
    load_bundle(out)  # fails here, not in a world, if anything is off
    if executor_bc is not None:
        load_bundle(out, executor="bc")
    if config.set_latest:
        set_latest(out, Path(out_root))
    return out


def metrics_table(bundle: Path) -> str:
    """The headline metrics of a bundle as a Markdown table."""
    from tasks.report import md_table

    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    head = manifest["metrics"].get("headline", {})
    rows = [[k, f"{v:.4f}" if isinstance(v, float) else str(v)] for k, v in head.items()]
    return "\n".join(md_table(["metric", "value"], rows))


def knob_bundle(start: Path, settings: dict[str, float], out_root: Path) -> Path:
    """The bundle ``start`` with the search's knobs (`hrlxf_rl.search.KNOBS`) set to ``settings`` (theta, in knob
    units; 0 is the start), as the search would publish it: goal knobs switch the rule executor onto L2's goal.
    Named ``hrlxf-knobs-<variant>-<digest of the weights>`` under ``out_root`` (the searched bundle of
    docs/online-learning.md is ``--set l2.p_sell@first=-2`` from ``untrained:rules``, digest 915d37adc94d)."""
    import numpy as np

    from hrlxf_rl import search

    unknown = [k for k in settings if k not in search.KNOBS]
    if unknown or not settings:
        raise ValueError(f"knobs: unknown {unknown or 'none given'}: choose from {', '.join(search.KNOBS)}")
    bundle = load_bundle(start)
    knobs = tuple(settings)
    base = search.base_values(bundle, knobs)
    search.steer(bundle, knobs)
    search.apply(bundle, knobs, base, np.asarray([settings[k] for k in knobs], dtype=float))
    name = bundle_name(bundle.executor, tuple(m.state_dict() for m in (bundle.planner, bundle.executor, bundle.coordinator)))
    bc = bundle.manifest.weights.get("executor_bc")  # the ablation `bc:` stays possible
    executor_bc = torch.load(bundle.path / bc, map_location="cpu", weights_only=True) if bc else None
    return save_bundle(Path(out_root) / f"hrlxf-knobs-{name}", bundle.planner, bundle.executor, bundle.coordinator,
                       metrics={"trained": False, "knobs": settings, "from": str(bundle.path.resolve())},
                       trained_on={"knobs": settings, "from": str(bundle.path.resolve())}, executor_bc=executor_bc)
