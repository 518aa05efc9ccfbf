"""Benchmark: what tracking costs. The same worlds (same configuration and seeds) are played
untracked and with every agent tracked, one after the other in this process."""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hrlxf_agent.registry import resolve_all
from tasks.collect import WINNERS
from tasks.report import md_table


@dataclass(frozen=True)
class Config:
    worlds: int = 4
    steps: int = 50
    seed: int = 0
    experts: tuple[str, ...] = WINNERS


def _play(seed: int, steps: int, types: list[type]) -> float:
    from scml.std import SCML2024StdWorld

    random.seed(seed)
    np.random.seed(seed)
    config = SCML2024StdWorld.generate(agent_types=types, n_steps=steps)
    random.seed(seed)
    np.random.seed(seed)
    world = SCML2024StdWorld(**config, construct_graphs=False)
    t0 = time.perf_counter()
    world.run()
    seconds = time.perf_counter() - t0
    for adapter in world.agents.values():
        obj = getattr(adapter, "_obj", None)
        if obj is not None and hasattr(obj, "hook"):
            obj.hook().close()
    return seconds


def run_bench(config: Config) -> dict[str, Any]:
    from hrlxf_agent.tracker import tracked

    classes = resolve_all(list(config.experts))
    plain = [classes[n] for n in config.experts]
    untracked, with_tracker, size = 0.0, 0.0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for w in range(config.worlds):
            seed = config.seed * 1000 + w
            untracked += _play(seed, config.steps, plain)
            logs = Path(tmp) / f"w{w}"
            with_tracker += _play(seed, config.steps, [tracked(c, logs) for c in plain])
            size += sum(f.stat().st_size for f in logs.glob("*.jsonl"))
    return {
        "config": {**asdict(config), "experts": list(config.experts)},
        "untracked_seconds": round(untracked, 2),
        "tracked_seconds": round(with_tracker, 2),
        "ratio": round(with_tracker / untracked, 3),
        "bytes_per_world_step": round(size / (config.worlds * config.steps), 1),
    }


def render(doc: dict[str, Any]) -> str:
    c = doc["config"]
    head = f"bench tracker: {c['worlds']} worlds x {c['steps']} steps, every agent tracked vs none"
    rows = [[doc["untracked_seconds"], doc["tracked_seconds"], doc["ratio"], doc["bytes_per_world_step"]]]
    return "\n".join([head, ""] + md_table(["untracked s", "tracked s", "ratio", "log bytes per world-step"], rows, left=0))
