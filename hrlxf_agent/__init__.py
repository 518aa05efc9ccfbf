"""HRL-XF runtime: what plays inside an scml std world.

Light modules (physics, snapshot, shield, audit) import quickly; the agents
(which import scml-agents) load on first use: ``from hrlxf_agent import LitaAgentHS``.
"""

from .shield import Bounds, SafetyShield, ShieldConfig, Thread
from .snapshot import IssueRanges, Snapshot, snapshot_from_awi

__all__ = [
    "Bounds", "IssueRanges", "LitaAgentH", "LitaAgentHRL", "LitaAgentHS", "SafetyShield", "ShieldConfig",
    "Snapshot", "Thread", "snapshot_from_awi",
]


def __getattr__(name: str):
    if name in ("LitaAgentH", "LitaAgentHS"):
        from . import penguin

        return getattr(penguin, name)
    if name == "LitaAgentHRL":
        from .hrl import LitaAgentHRL

        return LitaAgentHRL
    raise AttributeError(f"module 'hrlxf_agent' has no attribute {name!r}")
