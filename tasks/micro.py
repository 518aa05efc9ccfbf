"""Stage part: the ``micro`` table, one row per expert decision per thread per round.

The Snapshot an expert saw at a decision is its morning Snapshot plus the
deals it had made that day up to the decision's version (within a day only
the commitments move: balance and stock settle at night), with the batch's
offers; from it come the L1 bounds and time_mask (the shield's own code) and
the L4 broadcast c (the GlobalMonitor, against the rule-based goal of the
morning, as the experts have no L2). Labels: op (0 accept, 1 reject, 2 end),
delivery offset delta, q / n_lines and p / catalog of what was accepted or
offered; the L1 baseline at that offset and the residual labels (label -
baseline) for L3's residual mode; whether the negotiation ended in a deal and
the deal's value against spot (for AWR); and a goal column the backfill
stage fills with the trained L2's goal_hat (zeros, ``goal_filled`` false, here).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hrlxf_agent.heuristics import GlobalMonitor, heuristic_goal
from hrlxf_agent.shield import SafetyShield
from hrlxf_agent.snapshot import Snapshot
from hrlxf_agent.state import FeatureSpec, round_features

HISTORY = 8
MICRO_VERSION = 1
OPS = {"accept": 0, "reject": 1, "end": 2}


def micro_schema(spec: FeatureSpec) -> pa.Schema:
    f32 = pa.float32()
    return pa.schema([
        pa.field("run_id", pa.string()), pa.field("world_id", pa.string()), pa.field("agent_id", pa.string()),
        pa.field("seq", pa.int64()), pa.field("step", pa.int64()), pa.field("partner", pa.string()),
        pa.field("version", pa.int64()), pa.field("negotiation_id", pa.string()), pa.field("is_buy", pa.bool_()),
        pa.field("round", pa.int64()),
        pa.field("rel_time", pa.float64()),
        pa.field("history", pa.list_(f32, HISTORY * 12)), pa.field("history_len", pa.int64()),
        pa.field("time_mask", pa.list_(f32, spec.horizon + 1)), pa.field("q_safe", pa.list_(f32, spec.horizon + 1)),
        pa.field("b_free", pa.float64()), pa.field("broadcast", pa.list_(f32, 12)),
        pa.field("op", pa.int64()), pa.field("delta", pa.int64()), pa.field("q", pa.float64()), pa.field("p", pa.float64()),
        pa.field("base_q", pa.float64()), pa.field("base_p", pa.float64()),
        pa.field("res_q", pa.float64()), pa.field("res_p", pa.float64()),
        pa.field("deal", pa.bool_()), pa.field("deal_value", pa.float64()),
        pa.field("goal", pa.list_(f32, 16)), pa.field("goal_filled", pa.bool_()),
    ], metadata={"version": str(MICRO_VERSION), "feature_fingerprint": spec.fingerprint})


def with_deals(morning: Snapshot, deals: list[tuple[bool, int, int, float]]) -> Snapshot:
    """The morning snapshot with the day's deals so far added to the commitments."""
    if not deals:
        return morning
    sq, sc, lq, lr = (list(morning.supply_qty), list(morning.supply_cost), list(morning.sale_qty), list(morning.sale_revenue))
    for is_buy, k, q, p in deals:
        if 0 <= k < len(sq):
            if is_buy:
                sq[k] += q
                sc[k] += q * p
            else:
                lq[k] += q
                lr[k] += q * p
    return replace(morning, supply_qty=tuple(sq), supply_cost=tuple(sc), sale_qty=tuple(lq), sale_revenue=tuple(lr),
                   version=morning.version + len(deals))


