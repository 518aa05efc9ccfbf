"""Benchmark: a data root synced with an object store (`tasks.store`), beside fsspec's own copy of the same tree.

On a copy of a data root (its synced files: not Prefect's local home) and an S3 endpoint (``AWS_ENDPOINT_URL``
if set, else moto's server on loopback, started for the run: then the figures are moto's speed as much as the
sync's), timed in this process:

- ``copy``: fsspec's recursive ``put`` of the tree into a fresh prefix, the baseline;
- ``push``: `StoreRoot.push` of the mirror into another fresh prefix (every file new);
- ``push, nothing new``: what a run pays at its end when it changed nothing (a listing, a stat per file);
- ``pull``: into an empty mirror (a new host);
- ``pull, nothing new``: what a run pays at its start when the store has nothing new.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from tasks.report import md_table
from tasks.store import StoreRoot, _local_only


@dataclass(frozen=True)
class Config:
    data: str = "data"
    bucket: str = "hrlxf-bench"


@contextmanager
def _endpoint() -> Iterator[str]:
    if os.environ.get("AWS_ENDPOINT_URL"):
        yield os.environ["AWS_ENDPOINT_URL"]
        return
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield f"{env['AWS_ENDPOINT_URL']} (moto, in this process)"
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        server.stop()


def _timed(rows: list[dict], what: str, files: int, size: int, fn: Any) -> dict:
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    rows.append({"step": what, "files": files, "mb": round(size / 2**20, 1), "seconds": round(seconds, 3),
                 "mb_per_s": round(size / 2**20 / seconds, 1) if size else None, "result": out})
    return rows[-1]


def run_bench(config: Config) -> dict[str, Any]:
    import fsspec

    source = Path(config.data)
    rows: list[dict] = []
    with _endpoint() as endpoint, tempfile.TemporaryDirectory(prefix="hrlxf-bench-store-") as tmp:
        a, b = Path(tmp) / "a", Path(tmp) / "b"
        shutil.copytree(source, a, ignore=lambda d, names: [
            n for n in names if _local_only((Path(d) / n).relative_to(source).as_posix())])
        files = [p for p in a.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        if not fs.exists(config.bucket):
            fs.mkdir(config.bucket)
        run = uuid.uuid4().hex[:8]
        _timed(rows, "copy (fsspec put, the baseline)", len(files), size,
               lambda: fs.put(str(a), f"{config.bucket}/{run}-copy", recursive=True) and None)
        url = f"s3://{config.bucket}/{run}-sync"
        store = StoreRoot(url, str(a.resolve()))
        _timed(rows, "push (every file new)", len(files), size, store.push)
        _timed(rows, "push, nothing new", 0, 0, store.push)
        store = StoreRoot(url, str(b.resolve()))
        _timed(rows, "pull (an empty mirror)", len(files), size, store.pull)
        _timed(rows, "pull, nothing new", 0, 0, store.pull)
    base = rows[0]["seconds"]
    for r in rows:
        r["vs_copy"] = round(r["seconds"] / base, 2)
    return {"config": asdict(config), "endpoint": endpoint, "files": len(files), "mb": round(size / 2**20, 1),
            "rows": rows}


def render(doc: dict[str, Any]) -> str:
    lines = [f"store sync of {doc['config']['data']} ({doc['files']} files, {doc['mb']} MB) with {doc['endpoint']}", ""]
    lines += md_table(["step", "files", "MB", "seconds", "MB/s", "seconds / copy's"],
                      [[r["step"], r["files"], r["mb"], r["seconds"], r["mb_per_s"] or "", r["vs_copy"]]
                       for r in doc["rows"]])
    return "\n".join(lines)
