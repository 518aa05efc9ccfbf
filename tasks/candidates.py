"""Candidates of an evaluation: bundles, their ablations, the rules, and any agent by name.

A candidate spec is one of:

- an agent name the registry resolves (``PenguinAgent``, ``AS0``, ``LitaAgentHS``, a dotted path);
- ``rules``: LitaAgentHRL with no bundle (the rule-based layers behind L1);
- ``untrained``, ``untrained:direct`` or ``untrained:rules``: LitaAgentHRL with an untrained bundle
  (written once to ``DATA/bundles/untrained-<variant>``). Its planner plans the rule goal and its
  coordinator gives the teacher's alpha (residuals starting at 0); its L3 plays L1's baseline
  (residual), random absolute offers (direct), or the rule executor's offers (rules: the whole
  agent is then the rules agent);
- a bundle: ``latest`` or a bundle directory;
- an ablation of a bundle, ``VARIANTS:BUNDLE`` with VARIANTS ``+``-joined from ``bc`` (its L3 before
  AWR), ``nol2`` (the rule goal in place of the planner) and ``nol4`` (the teacher alpha in place of
  the coordinator), e.g. ``bc:latest``, ``nol2+nol4:data/bundles/hrlxf-direct-...``.

Every spec is resolved (names imported, bundles loaded) before any world starts: a typo or a
bundle that does not load fails here, naming it.

A candidate's unit rows are keyed by what plays (`content_digest`), never by its label: the code of
its class (our packages `hrlxf_agent` and `hrlxf_models`; an expert's own package in scml-agents),
the content of its bundle (configs and weights, not the manifest's notes), its other parameters and
the releases of scml, negmas and scml-agents. After an edit to the agent's code the old rows are
not found, so they are played again; two labels that play the same thing share their rows.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from hrlxf_agent.registry import OWN_AGENTS, resolve

VARIANTS = {"bc": ("executor", "bc"), "nol2": ("ablate", "l2"), "nol4": ("ablate", "l4")}
HRL = "LitaAgentHRL"
#: our packages whose code decides how our agents play (a change to any of their files re-keys every row of ours)
OWN_PACKAGES = ("hrlxf_agent", "hrlxf_models")
#: releases every row depends on
LIBRARIES = ("scml", "negmas", "scml-agents")  # torch is pinned by pyproject.toml with the project's code


class CandidateError(ValueError):
    """A candidate spec that cannot be played; the message names it."""


@dataclass(frozen=True)
class Candidate:
    """What plays in the candidate slots: ``agent`` (a registry name) with ``params`` for its constructor."""

    label: str  # how reports name it (unique in an evaluation)
    spec: str  # what the user wrote
    agent: str
    params: dict[str, Any] = field(default_factory=dict)
    bundle: str | None = None  # the bundle directory (absolute), for LitaAgentHRL with a bundle
    expert: bool = False  # an agent of scml / scml-agents (not one of ours)
    content: str = ""  # `content_digest` of what plays ("" for candidates described by an old report)

    def key(self) -> str:
        """The file-name-safe id of a unit row: the content digest (what plays), or for a candidate of an
        older report without one, its label."""
        if self.content:
            return self.content[:16]
        return self.label.replace("/", "__").replace("+", "_").replace(":", "_")


def _tree_digest(root: Path, pattern: str = "*.py") -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob(pattern)):
        if "__pycache__" not in f.parts:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


@lru_cache(maxsize=None)
def package_digest(directory: str) -> str:
    """The digest of the Python sources under ``directory`` (a package's code)."""
    return _tree_digest(Path(directory))


def library_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in LIBRARIES}


def _code_root(module: str) -> tuple[str, str] | None:
    """(name, directory) of the code a class of ``module`` belongs to, when it is not a release of LIBRARIES:
    our packages as one, an expert's team package inside scml-agents (``scml_agents.scml2025.standard.team_x``)."""
    top = module.split(".")[0]
    if top in OWN_PACKAGES or top == "tasks":
        return None  # counted once, as OWN_PACKAGES (tasks only wraps our agents for the audit)
    if top == "scml_agents":
        parts = module.split(".")
        name = ".".join(parts[:4]) if len(parts) >= 4 else module
        mod = sys.modules.get(name)
        path = getattr(mod, "__file__", None)
        return (name, str(Path(path).parent)) if path else None
    return None


def agent_code(cls: type) -> dict[str, str]:
    """Digests of the code a class plays with, over its whole class hierarchy (LitaAgentHS is our code and
    PenguinAgent's): OWN_PACKAGES if any class of it is ours, each scml-agents team package it comes from;
    scml's and negmas' own classes count through LIBRARIES."""
    root = Path(__file__).resolve().parents[1]
    out: dict[str, str] = {}
    for klass in cls.__mro__:
        module = getattr(klass, "__module__", "") or ""
        if module.split(".")[0] in (*OWN_PACKAGES, "tasks"):
            for pkg in OWN_PACKAGES:
                out[pkg] = package_digest(str(root / pkg))
        elif (code := _code_root(module)) is not None:
            out[code[0]] = package_digest(code[1])
        elif module.split(".")[0] not in ("scml", "negmas", "builtins", "abc", "typing"):
            path = getattr(sys.modules.get(module), "__file__", None)  # a dotted-path agent of someone else
            if path:
                out[module] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


