"""The PenguinAgent safety study: LitaAgentH (defects fixed) and LitaAgentHS (shielded).

PenguinAgent (ANAC 2024 std winner, `scml_agents.scml2024.standard.team_penguin`)
has three defects (thesis section 5.3.3):

1. Its sell-side availability, ``min(n_lines, 0.7 n_lines + input stock) -
   sales``, ignores what else the day must deliver (exogenous sales and the
   output stock, which scml 0.8.4 adds to the day's demand) and the input
   actually secured for that day.
2. ``total_sales_at(total_sales_at(step) <= n_lines)`` passes a bool as a
   step: from step 2 on it reads day 0 or 1 (always 0), so the agent never
   wants to sell for today in ``counter_all``.
3. The third branch of ``future_consume_offer`` checks day s+2 to sell for s+3.

`LitaAgentH` overrides the methods concerned with the fixes; `LitaAgentHS` is
PenguinAgent unchanged behind `SafetyShield.clip_batch`.
"""

from __future__ import annotations

from itertools import chain, combinations
from negmas.sao import ResponseType, SAOResponse
from scml_agents.scml2024.standard.team_penguin.penguinagent import PenguinAgent, distribute

from .intercept import intercept
from .shielded import ShieldHook
from .snapshot import QUANTITY, TIME, UNIT_PRICE


