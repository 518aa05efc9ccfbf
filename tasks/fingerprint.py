"""Content fingerprints of artifacts, and the Prefect cache policy of a stage built on them.

A fingerprint is a sha256 over the *bytes* of an artifact's files (streamed
with `hashlib.file_digest`), never over names, sizes or modification times
alone. Files are grouped in units (a raw world, a converted world, a per-world
table file, or the whole directory), so a stage can tell which units changed;
a unit that is not complete yet (a raw world without ``DONE``) and temporary
files (a leading ``.``, a ``.tmp`` suffix: a unit renamed into place is whole) do not count, and neither does the
pipeline's own ``_STAGE.json`` marker.

A file already read is not read again while its path, inode, size, mtime and
ctime stay the same (`tasks.digest_cache`: in this process and on disk, so a
second ``hrlxf`` process reads only the files that changed).

The cache key of a stage (`stage_key`) is the sha256 of its recipe (stage
name, its config as canonical JSON, its code version: `tasks.code_version`)
and the fingerprints of its input artifacts; `StageInputsPolicy` (a Prefect
cache policy) computes it for a stage task.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import digest_cache
from tasks.digest_cache import digest_cache_path, flush_digests, stats

MARKER = "_STAGE.json"


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, streamed; remembered while the file's path, inode, size, mtime and ctime stay the
    same, in this process and across processes (`tasks.digest_cache`)."""
    path = Path(path)
    st = path.stat()
    key = (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    digest = digest_cache.recall(key)
    if digest is None:
        read_at = time.time_ns()
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        stats["read"] += 1
        stats["bytes"] += st.st_size
        digest_cache.remember(key, digest, read_at, path.stat())
    return digest


@dataclass(frozen=True)
class Layout:
    """Which files of an artifact directory count, grouped in units.

    ``depth`` 0: the whole directory is one unit; otherwise every entry
    ``depth`` levels down is a unit (a directory counts only once it holds
    ``marker``; a file only with ``suffix``). ``extra``: top-level files that
    count as units of their own; ``skip``: top-level names that never count.
    """

    depth: int = 0
    marker: str | None = None
    suffix: str | None = None
    extra: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()


WHOLE = Layout()


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.endswith(".tmp") or name == MARKER


def _files(root: Path) -> list[Path]:
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if any(_ignored(part) for part in rel):
            continue
        if p.is_file():
            out.append(p)
    return out


def _tree_digest(root: Path, skip: tuple[str, ...] = ()) -> str:
    h = hashlib.sha256()
    for f in _files(root):
        rel = f.relative_to(root).as_posix()
        if rel.split("/", 1)[0] in skip:
            continue
        h.update(f"{rel}\0{file_digest(f)}\n".encode())
    return h.hexdigest()


def digest_of(path: Path) -> str:
    """The content digest of one file's bytes, or of a directory's files (as a unit of `units`)."""
    path = Path(path)
    return _tree_digest(path) if path.is_dir() else file_digest(path)


def relative_digests(root: Path, *paths: Path) -> dict[str, str]:
    """{path relative to ``root``: `digest_of`} of files just written under it (a unit record's outputs);
    not resolved, so a directory of ``root`` that is a symlink to another disk still counts as under it."""
    out = {Path(os.path.relpath(os.path.abspath(p), os.path.abspath(root))).as_posix(): digest_of(p) for p in paths}
    flush_digests()
    return out


def units(root: Path, layout: Layout = WHOLE) -> dict[str, str]:
    """{unit path relative to root: content digest} of an artifact; {} when it does not exist."""
    root = Path(root)
    if not root.exists():
        return {}
    if root.is_file():
        out = {".": file_digest(root)}
    elif layout.depth == 0:
        out = {".": _tree_digest(root, layout.skip)}
    else:
        out = _unit_digests(root, layout)
    flush_digests()
    return out


def _unit_digests(root: Path, layout: Layout) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in sorted(root.glob("/".join(["*"] * layout.depth))):
        rel = p.relative_to(root)
        if any(_ignored(part) for part in rel.parts) or rel.parts[0] in layout.skip:
            continue
        if p.is_dir():
            if layout.suffix is None and (layout.marker is None or (p / layout.marker).exists()):
                out[rel.as_posix()] = _tree_digest(p)
        elif layout.suffix is not None and p.name.endswith(layout.suffix) and layout.marker is None:
            out[rel.as_posix()] = file_digest(p)
    for name in layout.extra:
        if (root / name).is_file():
            out[name] = file_digest(root / name)
    return out


def combine(parts: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(parts.items())).encode()).hexdigest()


def fingerprint(root: Path, layout: Layout = WHOLE) -> str:
    """The content fingerprint of an artifact (a fixed value when it does not exist)."""
    return combine(units(root, layout)) if Path(root).exists() else "absent"


# ------------------------------------------------------------------------- configs and cache keys


def jsonable(obj: Any) -> Any:
    """A config as plain JSON values (dataclasses by field, tuples as lists, enums by value)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__type__": type(obj).__name__, **{f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return jsonable(obj.value)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def canonical(obj: Any) -> str:
    return json.dumps(jsonable(obj), sort_keys=True, separators=(",", ":"), default=str)


def stage_key(recipe: str, inputs: dict[str, str]) -> str:
    """The cache key of a stage run: its recipe digest and the content fingerprints of its inputs."""
    return hashlib.sha256(canonical({"recipe": recipe, "inputs": inputs}).encode()).hexdigest()


def _stage_inputs_policy() -> type:
    from prefect.cache_policies import CachePolicy

    @dataclass
    class StageInputsPolicy(CachePolicy):
        """Prefect cache policy of a pipeline stage task: the task's ``call`` parameter names the stage's
        recipe (``call.recipe``) and input artifacts (``call.inputs``: {name: (path, Layout)}); the key is
        `stage_key` of the recipe and the inputs' content fingerprints, so it never depends on where the
        data lives, on the task's other parameters or on the flow run."""

        def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                        **kwargs: Any) -> str | None:
            call = inputs["call"]
            return stage_key(call.recipe, {name: fingerprint(Path(path), layout)
                                           for name, (path, layout) in call.inputs.items()})

    StageInputsPolicy.__module__, StageInputsPolicy.__qualname__ = __name__, "StageInputsPolicy"
    return StageInputsPolicy


def __getattr__(name: str) -> Any:
    """``StageInputsPolicy`` is built on first use: importing this module does not import Prefect (whose
    import creates PREFECT_HOME), so parameters are checked before anything is written."""
    if name == "StageInputsPolicy":
        globals()[name] = _stage_inputs_policy()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":  # python -m tasks.fingerprint PATH...: each artifact's fingerprint, what it took
    import sys

    for arg in sys.argv[1:]:
        t0, before = time.perf_counter(), dict(stats)
        digest = fingerprint(Path(arg))
        print(f"{arg}: {digest[:16]} in {time.perf_counter() - t0:.2f} s; read {stats['read'] - before['read']} files "
              f"({(stats['bytes'] - before['bytes']) / 1e6:.1f} MB), {stats['cached'] - before['cached']} from the "
              f"digest cache {digest_cache_path()}")
