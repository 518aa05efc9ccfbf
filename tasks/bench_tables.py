"""Benchmark: the tables stages on collected data, at 1x, 4x and 16x the data.

1x is every complete world of a collected run; 4x and 16x link each of those worlds
4 and 16 times under new names (``w0000-c00``, ``w0000-c01``, ...) into a fresh raw
directory, so the lake holds 4 and 16 times as many worlds (the same logs, each
converted and built again: work per world is that of a real collection of that size).
For each scale a child process runs events -> macro -> micro -> l4_distill from scratch
and reports its time (wall and CPU: the machine may be shared) and its peak memory
(``ru_maxrss`` of the child, and ``unit_peak_mb``: the largest of the worker processes', each world's unit
reporting its own, shared pages with the fork server included): time should grow linearly with the worlds
and memory stay flat. This code maps the worlds on ``workers`` processes (the stages' own mapping); its CPU
seconds add the workers' (each world's unit reports its CPU time).

``baseline``: a checkout of older code (``git worktree add /tmp/base <commit>``) whose
tables stages are timed the same way, in the same run, at ``baseline_scales`` (the old
code may be too slow for 16x); each of its rows comes right after this code's at the
same scale, and ``speedup`` is its seconds over this code's. The baseline runs in one process
(the stages' API before they were mapped) unless ``baseline_mapped``: then it runs this code's script
on ``workers`` (a checkout that maps its worlds, e.g. the mapper before `tasks.parallel.run_jobs` made
every unit a Prefect task). CPU seconds count the helper processes too (the Prefect API's server).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks.report import md_table

#: this code: events and tables mapped on ``workers`` processes; CPU seconds are this process's and, when the
#: worlds ran in worker processes, theirs (each unit reports its own CPU time and peak memory)
_CHILD = """
import contextlib, json, resource, sys, time
from pathlib import Path
import psutil
from tasks.events import run_events
try:
    from tasks.world_tables import build_tables
except ImportError:  # code from before the unit records
    from tasks.tables import build_tables
try:
    from tasks.parallel import prefect_api  # the units' tasks report to it, as in the pipeline (started untimed)
except ImportError:  # code from before the one mapper
    prefect_api = contextlib.nullcontext
raw, lake, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])

def helpers():  # CPU seconds of the processes that outlive the units: the API's server, the fork server
    return sum(sum(p.cpu_times()[:2]) for p in psutil.Process().children(recursive=True))

with prefect_api():
    t, c, h = time.perf_counter(), time.process_time(), helpers()
    units = [run_events(raw, lake, workers), build_tables(lake, workers=workers)]
    seconds = time.perf_counter() - t
    cpu = time.process_time() - c + helpers() - h + (sum(u["cpu_seconds"] for u in units) if workers > 1 else 0.0)
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "unit_peak_mb": max(u["unit_peak_mb"] for u in units),
                  "built": units[0]["converted"] + sum(units[1][t]["built"] for t in ("macro", "micro", "l4_distill"))}))
