"""Content fingerprints of artifacts, code versions of stages, and the Prefect cache policy built on them.

A fingerprint is a sha256 over the *bytes* of an artifact's files (streamed
with `hashlib.file_digest`), never over names, sizes or modification times
alone. Files are grouped in units (a raw world, a converted world, a per-world
table file, or the whole directory), so a stage can tell which units changed;
a unit that is not complete yet (no ``DONE`` / ``_SUCCESS``) and temporary
files (a leading ``.``, a ``.tmp`` suffix) do not count, and neither does the
pipeline's own ``_STAGE.json`` marker.

Within one process a file already read is not read again while its inode,
size, mtime and ctime stay the same: every run still reads every byte once.

The cache key of a stage (`stage_key`) is the sha256 of its recipe (stage
name, its config as canonical JSON, the code version) and the fingerprints of
its input artifacts; `StageInputsPolicy` (a Prefect cache policy) computes it for a stage task.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import hashlib
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: top-level packages of this project; imports of anything else count through DISTRIBUTIONS
PROJECT_PACKAGES = ("hrlxf_agent", "hrlxf_models", "tasks", "schemas", "flows")
#: third-party releases whose behaviour the stages' outputs depend on
DISTRIBUTIONS = ("scml", "negmas", "scml-agents", "numpy", "pyarrow", "polars", "torch", "lightning")
MARKER = "_STAGE.json"

_digests: dict[tuple, str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, streamed (remembered in this process while the file's stat is unchanged)."""
    st = path.stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    digest = _digests.get(key)
    if digest is None:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        _digests[key] = digest
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


def units(root: Path, layout: Layout = WHOLE) -> dict[str, str]:
    """{unit path relative to root: content digest} of an artifact; {} when it does not exist."""
    root = Path(root)
    if not root.exists():
        return {}
    if root.is_file():
        return {".": file_digest(root)}
    if layout.depth == 0:
        return {".": _tree_digest(root, layout.skip)}
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


# ------------------------------------------------------------------------- configs and code


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


def _module_path(name: str) -> Path | None:
    """The source file of a project module, found by path (nothing is imported)."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _imports(path: Path, name: str) -> set[str]:
    """Every module a file imports (at module level or inside functions), relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return found


def module_closure(roots: list[str]) -> dict[str, Path]:
    """The project modules ``roots`` import, transitively, with their parent packages."""
    seen: dict[str, Path] = {}
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        path = _module_path(name)
        if path is None:
            continue
        seen[name] = path
        parts = name.split(".")
        stack.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        stack.extend(_imports(path, name))
    return seen


def code_version(modules: list[str]) -> dict[str, Any]:
    """What a stage's outputs depend on in code: the bytes of every project module it reaches and the
    releases of DISTRIBUTIONS. ``digest`` changes when any of them does."""
    files = {p.relative_to(ROOT).as_posix(): file_digest(p) for p in module_closure(modules).values()}
    versions = {}
    for dist in DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    digest = hashlib.sha256(canonical({"files": files, "versions": versions}).encode()).hexdigest()
    return {"digest": digest, "files": sorted(files), "versions": versions}


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
