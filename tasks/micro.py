"""Stage part: the ``micro`` table, one row per expert decision per thread per round.

Each row carries every input the runtime L3 executor reads (`HRLPolicy._execute`),
computed by the same code, so training sees what the agent computes online
(tests/test_micro.py proves it on a live LitaAgentHRL): ``static`` (the
StateBuilder's x_static), ``role`` (one-hot buyer/seller), ``broadcast`` (the
L4 GlobalMonitor's c, with the mean relative time of the batch's running
threads), ``alpha`` (the rule-based L4 teacher's priority: the experts have no
L4), ``history`` (the thread's last 8 rounds, left-padded) and ``time_mask``.

The Snapshot an expert saw at a decision is its morning Snapshot plus the
deals it had made that day up to the decision's version (within a day only
the commitments move: balance and stock settle at night); from it come the L1
bounds (the shield's own code). The experts have no L2, so the monitor (hence
broadcast and alpha) works against the rule-based goal of the morning; the
``goal`` column is left for the backfill stage (zeros, ``goal_filled`` false).
Online, c[0:8] is the agent's own L2 goal minus what it signed today, so
``committed`` (that second term, per bucket, laid out as c[0:8]) lets a stage
that has the goal L2 would give rebuild c exactly: c[0:8:2] = Q_buy x can_buy -
committed[0::2], c[1:8:2] = Q_sell x can_sell - committed[1::2] (goal in L2's units).
Labels: op (0 accept, 1 reject, 2 end), delivery offset delta, q / n_lines and
p / catalog of what was accepted or offered, and whether that outcome lies inside
the negotiation's issue ranges (``legal``: negmas takes an offer outside them
for no offer; about 4% of the experts' offers); the L1 baseline at that offset
and the residual labels (label - baseline) for L3's residual mode; whether the
negotiation ended in a deal and the deal's value against spot (for AWR).

A WAIT (the agent asks to be asked again in the same round; only LitaAgentYR
uses it) is not a decision L3 can make: no row, and not in the thread's history.
A decision about a thread whose negotiation was already over (the agent
answered a dead thread; negmas ignores it) has no ``negotiation_id``: L3
never runs on those online, and they do not count in their batch.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hrlxf_agent.heuristics import (
    GlobalMonitor, heuristic_action, heuristic_goal, rule_offer_for, teacher_alpha, tradable_buckets,
)
from hrlxf_agent.shield import Bounds, SafetyShield
from hrlxf_agent.snapshot import Snapshot
from hrlxf_agent.state import ROUND_FEATURES, FeatureSpec, StateBuilder, budget_use, op_of, round_features

HISTORY = 8
# 2: static, role, alpha, batch; broadcast with the batch's mean relative time; legal, committed; no WAIT rows;
#    per-agent histories
# 3: H = 10; rule_base_q / rule_base_p, rule_op / rule_delta (the rule executor); the teacher's goal-free terms
MICRO_VERSION = 3
OPS = {"accept": 0, "reject": 1, "end": 2}


def micro_schema(spec: FeatureSpec) -> pa.Schema:
    f32 = pa.float32()
    return pa.schema([
        pa.field("run_id", pa.string()), pa.field("world_id", pa.string()), pa.field("agent_id", pa.string()),
        pa.field("seq", pa.int64()), pa.field("step", pa.int64()), pa.field("batch", pa.int64()), pa.field("partner", pa.string()),
        pa.field("version", pa.int64()), pa.field("negotiation_id", pa.string()), pa.field("is_buy", pa.bool_()),
        pa.field("round", pa.int64()),
        pa.field("rel_time", pa.float64()),
        pa.field("static", pa.list_(f32, len(spec.static))), pa.field("role", pa.list_(f32, 2)),
        pa.field("history", pa.list_(f32, HISTORY * ROUND_FEATURES)), pa.field("history_len", pa.int64()),
        pa.field("time_mask", pa.list_(f32, spec.horizon + 1)), pa.field("q_safe", pa.list_(f32, spec.horizon + 1)),
        pa.field("b_free", pa.float64()), pa.field("broadcast", pa.list_(f32, len(spec.broadcast))),
        pa.field("committed", pa.list_(f32, 8)),
        pa.field("alpha", pa.float64()),
        pa.field("tradable", pa.list_(f32, 4)), pa.field("offer_delta", pa.int64()), pa.field("budget", pa.float64()),
        pa.field("op", pa.int64()), pa.field("delta", pa.int64()), pa.field("q", pa.float64()), pa.field("p", pa.float64()),
        pa.field("base_q", pa.float64()), pa.field("base_p", pa.float64()),
        pa.field("rule_base_q", pa.float64()), pa.field("rule_base_p", pa.float64()),
        pa.field("rule_op", pa.int64()), pa.field("rule_delta", pa.int64()),
        pa.field("res_q", pa.float64()), pa.field("res_p", pa.float64()),
        pa.field("legal", pa.bool_()), pa.field("deal", pa.bool_()), pa.field("deal_value", pa.float64()),
        pa.field("goal", pa.list_(f32, 16)), pa.field("goal_filled", pa.bool_()),
    ], metadata={"version": str(MICRO_VERSION), "feature_fingerprint": spec.fingerprint, "history": str(HISTORY)})


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


@dataclass(frozen=True)
class Context:
    """What an agent knew when it decided a batch: the Snapshot, L1's bounds and L4's monitor."""

    snap: Snapshot
    bounds: Bounds
    monitor: GlobalMonitor
    remaining: tuple[np.ndarray, np.ndarray]
    static: np.ndarray
    committed: np.ndarray  # (8,) signed today per bucket / n_lines, laid out as broadcast[0:8] (buy, sell, buy, ...)


def running(d: dict[str, Any]) -> bool:
    """Online, L3 / L4 run on a thread only while its negotiation goes on (`HRLPolicy._running`)."""
    return d["negotiation_id"] is not None


def offer_in(d: dict[str, Any]) -> tuple | None:
    return (d["in_q"], d["in_t"], d["in_p"]) if d["in_q"] is not None else None


class WorldLog:
    """One converted world's decisions, with the context of each rebuilt on demand (cached per version)."""

    def __init__(self, world: Path, spec: FeatureSpec):
        self.builder = StateBuilder(spec)
        self.shield = SafetyShield()
        self.days = {(d["agent_id"], d["step"]): d["snapshot_json"] for d in pq.read_table(world / "days.parquet").to_pylist()}
        table = pq.read_table(world / "decisions.parquet")
        rows = table.to_pylist()
        if "batch" not in table.column_names:  # event tables of version 1
            for d in rows:
                d["batch"] = None
        self.decisions = sorted(rows, key=lambda d: (d["agent_id"], d["seq"]))
        side = {(d["agent_id"], d["partner"]): d["is_buy"] for d in self.decisions}
        self.deals_by_day: dict[tuple[str, int], list[tuple[int, tuple]]] = defaultdict(list)
        self.deal_of: dict[tuple[str, int, str], tuple] = {}
        for o in pq.read_table(world / "outcomes.parquet").to_pylist():
            if o["success"] and (o["agent_id"], o["partner"]) in side:
                deal = (side[(o["agent_id"], o["partner"])], o["agreement_t"] - o["step"], o["agreement_q"], o["agreement_p"])
                self.deals_by_day[(o["agent_id"], o["step"])].append((o["version"], deal))
                self.deal_of[(o["agent_id"], o["step"], o["partner"])] = deal
        self._mornings: dict[tuple[str, int], tuple[Snapshot, GlobalMonitor]] = {}
        self._contexts: dict[tuple[str, int, int], Context] = {}

    def context(self, d: dict[str, Any]) -> Context | None:
        day = (d["agent_id"], d["step"])
        if day not in self._mornings:
            if day not in self.days:
                return None
            morning = Snapshot.from_dict(json.loads(self.days[day])).within(self.builder.spec.horizon)
            monitor = GlobalMonitor()
            monitor.reset(morning, heuristic_goal(morning))
            self._mornings[day] = (morning, monitor)
        key = (*day, d["version"])
        if key not in self._contexts:
            morning, monitor = self._mornings[day]
            done = [deal for v, deal in sorted(self.deals_by_day.get(day, [])) if v <= d["version"]]
            snap = with_deals(morning, done)
            cb, cs = monitor.committed_today(snap)
            committed = np.stack([cb, cs], axis=1).reshape(-1) / snap.n_lines
            self._contexts[key] = Context(snap, self.shield.bounds(snap), monitor, monitor.remaining(snap),
                                          self.builder.static(snap), committed.astype(np.float32))
        return self._contexts[key]

    def batches(self) -> dict[tuple[str, int], list[dict[str, Any]]]:
        """The running threads of every batch, by (agent_id, batch), in partner order (as the agent sorts them)."""
        out: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        for d in self.decisions:
            if d["batch"] is not None and running(d):
                out[(d["agent_id"], d["batch"])].append(d)
        return {k: sorted(v, key=lambda d: d["partner"]) for k, v in out.items()}

    def broadcast(self, ctx: Context, rel_time: float) -> np.ndarray:
        return ctx.monitor.broadcast(ctx.snap, ctx.bounds, self.builder.money_scale(ctx.snap), rel_time)


