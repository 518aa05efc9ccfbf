"""The shield's sell bound is tight in the real simulator.

Two kinds of scripted agents fill a two-level world: first-level sellers offer
exactly the shield's bound for today (+ ``EXTRA``) to one partner on the test
day and do nothing else; second-level buyers accept any offer from a scripted
seller. The world then settles the day with its own accounting.
"""

import pytest
from negmas.sao import ResponseType, SAOResponse
from scml.std import StdSyncAgent

from conftest import make_world
from hrlxf_agent.shield import SafetyShield
from hrlxf_agent.snapshot import snapshot_from_awi


class Scripted(StdSyncAgent):
    """Sellers (first level) offer the bound + EXTRA on DAY to one scripted buyer; buyers accept it."""

    EXTRA = 0
    DAY = 0
    offered: dict = {}

    def _scripted(self, partner: str) -> bool:
        return isinstance(getattr(self.awi._world.agents[partner], "_obj", None), Scripted)

    def _target(self):
        awi = self.awi
        partners = sorted(p for p in self.negotiators if p in awi.my_consumers and self._scripted(p))
        if not awi.is_first_level or awi.current_step != self.DAY or not partners:
            return None, None
        bound = SafetyShield().bounds(snapshot_from_awi(awi)).q_safe_sell[0]
        q = int(bound) + self.EXTRA
        Scripted.offered[self.id] = (q, int(bound), awi.n_lines)
        return partners[0], (q, awi.current_step, awi.current_output_issues[2].max_value)

    def first_proposals(self):
        awi = self.awi
        if awi.is_first_level:
            partner, offer = self._target()
            return {p: offer if p == partner else None for p in self.negotiators}
        # buyers open with a small bid the scripted seller will counter
        issues = awi.current_input_issues
        return {p: (1, awi.current_step, issues[2].min_value) if self._scripted(p) else None for p in self.negotiators}

    def counter_all(self, offers, states):
        out = {p: SAOResponse(ResponseType.END_NEGOTIATION, None) for p in self.negotiators}
        if self.awi.is_first_level:
            partner, offer = self._target()
            if partner is not None and offer[0] >= 1:
                out[partner] = SAOResponse(ResponseType.REJECT_OFFER, offer)
            return out
        for p, o in offers.items():
            if o is not None and self._scripted(p):
                out[p] = SAOResponse(ResponseType.ACCEPT_OFFER, o)
        return out


@pytest.mark.parametrize("day", [0, 3])
@pytest.mark.parametrize("extra", [0, 1])
def test_sell_bound_is_delivered_in_full_and_one_more_falls_short(day, extra):
    cls = type(f"Scripted{day}{extra}", (Scripted,), {"EXTRA": extra, "DAY": day, "offered": {}})
    Scripted.offered = {}
    world = make_world([cls], steps=6, seed=11 + day, n_processes=2, n_agents_per_process=3)
    world.run()
    assert Scripted.offered, "no scripted seller made its offer"
    signed = {c["seller"]: c["quantity"] for c in world.saved_contracts
              if c["delivery_time"] == day and c["seller"] in Scripted.offered}
    tested, binding = 0, set()
    for seller, (q, bound, n_lines) in Scripted.offered.items():
        if q < 1 or seller not in signed:
            continue
        assert signed[seller] == q
        shortfall = world.stats[f"shortfall_quantity_{seller}"][day]
        assert shortfall == extra, (seller, q, bound, n_lines)
        tested += 1
        binding.add("lines" if bound >= n_lines else "input")
    assert tested >= 1
    # day 0 (empty stock) exercises the input bound, day 3 (stock built) the lines
    assert binding == ({"input"} if day == 0 else {"lines"})
