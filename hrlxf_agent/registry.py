"""Agent names -> classes: our agents, every std agent in scml-agents, scml's own, or a dotted path."""

from __future__ import annotations

import importlib
from functools import lru_cache

#: Agents of this project, importable without the experts' side effects.
OWN_AGENTS = {
    "LitaAgentH": "hrlxf_agent.penguin:LitaAgentH",
    "LitaAgentHS": "hrlxf_agent.penguin:LitaAgentHS",
    "LitaAgentHRL": "hrlxf_agent.hrl:LitaAgentHRL",
}

#: The 2025 std winners every audit plays against by default.
WINNERS_2025 = ("AS0", "XenoSotaAgent", "UltraSuperMiracleSoraFinalAgentZ")


class UnknownAgentError(ValueError):
    """A name that resolves to no agent class; the message lists the known names."""


@lru_cache(maxsize=1)
def known_agents() -> dict[str, str]:
    """Every resolvable short name -> 'module:Class'."""
    from scml.std import agents as scml_std_agents
    from scml_agents import get_agents

    names: dict[str, str] = {}
    for name in dir(scml_std_agents):
        obj = getattr(scml_std_agents, name)
        if isinstance(obj, type) and name.endswith("Agent"):
            names[name] = f"{obj.__module__}:{name}"
    for year in (2024, 2025):
        for cls in get_agents(year, track="std", as_class=True):
            names[cls.__name__] = f"{cls.__module__}:{cls.__name__}"
    names.update(OWN_AGENTS)
    return names


def _load(path: str) -> type:
    module, sep, name = path.partition(":")
    if not sep:
        module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def resolve(name: str) -> type:
    """The class for ``name`` (short name, 'pkg.module:Class' or 'pkg.module.Class')."""
    known = known_agents()
    if name in known:
        return _load(known[name])
    if "." in name or ":" in name:
        try:
            return _load(name)
        except (ImportError, AttributeError, ValueError) as e:
            raise UnknownAgentError(f"cannot import agent {name!r}: {e}") from None
    raise UnknownAgentError(f"unknown agent {name!r}; known agents: {', '.join(sorted(known))}")


def resolve_all(names: list[str]) -> dict[str, type]:
    """Resolve every name first, so a typo fails before any world starts."""
    return {n: resolve(n) for n in names}