def micro_rows(world: Path, spec: FeatureSpec) -> list[dict[str, Any]]:
    days = {(d["agent_id"], d["step"]): Snapshot.from_dict(json.loads(d["snapshot_json"]))
            for d in pq.read_table(world / "days.parquet").to_pylist()}
    decisions = sorted(pq.read_table(world / "decisions.parquet").to_pylist(), key=lambda d: (d["agent_id"], d["seq"]))
    outcomes = pq.read_table(world / "outcomes.parquet").to_pylist()
    side = {(d["agent_id"], d["partner"]): d["is_buy"] for d in decisions}
    deals_by_day: dict[tuple[str, int], list[tuple[int, tuple]]] = defaultdict(list)
    deal_of: dict[tuple[str, int, str], tuple] = {}
    for o in outcomes:
        if o["success"] and (o["agent_id"], o["partner"]) in side:
            is_buy = side[(o["agent_id"], o["partner"])]
            deal = (is_buy, o["agreement_t"] - o["step"], o["agreement_q"], o["agreement_p"])
            deals_by_day[(o["agent_id"], o["step"])].append((o["version"], deal))
            deal_of[(o["agent_id"], o["step"], o["partner"])] = deal
    shield = SafetyShield()
    history: dict[str, list[np.ndarray]] = defaultdict(list)
    cache: dict[tuple, tuple] = {}
    rows = []
    for d in decisions:
        morning = days.get((d["agent_id"], d["step"]))
        if morning is None:
            continue
        key = (d["agent_id"], d["step"], d["version"])
        if key not in cache:
            done = [deal for v, deal in sorted(deals_by_day.get((d["agent_id"], d["step"]), [])) if v <= d["version"]]
            snap = with_deals(morning, done)
            bounds = shield.bounds(snap)
            monitor = GlobalMonitor()
            monitor.reset(morning, heuristic_goal(morning))
            cache[key] = (snap, bounds, monitor)
        snap, bounds, monitor = cache[key]
        is_buy, H = d["is_buy"], spec.horizon
        offer_in = (d["in_q"], d["in_t"], d["in_p"]) if d["in_q"] is not None else None
        offer_out = (d["out_q"], d["out_t"], d["out_p"]) if d["out_q"] is not None else None
        thread = d["negotiation_id"] or f"{d['agent_id']}:{d['partner']}:{d['step']}"
        past = history[thread][-(HISTORY - 1):] + [round_features(snap, is_buy, offer_in, None, None, d["rel_time"] or 0.0, H)]
        window = np.zeros((HISTORY, 12), dtype=np.float32)
        window[HISTORY - len(past):] = np.stack(past)
        history[thread].append(round_features(snap, is_buy, offer_in, offer_out, d["op"], d["rel_time"] or 0.0, H))
        catalog = snap.catalog_price_in if is_buy else snap.catalog_price_out
        chosen = offer_in if d["op"] == "accept" else offer_out
        delta = int(chosen[1]) - snap.step if chosen is not None else -1
        q = chosen[0] / snap.n_lines if chosen is not None else None
        p = chosen[2] / catalog if chosen is not None else None
        base = shield.baseline(snap, bounds, is_buy, delta) if 0 <= delta <= snap.horizon else None
        base_q = base[0] / snap.n_lines if base else None
        base_p = base[2] / catalog if base else None
        deal = deal_of.get((d["agent_id"], d["step"], d["partner"]))
        spot = snap.trading_price_in if is_buy else snap.trading_price_out
        value = None
        if deal is not None:
            value = ((spot - deal[3]) if is_buy else (deal[3] - spot)) * deal[2] / (snap.n_lines * catalog)
        rel = d["rel_time"] or 0.0
        c = monitor.broadcast(snap, bounds, max(snap.initial_balance, abs(snap.balance), 1.0), rel)
        mask = bounds.time_mask_buy if is_buy else bounds.time_mask_sell
        rows.append({
            "run_id": d["run_id"], "world_id": d["world_id"], "agent_id": d["agent_id"], "seq": d["seq"], "step": d["step"],
            "partner": d["partner"], "version": d["version"], "negotiation_id": d["negotiation_id"], "is_buy": is_buy,
            "round": d["round"],
            "rel_time": d["rel_time"], "history": window.reshape(-1).tolist(), "history_len": len(past),
            "time_mask": np.where(np.isfinite(mask), 0.0, -1e9)[: H + 1].tolist(),
            "q_safe": (bounds.q_safe_buy if is_buy else bounds.q_safe_sell)[: H + 1].tolist(),
            "b_free": bounds.b_free, "broadcast": c.tolist(),
            "op": OPS.get(d["op"], 2), "delta": delta, "q": q, "p": p, "base_q": base_q, "base_p": base_p,
            "res_q": (q - base_q) if q is not None and base_q is not None else None,
            "res_p": (p - base_p) if p is not None and base_p is not None else None,
            "deal": deal is not None, "deal_value": value, "goal": [0.0] * 16, "goal_filled": False,
        })
    return rows


def build_micro(lake: Path, spec: FeatureSpec | None = None) -> dict[str, Any]:
    """The micro table of every converted world not built yet."""
    from tasks.tables import build_per_world

    spec = spec or FeatureSpec()
    return build_per_world(lake, "micro", lambda world: micro_rows(world, spec), micro_schema(spec))
