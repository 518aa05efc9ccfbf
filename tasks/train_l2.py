"""Stage: L2 behaviour cloning on the macro table's v2 goal labels.

Loss per agent-day, over the sides the agent can negotiate (the goal mask):
quantities through log1p (the labels are heavy-tailed: a few days ask for
5x n_lines, most for under 1), prices as they are (ratios to the catalog
price). Split by world; metrics in the game's units (items, share of the
catalog price) beside the plain masked MSE the reference implementation reported.

Cross-fitting: besides the planner the bundle carries (fitted on the train
worlds), K fold planners are fitted, fold f on the train worlds outside fold f
(`crossfit_fold`). The backfill gives every world of fold f its goal_hat from
planner f, so no L3 row sees a goal predicted by a planner trained on its own
world (in-sample goals sit closer to their hindsight labels than online ones);
the test worlds get the bundle's planner, which never saw them either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from hrlxf_agent.state import FeatureSpec
from hrlxf_models.planner import GOAL_DIM, Planner, PlannerConfig
from tasks.tables import MACRO_VERSION, macro_schema
from tasks.training import (
    Batches, FitConfig, RowStore, Split, check_schema, expert_agents, expert_worlds, fit_module, list_array,
    load_best, loss_module, require_rows, row_files, split_counts, table_files, world_position, world_split,
    write_stage_output,
)

Q_COLUMNS = np.array([b * 4 + c for b in range(4) for c in (0, 2)])  # Q_buy, Q_sell of each bucket
P_COLUMNS = np.array([b * 4 + c for b in range(4) for c in (1, 3)])


@dataclass
class L2Config:
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    price_weight: float = 4.0  # prices vary ~0.1 around 0.85; quantities ~1 in log1p: comparable losses
    min_relative_score: float = 1.0  # expert classes kept (see training.expert_agents)
    crossfit_folds: int = 4  # fold planners for goal_hat (see the module's docstring)

    @classmethod
    def smoke(cls) -> "L2Config":
        return cls(fit=FitConfig(max_epochs=2, batch_size=64, min_train_rows=20, min_val_rows=5), min_relative_score=0.0,
                   crossfit_folds=2)


@dataclass
class MacroData:
    x_static: np.ndarray
    x_temporal: np.ndarray
    x_role: np.ndarray
    rule_goal: np.ndarray  # the planner's base
    goal: np.ndarray
    mask: np.ndarray
    n_lines: np.ndarray
    split: Split  # by world: train / val / test
    keys: pl.DataFrame  # run_id, world_id, agent_id, step


#: the macro columns the planner's arrays are built from (not the reward parts)
MACRO_COLUMNS = ["run_id", "world_id", "agent_id", "step", "x_static", "x_temporal", "x_role", "rule_goal", "goal",
                 "goal_mask"]


def load_macro(lake: Path, spec: FeatureSpec, fit: FitConfig, min_relative_score: float,
               store: Path | None = None) -> MacroData:
    """The experts' agent-days as the planner's arrays, built one world at a time, in memory or memory-mapped in
    ``store`` (`training.RowStore`), as L3's rows are."""
    files = table_files(lake, "macro")
    check_schema(files, macro_schema(spec), str(MACRO_VERSION))
    K = (spec.horizon + 1) * len(spec.temporal)
    rows, world_keys = RowStore(store), []
    for df in expert_worlds(Path(lake), "macro", MACRO_COLUMNS, expert_agents(lake, min_relative_score), goal_hat=False):
        rows.add({"x_static": list_array(df, "x_static", len(spec.static)),
                  "x_temporal": list_array(df, "x_temporal", K).reshape(len(df), spec.horizon + 1, len(spec.temporal)),
                  "x_role": list_array(df, "x_role", 2), "rule_goal": list_array(df, "rule_goal", GOAL_DIM),
                  "goal": list_array(df, "goal", GOAL_DIM), "mask": list_array(df, "goal_mask", GOAL_DIM),
                  "n_lines": df["n_lines"].to_numpy().astype(np.float32)})
        world_keys.append(df.select("run_id", "world_id", "agent_id", "step"))
    keys = pl.concat(world_keys)
    return MacroData(**rows.joined(), split=world_split(keys, fit), keys=keys)