def bundle_content(path: str | Path) -> str:
    """The digest of what a bundle plays: its manifest's configs and weight map, and every weight file's bytes
    (not its metrics, notes or creation time: a copy, or a fine-tune whose weights never moved, is the same)."""
    path = Path(path)
    manifest = json.loads((path / "manifest.json").read_text())
    h = hashlib.sha256()
    what = {k: manifest.get(k) for k in ("schema_version", "feature_fingerprint", "horizon", "l3_mode", "configs", "weights")}
    h.update(json.dumps(what, sort_keys=True, default=str).encode())
    for name, file in sorted((manifest.get("weights") or {}).items()):
        h.update(f"\0{name}\0".encode() + (path / file).read_bytes())
    return h.hexdigest()


def content_digest(agent: str, params: dict[str, Any]) -> str:
    """What plays in a candidate's slots, as one digest (see the module docstring)."""
    from hrlxf_agent.registry import resolve

    shown = {k: (bundle_content(v) if k == "bundle" else v) for k, v in sorted(params.items())}
    what = {"agent": agent, "code": agent_code(resolve(agent)), "params": shown, "libraries": library_versions()}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _with_content(c: "Candidate") -> "Candidate":
    from dataclasses import replace

    try:
        return replace(c, content=content_digest(c.agent, c.params))
    except (OSError, ValueError) as e:  # a bundle whose manifest names a weight file that is not there, ...
        raise CandidateError(f"candidate {c.spec!r}: cannot read what it plays ({type(e).__name__}: {e})") from None


def _bundle_candidate(spec: str, target: str, variants: tuple[str, ...]) -> Candidate:
    from hrlxf_agent.bundle import BundleError, load_bundle

    params: dict[str, Any] = {}
    for v in variants:
        key, value = VARIANTS[v]
        if key == "ablate":
            params.setdefault("ablate", []).append(value)
        else:
            params[key] = value
    try:
        bundle = load_bundle(target, executor=params.get("executor", "final"))
    except BundleError as e:
        raise CandidateError(f"candidate {spec!r}: {e}") from None
    path = str(bundle.path.resolve())
    label = bundle.path.resolve().name + (f"/{'+'.join(variants)}" if variants else "")
    return Candidate(label, spec, HRL, {"bundle": path, **params}, bundle=path)


def parse_candidate(spec: str, bundles_root: Path | None = None) -> Candidate:
    """One spec -> a Candidate with its content digest (see the module docstring); CandidateError if it cannot play."""
    return _with_content(_parse(spec, bundles_root))


def _parse(spec: str, bundles_root: Path | None = None) -> Candidate:
    from hrlxf_agent.bundle import BundleError, load_bundle, write_untrained_bundle
    from hrlxf_agent.paths import bundles_root as default_bundles
    from hrlxf_models.executor import VARIANTS as L3_VARIANTS

    spec = spec.strip()
    if not spec:
        raise CandidateError("an empty candidate name")
    if spec == "rules":
        return Candidate("rules", spec, HRL, {})
    if spec.split(":")[0] == "untrained":
        variant = spec.partition(":")[2] or "residual"
        if variant not in L3_VARIANTS:
            raise CandidateError(f"candidate {spec!r}: untrained takes residual, direct or rules, not {variant!r}")
        root = Path(bundles_root) if bundles_root is not None else default_bundles()
        path = root / f"untrained-{variant}"
        try:
            load_bundle(path)
        except BundleError:  # none yet, or one written for older features: write it afresh
            write_untrained_bundle(path, seed=0, **L3_VARIANTS[variant])
        return Candidate(f"untrained-{variant}", spec, HRL, {"bundle": str(path.resolve())}, bundle=str(path.resolve()))
    head, sep, tail = spec.partition(":")
    if sep and all(v in VARIANTS for v in head.split("+")):
        variants = tuple(head.split("+"))
        return _bundle_candidate(spec, tail, variants)
    if spec == "latest" or "/" in spec or Path(spec).is_dir():
        return _bundle_candidate(spec, spec, ())
    try:
        cls = resolve(spec)
    except ValueError as e:
        raise CandidateError(f"candidate {spec!r}: {e}") from None
    own = spec in OWN_AGENTS or cls.__module__.split(".")[0] in ("hrlxf_agent", "tasks")
    return Candidate(spec, spec, spec, {}, expert=not own)


def parse_candidates(specs: Sequence[str], bundles_root: Path | None = None) -> list[Candidate]:
    """Every spec resolved, duplicates (the same label) dropped, order kept."""
    out: dict[str, Candidate] = {}
    for spec in specs:
        c = parse_candidate(spec, bundles_root)
        out.setdefault(c.label, c)
    return list(out.values())