def mean_rel_time(threads: list[dict[str, Any]]) -> float:
    """The relative time the monitor broadcasts for a batch: the mean over its running threads."""
    return float(np.mean([d["rel_time"] or 0.0 for d in threads])) if threads else 0.0


def micro_rows(world: Path, spec: FeatureSpec) -> list[dict[str, Any]]:
    log = WorldLog(world, spec)
    batches = log.batches()
    batch_rel = {k: mean_rel_time(v) for k, v in batches.items()}
    batch_sides = {k: {side: sum(1 for d in v if d["is_buy"] == side) for side in (True, False)} for k, v in batches.items()}
    history: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    rows = []
    H = spec.horizon
    for d in log.decisions:
        ctx = log.context(d)
        if ctx is None or d["op"] not in OPS:  # WAIT (LitaAgentYR): no decision yet, the agent is asked again
            continue
        snap, bounds = ctx.snap, ctx.bounds
        is_buy, rel = d["is_buy"], d["rel_time"] or 0.0
        o_in = offer_in(d)
        o_out = (d["out_q"], d["out_t"], d["out_p"]) if d["out_q"] is not None else None
        thread = (d["agent_id"], d["negotiation_id"] or f"{d['partner']}:{d['step']}")  # both sides of a negotiation may be logged
        past = history[thread][-(HISTORY - 1):] + [round_features(snap, is_buy, o_in, None, None, rel, H)]
        window = np.zeros((HISTORY, ROUND_FEATURES), dtype=np.float32)
        window[HISTORY - len(past):] = np.stack(past)
        history[thread].append(round_features(snap, is_buy, o_in, o_out, d["op"], rel, H))
        catalog = snap.catalog_price_in if is_buy else snap.catalog_price_out
        chosen = o_in if d["op"] == "accept" else o_out
        delta = int(chosen[1]) - snap.step if chosen is not None else -1
        q = chosen[0] / snap.n_lines if chosen is not None else None
        p = chosen[2] / catalog if chosen is not None else None
        base = log.shield.baseline(snap, bounds, is_buy, delta) if 0 <= delta <= snap.horizon else None
        base_q = base[0] / snap.n_lines if base else None
        base_p = base[2] / catalog if base else None
        # the residual base of ``base="rules"`` (HRLPolicy._offers): the rule executor's counter-offer when it
        # is for the chosen day, else L1's baseline
        n_side = batch_sides.get((d["agent_id"], d["batch"]), {}).get(is_buy, 1)
        rule, rule_k = heuristic_action(snap, bounds, ctx.monitor.goal, ctx.remaining, max(1, n_side), is_buy, o_in, rel)
        rule_base = (rule_offer_for(rule, snap.step + delta) if delta >= 0 else None) or base
        issues = snap.buy_issues if is_buy else snap.sell_issues
        legal = issues.contains(chosen) if chosen is not None and issues is not None else None
        deal = log.deal_of.get((d["agent_id"], d["step"], d["partner"]))
        spot = snap.trading_price_in if is_buy else snap.trading_price_out
        value = None
        if deal is not None:
            value = ((spot - deal[3]) if is_buy else (deal[3] - spot)) * deal[2] / (snap.n_lines * catalog)
        c = log.broadcast(ctx, batch_rel.get((d["agent_id"], d["batch"]), rel))
        mask = bounds.time_mask_buy if is_buy else bounds.time_mask_sell
        rows.append({
            "run_id": d["run_id"], "world_id": d["world_id"], "agent_id": d["agent_id"], "seq": d["seq"], "step": d["step"],
            "batch": d["batch"], "partner": d["partner"], "version": d["version"], "negotiation_id": d["negotiation_id"],
            "is_buy": is_buy, "round": d["round"], "rel_time": d["rel_time"],
            "static": ctx.static.tolist(), "role": StateBuilder.role_one_hot(is_buy).tolist(),
            "history": window.reshape(-1).tolist(), "history_len": len(past),
            "time_mask": np.where(np.isfinite(mask), 0.0, -1e9)[: H + 1].tolist(),
            "q_safe": (bounds.q_safe_buy if is_buy else bounds.q_safe_sell)[: H + 1].tolist(),
            "b_free": bounds.b_free, "broadcast": c.tolist(), "committed": ctx.committed.tolist(),
            "alpha": teacher_alpha(snap, bounds, ctx.remaining, is_buy, o_in, rel),
            # what the teacher reads besides the goal: the training stages rebuild alpha against L2's goal
            "tradable": tradable_buckets(snap, mask).astype(np.float32).tolist(),
            "offer_delta": int(o_in[1]) - snap.step if o_in is not None else None,
            "budget": budget_use(bounds.b_free, is_buy, o_in),
            "op": OPS[d["op"]], "delta": delta, "q": q, "p": p, "base_q": base_q, "base_p": base_p,
            "rule_op": OPS[op_of(rule)],
            "rule_delta": min(max(rule_k, 0), H),
            "rule_base_q": rule_base[0] / snap.n_lines if rule_base else None,
            "rule_base_p": rule_base[2] / catalog if rule_base else None,
            "res_q": (q - base_q) if q is not None and base_q is not None else None,
            "res_p": (p - base_p) if p is not None and base_p is not None else None,
            "legal": legal, "deal": deal is not None, "deal_value": value, "goal": [0.0] * 16, "goal_filled": False,
        })
    return rows


def build_micro(lake: Path, spec: FeatureSpec | None = None) -> dict[str, Any]:
    """The micro table of every converted world not built yet."""
    from tasks.tables import build_per_world

    spec = spec or FeatureSpec()
    return build_per_world(lake, "micro", lambda world: micro_rows(world, spec), micro_schema(spec))
