"""See and change every decision of any scml std agent class without editing it.

`intercept(cls, hook_factory)` subclasses a `StdSyncAgent` (batches:
`first_proposals`, `counter_all`) or a plain `StdAgent` (one thread at a time:
`respond`, then `propose` for the counter-offer) and routes each batch of
responses through a `DecisionHook`, which may record them (the audit, the
tracker) or rewrite them (the shield). Hooks stack: the outermost sees what
the inner ones finally send.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from negmas.sao import ResponseType, SAOResponse, SAOSyncController

Offers = Mapping[str, Any]
Responses = dict[str, SAOResponse]


class DecisionHook:
    """Called around an agent's decisions; the default changes nothing."""

    def on_batch(self, agent: Any, kind: str, offers: Offers, responses: Responses) -> Responses:
        """``kind`` is first_proposals, counter_all, propose or respond; ``offers`` are the partners' standing offers."""
        return responses

    def on_sent(self, agent: Any, partner: str, outcome: Any) -> None:
        """An offer left for ``partner`` (it may still be accepted)."""

    def on_answered(self, agent: Any, partner: str) -> None:
        """``partner`` answered our last offer (countered, accepted or ended)."""

    def on_day(self, agent: Any) -> None:
        """A new day starts (after the agent's own before_step)."""

    def on_deal(self, agent: Any, partner: str, agreement: Any) -> None:
        """A negotiation with ``partner`` ended in ``agreement``."""

    def on_failure(self, agent: Any, partner: str) -> None:
        """A negotiation with ``partner`` ended without agreement."""


def _partner_of(agent: Any, partners: Any) -> str | None:
    others = [p for p in partners if p != agent.id]
    return others[0] if others else None


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    try:
        return tuple(a) == tuple(b)
    except TypeError:
        return False


def intercept(cls: type, hook_factory: Callable[[Any], DecisionHook], suffix: str) -> type:
    """A subclass of ``cls`` named ``cls.__name__ + suffix`` whose decisions pass through a hook.

    Sync agents are hooked per batch (``first_proposals`` / ``counter_all``).
    Every agent is also hooked per thread (``respond`` / ``propose``), which
    catches what no batch hook saw: plain StdAgents, and StdSyncAgents that
    override ``propose`` / ``respond`` themselves (UltraSuperMiracleSoraFinalAgentZ
    does). A decision a batch hook already saw is not seen twice.
    """
    sync = issubclass(cls, SAOSyncController)
    attr, pending_attr, decided_attr = f"_hook_{suffix}", f"_pending_{suffix}", f"_decided_{suffix}"

    def hook(self) -> DecisionHook:
        h = self.__dict__.get(attr)
        if h is None:
            h = hook_factory(self)
            self.__dict__[attr] = h
        return h

    def store(self, name: str) -> dict:
        return self.__dict__.setdefault(name, {})

    def before_step(self):
        out = cls.before_step(self)
        store(self, pending_attr).clear()
        store(self, decided_attr).clear()
        hook(self).on_day(self)
        return out

    def on_negotiation_success(self, contract, mechanism):
        partner = _partner_of(self, contract.partners)
        if partner is not None:
            hook(self).on_answered(self, partner)
            a = contract.agreement
            hook(self).on_deal(self, partner, (a["quantity"], a["time"], a["unit_price"]))
        return cls.on_negotiation_success(self, contract, mechanism)

    def on_negotiation_failure(self, partners, annotation, mechanism, state):
        partner = _partner_of(self, partners)
        if partner is not None:
            hook(self).on_answered(self, partner)
            hook(self).on_failure(self, partner)
        return cls.on_negotiation_failure(self, partners, annotation, mechanism, state)

    def propose(self, negotiator_id, state, *args, **kwargs):
        pending, decided = store(self, pending_attr), store(self, decided_attr)
        if negotiator_id in pending:  # a counter decided (and hooked) in respond
            outcome = pending.pop(negotiator_id)
        else:
            outcome = cls.propose(self, negotiator_id, state, *args, **kwargs)
            seen = decided.pop(negotiator_id, None)
            # negmas asks again for what a batch already decided: the same offer, or no offer after an END
            repeated = seen is not None and (
                (seen.response == ResponseType.REJECT_OFFER and _same(seen.outcome, outcome))
                or (seen.response == ResponseType.END_NEGOTIATION and outcome is None)
            )
            if not repeated:
                r = SAOResponse(ResponseType.REJECT_OFFER, outcome) if outcome is not None else SAOResponse(ResponseType.END_NEGOTIATION, None)
                r = hook(self).on_batch(self, "propose", {}, {negotiator_id: r}).get(negotiator_id, r)
                outcome = r.outcome if r.response == ResponseType.REJECT_OFFER else None
        if outcome is not None:
            hook(self).on_sent(self, negotiator_id, outcome)
        return outcome

    def respond(self, negotiator_id, state, *args, **kwargs):
        hook(self).on_answered(self, negotiator_id)
        response = cls.respond(self, negotiator_id, state, *args, **kwargs)
        decided = store(self, decided_attr)
        seen = decided.get(negotiator_id)
        if seen is not None and seen.response == response:
            if response != ResponseType.REJECT_OFFER:  # a rejection's counter is checked in propose
                decided.pop(negotiator_id)
            return response
        if response not in (ResponseType.ACCEPT_OFFER, ResponseType.END_NEGOTIATION):
            return response  # WAIT, or a rejection whose counter is hooked in propose
        offer = state.current_offer
        r = SAOResponse(response, offer if response == ResponseType.ACCEPT_OFFER else None)
        r = hook(self).on_batch(self, "respond", {negotiator_id: offer}, {negotiator_id: r}).get(negotiator_id, r)
        if r.response == ResponseType.REJECT_OFFER:
            store(self, pending_attr)[negotiator_id] = r.outcome
        return r.response

    body: dict[str, Any] = {
        "hook": hook,
        "before_step": before_step,
        "on_negotiation_success": on_negotiation_success,
        "on_negotiation_failure": on_negotiation_failure,
        "propose": propose,
        "respond": respond,
        "__module__": __name__,
        "__doc__": f"{cls.__name__} with its decisions passed through a {suffix} hook.",
    }

    if sync:

        def first_proposals(self):
            proposals = cls.first_proposals(self) or {}
            batch = {
                p: SAOResponse(ResponseType.REJECT_OFFER, o) if o is not None else SAOResponse(ResponseType.END_NEGOTIATION, None)
                for p, o in proposals.items()
            }
            batch = hook(self).on_batch(self, "first_proposals", {}, batch)
            store(self, decided_attr).update(batch)
            return {p: r.outcome if r.response == ResponseType.REJECT_OFFER else None for p, r in batch.items()}

        def counter_all(self, offers, states):
            responses = dict(cls.counter_all(self, offers, states) or {})
            # negmas ends every negotiation the agent leaves out: make that explicit
            for partner in self.negotiators:
                responses.setdefault(partner, SAOResponse(ResponseType.END_NEGOTIATION, None))
            responses = hook(self).on_batch(self, "counter_all", offers, responses)
            store(self, decided_attr).update(responses)
            return responses

        body.update(first_proposals=first_proposals, counter_all=counter_all)

    name = cls.__name__ + suffix
    wrapped = type(name, (cls,), body)
    globals()[name] = wrapped  # reachable as hrlxf_agent.intercept.<name> in this process, so scml can name it
    return wrapped
