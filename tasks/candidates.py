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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from hrlxf_agent.registry import OWN_AGENTS, resolve

VARIANTS = {"bc": ("executor", "bc"), "nol2": ("ablate", "l2"), "nol4": ("ablate", "l4")}
HRL = "LitaAgentHRL"


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

    def key(self) -> str:
        """A file-name-safe id of what plays (the label may hold '/' and '+')."""
        return self.label.replace("/", "__").replace("+", "_").replace(":", "_")


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
    """One spec -> a Candidate (see the module docstring); CandidateError if it cannot play."""
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
