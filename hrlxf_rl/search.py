"""Paired antithetic search: an evolution strategy over a few knobs of a bundle, scored in real worlds
with common random numbers.

Why: the PPO runs of `tasks.finetune` stayed within +-0.01 of their start. Their gradient comes from a
handful of worlds whose own variance (who the partners are, what the market does) is far larger than
what a policy update changes. Here every candidate of an iteration plays the *same* worlds, from the
same seeds, in the same slots (`tasks.evaluate`'s paired units), so the difference between the knobs
``theta + sigma eps`` and ``theta - sigma eps`` on one world carries only what the knobs changed. The
estimate (antithetic sampling, Salimans et al. 2017)

    g = 1 / (n sigma) * sum_k d_k eps_k,   d_k = mean over worlds of (R(theta + sigma eps_k) - R(theta - sigma eps_k)) / 2

is then the gradient of the paired score with the worlds' noise cancelled pairwise; Adam takes the step.

A second mode spends the worlds where the signal is (``sampling="axes"``, ``step="gated"``): one antithetic
pair per knob (eps_k is the k-th axis), and a knob moves by ``lr`` toward its better side only when the
per-world half differences of its pair have a 95% interval that excludes 0. Adam's momentum keeps walking
along a few noisy early estimates (the first two runs drifted that way); the gate moves nothing it has not
seen.

The knobs are offsets of raw biases the bundle's networks already have (`KNOBS`): the planner's goal
(quantities and prices per side, shared by the delivery buckets, for every role or for one role through
`Planner.role_goal`) and L3's quantity and price residual.
An offset of zero is the starting bundle, so what the search finds is an ordinary bundle. The goal
knobs act through the rules only when the executor's ``rules_goal`` is "l2" (`steer`): the rule
executor then plays against L2's goal instead of the rule goal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from hrlxf_models.planner import GOAL_DIM, N_BUCKETS, P_BUY, P_SELL, Q_BUY, Q_SELL, ROLES


@dataclass(frozen=True)
class Knob:
    """One scalar of the search: ``scale`` x theta is added to the entries ``index`` of ``network.parameter``."""

    network: str  # "planner" | "executor"
    parameter: str  # a parameter's name in that network's state dict
    index: tuple[int, ...]  # into the flattened parameter
    scale: float  # raw head units per unit of theta (so one sigma means about the same change for every knob)
    meaning: str


def _goal(column: int, scale: float, meaning: str) -> Knob:
    return Knob("planner", "goal.bias", tuple(b * 4 + column for b in range(N_BUCKETS)), scale, meaning)


def _role_goal(role: str, column: int, scale: float, meaning: str) -> Knob:
    row = ROLES.index(role) * GOAL_DIM
    return Knob("planner", "role_goal", tuple(row + b * 4 + column for b in range(N_BUCKETS)), scale,
                f"{meaning}, for a {role}-level factory only")


KNOBS: dict[str, Knob] = {
    # goal quantities are base + raw (units of n_lines per bucket); prices base x (1 + 0.5 tanh(raw))
    "l2.q_buy": _goal(Q_BUY, 0.25, "units of n_lines more (or less) to buy per delivery bucket"),
    "l2.p_buy": _goal(P_BUY, 0.06, "the buy price goal x (1 + 0.5 tanh(.)): 0.06 is about +3%"),
    "l2.q_sell": _goal(Q_SELL, 0.25, "units of n_lines more (or less) to sell per delivery bucket"),
    "l2.p_sell": _goal(P_SELL, 0.06, "the sell price goal x (1 + 0.5 tanh(.))"),
    # the same for one role (`Planner.role_goal`): "l2.p_sell@first" etc.; 0.1 raw is about 5% of price
    **{f"l2.{name}@{role}": _role_goal(role, column, 0.25 if name.startswith("q") else 0.1, meaning)
       for role in ROLES
       for name, column, meaning in (("q_buy", Q_BUY, "units of n_lines more (or less) to buy per delivery bucket"),
                                     ("p_buy", P_BUY, "the buy price goal x (1 + 0.5 tanh(.))"),
                                     ("q_sell", Q_SELL, "units of n_lines more (or less) to sell per delivery bucket"),
                                     ("p_sell", P_SELL, "the sell price goal x (1 + 0.5 tanh(.))"))
       if not (role == "first" and name.endswith("buy") or role == "last" and name.endswith("sell"))},  # sides it has
    # L3's counter-offers are base q + 0.5 tanh(raw) n_lines, base p x (1 + 0.1 tanh(raw)) on both sides
    "l3.q": Knob("executor", "q_head.bias", (0,), 0.5, "counter-offer quantity residual"),
    "l3.p": Knob("executor", "p_head.bias", (0,), 0.3, "counter-offer price residual (both sides)"),
}


@dataclass
class SearchConfig:
    """The search's knobs and step sizes (theta is in knob units: `Knob.scale` raw units each)."""

    knobs: tuple[str, ...] = ("l2.q_buy", "l2.p_buy", "l2.q_sell", "l2.p_sell", "l3.q", "l3.p")
    directions: int = 3  # antithetic pairs per iteration: 2 x directions candidates, plus the centre
    sigma: float = 1.0  # the perturbation, in knob units
    lr: float = 0.3  # Adam's step, in knob units
    worlds: int = 5  # paired worlds per iteration (every candidate plays each of them)
    bound: float = 4.0  # |theta| is kept within this many knob units
    sampling: str = "gaussian"  # "gaussian": `directions` random directions; "axes": one pair per knob
    step: str = "adam"  # "adam" on the estimate; "gated": lr toward the better side of each significant axis

    def n_directions(self) -> int:
        return len(self.knobs) if self.sampling == "axes" else self.directions

    def validate(self) -> None:
        unknown = [k for k in self.knobs if k not in KNOBS]
        if unknown or not self.knobs:
            raise ValueError(f"search.knobs: unknown {unknown or 'empty'}: choose from {', '.join(KNOBS)}")
        if self.directions < 1 or self.worlds < 1:
            raise ValueError(f"search.directions and search.worlds must be >= 1, got {self.directions}, {self.worlds}")
        if not (self.sigma > 0 and self.lr > 0 and self.bound > 0):
            raise ValueError(f"search.sigma, search.lr and search.bound must be > 0, got {self.sigma}, {self.lr}, "
                             f"{self.bound}")
        if self.sampling not in ("gaussian", "axes") or self.step not in ("adam", "gated"):
            raise ValueError(f"search.sampling must be 'gaussian' or 'axes' and search.step 'adam' or 'gated', "
                             f"got {self.sampling!r}, {self.step!r}")
        if self.step == "gated" and self.sampling != "axes":
            raise ValueError("search.step = 'gated' tests one knob per pair: it needs search.sampling = 'axes'")


