"""A racing gate over the strategy template (`hrlxf_agent.strategy`): F-Race / irace in spirit, on paired worlds.

Why: the gated axis search (`search`) tested four knobs over three iterations, each at 95%: about a 46% chance
that one passes by luck, and it spent equal worlds on knobs that were clearly bad and knobs that were close.
Here a *block* of at most `MAX_BLOCK` knobs is raced at once. Each knob has three arms (minus, the incumbent,
plus: ``theta -+ h``); all arms share one incumbent and play the same worlds (common random numbers), in
batches of ``batch`` worlds up to ``max_worlds``. After every batch each arm's paired differences against the
incumbent are tested one-sided (Student t):

- **clearly better**: ``p_better < accept_alpha``, where ``accept_alpha = family_alpha / (arms x looks)`` over
  every arm the run plans to test and every look it may take (Bonferroni). So the probability that the run
  accepts any arm that is in truth no better than its incumbent is at most ``family_alpha``: the run's
  family-wise error. Conservative on purpose: a change is rare and must be real.
- **clearly worse**: ``p_worse < drop_alpha / arms in the block`` (Bonferroni within the block and look). A drop
  only stops spending worlds on an arm; it never moves the incumbent, so a wrong drop costs power, not safety.
- otherwise the arm races on; after ``max_worlds`` it is "no evidence".

An accepted knob moves to the maximum of the quadratic through its three arms (`quadratic_step`), inside the
trust region [-h, h]. The accepted moves of a block, together, are then confirmed in fresh worlds against the
incumbent (one-sided, ``confirm_alpha``) before they are committed; the caller plays those worlds.
A knob whose two arms are both clearly worse halves its step (the incumbent is near its best at that scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy.special import stdtr, stdtrit  # Student t's cdf and its inverse (ufuncs: fast)

MAX_BLOCK = 6
ARMS = ("minus", "plus")
DECISIONS = ("better", "worse", "racing", "no evidence")


@dataclass(frozen=True)
class GateConfig:
    """The race's sizes and error rates."""

    block: int = 6  # knobs raced at once (each: minus and plus against the shared incumbent)
    batch: int = 12  # worlds per look
    max_worlds: int = 48  # a block stops here at the latest
    family_alpha: float = 0.05  # the run's family-wise error of accepting an arm that is no better
    drop_alpha: float = 0.05  # an arm clearly worse, per block and look (Bonferroni over the block's arms)
    confirm_worlds: int = 24  # fresh worlds that confirm a block's accepted moves
    confirm_alpha: float = 0.05  # one-sided, new against old in those worlds

    def looks(self) -> int:
        return math.ceil(self.max_worlds / self.batch)

    def validate(self) -> None:
        if not 1 <= self.block <= MAX_BLOCK:
            raise ValueError(f"gate.block must be 1..{MAX_BLOCK} knobs, got {self.block}")
        if self.batch < 3 or self.max_worlds < self.batch:
            raise ValueError(f"gate.batch must be >= 3 and gate.max_worlds >= gate.batch, got {self.batch}, "
                             f"{self.max_worlds}")
        if self.confirm_worlds < 3:
            raise ValueError(f"gate.confirm_worlds must be >= 3, got {self.confirm_worlds}")
        for name in ("family_alpha", "drop_alpha", "confirm_alpha"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"gate.{name} must be in (0, 1), got {getattr(self, name)}")

    def accept_alpha(self, planned_arms: int) -> float:
        """The level of one acceptance test when the run plans ``planned_arms`` arms in all (Bonferroni over
        arms and looks: the family-wise error stays within ``family_alpha``)."""
        return self.family_alpha / (max(1, planned_arms) * self.looks())


@dataclass(frozen=True)
class ArmTest:
    """One arm against the incumbent over the worlds played so far."""

    n: int
    mean: float
    half_width: float | None  # of the two-sided 95% t interval
    p_better: float  # one-sided: the arm beats the incumbent
    p_worse: float

    def as_dict(self) -> dict[str, float | int | None]:
        return {"n": self.n, "mean": self.mean, "half_width": self.half_width, "p_better": self.p_better,
                "p_worse": self.p_worse}


