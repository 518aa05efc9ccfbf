"""L2 strategic planner: a 1D-CNN over the (H+1) x 10 commitment tensor, fused with
the static vector and the role, -> the day's goal g (16) and a value (seed 002 section 4).

The goal is a residual over the rule goal (`heuristics.heuristic_goal`), which the
planner reads as its base: quantities base + head, prices base x (1 + 0.5 tanh(head)).
Its goal head and its per-role offsets (`ROLES`) start at zero, so an untrained planner plans as the rules do."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

#: goal layout: 4 delivery buckets x [Q_buy, P_buy, Q_sell, P_sell]
N_BUCKETS = 4
GOAL_DIM = 4 * N_BUCKETS
Q_BUY, P_BUY, Q_SELL, P_SELL = 0, 1, 2, 3
GOAL_LAYOUT = tuple(f"{x}_{b}" for b in range(N_BUCKETS) for x in ("q_buy", "p_buy", "q_sell", "p_sell"))


#: first delivery offset of each bucket after the first: [0,1], [2,4], [5,7], [8,H] cut the days a std
#: world can trade (H = 10); the seeds' [0,2], [3,7], [8,14], [15,40] assumed 40 tradable days
BUCKET_STARTS = (2, 5, 8)
#: the three roles of the [can_buy, can_sell] multi-hot: the first level only sells (its supply is exogenous),
#: a middle one trades both sides, the last level only buys
ROLES = ("first", "middle", "last")


def bucket_edges(horizon: int) -> tuple[tuple[int, int], ...]:
    """Delivery-offset buckets [0,1], [2,4], [5,7], [8,H] (inclusive)."""
    a, b, c = BUCKET_STARTS
    return ((0, a - 1), (a, b - 1), (b, c - 1), (c, max(c, horizon)))


def role_index(x_role: torch.Tensor) -> torch.Tensor:
    """(B,2) [can_buy, can_sell] -> (B,) index into `ROLES`: first (0,1) -> 0, middle (1,1) -> 1, last (1,0) -> 2."""
    return (x_role[:, 0] * (2 - x_role[:, 1])).round().long().clamp(0, len(ROLES) - 1)


def bucket_of(delta: int, horizon: int) -> int:
    for b, (lo, hi) in enumerate(bucket_edges(horizon)):
        if lo <= delta <= hi:
            return b
    return N_BUCKETS - 1


@dataclass
class PlannerConfig:
    horizon: int = 10
    n_static: int = 12
    n_channels: int = 10
    n_role: int = 2
    conv1: int = 32  # channels of the k=3 convolution
    conv2: int = 64  # channels of the k=7 convolution
    hidden: int = 128


class Planner(nn.Module):
    """Goal quantities come out in units of n_lines (>= 0), prices as a ratio to the catalog price,
    both around the base goal it is given (the rule goal)."""

    def __init__(self, config: PlannerConfig):
        super().__init__()
        self.config = c = config
        self.conv1 = nn.Conv1d(c.n_channels, c.conv1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(c.conv1, c.conv2, kernel_size=7, padding=3)
        self.static = nn.Linear(c.n_static, c.hidden // 2)
        self.role = nn.Linear(c.n_role, c.hidden // 8)
        self.fuse = nn.Sequential(
            nn.Linear(2 * c.conv2 + c.hidden // 2 + c.hidden // 8, c.hidden), nn.GELU(),
            nn.Linear(c.hidden, c.hidden), nn.GELU(),
        )
        self.goal = nn.Linear(c.hidden, GOAL_DIM)
        nn.init.zeros_(self.goal.weight)  # untrained: the base goal exactly
        nn.init.zeros_(self.goal.bias)
        # a raw-goal offset per role: the levels face different markets (a first-level factory's stock grows with
        # its exogenous supply and pays storage every day until it sells), which one shared bias cannot tell apart
        self.role_goal = nn.Parameter(torch.zeros(len(ROLES), GOAL_DIM))
        self.value = nn.Linear(c.hidden, 1)

    def raw_goal(self, x_static: torch.Tensor, x_temporal: torch.Tensor,
                 x_role: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,12), (B,H+1,10), (B,2) -> the goal head's raw output (B,16) and the value (B,1)."""
        h = F.gelu(self.conv1(x_temporal.transpose(1, 2)))
        h = F.gelu(self.conv2(h))
        pooled = torch.cat([h.amax(dim=2), h.mean(dim=2)], dim=1)
        z = self.fuse(torch.cat([pooled, F.gelu(self.static(x_static)), F.gelu(self.role(x_role))], dim=1))
        return self.goal(z) + self.role_goal[role_index(x_role)], self.value(z)

    @staticmethod
    def goal_of(raw: torch.Tensor, base_goal: torch.Tensor, x_role: torch.Tensor) -> torch.Tensor:
        """The goal (B,16) of a raw head output around the base goal: quantities base + raw (>= 0), prices
        base x (1 + 0.5 tanh(raw)); the side the agent cannot negotiate is zero."""
        raw = raw.view(-1, N_BUCKETS, 4)
        base = base_goal.view(-1, N_BUCKETS, 4)
        q = (base[..., [Q_BUY, Q_SELL]] + raw[..., [Q_BUY, Q_SELL]]).clamp_min(0.0)
        p = base[..., [P_BUY, P_SELL]] * (1.0 + 0.5 * torch.tanh(raw[..., [P_BUY, P_SELL]]))
        goal = torch.stack([q[..., 0], p[..., 0], q[..., 1], p[..., 1]], dim=-1)
        side = torch.stack([x_role[:, 0], x_role[:, 0], x_role[:, 1], x_role[:, 1]], dim=-1).unsqueeze(1)
        return (goal * side).reshape(-1, GOAL_DIM)

    def forward(self, x_static: torch.Tensor, x_temporal: torch.Tensor, x_role: torch.Tensor,
                base_goal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,12), (B,H+1,10), (B,2), base goal (B,16) -> goal (B,16), value (B,1)."""
        raw, value = self.raw_goal(x_static, x_temporal, x_role)
        return self.goal_of(raw, base_goal, x_role), value