def goal_loss(pred: torch.Tensor, label: torch.Tensor, mask: torch.Tensor, price_weight: float) -> torch.Tensor:
    """Masked: (log1p q - log1p q*)^2 + w (p - p*)^2, averaged over the unmasked entries."""
    q, p = torch.as_tensor(Q_COLUMNS), torch.as_tensor(P_COLUMNS)
    err_q = (torch.log1p(pred[:, q]) - torch.log1p(label[:, q])) ** 2 * mask[:, q]
    err_p = price_weight * (pred[:, p] - label[:, p]) ** 2 * mask[:, p]
    return (err_q.sum() + err_p.sum()) / mask.sum().clamp_min(1.0)


def goal_metrics(pred: np.ndarray, label: np.ndarray, mask: np.ndarray, n_lines: np.ndarray) -> dict[str, float]:
    """Plain masked MSE (the reference's figure) and errors in the game's units."""
    m = mask > 0
    q_err = np.abs(pred[:, Q_COLUMNS] - label[:, Q_COLUMNS]) * n_lines[:, None]
    p_err = np.abs(pred[:, P_COLUMNS] - label[:, P_COLUMNS])
    return {
        "mse": float(((pred - label) ** 2)[m].mean()),
        "q_mae_items": float(q_err[m[:, Q_COLUMNS]].mean()),
        "p_mae_catalog_share": float(p_err[m[:, P_COLUMNS]].mean()),
        "rows": int(len(pred)),
    }