def base_values(bundle: Any, knobs: Sequence[str]) -> dict[str, torch.Tensor]:
    """The starting entries of every parameter the knobs touch (theta = 0 is the bundle as it was)."""
    out = {}
    for name in knobs:
        k = KNOBS[name]
        out[f"{k.network}.{k.parameter}"] = getattr(bundle, k.network).state_dict()[k.parameter].detach().clone()
    return out


def steer(bundle: Any, knobs: Sequence[str]) -> None:
    """Goal knobs only matter if the rule executor plays against L2's goal: switch it over (an untrained
    planner's goal is the rule goal, so this alone changes nothing)."""
    if any(KNOBS[k].network == "planner" for k in knobs):
        bundle.executor.config.rules_goal = "l2"


def apply(bundle: Any, knobs: Sequence[str], base: dict[str, torch.Tensor], theta: np.ndarray) -> None:
    """Set the bundle's parameters to their base entries plus ``scale x theta`` at each knob's index."""
    values = {key: t.clone() for key, t in base.items()}
    for name, x in zip(knobs, theta):
        k = KNOBS[name]
        values[f"{k.network}.{k.parameter}"].view(-1)[list(k.index)] += float(x) * k.scale
    with torch.no_grad():
        for key, t in values.items():
            network, parameter = key.split(".", 1)
            getattr(bundle, network).get_parameter(parameter).copy_(t)


def directions(rng: np.random.Generator, n: int, d: int, sampling: str = "gaussian") -> np.ndarray:
    """``n`` standard normal directions in ``d`` knobs (each played as +eps and -eps); with "axes", the ``d``
    unit vectors."""
    return np.eye(d) if sampling == "axes" else rng.standard_normal((n, d))


def candidates(theta: np.ndarray, eps: np.ndarray, sigma: float) -> list[np.ndarray]:
    """[theta + sigma eps_0, theta - sigma eps_0, theta + sigma eps_1, ...]."""
    return [theta + s * sigma * e for e in eps for s in (1.0, -1.0)]


def half_differences(scores: np.ndarray) -> np.ndarray:
    """scores (worlds, 2n) in `candidates` order -> d_k = mean over worlds of (R+ - R-) / 2, per direction."""
    return per_world_half_differences(scores).mean(axis=0)


def per_world_half_differences(scores: np.ndarray) -> np.ndarray:
    """scores (worlds, 2n) in `candidates` order -> (R+ - R-) / 2 per world and direction (worlds, n)."""
    return 0.5 * (scores[:, 0::2] - scores[:, 1::2])


def gated_step(theta: np.ndarray, sides: Sequence[int], lr: float, bound: float) -> np.ndarray:
    """Move each axis by ``lr`` toward the side its interval favours (``sides``: +1, -1, or 0 = no evidence)."""
    return np.clip(np.asarray(theta, float) + lr * np.asarray(sides, float), -bound, bound)


def gradient(d: np.ndarray, eps: np.ndarray, sigma: float) -> np.ndarray:
    """The antithetic estimate of d(paired score)/d(theta): sum_k d_k eps_k / (n sigma)."""
    return (d[:, None] * eps).sum(axis=0) / (len(d) * sigma)


class Ascent:
    """Adam on theta, maximising (its state is a plain dict, kept in the fine-tuning checkpoint)."""

    def __init__(self, theta: np.ndarray, lr: float, state: dict | None = None):
        self.theta = torch.nn.Parameter(torch.as_tensor(theta, dtype=torch.float64).clone())
        self.optimizer = torch.optim.Adam([self.theta], lr=lr)
        if state:
            self.optimizer.load_state_dict(state)

    def step(self, grad: np.ndarray, bound: float) -> np.ndarray:
        self.optimizer.zero_grad()
        self.theta.grad = -torch.as_tensor(grad, dtype=torch.float64)
        self.optimizer.step()
        with torch.no_grad():
            self.theta.clamp_(-bound, bound)
        return self.theta.detach().numpy().copy()

    def state(self) -> dict:
        return self.optimizer.state_dict()
