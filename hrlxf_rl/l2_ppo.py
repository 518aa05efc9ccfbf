"""L2 by PPO, one step a day: the planner's raw goal is the action (Gaussian around its head), its value
head the critic, the day's reward `rewards.day_rewards` (profit + potential shaping - shortfall). Each
learner factory's world is an episode: GAE runs over its days."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hrlxf_models import Planner
from hrlxf_models.policy import PolicyNoise, goal_log_prob

from .ppo import PPOConfig, gae, ppo_update
from .rewards import RewardConfig, day_rewards

PLAN_INPUTS = ("x_static", "x_temporal", "x_role")


def l2_rows(factories: list[dict[str, Any]], rewards: RewardConfig) -> dict[str, np.ndarray]:
    """Every recorded plan (one a day) with the day's reward and ``done`` on each factory's last day."""
    parts = []
    for f in factories:
        plans = f["plans"]
        if not plans:
            continue
        day = day_rewards(f["days"], f["final_balance"], f["shortfall"], rewards)
        at = {int(s): i for i, s in enumerate(f["days"]["step"])}
        which = np.asarray([at[int(s)] for s in plans["step"]])
        done = np.zeros(len(which), dtype=np.float32)
        done[-1] = 1.0
        parts.append({**{k: np.asarray(plans[k]) for k in (*PLAN_INPUTS, "base_goal", "raw_goal", "logp")},
                      "reward": day["reward"][which].astype(np.float32), "done": done,
                      **{k: day[k][which] for k in ("profit", "shaping", "shortfall")}})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def replay(planner: Planner, noise: PolicyNoise, rows: dict[str, np.ndarray],
           idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-prob, entropy, value) of the recorded goals of rows ``idx`` under the planner and noise as they are now."""
    xs, xt, xr = (torch.as_tensor(rows[k][idx]).float() for k in PLAN_INPUTS)
    mean, value = planner.raw_goal(xs, xt, xr)
    logp, entropy = goal_log_prob(mean, torch.as_tensor(rows["raw_goal"][idx]).float(), noise.log_std_goal, xr)
    return logp, entropy, value.squeeze(-1)


def update_l2(planner: Planner, noise: PolicyNoise, optimizer: torch.optim.Optimizer, rows: dict[str, np.ndarray],
              config: PPOConfig, generator: np.random.Generator) -> dict[str, float]:
    """One PPO update of L2 on an iteration's days; the diagnostics, with the day rewards' parts."""
    with torch.no_grad():
        old_v = replay(planner, noise, rows, np.arange(len(rows["logp"])))[2].numpy()
    adv, ret = gae(rows["reward"], old_v, rows["done"], config.gamma, config.gae_lambda)
    planner.train()
    stats = ppo_update(lambda idx: replay(planner, noise, rows, idx), [*planner.parameters(), noise.log_std_goal],
                       optimizer, rows["logp"], adv, old_v, ret, config, generator, "l2")
    planner.eval()
    return {**stats, "days": len(rows["logp"]), "day_reward": float(rows["reward"].mean()),
            "profit": float(rows["profit"].mean()), "shaping": float(rows["shaping"].mean()),
            "shortfall": float(rows["shortfall"].mean()), "std_goal": noise.log_std_goal.exp().mean().item()}


def l2_optimizer(planner: Planner, noise: PolicyNoise, config: PPOConfig) -> torch.optim.Adam:
    value = list(planner.value.parameters())
    ids = {id(p) for p in value}
    return torch.optim.Adam([{"params": [p for p in planner.parameters() if id(p) not in ids] + [noise.log_std_goal],
                              "lr": config.lr}, {"params": value, "lr": config.critic_lr}], eps=1e-5)