class LitaAgentH(PenguinAgent):
    """PenguinAgent with its three defects fixed (same strategy otherwise)."""

    # ---- defect 1: what can really be sold on a day -------------------------
    def sellable_at(self, step: int) -> int:
        """Units the factory can still promise for delivery on ``step``.

        Delivery that day is min(n_lines, input offered to production) and the
        day's demand includes exogenous sales and the output stock (scml 0.8.4,
        see `hrlxf_agent.physics`). Input offered is the stock plus the
        supplies signed for that day (plus today's exogenous supply); a buyer
        plans on buying up to its daily production target, as PenguinAgent does.
        """
        awi = self.awi
        today = step == awi.current_step
        secured = awi.current_inventory_input + awi.total_supplies_at(step)
        due = awi.total_sales_at(step) + awi.current_inventory_output
        if today:
            secured += awi.current_exogenous_input_quantity
            due += awi.current_exogenous_output_quantity
        planned = secured if (today and awi.is_first_level) else max(secured, awi.n_lines * self._productivity)
        return int(max(0, min(awi.n_lines, planned) - due))

    def needs_at(self, step, partner):
        if self.is_consumer(partner):
            return self.sellable_at(step)
        return super().needs_at(step, partner)

    def _buy_needs_today(self) -> int:
        awi = self.awi
        return int(awi.n_lines * self._productivity - awi.current_inventory_input - awi.total_supplies_at(awi.current_step))

    def _sell_needs_today(self) -> int:
        awi = self.awi
        # defect 2 fixed: compare today's sales with the lines, not a bool used as a day
        if awi.total_sales_at(awi.current_step) > awi.n_lines:
            return 0
        return self.sellable_at(awi.current_step)

    def distribute_todays_needs(self, partners=None) -> dict[str, int]:
        if partners is None:
            partners = self.negotiators.keys()
        response = {p: 0 for p in partners}
        suppliers = [p for p in partners if self.is_supplier(p)]
        consumers = [p for p in partners if self.is_consumer(p)]
        for side, needs in ((suppliers, self._buy_needs_today()), (consumers, self._sell_needs_today())):
            if side and needs > 0:
                response |= self.distribute_todays_supplie_consume_needs(side, needs)
        return response

    # ---- defect 3: each future day checked against its own sales -------------
    def future_consume_offer(self, partners):
        awi = self.awi
        s, n = awi.current_step, awi.n_steps
        # PenguinAgent's split: half the partners for s+1, 30% for s+2, 20% for s+3
        bounds = [0, int(len(partners) * 0.5), int(len(partners) * 0.8), len(partners)]
        response = {}
        for ahead in (1, 2, 3):
            group = partners[bounds[ahead - 1] : bounds[ahead]]
            day = s + ahead
            if day >= n or not group or awi.total_sales_at(day) > awi.n_lines:
                continue
            needs = int(self.sellable_at(day) / 3)
            if needs <= 0:
                continue
            for k, q in zip(group, distribute(needs, len(group))):
                if q > 0:
                    response[k] = (q, day, self.best_price(k))
        return response

    # ---- counter_all, PenguinAgent's strategy with the fixed needs ----------
    def counter_all(self, offers, states):
        awi = self.awi
        response: dict[str, SAOResponse] = {}
        for is_buy, partners_all in ((True, awi.my_suppliers), (False, awi.my_consumers)):
            needs = self._buy_needs_today() if is_buy else self._sell_needs_today()
            partners = [p for p in partners_all if p in offers and offers[p] is not None]
            today, future = {}, {}
            for p in partners:
                o = offers[p]
                if not self.is_valid_price(o[UNIT_PRICE], p):
                    continue
                (today if o[TIME] == awi.current_step else future)[p] = o
            # future offers: accept while they fit that day's needs
            taken: dict[int, int] = {}
            for p, o in future.items():
                day = o[TIME]
                if day <= awi.n_steps and o[QUANTITY] + taken.get(day, 0) <= self.needs_at(day, p):
                    response[p] = SAOResponse(ResponseType.ACCEPT_OFFER, o)
                    taken[day] = taken.get(day, 0) + o[QUANTITY]
            chosen = self._closest_subset(today, needs)
            if chosen and needs > 0:
                response.update({p: SAOResponse(ResponseType.ACCEPT_OFFER, today[p]) for p in chosen})
                rest = [p for p in today if p not in chosen and p not in response]
                self._offer_future(rest, response)
                continue
            # nothing good enough: spread today's needs over the partners not answered yet
            others = [p for p in partners_all if p not in response and p in self.negotiators]
            later = []
            for p, q in self.distribute_todays_needs(others).items():
                if q > 0:
                    response[p] = SAOResponse(ResponseType.REJECT_OFFER, (q, awi.current_step, self.price(p)))
                else:
                    later.append(p)
            self._offer_future(later, response)
        return response

    def _closest_subset(self, today: dict[str, tuple], needs: int) -> tuple[str, ...]:
        """The set of today's offers whose total is nearest ``needs`` (over by at most the threshold, else under)."""
        ids = list(today)
        best_over, best_over_diff = (), float("inf")
        best_under, best_under_diff = (), float("inf")
        for subset in chain.from_iterable(combinations(ids, r) for r in range(len(ids) + 1)):
            offered = sum(today[p][QUANTITY] for p in subset)
            diff = abs(offered - needs)
            if offered >= needs:
                if needs > 0 and diff < best_over_diff:
                    best_over, best_over_diff = subset, diff
            elif offered > 0 and diff < best_under_diff:
                best_under, best_under_diff = subset, diff
        if best_over and best_over_diff <= self._threshold:
            return best_over
        return best_under

    def _offer_future(self, partners: list[str], response: dict[str, SAOResponse]) -> None:
        buyers = [p for p in partners if self.is_supplier(p)]
        sellers = [p for p in partners if self.is_consumer(p)]
        for p, o in (self.future_supplie_offer(buyers) | self.future_consume_offer(sellers)).items():
            response[p] = SAOResponse(ResponseType.REJECT_OFFER, o)


#: PenguinAgent unchanged, every batch clipped by the L1 shield.
_ShieldedPenguin = intercept(PenguinAgent, ShieldHook, "Shielded")


class LitaAgentHS(_ShieldedPenguin):  # type: ignore[misc, valid-type]
    """PenguinAgent behind `SafetyShield.clip_batch` (thesis: 0 unsafe actions)."""
