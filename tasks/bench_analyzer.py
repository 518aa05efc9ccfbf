"""Benchmark: how long each analyzer view takes to render on the server, on a real data root.

Each page is drawn by its view's ``render`` (what the routing callback calls) plus, for the replay, one step
of its slider callback; the first world, the first tracked evaluation world and the first audit decision are
picked from the data root. The first render (which converts a paired world into the cache) is reported
apart; the median of the next ``runs`` is the figure the target (< 1 s) is about.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks.report import md_table


@dataclass(frozen=True)
class Config:
    data: str = "data"
    runs: int = 5


def pages(store: Any) -> list[tuple[str, str, dict[str, str]]]:
    """(name, path, params) of every view worth timing on this data root."""
    from hrlxf_analyzer import data as D

    root = store.root
    out = [("overview", "/", {}), ("training", "/training", {})]
    from tasks.events import converted

    lake = converted(root / "lake" / "events")
    if lake:
        spec = f"lake:{lake[0].parent.name}/{lake[0].name}"
        out += [("world (collection)", "/world", {"world": spec, "day": "10"}),
                ("replay (collection)", "/replay", {"world": spec})]
    for path in D.evaluations(root):
        _, worlds = D.eval_worlds(root, path, D._json(path))
        ours = worlds.filter(D.pl.col("world_spec").is_not_null() & (D.pl.col("agent") == D.HRL_CLASS))["world_spec"].to_list()
        if ours:
            out += [("world (evaluation, ours)", "/world", {"world": ours[0], "day": "10"}),
                    ("replay (evaluation, ours)", "/replay", {"world": ours[0]})]
            break
    if (D.audit_dir(root) / "audit.json").exists():
        out.append(("decisions", "/decisions", {}))
        flagged = D.audit_decisions(root).filter(D.pl.col("world_spec").is_not_null())
        if flagged.height:
            r = flagged.row(0, named=True)
            out.append(("replay (audit decision)", "/replay", {"world": r["world_spec"], "agent": r["agent_id"],
                                                               "day": str(r["step"]), "partner": r["partner"]}))
    return out


def run_bench(config: Config) -> dict[str, Any]:
    from hrlxf_analyzer.app import render_page
    from hrlxf_analyzer.data import Store
    from hrlxf_analyzer.views.common import message

    root = Path(config.data)
    if not root.is_dir():
        raise ValueError(f"no data root at {root}")
    store = Store(root)
    results = []
    for name, path, params in pages(store):
        t = time.perf_counter()
        first = render_page(store, path, params)
        first_s = time.perf_counter() - t
        times = []
        for _ in range(config.runs):
            t = time.perf_counter()
            render_page(store, path, params)
            times.append(time.perf_counter() - t)
        shown_message = type(first) is type(message("")) and isinstance(first.children, str)
        results.append({"view": name, "path": path, "params": params, "first_seconds": round(first_s, 3),
                        "median_seconds": round(statistics.median(times), 3), "max_seconds": round(max(times), 3),
                        "message": first.children if shown_message else None})
    return {"config": asdict(config), "results": results}


def render(doc: dict[str, Any]) -> str:
    rows = [[r["view"], r["first_seconds"], r["median_seconds"], r["max_seconds"], r["message"] or ""] for r in doc["results"]]
    return "\n".join([f"bench analyzer: server-side render per view on {doc['config']['data']} "
                      f"(median of {doc['config']['runs']})", ""]
                     + md_table(["view", "first s", "median s", "max s", "message"], rows))
