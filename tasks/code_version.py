"""The code version of a stage: the bytes of the project modules its code really runs, and the releases it uses.

`module_closure` finds those modules by reading their sources (nothing is imported), from a stage's own
modules, at two levels of reach (`_closure`):

- LOADED: a module is imported but nothing of it is called (a parent package, a module only a literal
  constant or a submodule is taken from). What counts is what its module-level code runs: its module-level
  imports, and the bodies of its own functions and constructors that code calls or uses as decorators.
- USED: a module whose functions may run. Every import in it counts, at module level or inside functions (the
  stages and agents import lazily on purpose), and so does every string naming a project module
  (``"hrlxf_agent.penguin:LitaAgentH"``: the agent registry's dynamic imports).

So an edit to a module no code of a stage reaches leaves its code version alone (an edit to
``hrlxf_agent/penguin.py`` recomputes only the stages that can play that agent). The limits: imports of
computed names (``importlib.import_module(f"...{x}")``) are not seen; a module's ``__getattr__`` counts
wherever one of its attributes that is not a submodule is imported, all of its lazy imports at once; a USED
module counts every import in it, also those of functions the stage never calls. Third-party code counts only
through the releases of DISTRIBUTIONS.
"""

from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tasks.digest_cache import flush_digests
from tasks.fingerprint import canonical, file_digest

ROOT = Path(__file__).resolve().parents[1]
#: top-level packages of this project; imports of anything else count through DISTRIBUTIONS
PROJECT_PACKAGES = ("hrlxf_agent", "hrlxf_models", "hrlxf_rl", "hrlxf_analyzer", "tasks", "schemas", "flows")
#: third-party releases whose behaviour the stages' outputs depend on
DISTRIBUTIONS = ("scml", "negmas", "scml-agents", "numpy", "pyarrow", "polars", "torch", "lightning")

#: how far a module is reached: its module-level code runs (LOADED: it is imported), or its functions may
#: run too (USED: a module that reached it calls into it)
LOADED, USED = 1, 2
_DUNDER_RUN = ("__init__", "__post_init__", "__new__", "__init_subclass__", "__set_name__", "__class_getitem__")
_MODULE_REF = re.compile(r"[A-Za-z_]\w*(?:\.\w+)+(?::\w+)?")


def _module_path(name: str) -> Path | None:
    """The source file of a project module, found by path (nothing is imported)."""
    if not name or name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


