"""Benchmark: the tables stages on collected data, at 1x, 2x and 4x the data.

Takes the first quarter, half and all of a collected run's complete worlds
(linked into fresh raw directories), runs events -> macro -> micro -> l4_distill on each
from scratch in a child process, and reports events per second and the child's
peak memory: work per world should stay flat as the data grows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks.report import md_table

_CHILD = """
import json, resource, sys, time
from pathlib import Path
from tasks.events import run_events
from tasks.l4_distill import build_l4_distill
from tasks.micro import build_micro
from tasks.tables import build_macro
raw, lake = Path(sys.argv[1]), Path(sys.argv[2])
t = time.perf_counter()
run_events(raw, lake); build_macro(lake); build_micro(lake); build_l4_distill(lake)
print(json.dumps({"seconds": time.perf_counter() - t, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@dataclass(frozen=True)
class Config:
    raw: str = "data/raw"
    run_id: str = "default"


def run_bench(config: Config) -> dict[str, Any]:
    worlds = sorted(p.parent for p in (Path(config.raw) / config.run_id).glob("*/DONE"))
    if len(worlds) < 4:
        raise ValueError(f"{Path(config.raw) / config.run_id}: needs at least 4 complete worlds (run hrlxf collect first)")
    results = []
    for share in (4, 2, 1):
        chosen = worlds[: len(worlds) // share]
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw" / "bench"
            raw.mkdir(parents=True)
            for w in chosen:
                (raw / w.name).symlink_to(w.resolve(), target_is_directory=True)
            events = sum(json.loads((w / "DONE").read_text())["events"] for w in chosen)
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", _CHILD, str(Path(tmp) / "raw"), str(Path(tmp) / "lake")],
                                 check=True, capture_output=True, text=True)
            child = json.loads(out.stdout.strip().splitlines()[-1])
            results.append({"scale": f"{4 // share}x", "worlds": len(chosen), "events": events,
                            "seconds": round(child["seconds"], 2), "events_per_second": round(events / child["seconds"]),
                            "seconds_per_world": round(child["seconds"] / len(chosen), 3),
                            "peak_mb": round(child["peak_mb"]), "wall_seconds": round(time.perf_counter() - t, 2)})
    return {"config": asdict(config), "results": results}


def render(doc: dict[str, Any]) -> str:
    rows = [[r["scale"], r["worlds"], r["events"], r["seconds"], r["events_per_second"], r["seconds_per_world"], r["peak_mb"]]
            for r in doc["results"]]
    return "\n".join(["bench tables: events -> macro -> micro -> l4_distill from scratch", ""] + md_table(
        ["scale", "worlds", "events", "seconds", "events / s", "s / world", "peak MB"], rows))