"""

#: older code (the baseline): one process, the API it had
_BASELINE_CHILD = """
import json, resource, sys, time
from pathlib import Path
from tasks.events import run_events
from tasks.l4_distill import build_l4_distill
from tasks.micro import build_micro
from tasks.tables import build_macro
raw, lake = Path(sys.argv[1]), Path(sys.argv[2])
t, c = time.perf_counter(), time.process_time()
run_events(raw, lake); build_macro(lake); build_micro(lake); build_l4_distill(lake)
print(json.dumps({"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@dataclass(frozen=True)
class Config:
    raw: str = "data/raw"
    run_id: str = "default"
    scales: tuple[int, ...] = (1, 4, 16)
    baseline: str | None = None  # a checkout of older code to time beside this one
    baseline_scales: tuple[int, ...] = (1,)
    workers: int = 2  # this code's worker processes (the baseline has one unless baseline_mapped)
    baseline_mapped: bool = False  # the baseline maps its worlds on ``workers`` too (this code's script)


def _link(worlds: list[Path], copies: int, raw: Path) -> None:
    """The worlds, each ``copies`` times under its own name, as a raw run directory."""
    raw.mkdir(parents=True)
    for w in worlds:
        for j in range(copies):
            name = w.name if copies == 1 else f"{w.name}-c{j:02d}"
            (raw / name).symlink_to(w.resolve(), target_is_directory=True)


def _child(code: Path | None, raw: Path, lake: Path, workers: int, one: bool) -> dict[str, Any]:
    """The tables stages on ``lake`` (from scratch the first time) in a fresh process, with this code or the checkout at ``code``: in
    ``one`` process (the baseline's old API), or mapped on ``workers`` with this code's script."""
    env = None if code is None else {**os.environ, "PYTHONPATH": str(code)}
    argv = ["-c", _BASELINE_CHILD, str(raw), str(lake)] if one else ["-c", _CHILD, str(raw), str(lake), str(workers)]
    out = subprocess.run([sys.executable, *argv], check=True, capture_output=True, text=True,
                         cwd=str(code) if code is not None else None, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_bench(config: Config) -> dict[str, Any]:
    worlds = sorted(p.parent for p in (Path(config.raw) / config.run_id).glob("*/DONE"))
    if len(worlds) < 1:
        raise ValueError(f"{Path(config.raw) / config.run_id}: no complete world (run hrlxf collect first)")
    events_1x = sum(json.loads((w / "DONE").read_text())["events"] for w in worlds)
    codes: list[tuple[str, Path | None, tuple[int, ...]]] = [("this", None, config.scales)]
    if config.baseline:
        codes.append(("baseline", Path(config.baseline).resolve(), config.baseline_scales))
    results = []
    for scale in config.scales:
        for name, code, scales in codes:
            if scale not in scales:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                _link(worlds, scale, Path(tmp) / "raw" / "bench")
                t = time.perf_counter()
                one = code is not None and not config.baseline_mapped
                child = _child(code, Path(tmp) / "raw", Path(tmp) / "lake", config.workers, one)
                wall = time.perf_counter() - t
                # the same again with nothing new: what deciding that every world is done costs (this code:
                # a unit record and a stat per file; before: a directory or a Parquet footer per file)
                rerun = _child(code, Path(tmp) / "raw", Path(tmp) / "lake", config.workers, one)
                n = len(worlds) * scale
                results.append({"code": name, "scale": f"{scale}x", "workers": 1 if one else config.workers,
                                "worlds": n, "events": events_1x * scale,
                                "seconds": round(child["seconds"], 2), "cpu_seconds": round(child["cpu_seconds"], 2),
                                "events_per_second": round(events_1x * scale / child["seconds"]),
                                "seconds_per_world": round(child["seconds"] / n, 3),
                                "peak_mb": round(child["peak_mb"]), "unit_peak_mb": round(child.get("unit_peak_mb", 0)),
                                "rerun_seconds": round(rerun["seconds"], 3), "rerun_built": rerun.get("built"),
                                "wall_seconds": round(wall, 2)})
    this = {r["scale"]: r for r in results if r["code"] == "this"}
    for r in results:
        if r["code"] == "baseline":
            r["speedup"] = round(r["seconds"] / this[r["scale"]]["seconds"], 2)
            r["cpu_speedup"] = round(r["cpu_seconds"] / this[r["scale"]]["cpu_seconds"], 2)
    return {"config": asdict(config), "results": results}


def render(doc: dict[str, Any]) -> str:
    rows = [[r["code"], r["scale"], r.get("workers", 1), r["worlds"], r["events"], r["seconds"], r["cpu_seconds"], r["events_per_second"],
             r["seconds_per_world"], r["peak_mb"], r.get("unit_peak_mb") or "", r.get("rerun_seconds", ""),
             r.get("speedup", "")]
            for r in doc["results"]]
    return "\n".join(["bench tables: events -> macro -> micro -> l4_distill from scratch, then again with nothing new "
                      "(rerun s)", ""] + md_table(
        ["code", "scale", "workers", "worlds", "events", "seconds", "CPU s", "events / s", "s / world", "peak MB",
         "worker peak MB", "rerun s", "baseline / this"], rows))
