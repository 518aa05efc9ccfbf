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

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hrlxf_agent.heuristics import heuristic_action, rule_offer_for, teacher_alpha_from
from hrlxf_agent.state import ROUND_FEATURES, FeatureSpec, StateBuilder, budget_use, op_of, round_features
from tasks.tables import TABLES, WorldLog, fixed_list, with_deals  # noqa: F401 (with_deals: for the analyzer)

HISTORY = 8
# 2: static, role, alpha, batch; broadcast with the batch's mean relative time; legal, committed; no WAIT rows;
#    per-agent histories
# 3: H = 10; rule_base_q / rule_base_p, rule_op / rule_delta (the rule executor); the teacher's goal-free terms
MICRO_VERSION = 3
OPS = {"accept": 0, "reject": 1, "end": 2}
#: the micro columns computed row by row, in the order `micro_table` gathers them
_SCALARS = ("b_free", "offer_delta", "budget", "op", "delta", "q", "p", "base_q", "base_p", "rule_op", "rule_delta",
            "rule_base_q", "rule_base_p", "res_q", "res_p", "legal", "deal", "deal_value")


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


def teacher_alphas(log: WorldLog, ctx_ids, is_buy, offers: list[tuple | None], rel_times) -> np.ndarray:
    """`heuristics.teacher_alpha` of many threads at once: the same arguments per thread, one call of the
    agent's `teacher_alpha_from` on all of them."""
    n = len(ctx_ids)
    if n == 0:
        return np.zeros(0)
    ctx_ids = np.asarray(ctx_ids, dtype=np.int64)
    sides = np.where(np.asarray(is_buy, dtype=bool), 0, 1)
    gaps = np.stack([c.gaps for c in log.contexts])[ctx_ids, sides]
    tradable = np.stack([c.tradable for c in log.contexts])[ctx_ids, sides]
    steps = [log.contexts[i].snap.step for i in ctx_ids.tolist()]
    has_offer = np.array([o is not None for o in offers])
    delta = np.array([int(o[1]) - s if o is not None else 0 for o, s in zip(offers, steps)], dtype=np.int64)
    budget = np.array([budget_use(log.contexts[i].bounds.b_free, b, o) for i, b, o in zip(ctx_ids.tolist(), is_buy, offers)])
    return teacher_alpha_from(gaps, tradable, has_offer, delta, np.asarray(rel_times, dtype=float), budget,
                              log.builder.spec.horizon)


