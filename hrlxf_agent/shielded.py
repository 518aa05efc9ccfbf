"""The L1 shield as a decision hook: any agent class, every batch clipped (LitaAgentHS, LitaAgentHRL)."""

from __future__ import annotations

import logging
from typing import Any

from negmas.sao import ResponseType, SAOResponse

from .intercept import DecisionHook, Offers, Responses
from .shield import SafetyShield, ShieldConfig, Thread
from .snapshot import snapshot_from_awi

log = logging.getLogger("hrlxf")


class ShieldHook(DecisionHook):
    """Clips every batch of an agent's responses with the L1 shield.

    Offers already sent and not yet answered stay reserved against the bounds
    (a partner may still accept them), so concurrent threads can never commit
    the factory beyond what it can honour.
    """

    def __init__(self, agent: Any, shield: SafetyShield | None = None):
        self.shield = shield or SafetyShield(ShieldConfig())
        self.outstanding: dict[str, tuple] = {}
        self.changed = 0
        self.failed = 0

    def on_sent(self, agent: Any, partner: str, outcome: Any) -> None:
        self.outstanding[partner] = tuple(outcome)

    def on_answered(self, agent: Any, partner: str) -> None:
        self.outstanding.pop(partner, None)

    def on_day(self, agent: Any) -> None:
        self.outstanding.clear()

    def on_batch(self, agent: Any, kind: str, offers: Offers, responses: Responses) -> Responses:
        try:
            clipped = self._clip(agent, offers, responses)
        except Exception as e:  # never crash a world: ending every thread is always safe and legal
            if not self.failed:
                log.warning("%s: the shield failed (%s: %s); ending this batch's negotiations", agent.id, type(e).__name__, e)
            self.failed += 1
            clipped = {p: SAOResponse(ResponseType.END_NEGOTIATION, None) for p in responses}
        on_clipped = getattr(agent, "on_clipped", None)
        if on_clipped is not None:
            on_clipped(kind, offers, clipped)
        return clipped

    def _clip(self, agent: Any, offers: Offers, responses: Responses) -> Responses:
        awi = agent.awi
        shared = getattr(agent, "snapshot_for_shield", None)
        snap = shared() if shared is not None else None
        if snap is None:
            snap = snapshot_from_awi(awi, horizon=int(awi.horizon))
        suppliers, consumers = set(awi.my_suppliers), set(awi.my_consumers)
        threads = {
            p: Thread(p, p in suppliers, tuple(offers[p]) if offers.get(p) is not None else None)
            for p in responses
            if p in suppliers or p in consumers
        }
        reserved = [(p in suppliers, o) for p, o in self.outstanding.items() if p not in offers]
        alpha = getattr(agent, "batch_alpha", None)
        shield = getattr(agent, "shield", None) or self.shield  # the agent's own: its bounds are already computed
        clipped = shield.clip_batch(snap, threads, responses, alpha=alpha, reserved=reserved)
        self.changed += sum(1 for p, r in clipped.items() if responses.get(p) != r)
        return clipped


