"""Benchmark: the trainings' loaders (L2's macro, L3's micro, L4's l4_distill) at 1x, 4x and 16x a lake.

4x and 16x are copies of every world of the lake, each copy under its own run id (``<run>-c00``,
``<run>-c01``, ...: the run id is rewritten in the rows, so the copies are distinct worlds to the split and
the joins), written to a temporary lake beside the tables they need (macro, micro, l4_distill, goal_hat and
the events' agents tables). Each loader runs in a fresh process, its rows held in memory (``memory``) or
memory-mapped in files filled world by world (``mapped``, what the trainings do: `training.RowStore`), and
reports its seconds, its peak resident memory (``ru_maxrss``: mapped file pages count in it) and the
anonymous memory it holds once loaded (``RssAnon``: what the kernel cannot page out to the files).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.report import md_table

#: the tables the loaders read, each per world: <lake>/<table>/<run>/<world>.parquet
TABLES = ("macro", "micro", "l4_distill", "goal_hat")
LOADERS = ("l2", "l3", "l4")

_CHILD = """
import json, resource, sys, tempfile, time
from pathlib import Path
loader, lake, mapped = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "mapped"
with tempfile.TemporaryDirectory(dir=lake) as tmp:
    store = Path(tmp) if mapped else None
    t = time.perf_counter()
    if loader == "l2":
        from tasks.train_l2 import L2Config, load_macro
        from hrlxf_agent.state import FeatureSpec
        c = L2Config()
        rows = len(load_macro(lake, FeatureSpec(), c.fit, c.min_relative_score, store).keys)
    elif loader == "l3":
        from tasks.train_l3 import L3Config, load_micro
        from hrlxf_agent.state import FeatureSpec
        rows = len(load_micro(lake, FeatureSpec(), L3Config(), store)[2])
    else:
        from tasks.train_l4 import L4Config, load_l4
        rows = len(load_l4(lake, L4Config(), store)[2])
    seconds = time.perf_counter() - t
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "anon_mb": int(status["RssAnon"].split()[0]) / 1024}))
"""


@dataclass(frozen=True)
class Config:
    lake: str = "data/lake"
    scales: tuple[int, ...] = (1, 4, 16)
    loaders: tuple[str, ...] = LOADERS


def _with_run_id(table: pa.Table, run_id: str) -> pa.Table:
    i = table.schema.get_field_index("run_id")
    field = table.schema.field(i)
    return table.set_column(i, field, pa.array([run_id] * table.num_rows, field.type))


def scaled_lake(src: Path, dst: Path, copies: int) -> None:
    """``copies`` copies of every world of the lake ``src`` in ``dst``, each copy of a run under its own run id."""
    for c in range(copies):
        for table in TABLES:
            for f in sorted((src / table).glob("*/*.parquet")):
                run = f"{f.parent.name}-c{c:02d}"
                out = dst / table / run / f.name
                out.parent.mkdir(parents=True, exist_ok=True)
                t = pq.read_table(f)
                pq.write_table(_with_run_id(t, run).replace_schema_metadata(t.schema.metadata), out)
        for f in sorted((src / "events").glob("*/*/agents.parquet")):
            run = f"{f.parent.parent.name}-c{c:02d}"
            out = dst / "events" / run / f.parent.name / "agents.parquet"
            out.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(_with_run_id(pq.read_table(f), run), out)


def _child(loader: str, lake: Path, mode: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", _CHILD, loader, str(lake), mode], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"loader {loader} ({mode}) on {lake} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_bench(config: Config) -> dict[str, Any]:
    src = Path(config.lake)
    missing = [t for t in TABLES if not any((src / t).glob("*/*.parquet"))]
    if missing:
        raise ValueError(f"{src}: no {', '.join(missing)} tables (run `hrlxf run` or the tables, train_l2 and "
                         f"backfill stages first)")
    results = []
    for scale in config.scales:
        with tempfile.TemporaryDirectory() as tmp:
            lake = Path(tmp) / "lake"
            scaled_lake(src, lake, scale)
            for loader in config.loaders:
                for mode in ("memory", "mapped"):
                    r = _child(loader, lake, mode)
                    results.append({"loader": loader, "scale": f"{scale}x", "mode": mode, "rows": r["rows"],
                                    "seconds": round(r["seconds"], 2), "peak_mb": round(r["peak_mb"]),
                                    "anon_mb": round(r["anon_mb"])})
    return {"config": asdict(config), "results": results}


def render(doc: dict[str, Any]) -> str:
    rows = [[r["loader"], r["scale"], r["mode"], r["rows"], r["seconds"], r["peak_mb"], r["anon_mb"]]
            for r in doc["results"]]
    return "\n".join(["bench loading: the trainings' loaders, rows in memory or memory-mapped world by world", ""]
                     + md_table(["loader", "scale", "mode", "rows", "seconds", "peak MB", "anonymous MB after loading"],
                                rows, left=3))
