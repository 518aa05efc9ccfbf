"""GAE and the clipped PPO losses as pure functions (as cleanrl's ``ppo.py`` writes them), with the
diagnostics strong RL code reports: approx_kl, clipfrac, entropy, explained variance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PPOConfig:
    """One learner's PPO settings (L3's or L2's)."""

    lr: float = 3e-5
    critic_lr: float = 3e-4
    gamma: float = 1.0
    gae_lambda: float = 0.95
    clip: float = 0.2
    value_clip: float = 0.0  # > 0: clip the value update as PPO2 did (our returns are not normalised: off)
    epochs: int = 4
    minibatch: int = 512
    vf_coef: float = 0.5
    ent_coef: float = 1e-3
    max_grad_norm: float = 0.5
    target_kl: float = 0.03  # stop the epochs of an update once approx_kl passes it (<= 0: never)

    def validate(self, name: str = "ppo") -> None:
        checks = {"lr": self.lr > 0, "critic_lr": self.critic_lr > 0, "gamma": 0 < self.gamma <= 1,
                  "gae_lambda": 0 <= self.gae_lambda <= 1, "clip": self.clip > 0, "epochs": self.epochs >= 1,
                  "minibatch": self.minibatch >= 1, "vf_coef": self.vf_coef >= 0, "ent_coef": self.ent_coef >= 0,
                  "max_grad_norm": self.max_grad_norm > 0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"{name}: " + ", ".join(f"{k} = {getattr(self, k)!r} makes no sense" for k in bad))


def gae(rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimates and returns over a flat sequence of episodes laid end to end.

    ``dones[t]`` is 1 when the episode ends after step t (no bootstrap from the next row: every episode
    here ends with the world's day or thread). Returns (advantages, returns = advantages + values)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    dones = np.asarray(dones, dtype=np.float64)
    adv = np.zeros_like(rewards)
    last = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        go_on = 1.0 - dones[t]
        next_value = values[t + 1] if t + 1 < len(rewards) else 0.0
        delta = rewards[t] + gamma * next_value * go_on - values[t]
        last = delta + gamma * lam * go_on * last
        adv[t] = last
    return adv.astype(np.float32), (adv + values).astype(np.float32)


class LossNotFinite(FloatingPointError):
    """A loss came out NaN or infinite; the message names it. The update is dropped, the last good
    checkpoint kept."""


def ppo_loss(new_logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, entropy: torch.Tensor,
             new_value: torch.Tensor, old_value: torch.Tensor, returns: torch.Tensor, config: PPOConfig,
             name: str = "ppo") -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate + value loss - entropy bonus, and the minibatch's diagnostics.

    Advantages are normalised over the minibatch (as cleanrl does). A loss that is not finite raises
    `LossNotFinite` naming it (``name`` policy / value / entropy)."""
    log_ratio = new_logp - old_logp
    ratio = log_ratio.exp()
    adv = (advantages - advantages.mean()) / (advantages.std(unbiased=False) + 1e-8) if advantages.numel() > 1 else advantages
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - config.clip, 1 + config.clip)).mean()
    if config.value_clip > 0:
        clipped = old_value + (new_value - old_value).clamp(-config.value_clip, config.value_clip)
        v = 0.5 * torch.max((new_value - returns) ** 2, (clipped - returns) ** 2).mean()
    else:
        v = 0.5 * ((new_value - returns) ** 2).mean()
    ent = entropy.mean()
    for what, x in (("policy", pg), ("value", v), ("entropy", ent)):
        if not torch.isfinite(x):
            raise LossNotFinite(f"{name}: the {what} loss is {float(x)}")
    with torch.no_grad():
        stats = {"policy_loss": float(pg), "value_loss": float(v), "entropy": float(ent),
                 "approx_kl": float(((ratio - 1) - log_ratio).mean()),
                 "clipfrac": float(((ratio - 1).abs() > config.clip).float().mean())}
    return pg + config.vf_coef * v - config.ent_coef * ent, stats


def explained_variance(predicted: np.ndarray, target: np.ndarray) -> float:
    """1 - Var(target - predicted) / Var(target): 1 is a perfect critic, 0 one that predicts the mean."""
    var = float(np.var(target))
    return float("nan") if var == 0 else 1.0 - float(np.var(np.asarray(target) - np.asarray(predicted))) / var


def ppo_update(evaluate, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, old_logp: np.ndarray,
               advantages: np.ndarray, old_values: np.ndarray, returns: np.ndarray, config: PPOConfig,
               generator: np.random.Generator, name: str) -> dict[str, float]:
    """Epochs of shuffled minibatches of the clipped loss (cleanrl's inner loop).

    ``evaluate(idx)`` -> (new log-prob, entropy, new value) of the rows ``idx`` under the current weights.
    Stops early once approx_kl passes ``config.target_kl``; the returned diagnostics are means over the
    minibatches run, with the explained variance of the critic before the update."""
    n = len(old_logp)
    tensors = [torch.as_tensor(x, dtype=torch.float32) for x in (old_logp, advantages, old_values, returns)]
    sums: dict[str, float] = {}
    batches = 0
    for _ in range(config.epochs):
        epoch_kl = []
        order = generator.permutation(n)
        for start in range(0, n, config.minibatch):
            idx = order[start:start + config.minibatch]
            new_logp, entropy, new_value = evaluate(idx)
            t = torch.as_tensor(idx)
            loss, stats = ppo_loss(new_logp, tensors[0][t], tensors[1][t], entropy, new_value, tensors[2][t],
                                   tensors[3][t], config, name)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            epoch_kl.append(stats["approx_kl"])
            batches += 1
        if config.target_kl > 0 and epoch_kl and float(np.mean(epoch_kl)) > config.target_kl:
            break
    out = {k: v / max(batches, 1) for k, v in sums.items()}
    out.update(minibatches=batches, samples=n, explained_variance=explained_variance(old_values, returns))
    return out
