"""The layers' action distributions: one definition for play (greedy or sampled) and for learning.

L3 decodes op -> delta -> (q, p) (`Executor`). op and delta are categorical over the executor's logits
plus the rule prior, with what cannot be done masked: ACCEPT with no offer on the table, a counter-offer
when L1 allows no day. q and p are Gaussian in the heads' raw space around the heads' output; the
residual's tanh (`Executor.quantity_price`) maps a draw to an offer. L2's goal is Gaussian in the
planner's raw head space (`Planner.raw_goal`), counting only the side the factory can trade.

Greedy play takes the modes (argmax, the mean): exactly what a bundle plays. Sampled play draws from
the same distributions, and the learner's `l3_log_prob` / `goal_log_prob` on the recorded inputs and
actions give back the log-probabilities the rollout recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.distributions import Categorical, Normal

from .planner import GOAL_DIM, P_BUY, P_SELL, Q_BUY, Q_SELL

ACCEPT, REJECT, END = 0, 1, 2  # op indices (hrlxf_agent.state.OP_INDEX)
NO_DELTA = -1  # the delta of a decision that makes no counter-offer


@dataclass
class NoiseConfig:
    """Initial exploration of the sampled policy (log standard deviations in the heads' raw space)."""

    log_std_qp: float = -1.0  # q and p: tanh(N(mu, 0.37)) moves an offer by up to about a third of its range
    log_std_goal: float = -2.0  # L2's goal (raw head units)


class PolicyNoise(nn.Module):
    """The learnable spread of the continuous actions (state-independent, as in cleanrl's continuous PPO).
    It belongs to the fine-tuning run, not to a bundle: bundles play the mean."""

    def __init__(self, config: NoiseConfig | None = None):
        super().__init__()
        c = config or NoiseConfig()
        self.log_std_qp = nn.Parameter(torch.full((2,), float(c.log_std_qp)))
        self.log_std_goal = nn.Parameter(torch.full((GOAL_DIM,), float(c.log_std_goal)))


def l3_logits(op_logits: torch.Tensor, delta_logits: torch.Tensor, prior_op: torch.Tensor, prior_delta: torch.Tensor,
              has_offer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits L3 decodes from: the executor's plus the rule prior, with ACCEPT masked without an offer
    and REJECT masked when no day is open (its delta logits are then zeros, never read)."""
    can_offer = torch.isfinite(delta_logits).any(-1)
    op = op_logits + prior_op
    cols = torch.arange(op.shape[-1])
    blocked = ((cols == ACCEPT) & ~has_offer[:, None]) | ((cols == REJECT) & ~can_offer[:, None])
    op = op.masked_fill(blocked, float("-inf"))
    delta = torch.where(can_offer[:, None], delta_logits + prior_delta, torch.zeros_like(delta_logits))
    return op, delta


class Greedy:
    """The modes: what a bundle plays."""

    sampling = False

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(-1)

    def draw(self, mean: torch.Tensor, log_std: torch.Tensor | None) -> torch.Tensor:
        return mean


class Sampler:
    """Draws from the distributions (a rollout's exploration), reproducibly from its generator's seed."""

    sampling = True

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(int(seed))

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)

    def draw(self, mean: torch.Tensor, log_std: torch.Tensor | None) -> torch.Tensor:
        if log_std is None:
            return mean
        return mean + log_std.exp() * torch.randn(mean.shape, generator=self.generator)


GREEDY = Greedy()


def l3_log_prob(op_logits: torch.Tensor, delta_logits: torch.Tensor, op: torch.Tensor, delta: torch.Tensor,
                mean_qp: torch.Tensor, raw_qp: torch.Tensor, log_std_qp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability, entropy) per decision of the joint action (op; delta and raw (q, p) for a
    counter-offer). ``op_logits`` / ``delta_logits`` from `l3_logits`; ``mean_qp`` (B, 2) the heads' output
    at ``delta``; ``raw_qp`` (B, 2) the values played (ignored where op is not REJECT)."""
    op_dist = Categorical(logits=op_logits)
    delta_dist = Categorical(logits=delta_logits)
    normal = Normal(mean_qp, log_std_qp.exp().expand_as(mean_qp))
    counter = op == REJECT
    logp = op_dist.log_prob(op) + torch.where(
        counter, delta_dist.log_prob(delta.clamp_min(0)) + normal.log_prob(raw_qp).sum(-1), torch.zeros_like(op_logits[:, 0]))
    entropy = op_dist.entropy() + torch.where(counter, delta_dist.entropy() + normal.entropy().sum(-1),
                                              torch.zeros_like(op_logits[:, 0]))
    return logp, entropy


def goal_side_mask(x_role: torch.Tensor) -> torch.Tensor:
    """(B, 16): 1 for the goal entries of the sides the factory trades (the planner zeroes the others)."""
    n_buckets = GOAL_DIM // 4
    mask = torch.zeros(x_role.shape[0], n_buckets, 4)
    mask[..., Q_BUY] = mask[..., P_BUY] = x_role[:, 0:1]
    mask[..., Q_SELL] = mask[..., P_SELL] = x_role[:, 1:2]
    return mask.reshape(-1, GOAL_DIM)


def goal_log_prob(mean: torch.Tensor, raw: torch.Tensor, log_std: torch.Tensor,
                  x_role: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability, entropy) of L2's raw goal ``raw`` (B, 16) around ``mean``, over the traded sides."""
    normal = Normal(mean, log_std.exp().expand_as(mean))
    side = goal_side_mask(x_role)
    return (normal.log_prob(raw) * side).sum(-1), (normal.entropy() * side).sum(-1)
