"""L4 coordinator: self-attention over the active threads plus a global token
-> a priority alpha in (-1, 1) per thread (seed 002 section 6). It never edits
actions: alpha is an input to L3 and the order of L1's joint clip.

alpha is a residual over the rule teacher's (`heuristics.teacher_alpha`), which it
reads per thread: alpha = tanh(atanh(teacher) + head). The head starts at zero, so
an untrained coordinator is the teacher; online learning moves it from there."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .blocks import Block
from .layouts import BROADCAST, STATIC, THREAD

THREAD_FEATURES = len(THREAD)


@dataclass
class CoordinatorConfig:
    thread_dim: int = THREAD_FEATURES
    global_dim: int = len(STATIC) + len(BROADCAST)  # x_static + broadcast c
    d_model: int = 64
    n_head: int = 4
    n_layer: int = 2


class Coordinator(nn.Module):
    def __init__(self, config: CoordinatorConfig):
        super().__init__()
        self.config = c = config
        self.thread = nn.Linear(c.thread_dim, c.d_model)
        self.globl = nn.Linear(c.global_dim, c.d_model)
        self.blocks = nn.ModuleList(Block(c.d_model, c.n_head) for _ in range(c.n_layer))
        self.ln = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, 1)
        nn.init.zeros_(self.head.weight)  # untrained: the teacher exactly
        nn.init.zeros_(self.head.bias)

    def encode(self, threads: torch.Tensor, keep: torch.Tensor, global_features: torch.Tensor) -> torch.Tensor:
        """threads (B,N,F), keep (B,N) bool, global (B,G) -> one embedding per thread (B,N,D), each having
        attended to the global token and every active thread."""
        B = threads.shape[0]
        x = torch.cat([self.globl(global_features)[:, None], self.thread(threads)], dim=1)
        mask = torch.cat([torch.ones(B, 1, dtype=torch.bool), keep.to(torch.bool)], dim=1)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln(x[:, 1:])

    def forward(self, threads: torch.Tensor, keep: torch.Tensor, global_features: torch.Tensor,
                teacher: torch.Tensor) -> torch.Tensor:
        """threads (B,N,F), keep (B,N) bool, global (B,G), teacher alpha (B,N) -> alpha (B,N) in (-1, 1)."""
        base = torch.atanh(teacher.clamp(-0.999999, 0.999999))
        return torch.tanh(base + self.head(self.encode(threads, keep, global_features)).squeeze(-1))


class ThreadCritic(Coordinator):
    """L3's centralised critic (MAPPO): the coordinator's encoder over the broadcast c and the set of
    active threads, with a value per thread. It only trains; no bundle holds it."""

    def forward(self, threads: torch.Tensor, keep: torch.Tensor, global_features: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """threads (B,N,F), keep (B,N) bool, global (B,G) -> value (B,N)."""
        return self.head(self.encode(threads, keep, global_features)).squeeze(-1)