def paired_test(d: Sequence[float]) -> ArmTest:
    """One-sided Student t tests of the mean of paired differences ``d`` (arm - incumbent, world by world).
    Differences that are all equal decide by their sign alone; all zero (the knob never acted) decide nothing."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n == 0:
        return ArmTest(0, 0.0, None, 1.0, 1.0)
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    if n < 2 or sd == 0.0:
        better, worse = (0.0, 1.0) if mean > 0 and n > 1 else (1.0, 0.0) if mean < 0 and n > 1 else (1.0, 1.0)
        return ArmTest(n, mean, 0.0 if n > 1 else None, better, worse)
    se = sd / math.sqrt(n)
    t = mean / se
    return ArmTest(n, mean, float(stdtrit(n - 1, 0.975) * se), float(stdtr(n - 1, -t)), float(stdtr(n - 1, t)))


def look(differences: Mapping[str, Sequence[float]], racing: Sequence[str], accept_alpha: float,
         drop_alpha: float, block_arms: int) -> dict[str, tuple[str, ArmTest]]:
    """The decision on every arm still racing after one look: "better", "worse" or "racing"."""
    out = {}
    for arm in racing:
        test = paired_test(differences[arm])
        if test.p_better < accept_alpha:
            out[arm] = ("better", test)
        elif test.p_worse < drop_alpha / max(1, block_arms):
            out[arm] = ("worse", test)
        else:
            out[arm] = ("racing", test)
    return out


def quadratic_step(h: float, minus: float, plus: float) -> float:
    """Where to move from the incumbent (at 0) given the mean differences of the arms at -h and +h: the maximum
    of the parabola through (-h, minus), (0, 0), (h, plus), within [-h, h]; the better end when it is not
    concave. (If an arm beats the incumbent, a concave parabola peaks past h/2 on its side.)"""
    if h <= 0:
        raise ValueError(f"step h must be > 0, got {h}")
    a = (plus + minus) / (2 * h * h)
    b = (plus - minus) / (2 * h)
    if a < 0:
        return float(np.clip(-b / (2 * a), -h, h))
    return h if plus >= minus else -h


def confirmed(d: Sequence[float], alpha: float) -> tuple[bool, ArmTest]:
    """Whether new beats old in the confirmation worlds (one-sided at ``alpha``)."""
    test = paired_test(d)
    return test.p_better < alpha, test


@dataclass(frozen=True)
class Outcome:
    """How one arm's race ended: its decision, its test then, and the look (0-based) it was decided at."""

    decision: str
    test: ArmTest
    look: int


def race(arms: Sequence[str], play: Callable[[int, Sequence[str]], Mapping[str, Sequence[float]]],
         config: GateConfig, accept_alpha: float) -> tuple[dict[str, Outcome], list[dict[str, dict]]]:
    """Race ``arms`` against their incumbent: ``play(look, racing)`` plays the next batch of worlds for the
    arms still racing and returns each one's differences (arm - incumbent, world by world, complete cases).
    Returns each arm's outcome and, per look, every racing arm's decision and test (the decision log)."""
    differences: dict[str, list[float]] = {a: [] for a in arms}
    racing, outcomes, history = list(arms), {}, []
    for k in range(config.looks()):
        batch = play(k, racing)
        for a in racing:
            differences[a].extend(float(x) for x in batch[a])
        decided = look(differences, racing, accept_alpha, config.drop_alpha, len(arms))
        history.append({a: {"decision": d, **t.as_dict()} for a, (d, t) in decided.items()})
        for a, (d, t) in decided.items():
            if d != "racing":
                outcomes[a] = Outcome(d, t, k)
        racing = [a for a in racing if decided[a][0] == "racing"]
        if not racing:
            break
    for a in racing:
        outcomes[a] = Outcome("no evidence", paired_test(differences[a]), config.looks() - 1)
    return outcomes, history
