"""L3 executor: a small decision transformer over one negotiation thread (seed 002 section 5).

Tokens: prefix [context (static), goal, role, broadcast c, alpha], then the last
N rounds of the thread (left-padded), then a decision token whose output feeds
the heads: op {ACCEPT, REJECT, END}, delivery offset delta in 0..H (masked by
L1's time_mask), then quantity and price. Decoding is autoregressive, as the
seeds draw it: q and p read the decision token together with the chosen delta
(an embedding of it) and L1's room on that day (`quantity_price_heads`), so an
offer for today and one in ten days need not be the same. One policy serves
every thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .blocks import Block
from .layouts import BROADCAST, ROUND, STATIC

OPS = ("accept", "reject", "end")
#: the L3 variants by name: residual over L1's baseline, direct, residual over the rule executor
VARIANTS: dict[str, dict[str, str]] = {"residual": {"mode": "residual"}, "direct": {"mode": "direct"},
                                       "rules": {"mode": "residual", "base": "rules"}}
ROUND_FEATURES = len(ROUND)
BROADCAST_DIM = len(BROADCAST)


@dataclass
class ExecutorConfig:
    horizon: int = 10
    history: int = 8
    n_static: int = len(STATIC)
    goal_dim: int = 16
    broadcast_dim: int = BROADCAST_DIM
    d_model: int = 64
    n_head: int = 4
    n_layer: int = 2
    mode: str = "residual"  # "residual": q, p = L1 baseline + scaled tanh; "direct": absolute q, p
    q_scale: float = 0.5  # residual quantity range, in units of n_lines
    p_scale: float = 0.1  # residual price range, relative
    heuristic_prior: float = 3.0  # logit bonus the agent gives the rule-based op / delta: an untrained model follows the rules
    base: str = "baseline"  # residual mode's base: "baseline" (L1's simple safe offer, seed 004) or "rules" (the rule executor's offer)
    # the goal the rule executor plays against: "rules" (the rule goal, as the micro table records the experts',
    # so offline training and play share one base) or "l2" (the planner's goal: L2 then steers the rules per side)
    rules_goal: str = "rules"


def variant_of(config: ExecutorConfig) -> str:
    """The name (`VARIANTS`) of a config's variant."""
    return "rules" if config.mode == "residual" and config.base == "rules" else config.mode


class Executor(nn.Module):
    def __init__(self, config: ExecutorConfig):
        super().__init__()
        if config.mode not in ("residual", "direct"):
            raise ValueError(f"mode must be 'residual' or 'direct', got {config.mode!r}")
        if config.base not in ("baseline", "rules"):
            raise ValueError(f"base must be 'baseline' or 'rules', got {config.base!r}")
        if config.rules_goal not in ("rules", "l2"):
            raise ValueError(f"rules_goal must be 'rules' or 'l2', got {config.rules_goal!r}")
        self.config = c = config
        d = c.d_model
        self.context = nn.Linear(c.n_static, d)
        self.goal = nn.Linear(c.goal_dim, d)
        self.role = nn.Linear(2, d)
        self.broadcast = nn.Linear(c.broadcast_dim, d)
        self.alpha = nn.Linear(1, d)
        self.round = nn.Linear(ROUND_FEATURES, d)
        self.position = nn.Embedding(c.history, d)
        self.decision = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = nn.ModuleList(Block(d, c.n_head) for _ in range(c.n_layer))
        self.ln = nn.LayerNorm(d)
        self.op_head = nn.Linear(d, len(OPS))
        self.delta_head = nn.Linear(d, c.horizon + 1)
        self.horizon: int = c.horizon  # TorchScript reads ints, not the config object
        self.delta_embed = nn.Embedding(c.horizon + 1, d)
        self.qp_mix = nn.Sequential(nn.Linear(2 * d + 1, d), nn.GELU())  # [h, delta embedding, room at delta]
        self.q_head = nn.Linear(d, 1)
        self.p_head = nn.Linear(d, 1)
        for head in (self.op_head, self.delta_head, self.q_head, self.p_head):
            # an untrained executor adds nothing to its priors / the L1 baseline
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(
        self,
        static: torch.Tensor,  # (B, 12)
        goal: torch.Tensor,  # (B, 16)
        role: torch.Tensor,  # (B, 2) one-hot buyer/seller
        broadcast: torch.Tensor,  # (B, C)
        alpha: torch.Tensor,  # (B, 1)
        rounds: torch.Tensor,  # (B, N, 12), left-padded
        rounds_keep: torch.Tensor,  # (B, N) bool
        time_mask: torch.Tensor,  # (B, H+1): 0 or -inf
    ) -> dict[str, torch.Tensor]:
        B, N, _ = rounds.shape
        prefix = torch.stack(
            [self.context(static), self.goal(goal), self.role(role), self.broadcast(broadcast), self.alpha(alpha)], dim=1
        )
        hist = self.round(rounds) + self.position(torch.arange(N, device=rounds.device))[None]
        x = torch.cat([prefix, hist, self.decision.expand(B, 1, -1)], dim=1)
        keep = torch.cat(
            [torch.ones(B, prefix.shape[1], dtype=torch.bool), rounds_keep.to(torch.bool), torch.ones(B, 1, dtype=torch.bool)], dim=1
        )
        for block in self.blocks:
            x = block(x, keep)
        h = self.ln(x[:, -1])
        return {"op": self.op_head(h), "delta": self.delta_head(h) + time_mask, "h": h}

    @torch.jit.export
    def quantity_price_heads(self, h: torch.Tensor, delta: torch.Tensor, room: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw q and p head outputs for the chosen ``delta`` (B,) given L1's room per day ``room`` (B, H+1, in
        units of n_lines): the second step of the autoregressive decoding."""
        delta = delta.clamp(0, self.horizon)
        at = room.gather(1, delta[:, None])
        z = self.qp_mix(torch.cat([h, self.delta_embed(delta), at], dim=-1))
        return self.q_head(z).squeeze(-1), self.p_head(z).squeeze(-1)

    def quantity_price(self, raw_q: torch.Tensor, raw_p: torch.Tensor, base_q: torch.Tensor,
                       base_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(q in units of n_lines, p relative to the catalog) from the raw head outputs.

        residual: around the base (L1's baseline or the rule executor's offer; an untrained head returns it exactly);
        direct: absolute values (``base_*`` only fixes the scale of p at 1).
        """
        c = self.config
        if c.mode == "residual":
            return base_q + c.q_scale * torch.tanh(raw_q), base_p * (1.0 + c.p_scale * torch.tanh(raw_p))
        return torch.nn.functional.softplus(raw_q), 1.0 + 0.5 * torch.tanh(raw_p)
