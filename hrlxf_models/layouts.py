"""Every feature layout a network reads, in one place (the StateBuilder fills them, the networks size
their inputs from them, and `FeatureSpec` fingerprints them so a bundle is refused when one changes)."""

from __future__ import annotations

#: L2 / L3 / L4 context: one value per name (seed 002 section 2.1.1)
STATIC = (
    "t_norm", "days_left_norm", "balance_rel", "stock_in", "stock_out", "exo_in_today",
    "exo_out_today", "spot_in", "spot_out", "unit_margin", "shortfall_penalty", "storage_cost",
)
#: L2's (H+1) x channels commitment tensor (seed 002 section 2.1.2)
TEMPORAL = (
    "vol_in", "vol_out", "prod_plan", "inventory_proj", "capacity_free", "balance_proj",
    "price_diff_in", "price_diff_out", "buy_pressure", "sell_pressure",
)
#: one round of a thread for L3: the partner's offer, ours, our op, the negotiation's relative time
ROUND = (
    "in_q", "in_delta", "in_p", "in_present", "out_q", "out_delta", "out_p", "out_present",
    "op_accept", "op_reject", "op_end", "rel_time",
)
#: one active thread for L4
THREAD = (
    "is_buy", "is_sell", "rel_time", "offer_present", "offer_q", "offer_delta", "offer_p",
    "bucket_gap", "room_at_day", "budget_use",
)
#: L4's broadcast c: the goal gap per bucket (buy, sell interleaved), B_free, today's room, time
BROADCAST = (
    "gap_buy_0", "gap_sell_0", "gap_buy_1", "gap_sell_1", "gap_buy_2", "gap_sell_2", "gap_buy_3", "gap_sell_3",
    "b_free", "room_buy_today", "room_sell_today", "rel_time",
)
#: normalisations every layout uses
NORMALISATION = "quantity/n_lines; price/catalog price of the product; money/initial balance; delivery offset/H"
