"""Stage: L3 behaviour cloning on the micro table, then advantage-weighted regression (AWR).

Inputs per row are exactly what the runtime executor reads (`HRLPolicy._execute`):
static, goal (goal_hat from the backfill stage, as L2 gives it online), role,
broadcast c and alpha (the rule teacher's, which the coordinator starts from),
both rebuilt against goal_hat (`tasks.goal_inputs`), the rounds window, L1's
time_mask and its room per day. Rows answering threads already over are dropped. Losses:
* op: cross-entropy on every row (accept / reject / end);
* delta: cross-entropy under the time_mask, on counter-offers whose offset L1 allows;
* q, p: on those counter-offers, read at the offer's own delta (teacher forcing of
  the autoregressive decoding: the heads see the delta and L1's room on that day),
  in the executor's output space: around the L1 baseline in ``residual`` mode,
  absolute in ``direct`` mode (q through log1p in both).
AWR then re-weights the same losses by exp(A / beta), clipped, where the
advantage A = R - V(s) is taken against a learned value baseline V (a small MLP
on the same inputs) and R is the thread's deal value against the spot price
(0 without a deal).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn as nn
import torch.nn.functional as F

from hrlxf_agent.state import ROUND_FEATURES, FeatureSpec
from hrlxf_models.layouts import ROUND
from hrlxf_models.executor import Executor, ExecutorConfig
from tasks.goal_inputs import alpha_with_goal, broadcast_with_goal
from tasks.micro import HISTORY, MICRO_VERSION, micro_schema
from tasks.training import (
    Batches, FitConfig, RowStore, Split, check_schema, expert_agents, expert_worlds, fit_module, list_array,
    load_best, loss_module, require_rows, row_files, split_counts, table_files, world_split, write_stage_output,
)

#: tensor order of one L3 batch
FIELDS = ("static", "goal", "role", "broadcast", "alpha", "rounds", "keep", "time_mask", "room", "prior_op", "prior_delta",
          "op", "delta", "delta_ok", "q", "p", "base_q", "base_p", "qp_ok", "ret", "weight")


@dataclass
class L3Config:
    mode: str = "residual"
    base: str = "baseline"  # residual mode's base: L1's baseline, or "rules" (the rule executor's offer)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    # one epoch of the default collection (~75k live expert rows) takes ~10 s on 2 cores
    fit: FitConfig = field(default_factory=lambda: FitConfig(max_epochs=20, batch_size=512, lr=5e-4, patience=3))
    awr_fit: FitConfig = field(default_factory=lambda: FitConfig(max_epochs=4, batch_size=512, lr=2e-4, patience=2))
    value_fit: FitConfig = field(default_factory=lambda: FitConfig(max_epochs=6, batch_size=1024, lr=1e-3, patience=2))
    awr: bool = True
    awr_beta: float = 1.0  # temperature on the standardised advantage
    awr_max_weight: float = 20.0
    delta_weight: float = 0.5
    qp_weight: float = 4.0
    min_relative_score: float = 1.0

    # the experts' quantities reach 3 x n_lines and their prices move ~20% around L1's baseline:
    # a trained residual head needs that reach (the untrained bundle's narrower default is moot, its heads are 0)
    residual_q_scale: float = 2.0
    residual_p_scale: float = 0.25

    def __post_init__(self) -> None:
        over_rules = self.base == "rules"
        # over the rules, an untrained L3 is the rule executor: the rules' op and day stay its prior
        self.executor = ExecutorConfig(**{**asdict(self.executor), "mode": self.mode, "base": self.base,
                                          "heuristic_prior": self.executor.heuristic_prior if over_rules else 0.0,
                                          "q_scale": self.residual_q_scale, "p_scale": self.residual_p_scale})

    @classmethod
    def smoke(cls, mode: str = "residual", base: str = "baseline") -> "L3Config":
        tiny = FitConfig(max_epochs=1, batch_size=256, min_train_rows=50, min_val_rows=10)
        return cls(mode=mode, base=base, fit=tiny, awr_fit=tiny, value_fit=tiny, min_relative_score=0.0)


# ---------------------------------------------------------------------------- data


#: the micro columns L3's arrays are built from (the scan reads only these: the hindsight goal, res_*, alpha,
#: seq, partner and the rest stay on disk)
MICRO_COLUMNS = ["run_id", "world_id", "agent_id", "step", "negotiation_id", "is_buy", "rel_time", "static", "role",
                 "history", "history_len", "time_mask", "q_safe", "broadcast", "committed", "tradable", "offer_delta",
                 "budget", "op", "delta", "q", "p", "base_q", "base_p", "rule_base_q", "rule_base_p", "rule_op",
                 "rule_delta", "legal", "deal", "deal_value"]


def load_micro(lake: Path, spec: FeatureSpec, config: L3Config,
               store: Path | None = None) -> tuple[dict[str, np.ndarray], Split, pl.DataFrame]:
    """Every expert row with its goal_hat, as the arrays of FIELDS; the split by world; the rows' world keys.

    Built one world at a time (its micro rows, its experts, its goal_hat): memory holds a world's table, not
    the lake's. With ``store``, each array is a memory-mapped ``.npy`` file there (filled world by world),
    so that the rows never need to fit in memory at once (the reference's 18 M rows are ~14 GB of arrays)."""
    lake = Path(lake)
    check_schema(table_files(lake, "micro"), micro_schema(spec), str(MICRO_VERSION))
    rows, world_keys = RowStore(store), []
    # answers to threads already over are no decisions
    for df in expert_worlds(lake, "micro", MICRO_COLUMNS, expert_agents(lake, config.min_relative_score),
                            keep=pl.col("negotiation_id").is_not_null()):
        rows.add(micro_arrays(df, spec, config))
        world_keys.append(df.select("run_id", "world_id"))
    world = pl.concat(world_keys)
    return rows.joined(), world_split(world, config.fit), world


def micro_arrays(df: pl.DataFrame, spec: FeatureSpec, config: L3Config) -> dict[str, np.ndarray]:
    n, H = len(df), spec.horizon
    hist_len = df["history_len"].to_numpy()
    keep = np.arange(HISTORY)[None, :] >= (HISTORY - hist_len)[:, None]
    time_mask = list_array(df, "time_mask", H + 1)
    op = df["op"].to_numpy().astype(np.int64)
    delta = df["delta"].to_numpy().astype(np.int64)
    in_range = (delta >= 0) & (delta <= H)
    allowed = in_range & (time_mask[np.arange(n), np.clip(delta, 0, H)] == 0)
    q = df["q"].fill_null(np.nan).to_numpy().astype(np.float32)
    p = df["p"].fill_null(np.nan).to_numpy().astype(np.float32)
    prefix = "rule_base" if config.executor.base == "rules" else "base"
    base_q = df[f"{prefix}_q"].fill_null(np.nan).to_numpy().astype(np.float32)
    base_p = df[f"{prefix}_p"].fill_null(np.nan).to_numpy().astype(np.float32)
    legal = df["legal"].fill_null(False).to_numpy()
    counter = (op == 1) & allowed & legal & np.isfinite(q) & np.isfinite(p)  # off-range offers teach nothing
    qp_ok = counter & (np.isfinite(base_q) & np.isfinite(base_p) if config.mode == "residual" else True)
    # over the rules, the policy is a residual in every head: the rules' op and day get the agent's prior logit
    prior = config.executor.heuristic_prior if config.executor.base == "rules" else 0.0
    prior_op = np.zeros((n, 3), np.float32)
    prior_delta = np.zeros((n, H + 1), np.float32)
    prior_op[np.arange(n), df["rule_op"].to_numpy()] = prior
    prior_delta[np.arange(n), df["rule_delta"].to_numpy()] = prior
    ret = np.where(df["deal"].to_numpy(), df["deal_value"].fill_null(0.0).to_numpy(), 0.0).astype(np.float32)
    goal = list_array(df, "goal_hat", 16)
    committed = list_array(df, "committed", 8)
    broadcast = broadcast_with_goal(list_array(df, "broadcast", len(spec.broadcast)), goal, committed)
    is_buy = df["is_buy"].to_numpy()
    alpha = alpha_with_goal(goal, committed, is_buy, list_array(df, "tradable", 4),
                            df["offer_delta"].cast(pl.Float64).fill_null(np.nan).to_numpy(),
                            df["rel_time"].fill_null(0.0).to_numpy(), df["budget"].to_numpy(), H)
    return {
        "static": list_array(df, "static", len(spec.static)), "goal": goal, "role": list_array(df, "role", 2),
        "broadcast": broadcast, "alpha": alpha[:, None],
        "rounds": list_array(df, "history", HISTORY * ROUND_FEATURES).reshape(n, HISTORY, ROUND_FEATURES), "keep": keep,
        "time_mask": time_mask, "prior_op": prior_op, "prior_delta": prior_delta,
        "room": list_array(df, "q_safe", H + 1) / df["n_lines"].to_numpy()[:, None].astype(np.float32),
        "op": op, "delta": np.where(counter, delta, 0), "delta_ok": counter,
        "q": np.nan_to_num(q), "p": np.nan_to_num(p, nan=1.0), "base_q": np.nan_to_num(base_q),
        "base_p": np.nan_to_num(base_p, nan=1.0), "qp_ok": qp_ok, "ret": ret, "weight": np.ones(n, np.float32),
        "n_lines": df["n_lines"].to_numpy().astype(np.float32),
        "rule_op": df["rule_op"].to_numpy().astype(np.int64), "rule_delta": df["rule_delta"].to_numpy().astype(np.int64),
    }


# ---------------------------------------------------------------------------- losses


def executor_outputs(ex: Executor, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = ex(b["static"], b["goal"], b["role"], b["broadcast"], b["alpha"], b["rounds"], b["keep"], b["time_mask"])
    out["op"] = out["op"] + b["prior_op"]  # as the agent decodes (`HRLPolicy._execute`); 0 unless base = rules
    out["delta"] = out["delta"] + b["prior_delta"]
    raw_q, raw_p = ex.quantity_price_heads(out["h"], b["delta"], b["room"])  # at the expert's own delta
    out["q_hat"], out["p_hat"] = ex.quantity_price(raw_q, raw_p, b["base_q"], b["base_p"])
    return out


def l3_losses(ex: Executor, b: dict[str, torch.Tensor], config: L3Config) -> dict[str, torch.Tensor]:
    """Weighted op / delta / q-p losses of one batch (weights are 1 in BC, AWR's in AWR)."""
    out = executor_outputs(ex, b)
    w = b["weight"]
    op = (F.cross_entropy(out["op"], b["op"], reduction="none") * w).sum() / w.sum().clamp_min(1e-9)
    dw = w * b["delta_ok"]
    logits = out["delta"].clamp_min(-1e4)  # masked offsets stay masked without -inf arithmetic
    delta = (F.cross_entropy(logits, b["delta"], reduction="none") * dw).sum() / dw.sum().clamp_min(1e-9)
    qw = w * b["qp_ok"]
    err_q = (torch.log1p(out["q_hat"].clamp_min(0.0)) - torch.log1p(b["q"])) ** 2  # q is heavy-tailed
    err_p = (out["p_hat"] - b["p"]) ** 2
    qp = ((err_q + err_p) * qw).sum() / qw.sum().clamp_min(1e-9)
    total = op + config.delta_weight * delta + config.qp_weight * qp
    return {"loss": total, "op": op, "delta": delta, "qp": qp}


def as_batch(tensors: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    b = dict(zip(FIELDS, tensors))
    b["keep"] = b["keep"].to(torch.bool)
    b["delta_ok"] = b["delta_ok"].to(torch.float32)
    b["qp_ok"] = b["qp_ok"].to(torch.float32)
    return b


def _executor_module(config: L3Config, fit: FitConfig, init: dict[str, torch.Tensor] | None) -> Any:
    executor = Executor(config.executor)
    if init is not None:
        executor.load_state_dict(init)
    return loss_module(executor, lambda ex, batch: l3_losses(ex, as_batch(batch), config), fit)


# ---------------------------------------------------------------------------- value baseline


class ValueNet(nn.Module):
    """V(s): the expected deal value of a thread from what L3 sees at one round."""

    def __init__(self, n_in: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


#: rows at a time where a pass over every row would hold a copy of them all (the value net's inputs, its predictions)
CHUNK = 65536


def value_inputs(a: dict[str, np.ndarray], store: Path | None = None) -> np.ndarray:
    """V's inputs of every row (static, goal, role, broadcast, alpha, the last round), built a chunk at a time,
    in memory or memory-mapped in ``store``."""
    parts = ("static", "goal", "role", "broadcast", "alpha")
    n, width = len(a["static"]), sum(a[k].shape[1] for k in parts) + a["rounds"].shape[2]
    x = (np.empty((n, width), np.float32) if store is None else
         np.lib.format.open_memmap(Path(store) / "value_inputs.npy", mode="w+", dtype=np.float32, shape=(n, width)))
    for i in range(0, n, CHUNK):
        x[i:i + CHUNK] = np.concatenate([*(a[k][i:i + CHUNK] for k in parts), a["rounds"][i:i + CHUNK, -1, :]], axis=1)
    return x


def _value_module(n_in: int, fit: FitConfig) -> Any:
    return loss_module(ValueNet(n_in), lambda value, batch: F.mse_loss(value(batch[0]), batch[1]), fit)


def awr_weights(ret: np.ndarray, value: np.ndarray, beta: float, max_weight: float) -> np.ndarray:
    """exp(standardised advantage / beta), clipped to [0, max_weight]."""
    adv = ret - value
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return np.minimum(np.exp(np.clip(adv / beta, -30, 30)), max_weight).astype(np.float32)


# ---------------------------------------------------------------------------- metrics


def l3_metrics(ex: Executor, a: dict[str, np.ndarray], rows: np.ndarray, mode: str) -> dict[str, float]:
    """op / delta accuracy and q, p errors (items; share of the catalog price) on ``rows``."""
    ex.eval()
    idx = np.flatnonzero(rows)
    op_hit = delta_hit = 0
    q_err, p_err = [], []
    with torch.inference_mode():
        for i in range(0, len(idx), 4096):
            sel = idx[i:i + 4096]
            b = as_batch(tuple(torch.from_numpy(np.ascontiguousarray(a[k][sel])) for k in FIELDS))
            out = executor_outputs(ex, b)
            op_hit += int((out["op"].argmax(-1) == b["op"]).sum())
            ok = b["delta_ok"] > 0
            delta_hit += int((out["delta"].argmax(-1)[ok] == b["delta"][ok]).sum())
            qp = b["qp_ok"] > 0
            n_lines = torch.from_numpy(a["n_lines"][sel])
            q_err.append(((out["q_hat"] - b["q"]).abs() * n_lines)[qp].numpy())
            p_err.append((out["p_hat"] - b["p"]).abs()[qp].numpy())
    n_delta = int(a["delta_ok"][idx].sum())
    majority = np.bincount(a["op"][idx], minlength=3).max() / max(len(idx), 1)
    q_all, p_all = np.concatenate(q_err), np.concatenate(p_err)
    return {
        "rows": int(len(idx)), "op_accuracy": op_hit / max(len(idx), 1), "op_majority_baseline": float(majority),
        "delta_rows": n_delta, "delta_accuracy": delta_hit / max(n_delta, 1),
        "q_mae_items": float(q_all.mean()) if len(q_all) else float("nan"),
        "p_mae_catalog_share": float(p_all.mean()) if len(p_all) else float("nan"),
        **floors(a, idx),
    }


def floors(a: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, float]:
    """What the accuracies must beat to mean something: the rule executor's agreement with the experts
    (op, and delta on counter-offers), and the conditional majority op (a row with no offer received
    cannot ACCEPT: the majority of each kind of row)."""
    op = a["op"][idx]
    has_offer = a["rounds"][idx, -1, ROUND.index("in_present")] > 0  # the current round's
    hits = 0
    for group in (has_offer, ~has_offer):
        if group.any():
            hits += int(np.bincount(op[group], minlength=3).max())
    ok = a["delta_ok"][idx].astype(bool)
    return {"floor_rules_op_accuracy": float((a["rule_op"][idx] == op).mean()) if len(idx) else float("nan"),
            "floor_rules_delta_accuracy": float((a["rule_delta"][idx][ok] == a["delta"][idx][ok]).mean()) if ok.any() else float("nan"),
            "floor_conditional_majority_op": hits / max(len(idx), 1)}


# ---------------------------------------------------------------------------- the stage


def train_l3(lake: Path, out: Path, config: L3Config, progress: bool = True) -> dict[str, Any]:
    """micro + goal_hat -> ``out/executor.pt`` (BC, then AWR if enabled), ``out/executor_bc.pt`` (BC alone,
    for the ablation) + ``out/metrics.json``."""
    with row_files(out) as store:
        return _train_l3(Path(lake), Path(out), config, progress, store)


def _train_l3(lake: Path, out: Path, config: L3Config, progress: bool, store: Path) -> dict[str, Any]:
    out = Path(out)
    spec = FeatureSpec(horizon=config.executor.horizon)
    a, split, keys = load_micro(Path(lake), spec, config, store)
    tr, val, test = split.train, split.val, split.test
    require_rows(f"L3 ({config.mode}, micro rows)", int(tr.sum()), int(val.sum()), config.fit)
    arrays = tuple(a[k] for k in FIELDS)

    bc = _executor_module(config, config.fit, None)
    bc_result = fit_module(bc, Batches.of(arrays, tr), Batches.of(arrays, val), config.fit, out / "bc", progress)
    load_best(bc, bc_result)
    executor = bc.net.eval()
    bc_state = {k: v.detach().clone() for k, v in executor.state_dict().items()}
    metrics: dict[str, Any] = {
        "stage": "train_l3", "mode": config.mode, "config": asdict(config),
        "bc": {"epochs": bc_result.epochs, "best_val_loss": bc_result.best_val_loss, "history": bc_result.history,
               "train": l3_metrics(executor, a, tr, config.mode), "val": l3_metrics(executor, a, val, config.mode),
               "test": l3_metrics(executor, a, test, config.mode) if test.any() else None},
        "split": split_counts(split, keys),
    }
    if config.awr:
        x = value_inputs(a, store)
        mu, sd = float(a["ret"][tr].mean()), float(a["ret"][tr].std()) + 1e-12
        z = ((a["ret"] - mu) / sd).astype(np.float32)  # deal values are ~1e-2: fit V on the standardised return
        vm = _value_module(x.shape[1], config.value_fit)
        v_result = fit_module(vm, Batches.of((x, z), tr), Batches.of((x, z), val), config.value_fit, out / "value", progress)
        load_best(vm, v_result)
        with torch.inference_mode():
            vm.net.eval()
            v = np.concatenate([vm.net(torch.from_numpy(np.ascontiguousarray(x[i:i + CHUNK]))).numpy()
                                for i in range(0, len(x), CHUNK)])
        a["weight"] = awr_weights(z, v, config.awr_beta, config.awr_max_weight)
        arrays = tuple(a[k] for k in FIELDS)
        awr = _executor_module(config, config.awr_fit, executor.state_dict())
        awr_result = fit_module(awr, Batches.of(arrays, tr), Batches.of(arrays, val), config.awr_fit, out / "awr", progress)
        load_best(awr, awr_result)
        executor = awr.net.eval()
        ret_var = float(np.var(z[val]))
        metrics["value"] = {"best_val_mse": v_result.best_val_loss, "return_variance": ret_var,
                            "explained_variance": 1.0 - v_result.best_val_loss / ret_var if ret_var > 0 else float("nan")}
        metrics["awr"] = {"epochs": awr_result.epochs, "best_val_loss": awr_result.best_val_loss,
                          "history": awr_result.history, "weight_mean": float(a["weight"].mean()),
                          "weight_max": float(a["weight"].max()), "clipped_share": float((a["weight"] >= config.awr_max_weight).mean()),
                          "val": l3_metrics(executor, a, val, config.mode),
                          "test": l3_metrics(executor, a, test, config.mode) if test.any() else None}
    stage = metrics["awr"] if config.awr else metrics["bc"]
    metrics["final"] = stage["val"]
    metrics["final_test"] = stage["test"]  # no checkpoint selection saw these worlds
    write_stage_output(out, {"executor": executor.state_dict(), "executor_bc": bc_state}, metrics)
    return metrics
