"""L3 by thread-level MAPPO: the shared actor (the executor every thread plays) and a centralised critic
(`ThreadCritic`: the broadcast c, the static context and the set of threads active in the decision's
batch). Each thread, a partner on a day, is an episode: GAE runs over its decisions, its reward comes at
its last one (`rewards.thread_rewards`). Threads not scheduled in a batch are simply absent (padding
masked out of the critic's attention)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hrlxf_models import Executor
from hrlxf_models.coordinator import ThreadCritic
from hrlxf_models.policy import PolicyNoise, l3_log_prob, l3_logits

from .ppo import PPOConfig, gae, ppo_update
from .rewards import RewardConfig, day_rewards, thread_rewards

#: the executor's inputs, as the rollout recorded them, in its forward's order
ACTOR_INPUTS = ("static", "goal", "role", "broadcast", "alpha", "rounds", "keep", "time_mask")


def l3_rows(factories: list[dict[str, Any]], rewards: RewardConfig) -> dict[str, np.ndarray]:
    """Every recorded decision of the iteration's learner factories as one table of rows, in thread order
    (each thread's decisions together, in the order they were made), with its reward and ``done``, and its
    critic input (the batch's threads padded to the largest batch)."""
    parts: list[dict[str, np.ndarray]] = []
    for f in factories:
        d = f["decisions"]
        if not d:
            continue
        day = day_rewards(f["days"], f["final_balance"], f["shortfall"], rewards)
        r = thread_rewards(d, f["deals"], day, f["days"], f["horizon"], rewards)
        order = np.argsort(r["thread"], kind="stable")
        threads = [f["critic_threads"][b] for b in d["batch"]]
        parts.append({**{k: np.asarray(v)[order] for k, v in d.items() if k not in ("partner",)},
                      **{k: r[k][order] for k in ("reward", "done", "team", "alignment", "advantage")},
                      "critic_global": f["critic_global"][d["batch"]][order],
                      "critic_threads": [threads[i] for i in order]})
    if not parts:
        return {}
    rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "critic_threads"}
    threads = [t for p in parts for t in p["critic_threads"]]
    width = max(len(t) for t in threads)
    padded = np.zeros((len(threads), width, threads[0].shape[1]), dtype=np.float32)
    keep = np.zeros((len(threads), width), dtype=bool)
    for i, t in enumerate(threads):
        padded[i, :len(t)] = t
        keep[i, :len(t)] = True
    rows.update(critic_threads=padded, critic_keep=keep)
    return rows


def replay(executor: Executor, noise: PolicyNoise, rows: dict[str, np.ndarray], idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob, entropy) of the recorded actions of rows ``idx`` under the executor and noise as they are
    now: the same decoding the agent ran (`hrlxf_agent.hrl.HRLPolicy._execute`), on the recorded inputs."""
    x = {k: torch.as_tensor(rows[k][idx]) for k in (*ACTOR_INPUTS, "room", "prior_op", "prior_delta", "has_offer",
                                                     "op", "delta", "raw_qp")}
    out = executor(*(x[k].float() if k != "keep" else x[k] for k in ACTOR_INPUTS))
    op_logits, delta_logits = l3_logits(out["op"], out["delta"], x["prior_op"], x["prior_delta"], x["has_offer"])
    mean_q, mean_p = executor.quantity_price_heads(out["h"], x["delta"].long().clamp_min(0), x["room"])
    return l3_log_prob(op_logits, delta_logits, x["op"].long(), x["delta"].long(), torch.stack([mean_q, mean_p], -1),
                       x["raw_qp"].float(), noise.log_std_qp)


def values(critic: ThreadCritic, rows: dict[str, np.ndarray], idx: np.ndarray) -> torch.Tensor:
    """The critic's value of each row's thread (its position in its batch)."""
    v = critic(torch.as_tensor(rows["critic_threads"][idx]), torch.as_tensor(rows["critic_keep"][idx]),
               torch.as_tensor(rows["critic_global"][idx]))
    return v.gather(1, torch.as_tensor(rows["position"][idx]).long()[:, None]).squeeze(1)


def update_l3(executor: Executor, critic: ThreadCritic, noise: PolicyNoise, optimizer: torch.optim.Optimizer,
              rows: dict[str, np.ndarray], config: PPOConfig, generator: np.random.Generator) -> dict[str, float]:
    """One PPO update of L3 on an iteration's rows; the diagnostics, with the thread rewards' parts."""
    executor.train()
    with torch.no_grad():
        old_v = np.concatenate([values(critic, rows, np.arange(i, min(i + 2048, len(rows["op"])))).numpy()
                                for i in range(0, len(rows["op"]), 2048)])
    adv, ret = gae(rows["reward"], old_v, rows["done"], config.gamma, config.gae_lambda)

    def evaluate(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logp, entropy = replay(executor, noise, rows, idx)
        return logp, entropy, values(critic, rows, idx)

    params = [*executor.parameters(), *critic.parameters(), noise.log_std_qp]
    stats = ppo_update(evaluate, params, optimizer, rows["logp"], adv, old_v, ret, config, generator, "l3")
    executor.eval()
    threads = rows["done"] > 0
    return {**stats, "threads": int(threads.sum()), "thread_reward": float(rows["reward"][threads].mean()),
            "team": float(rows["team"][threads].mean()), "alignment": float(rows["alignment"][threads].mean()),
            "advantage": float(rows["advantage"][threads].mean()), "std_q": noise.log_std_qp[0].exp().item(),
            "std_p": noise.log_std_qp[1].exp().item()}


def l3_optimizer(executor: Executor, critic: ThreadCritic, noise: PolicyNoise, config: PPOConfig) -> torch.optim.Adam:
    return torch.optim.Adam([{"params": [*executor.parameters(), noise.log_std_qp], "lr": config.lr},
                             {"params": critic.parameters(), "lr": config.critic_lr}], eps=1e-5)