def micro_table(world: Path | WorldLog, spec: FeatureSpec | None = None) -> pa.Table:
    """The micro table of one converted world, column by column: the agent's functions per decision where a
    row needs them (round features, the rule executor, L1's baseline), per context (bounds, static, masks)
    or batch (broadcast) where rows share them, and on all rows at once (the teacher)."""
    log = world if isinstance(world, WorldLog) else WorldLog(world, spec or FeatureSpec())
    spec = log.builder.spec
    c = log.col
    batches = log.batches()
    is_buy_col = c["is_buy"]
    batch_sides = {k: {side: sum(1 for i in v if is_buy_col[i] == side) for side in (True, False)} for k, v in batches.items()}
    H = spec.horizon
    shield = log.shield
    scalars: list[tuple] = []  # per row, the values of _SCALARS
    keep: list[int] = []  # decision index of each row
    ctx_of: list[int] = []
    offers: list[tuple | None] = []
    rels: list[float] = []
    pre: list[np.ndarray] = []  # the round as L3 sees it before answering (last of the window)
    post: list[np.ndarray] = []  # the round as it enters the thread's history
    thread_of: list[int] = []
    threads: dict[tuple[str, str], int] = {}
    broadcasts: list[np.ndarray] = []
    baselines: dict[tuple[int, bool, int], tuple | None] = {}
    rules: dict[tuple, tuple] = {}  # heuristic_action by its arguments (the context by its index)
    pre_of: dict[tuple, np.ndarray] = {}
    post_of: dict[tuple, np.ndarray] = {}
    context_id, contexts, deal_of, batch_rel_time = log.context_id, log.contexts, log.deal_of, log.batch_rel_time
    for i, (aid, step, version, batch, partner, nid, is_buy, rel_time, in_q, in_t, in_p, op, out_q, out_t, out_p) in enumerate(zip(
            c["agent_id"], c["step"], c["version"], c["batch"], c["partner"], c["negotiation_id"], is_buy_col, c["rel_time"],
            c["in_q"], c["in_t"], c["in_p"], c["op"], c["out_q"], c["out_t"], c["out_p"])):
        k = context_id(aid, step, version)
        if k is None or op not in OPS:  # WAIT (LitaAgentYR): no decision yet, the agent is asked again
            continue
        ctx = contexts[k]
        snap, bounds = ctx.snap, ctx.bounds
        rel = rel_time or 0.0
        o_in = (in_q, in_t, in_p) if in_q is not None else None
        o_out = (out_q, out_t, out_p) if out_q is not None else None
        thread = (aid, nid or f"{partner}:{step}")  # both sides of a negotiation may be logged
        thread_of.append(threads.setdefault(thread, len(threads)))
        # the agent's functions are pure: rows that give them the same arguments (an agent answering a thread
        # that is already over gives the same answer round after round) share one call
        key = (k, is_buy, o_in, rel)
        if key not in pre_of:
            pre_of[key] = round_features(snap, is_buy, o_in, None, None, rel, H)
        pre.append(pre_of[key])
        key = (k, is_buy, o_in, o_out, op, rel)
        if key not in post_of:
            post_of[key] = round_features(snap, is_buy, o_in, o_out, op, rel, H)
        post.append(post_of[key])
        n_lines = snap.n_lines
        catalog = snap.catalog_price_in if is_buy else snap.catalog_price_out
        chosen = o_in if op == "accept" else o_out
        delta = int(chosen[1]) - snap.step if chosen is not None else -1
        q = chosen[0] / n_lines if chosen is not None else None
        p = chosen[2] / catalog if chosen is not None else None
        if 0 <= delta <= snap.horizon:
            bkey = (k, is_buy, delta)
            if bkey not in baselines:
                baselines[bkey] = shield.baseline(snap, bounds, is_buy, delta)
            base = baselines[bkey]
        else:
            base = None
        base_q = base[0] / n_lines if base else None
        base_p = base[2] / catalog if base else None
        # the residual base of ``base="rules"`` (HRLPolicy._offers): the rule executor's counter-offer when it
        # is for the chosen day, else L1's baseline
        bkey = (aid, batch)
        n_side = batch_sides.get(bkey, {}).get(is_buy, 1)
        key = (k, max(1, n_side), is_buy, o_in, rel)
        if key not in rules:
            rules[key] = heuristic_action(snap, bounds, ctx.monitor.goal, ctx.remaining, max(1, n_side), is_buy, o_in, rel)
        rule, rule_k = rules[key]
        rule_base = (rule_offer_for(rule, snap.step + delta) if delta >= 0 else None) or base
        issues = snap.buy_issues if is_buy else snap.sell_issues
        legal = issues.contains(chosen) if chosen is not None and issues is not None else None
        deal = deal_of.get((aid, step, partner))
        value = None
        if deal is not None:
            spot = snap.trading_price_in if is_buy else snap.trading_price_out
            value = ((spot - deal[3]) if is_buy else (deal[3] - spot)) * deal[2] / (n_lines * catalog)
        batch_rel = batch_rel_time(bkey)
        broadcasts.append(log.broadcast(k, rel if batch_rel is None else batch_rel))
        keep.append(i)
        ctx_of.append(k)
        offers.append(o_in)
        rels.append(rel)
        scalars.append((
            bounds.b_free, int(o_in[1]) - snap.step if o_in is not None else None, budget_use(bounds.b_free, is_buy, o_in),
            OPS[op], delta, q, p, base_q, base_p, OPS[op_of(rule)], min(max(rule_k, 0), H),
            rule_base[0] / n_lines if rule_base else None, rule_base[2] / catalog if rule_base else None,
            (q - base_q) if q is not None and base_q is not None else None,
            (p - base_p) if p is not None and base_p is not None else None,
            legal, deal is not None, value,
        ))
    n = len(keep)
    schema = micro_schema(spec)
    if n == 0:
        return schema.empty_table()
    rows = np.asarray(keep, dtype=np.int64)
    ctx_ids = np.asarray(ctx_of, dtype=np.int64)
    buy = np.asarray([is_buy_col[i] for i in keep], dtype=bool)
    side = np.where(buy, 0, 1)
    # the thread's last HISTORY - 1 rounds before this one, then this one as L3 sees it, left-padded with zeros
    thread = np.asarray(thread_of, dtype=np.int64)
    order = np.lexsort((np.arange(n), thread))  # rows of a thread together, in decision order
    post_a = np.stack(post)
    window = np.zeros((n, HISTORY, ROUND_FEATURES), dtype=np.float32)
    window[:, HISTORY - 1] = np.stack(pre)
    length = np.ones(n, dtype=np.int64)
    for lag in range(1, HISTORY):
        src = np.arange(n) - lag
        ok = src >= 0
        ok[ok] = thread[order[src[ok]]] == thread[order[ok]]
        window[order[ok], HISTORY - 1 - lag] = post_a[order[src[ok]]]
        length[order[ok]] += 1
    alpha = teacher_alphas(log, ctx_of, buy.tolist(), offers, rels)
    static = np.stack([x.static for x in log.contexts])[ctx_ids]
    committed = np.stack([x.committed for x in log.contexts])[ctx_ids]
    time_mask = np.stack([x.time_mask for x in log.contexts])[ctx_ids, side]
    q_safe = np.stack([x.q_safe for x in log.contexts])[ctx_ids, side]
    tradable = np.stack([x.tradable for x in log.contexts])[ctx_ids, side]
    role = np.stack([StateBuilder.role_one_hot(True), StateBuilder.role_one_hot(False)])[side]
    take = pa.array(rows)
    columns = {name: pa.array(c[name], type=schema.field(name).type).take(take) for name in (
        "run_id", "world_id", "agent_id", "seq", "step", "batch", "partner", "version", "negotiation_id", "is_buy",
        "round", "rel_time")}
    columns.update({
        "static": fixed_list(static, len(spec.static)), "role": fixed_list(role, 2),
        "history": fixed_list(window, HISTORY * ROUND_FEATURES), "history_len": pa.array(length),
        "time_mask": fixed_list(time_mask, H + 1), "q_safe": fixed_list(q_safe, H + 1),
        "broadcast": fixed_list(np.stack(broadcasts), len(spec.broadcast)), "committed": fixed_list(committed, 8),
        "alpha": pa.array(alpha, type=pa.float64()), "tradable": fixed_list(tradable, 4),
        "goal": fixed_list(np.zeros((n, 16)), 16), "goal_filled": pa.array(np.zeros(n, dtype=bool)),
    })
    for name, values in zip(_SCALARS, zip(*scalars)):
        columns[name] = pa.array(values, type=schema.field(name).type)
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def micro_rows(world: Path, spec: FeatureSpec) -> list[dict[str, Any]]:
    """The micro table of one converted world as rows (`micro_table`)."""
    return micro_table(world, spec).to_pylist()


TABLES["micro"] = (micro_schema, micro_table)  # built with the others of its world (`tasks.world_tables`)