def _module(config: L2Config) -> Any:
    def loss(planner: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        xs, xt, xr, base, goal, mask = batch
        pred, _ = planner(xs, xt, xr, base)
        return goal_loss(pred, goal, mask, config.price_weight)

    return loss_module(Planner(config.planner), loss, config.fit)


def predict_goals(planner: Planner, x_static: np.ndarray, x_temporal: np.ndarray, x_role: np.ndarray,
                  rule_goal: np.ndarray, rows: np.ndarray | None = None, batch: int = 2048) -> np.ndarray:
    """The planner's goals for ``rows`` (a boolean mask or indices; default all), gathered a batch at a time
    (`training.Batches`): a split of memory-mapped arrays is read, not copied whole."""
    planner.eval()
    arrays = (x_static, x_temporal, x_role, rule_goal)
    data = Batches(*arrays) if rows is None else Batches.of(arrays, rows)
    out = []
    with torch.inference_mode():
        for i in range(0, len(data), batch):
            g, _ = planner(*data[i:i + batch])
            out.append(g.numpy())
    return np.concatenate(out) if out else np.zeros((0, GOAL_DIM), np.float32)


def crossfit_fold(world_key: str, folds: int, seed: int) -> int:
    """A world's cross-fitting fold (independent of the train / val / test split)."""
    return min(folds - 1, int(world_position(world_key, seed + 1) * folds))


def _fit_folds(data: MacroData, config: L2Config, out: Path) -> tuple[dict[str, dict], dict[str, Any]]:
    """The fold planners and their out-of-fold metrics (what goal_hat's error really is on unseen worlds)."""
    keys = (data.keys["run_id"] + "/" + data.keys["world_id"]).to_list()
    fold = np.asarray([crossfit_fold(k, config.crossfit_folds, config.fit.seed) for k in keys])
    states: dict[str, dict] = {}
    preds = np.full_like(data.goal, np.nan)
    skipped = []
    arrays = (data.x_static, data.x_temporal, data.x_role, data.rule_goal, data.goal, data.mask)
    world = np.asarray(keys)
    for f in range(config.crossfit_folds):
        pool = ~data.split.test & (fold != f)  # fold f's planner never sees fold f (nor the test worlds)
        va = data.split.val & pool
        if not va.any() and pool.any():  # few worlds: hold one of the pool out to choose the checkpoint
            va = pool & (world == sorted(set(world[pool]))[0])
        tr = pool & ~va
        held = ~data.split.test & (fold == f)
        if tr.sum() < config.fit.min_train_rows or va.sum() < config.fit.min_val_rows or not held.any():
            skipped.append(f)
            continue
        module = _module(config)
        result = fit_module(module, Batches.of(arrays, tr), Batches.of(arrays, va), config.fit, out / f"fold{f}", False)
        load_best(module, result)
        states[f"planner_fold{f}"] = module.net.eval().state_dict()
        preds[held] = predict_goals(module.net, data.x_static, data.x_temporal, data.x_role, data.rule_goal, held)
    done = ~np.isnan(preds[:, 0])
    info = {"folds": config.crossfit_folds, "seed": config.fit.seed, "test_fraction": config.fit.test_fraction,
            "trained": sorted(int(k.removeprefix("planner_fold")) for k in states), "skipped_too_few_worlds": skipped,
            "out_of_fold": goal_metrics(preds[done], data.goal[done], data.mask[done], data.n_lines[done]) if done.any() else None}
    return states, info


def train_l2(lake: Path, out: Path, config: L2Config, progress: bool = True) -> dict[str, Any]:
    """macro table -> ``out/planner.pt`` + ``out/metrics.json``; returns the metrics."""
    with row_files(out) as store:
        return _train_l2(Path(lake), Path(out), config, progress, store)


def _train_l2(lake: Path, out: Path, config: L2Config, progress: bool, store: Path) -> dict[str, Any]:
    spec = FeatureSpec(horizon=config.planner.horizon)
    data = load_macro(Path(lake), spec, config.fit, config.min_relative_score, store)
    tr, va, te = data.split.train, data.split.val, data.split.test
    require_rows("L2 (macro agent-days)", int(tr.sum()), int(va.sum()), config.fit)
    arrays = (data.x_static, data.x_temporal, data.x_role, data.rule_goal, data.goal, data.mask)

    module = _module(config)
    result = fit_module(module, Batches.of(arrays, tr), Batches.of(arrays, va), config.fit, Path(out), progress)
    load_best(module, result)
    planner = module.net.eval()
    metrics: dict[str, Any] = {"stage": "train_l2", "best_val_loss": result.best_val_loss, "epochs": result.epochs,
                               "history": result.history, "config": asdict(config), "resumed_from": result.resumed_from}
    for name, rows in (("train", tr), ("val", va), ("test", te)):
        if not rows.any():
            metrics[name] = None  # too few worlds for a test split
            continue
        pred = predict_goals(planner, data.x_static, data.x_temporal, data.x_role, data.rule_goal, rows)
        metrics[name] = goal_metrics(pred, data.goal[rows], data.mask[rows], data.n_lines[rows])
    # the floor that means something: the rule goal (the planner's base, what an untrained planner plans)
    held = te if te.any() else va
    metrics["floor_rule_goal"] = goal_metrics(data.rule_goal[held] * data.mask[held], data.goal[held], data.mask[held],
                                              data.n_lines[held])
    # the floor any planner must beat: the mean label of the training days
    mean_goal = (data.goal[tr] * data.mask[tr]).sum(0) / np.maximum(data.mask[tr].sum(0), 1)
    metrics["val_mean_baseline"] = goal_metrics(np.repeat(mean_goal[None], int(va.sum()), 0) * data.mask[va],
                                                data.goal[va], data.mask[va], data.n_lines[va])
    metrics["split"] = split_counts(data.split, data.keys)
    fold_states, metrics["crossfit"] = _fit_folds(data, config, Path(out))
    write_stage_output(Path(out), {"planner": planner.state_dict(), **fold_states}, metrics)
    return metrics