class _Names(ast.NodeVisitor):
    """The names a piece of code loads and the import statements in it; ``calls_only``: function bodies are
    left out (what runs when a module is imported), decorators and default values are not."""

    def __init__(self, calls_only: bool) -> None:
        self.calls_only = calls_only
        self.names: set[str] = set()
        self.imports: list[ast.Import | ast.ImportFrom] = []

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.names.add(node.id)

    def visit_Import(self, node: ast.Import) -> None:
        self.imports.append(node)

    visit_ImportFrom = visit_Import  # type: ignore[assignment]

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        if not isinstance(node, ast.Lambda):
            for d in node.decorator_list:
                self.visit(d)
        for d in [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]:
            self.visit(d)
        if not self.calls_only:
            for stmt in (node.body if isinstance(node.body, list) else [node.body]):
                self.visit(stmt)

    visit_FunctionDef = visit_AsyncFunctionDef = _function  # type: ignore[assignment]

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._function(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:  # annotations call nothing
        if node.value is not None:
            self.visit(node.value)

    def visit_arg(self, node: ast.arg) -> None:
        pass


def _scan(nodes: list[ast.AST], calls_only: bool) -> _Names:
    v = _Names(calls_only)
    for n in nodes:
        v.visit(n)
    return v


@dataclass
class _Source:
    """What the closure needs of one project module's source."""

    name: str
    path: Path
    package: str  # the package relative imports start from
    defs: dict[str, ast.AST]  # top-level functions and classes by name
    constants: set[str]  # top-level names bound to literals only (their use runs no code)
    bindings: dict[str, tuple[str, str | None]]  # top-level import bindings: name -> (module, attribute or None)
    on_import: _Names  # what runs when the module is imported (module-level code and what it calls here)
    everything: _Names  # every import anywhere, every name loaded
    strings: set[str]  # string literals that name a project module ("pkg.module:Class": the registry's imports)


_sources: dict[tuple, _Source] = {}


def _literal(node: ast.AST) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def _import_refs(node: ast.Import | ast.ImportFrom, package: str) -> tuple[list[str], dict[str, tuple[str, str | None]]]:
    """The modules an import statement loads and the names it binds (-> (module, attribute or None))."""
    loads: list[str] = []
    binds: dict[str, tuple[str, str | None]] = {}
    if isinstance(node, ast.Import):
        for a in node.names:
            loads.append(a.name)
            binds[a.asname or a.name.split(".")[0]] = (a.name, None)  # ``import a.b``: a.b is what is used
        return loads, binds
    if node.level:
        base = package.split(".")
        base = base[: len(base) - node.level + 1]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    loads.append(mod)
    for a in node.names:
        if a.name == "*":
            binds["*"] = (mod, None)
        else:
            if _module_path(f"{mod}.{a.name}") is not None:
                loads.append(f"{mod}.{a.name}")
            binds[a.asname or a.name] = (mod, a.name)
    return loads, binds


def _source(name: str, path: Path) -> _Source:
    st = path.stat()
    key = (str(path), name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key in _sources:
        return _sources[key]
    tree = ast.parse(path.read_bytes(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    defs: dict[str, ast.AST] = {}
    constants: set[str] = set()
    bindings: dict[str, tuple[str, str | None]] = {}
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs[stmt.name] = stmt
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None and _literal(stmt.value):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for t in targets:
                constants.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            bindings.update(_import_refs(stmt, package)[1])
    # what runs on import: module-level code, and the bodies of this module's functions it names (called at
    # import, or decorators) and of the constructors of its classes it names
    on_import = _scan(tree.body, calls_only=True)
    done: set[str] = set()
    while todo := [n for n in on_import.names if n in defs and n not in done]:
        for n in todo:
            done.add(n)
            d = defs[n]
            if isinstance(d, ast.ClassDef):
                body = [s for s in d.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.name in _DUNDER_RUN]
                more = _scan([s for f in body for s in f.body], calls_only=False)
            else:
                more = _scan(d.body, calls_only=False)
            on_import.names |= more.names
            on_import.imports += more.imports
    strings = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and _MODULE_REF.fullmatch(n.value) \
                and n.value.split(".")[0] in PROJECT_PACKAGES:
            strings.add(n.value)
    src = _Source(name, path, package, defs, constants, bindings, on_import, _scan(tree.body, calls_only=False), strings)
    _sources[key] = src
    return src


def _string_ref(text: str) -> tuple[str, str | None] | None:
    """``"pkg.module:Class"`` or ``"pkg.module.Class"`` or ``"pkg.module"`` -> (module, attribute or None)."""
    dotted, _, attr = text.partition(":")
    if attr:
        return (dotted, attr) if _module_path(dotted) else None
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        mod = ".".join(parts[:i])
        if _module_path(mod):
            return mod, (parts[i] if i < len(parts) else None)
    return None


def _closure(roots: list[str]) -> dict[str, int]:
    """{project module: LOADED or USED} for a stage whose code is ``roots`` (each USED).

    A module LOADED (imported, nothing of it called: its parent packages, a module only a constant is taken
    from) counts what its module-level code runs: its module-level imports (LOADED) and the project names
    that code uses. A module USED counts every import in it (module level or inside functions: the stages
    and the agents import lazily on purpose), each USED unless only a literal constant or a submodule is
    taken from it, and every string naming a project module (``"hrlxf_agent.penguin:LitaAgentH"``: the
    registry's dynamic imports). So a package's lazy ``__getattr__`` counts only where one of its
    attributes that is not a submodule is imported. Dynamic imports of computed names are not seen.
    """
    level: dict[str, int] = {}
    stack: list[tuple[str, int]] = [(r, USED) for r in roots]

    def use(ref: tuple[str, str | None], depth: int = 0) -> None:
        mod, attr = ref
        path = _module_path(mod)
        if path is None:
            return
        if attr is None:
            stack.append((mod, USED))
            return
        if _module_path(f"{mod}.{attr}") is not None:
            stack.append((f"{mod}.{attr}", USED))
            return
        src = _source(mod, path)
        stack.append((mod, LOADED))
        if attr in src.constants:
            return
        if attr in src.bindings and attr not in src.defs and depth < 20:  # a re-export: follow it
            use(src.bindings[attr], depth + 1)
            return
        stack.append((mod, USED))  # a function, a class, a computed value, or one the module's __getattr__ makes

    while stack:
        name, want = stack.pop()
        if level.get(name, 0) >= want:
            continue
        path = _module_path(name)
        if path is None:
            continue
        level[name] = want
        parts = name.split(".")
        stack.extend((".".join(parts[:i]), LOADED) for i in range(1, len(parts)))
        src = _source(name, path)
        code = src.everything if want == USED else src.on_import
        for node in code.imports:
            loads, binds = _import_refs(node, src.package)
            stack.extend((m, LOADED) for m in loads)
            for local, ref in binds.items():
                if want == USED or local == "*" or local in code.names:
                    use(ref)
        if want == USED:
            for text in src.strings:
                ref = _string_ref(text)
                if ref is not None:
                    use(ref)
    return level


def module_closure(roots: list[str]) -> dict[str, Path]:
    """The project modules a stage whose code is ``roots`` runs (see `_closure`), with their source files."""
    return {name: p for name in sorted(_closure(roots)) if (p := _module_path(name)) is not None}


def code_version(modules: list[str]) -> dict[str, Any]:
    """What a stage's outputs depend on in code: the bytes of every project module it reaches and the
    releases of DISTRIBUTIONS. ``digest`` changes when any of them does."""
    files = {p.relative_to(ROOT).as_posix(): file_digest(p) for p in module_closure(modules).values()}
    flush_digests()
    versions = {}
    for dist in DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    digest = hashlib.sha256(canonical({"files": files, "versions": versions}).encode()).hexdigest()
    return {"digest": digest, "files": sorted(files), "versions": versions}
