"""Benchmark: what LitaAgentHRL costs a world, against PenguinAgent in the same slots.

The same world configurations (paired, as in the audit) are played with
PenguinAgent, LitaAgentHRL with rules only, LitaAgentHRL with an untrained
bundle (and with a trained one when given), one after another in this process so the timings share a machine
state. Reports wall time per variant, ratios to PenguinAgent, and the median
and p99 time of one batch decision (first_proposals / counter_all, shield
included) and the median time of L1's joint clip (`SafetyShield.clip_batch`) alone.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hrlxf_agent.registry import WINNERS_2025, resolve_all
from tasks.report import md_table


@dataclass(frozen=True)
class Config:
    worlds: int = 4
    steps: int = 50
    seed: int = 0
    opponents: tuple[str, ...] = WINNERS_2025
    bundle: str | None = None  # a trained bundle to time too (path or "latest")


def _timed(cls: type, sink: list[float]) -> type:
    """``cls`` with the wall time of every batch decision appended to ``sink``."""

    class Timed(cls):  # type: ignore[misc, valid-type]
        def first_proposals(self):
            t0 = time.perf_counter()
            out = super().first_proposals()
            sink.append(time.perf_counter() - t0)
            return out

        def counter_all(self, offers, states):
            t0 = time.perf_counter()
            out = super().counter_all(offers, states)
            sink.append(time.perf_counter() - t0)
            return out

    Timed.__name__ = cls.__name__
    return Timed


@contextmanager
def _clip_timer(sink: list[float]):
    """Time every `SafetyShield.clip_batch` call made while the block runs (only our agents call it)."""
    from hrlxf_agent.shield import SafetyShield

    original = SafetyShield.clip_batch

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = original(self, *args, **kwargs)
        sink.append(time.perf_counter() - t0)
        return out

    SafetyShield.clip_batch = timed  # type: ignore[method-assign]
    try:
        yield
    finally:
        SafetyShield.clip_batch = original  # type: ignore[method-assign]


def _play(config_seed: int, steps: int, subject: type, params: dict, opponents: list[type]) -> tuple[float, float]:
    from tasks.paired import build_world

    world = build_world(config_seed, subject, params, opponents, steps)
    t0 = time.perf_counter()
    world.run()
    seconds = time.perf_counter() - t0
    scores = [float(world.scores()[aid]) for aid, a in world.agents.items() if isinstance(getattr(a, "_obj", None), subject)]
    return seconds, float(np.mean(scores))


def run_bench(config: Config) -> dict[str, Any]:
    from hrlxf_agent.bundle import write_untrained_bundle

    classes = resolve_all(["PenguinAgent", "LitaAgentHRL", *config.opponents])
    opponents = [classes[o] for o in config.opponents]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = str(write_untrained_bundle(Path(tmp) / "untrained", mode="residual"))
        variants = {
            "PenguinAgent": (classes["PenguinAgent"], {}),
            "LitaAgentHRL(rules)": (classes["LitaAgentHRL"], {}),
            "LitaAgentHRL(untrained bundle)": (classes["LitaAgentHRL"], {"bundle": bundle}),
        }
        if config.bundle:
            from hrlxf_agent.bundle import load_bundle

            trained = load_bundle(config.bundle)  # a bad bundle fails before any world
            variants[f"LitaAgentHRL(trained {trained.manifest.l3_mode})"] = (classes["LitaAgentHRL"], {"bundle": str(trained.path)})
        out: dict[str, Any] = {name: {"seconds": [], "scores": [], "batch_seconds": [], "clip_seconds": []} for name in variants}
        for w in range(config.worlds):
            seed = config.seed * 1000 + w
            for name, (cls, params) in variants.items():
                sink: list[float] = []
                with _clip_timer(out[name]["clip_seconds"]):
                    seconds, score = _play(seed, config.steps, _timed(cls, sink), params, opponents)
                out[name]["seconds"].append(seconds)
                out[name]["scores"].append(score)
                out[name]["batch_seconds"].extend(sink)
    base = sum(out["PenguinAgent"]["seconds"])
    summary = {}
    for name, v in out.items():
        batches = np.asarray(v["batch_seconds"]) * 1000
        summary[name] = {
            "world_seconds_total": round(sum(v["seconds"]), 2),
            "ratio_to_penguin": round(sum(v["seconds"]) / base, 3),
            "batch_ms_median": round(float(np.median(batches)), 3) if len(batches) else None,
            "batch_ms_p99": round(float(np.percentile(batches, 99)), 3) if len(batches) else None,
            "batches": int(len(batches)),
            "clip_ms_median": round(float(np.median(v["clip_seconds"])) * 1000, 3) if v["clip_seconds"] else None,
            "score_mean": round(float(np.mean(v["scores"])), 4),
        }
    return {"config": {**asdict(config), "opponents": list(config.opponents)}, "variants": summary}


def render(doc: dict[str, Any]) -> str:
    c = doc["config"]
    lines = [f"bench agent: {c['worlds']} worlds x {c['steps']} steps (same configurations for every variant)", ""]
    lines += md_table(
        ["variant", "world s (total)", "ratio to PenguinAgent", "batch ms median", "batch ms p99", "clip_batch ms median",
         "batches", "score"],
        [[name, v["world_seconds_total"], v["ratio_to_penguin"], v["batch_ms_median"], v["batch_ms_p99"], v["clip_ms_median"],
          v["batches"], v["score_mean"]]
         for name, v in doc["variants"].items()],
    )
    return "\n".join(lines)
