"""Rollouts: one real std world with LitaAgentHRL sampling in the candidate slots, against a league.

The world is a paired-evaluation configuration (`tasks.paired.build_world`: scml's generator, the
training profile's sizes) with our learner in every candidate slot and the league (experts by name and
frozen snapshots of ourselves, as bundle directories) as the other factories. The learner is the agent
itself with a `Sampler` and a `Recorder`: the layers being trained draw their actions from the policy
and record inputs, actions and log-probabilities; L1's clip (the agent's shield hook) stands between
every draw and the world, so what is sent is always clipped, safe and legal (every decision is audited
and counted). A job never raises: a world that crashes or runs out of time comes back with its error
and is dropped from its iteration.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RolloutJob:
    iteration: int
    index: int  # the world's index in its iteration
    seed: int  # the world configuration (and the samplers' seeds)
    steps: int
    agents_per_world: tuple[int, int]
    opponents: tuple[str, ...]  # registry names
    snapshots: tuple[str, ...]  # bundle directories of frozen selves (more opponent types)
    policy: str  # the bundle directory of the policy being trained
    noise: str  # its `PolicyNoise` state (torch file)
    explore: tuple[str, ...]  # the layers that sample and record: "l3", "l2"
    timeout: float = 900.0


class Recorder:
    """What one learner factory saw and did, as the agent reports it (`hrlxf_agent.hrl` calls these)."""

    def __init__(self) -> None:
        self.days: list[dict[str, Any]] = []
        self.plans: list[dict[str, Any]] = []
        self.rows: list[dict[str, np.ndarray]] = []
        self.critic_threads: list[np.ndarray] = []
        self.critic_global: list[np.ndarray] = []
        self.deals: list[dict[str, Any]] = []

    def day(self, agent: Any, snap: Any) -> None:
        self.days.append({"step": snap.step, "balance": snap.balance, "stock": snap.inventory_input + snap.inventory_output,
                          "n_lines": snap.n_lines, "n_steps": snap.n_steps, "price_in": snap.trading_price_in,
                          "price_out": snap.trading_price_out, "production_cost": snap.production_cost,
                          "initial_balance": agent.initial_balance})

    def plan(self, agent: Any, snap: Any, record: dict[str, Any]) -> None:
        self.plans.append({"step": snap.step, **record})

    def decisions(self, agent: Any, snap: Any, partners: list[str], record: dict[str, np.ndarray],
                  critic: dict[str, np.ndarray]) -> None:
        b = len(self.critic_global)
        self.critic_threads.append(np.asarray(critic["threads"], dtype=np.float32))
        self.critic_global.append(np.asarray(critic["global"], dtype=np.float32))
        n = len(partners)
        self.rows.append({**record, "step": np.full(n, snap.step), "partner": np.asarray(partners),
                          "batch": np.full(n, b), "position": np.arange(n)})

    def deal(self, agent: Any, contract: Any) -> None:
        a = contract.agreement
        partner = next((p for p in contract.partners if p != agent.id), None)
        self.deals.append({"step": agent.awi.current_step, "partner": partner, "quantity": a["quantity"],
                           "delivery": a["time"], "price": a["unit_price"]})

    def arrays(self) -> dict[str, Any]:
        """Everything as numpy arrays (columns), ready to pickle back to the learner."""
        def columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
            return {k: np.asarray([r[k] for r in rows]) for k in rows[0]} if rows else {}

        decisions = {k: np.concatenate([r[k] for r in self.rows]) for k in self.rows[0]} if self.rows else {}
        return {"days": columns(self.days), "plans": columns(self.plans), "decisions": decisions,
                "deals": columns(self.deals), "critic_threads": self.critic_threads,
                "critic_global": np.asarray(self.critic_global, dtype=np.float32)}


def learner_class(noise: Any, explore: frozenset[str], seed: int, learners: list) -> type:
    """LitaAgentHRL that samples the ``explore`` layers and records into a fresh `Recorder` (one per factory)."""
    from hrlxf_agent.hrl import LitaAgentHRL
    from hrlxf_models.policy import Sampler

    class Learner(LitaAgentHRL):
        def init(self):
            super().init()
            self.explore, self.noise = explore, noise
            self.sampler = Sampler(seed * 1009 + len(learners))
            self.recorder = Recorder()
            learners.append(self)

    return Learner


def snapshot_class(bundle: str, index: int) -> type:
    """A frozen self: LitaAgentHRL playing the bundle greedily (a league opponent)."""
    from hrlxf_agent.hrl import LitaAgentHRL

    def __init__(self, *args, **kwargs):
        LitaAgentHRL.__init__(self, *args, bundle=bundle, **kwargs)

    return type(f"HRLSnapshot{index}", (LitaAgentHRL,), {"__init__": __init__})


def play_rollout(job: RolloutJob) -> dict[str, Any]:
    """Play one rollout world; returns each learner factory's records, score and audit counts."""
    import torch

    from hrlxf_agent.audit import audited
    from hrlxf_agent.registry import resolve_all
    from hrlxf_models.policy import PolicyNoise
    from tasks.collect import time_limit
    from tasks.paired import build_world

    start = time.perf_counter()
    row: dict[str, Any] = {"iteration": job.iteration, "index": job.index, "seed": job.seed, "error": None,
                           "snapshots": len(job.snapshots)}
    try:
        torch.set_num_threads(1)
        noise = PolicyNoise()
        noise.load_state_dict(torch.load(job.noise, map_location="cpu", weights_only=True))
        noise.requires_grad_(False)
        learners: list = []
        subject = audited(learner_class(noise, frozenset(job.explore), job.seed, learners))
        classes = resolve_all(list(job.opponents))
        opponents = [classes[o] for o in job.opponents] + [snapshot_class(b, i) for i, b in enumerate(job.snapshots)]
        world = build_world(job.seed, subject, {"bundle": job.policy}, opponents, job.steps, job.agents_per_world)
        with time_limit(job.timeout):
            world.run()
        scores = world.scores()
        factories = []
        for agent in learners:
            if agent.fallbacks:
                raise RuntimeError(f"{agent.id}: the policy fell back to the rules ({dict(agent.fallbacks)}): "
                                   "its records would not be the policy's")
            counts = agent.hook().counts
            factories.append({
                "aid": agent.id, "score": float(scores[agent.id]), "final_balance": float(agent.awi.current_balance),
                "shortfall": np.asarray(world.stats[f"shortfall_quantity_{agent.id}"], dtype=float),
                "horizon": agent.horizon, "unsafe": int(counts.unsafe_any), "illegal": int(counts.illegal),
                "audited": int(counts.decisions), **agent.recorder.arrays()})
        row["factories"] = factories
        row["opponent_scores"] = {aid: float(s) for aid, s in scores.items()
                                  if aid not in {f["aid"] for f in factories}}
    except Exception as e:  # one crashing or hanging world is dropped from its iteration, never the run
        row["error"] = f"{type(e).__name__}: {e}"
        row["traceback"] = traceback.format_exc(limit=6)
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def died(job: RolloutJob) -> dict[str, Any]:
    """The row of a rollout whose worker process died."""
    return {"iteration": job.iteration, "index": job.index, "seed": job.seed, "seconds": None,
            "error": "the worker process died while playing this world"}
