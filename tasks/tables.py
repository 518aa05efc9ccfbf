"""The macro table, and the reading of a converted world that the three training tables share.

``macro`` has one row per agent-day: x_static (12), X_temporal ((H+1) x 10,
flattened row-major) and x_role (2), computed by calling the runtime
`StateBuilder` on the logged Snapshot, so offline features are the online ones
(tests/test_tables.py proves it on a live LitaAgentHRL); the v2 goal label and
its mask (`tasks.labels`); the L2 reward parts: the day's cash delta, the
change of the potential Phi (stock at market value) to the next morning, and
the day's shortfall. ``tasks.micro`` (one row per decision: L3's inputs and
labels) and ``tasks.l4_distill`` (one row per batch: L4's inputs and the
teacher's alpha) read the same `WorldLog`; `tasks.world_tables` (the stage)
builds the three per world. This module names neither: the macro table's code
version (`tasks.code_version`) does not change with theirs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hrlxf_agent.heuristics import GlobalMonitor, heuristic_goal, tradable_buckets
from hrlxf_agent.shield import Bounds, SafetyShield
from hrlxf_agent.snapshot import Snapshot
from hrlxf_agent.state import FeatureSpec, StateBuilder
from tasks.labels import Trade, goal_label, potential

MACRO_VERSION = 2  # 2: H = 10, buckets [0,1] [2,4] [5,7] [8,H]; rule_goal (the planner's base)


def macro_schema(spec: FeatureSpec) -> pa.Schema:
    k = (spec.horizon + 1) * len(spec.temporal)
    return pa.schema([
        pa.field("run_id", pa.string()), pa.field("world_id", pa.string()), pa.field("agent_id", pa.string()),
        pa.field("step", pa.int64()), pa.field("x_static", pa.list_(pa.float32(), len(spec.static))),
        pa.field("x_temporal", pa.list_(pa.float32(), k)), pa.field("x_role", pa.list_(pa.float32(), 2)),
        pa.field("goal", pa.list_(pa.float32(), 16)), pa.field("goal_mask", pa.list_(pa.float32(), 16)),
        pa.field("rule_goal", pa.list_(pa.float32(), 16)),
        pa.field("cash_delta", pa.float64()), pa.field("phi_delta", pa.float64()), pa.field("shortfall", pa.int64()),
    ], metadata={"version": str(MACRO_VERSION), "feature_fingerprint": spec.fingerprint, "horizon": str(spec.horizon)})


_DECISION_COLUMNS = ("run_id", "world_id", "agent_id", "seq", "step", "version", "batch", "partner", "negotiation_id",
                     "is_buy", "round", "rel_time", "in_q", "in_t", "in_p", "op", "out_q", "out_t", "out_p")


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
    """What an agent knew when it decided a batch: the Snapshot, L1's bounds and L4's monitor; and, per side
    (index 0 buy, 1 sell), what every row of that context reads from them (computed once per context)."""

    snap: Snapshot
    bounds: Bounds
    monitor: GlobalMonitor
    remaining: tuple[np.ndarray, np.ndarray]
    static: np.ndarray
    committed: np.ndarray  # (8,) signed today per bucket / n_lines, laid out as broadcast[0:8] (buy, sell, buy, ...)
    gaps: np.ndarray  # (2, 4) the goal left per bucket / n_lines, as `teacher_alpha` reads it
    tradable: np.ndarray  # (2, 4) bool: `tradable_buckets` of each side's time mask
    time_mask: np.ndarray  # (2, H+1) 0 where the side's time mask is finite, else -1e9
    q_safe: np.ndarray  # (2, H+1)
    signed: tuple[np.ndarray, np.ndarray]  # `GlobalMonitor.committed_today` (buy, sell), game units


class WorldLog:
    """One converted world's decisions (as columns, in (agent_id, seq) order), with the context of each rebuilt
    on demand (cached per agent, day and version) and its running threads grouped by batch."""

    def __init__(self, world: Path, spec: FeatureSpec):
        self.world = Path(world)
        self.builder = StateBuilder(spec)
        self.shield = SafetyShield()
        self.days_table = pq.read_table(world / "days.parquet", columns=["run_id", "world_id", "agent_id", "step", "snapshot_json"])
        self.day_keys = list(zip(self.days_table.column("agent_id").to_pylist(), self.days_table.column("step").to_pylist()))
        self.days = dict(zip(self.day_keys, self.days_table.column("snapshot_json").to_pylist()))
        table = pq.read_table(world / "decisions.parquet")
        if "batch" not in table.column_names:  # event tables of version 1
            table = table.append_column("batch", pa.nulls(table.num_rows, pa.int64()))
        table = table.sort_by([("agent_id", "ascending"), ("seq", "ascending")])
        self.n = table.num_rows
        self.col = {name: table.column(name).to_pylist() for name in _DECISION_COLUMNS}
        c = self.col
        side = dict(zip(zip(c["agent_id"], c["partner"]), c["is_buy"]))
        self.deals_by_day: dict[tuple[str, int], list[tuple[int, tuple]]] = defaultdict(list)  # in the log's order
        self.deal_of: dict[tuple[str, int, str], tuple] = {}
        o = pq.read_table(world / "outcomes.parquet", columns=["agent_id", "step", "partner", "success", "version", "agreement_q",
                                                               "agreement_t", "agreement_p"]).to_pydict()
        for aid, step, partner, success, version, q, t, p in zip(o["agent_id"], o["step"], o["partner"], o["success"],
                                                                  o["version"], o["agreement_q"], o["agreement_t"], o["agreement_p"]):
            if success and (aid, partner) in side:
                deal = (side[(aid, partner)], t - step, q, p)
                self.deals_by_day[(aid, step)].append((version, deal))
                self.deal_of[(aid, step, partner)] = deal
        self._mornings: dict[tuple[str, int], tuple[Snapshot, GlobalMonitor] | None] = {}
        self._index: dict[tuple[str, int, int], int | None] = {}
        self.contexts: list[Context] = []
        self._broadcasts: dict[tuple[int, float], np.ndarray] = {}
        self._batches: dict[tuple[str, int], list[int]] | None = None
        self._batch_rel: dict[tuple[str, int], float] = {}

    def morning(self, day: tuple[str, int]) -> tuple[Snapshot, GlobalMonitor] | None:
        """An agent-day's morning Snapshot (cut to H) and the monitor reset on its rule goal (None: no such day)."""
        if day not in self._mornings:
            js = self.days.get(day)
            if js is None:
                self._mornings[day] = None
            else:
                morning = Snapshot.from_dict(json.loads(js)).within(self.builder.spec.horizon)
                monitor = GlobalMonitor()
                monitor.reset(morning, heuristic_goal(morning))
                self._mornings[day] = (morning, monitor)
        return self._mornings[day]

    def context_id(self, agent_id: str, step: int, version: int) -> int | None:
        """The index in ``contexts`` of what the agent knew at this version of this day (None: no morning snapshot)."""
        key = (agent_id, step, version)
        if key in self._index:
            return self._index[key]
        day = self.morning((agent_id, step))
        if day is None:
            self._index[key] = None
            return None
        morning, monitor = day
        done = [deal for v, deal in sorted(self.deals_by_day.get((agent_id, step), [])) if v <= version]
        snap = with_deals(morning, done)
        cb, cs = monitor.committed_today(snap)
        committed = np.array([cb, cs]).T.reshape(-1) / snap.n_lines  # (np.array: np.stack's result for 1-d rows, without its overhead)
        bounds = self.shield.bounds(snap)
        remaining = monitor.remaining(snap, (cb, cs))
        H = self.builder.spec.horizon
        masks = (bounds.time_mask_buy, bounds.time_mask_sell)
        self.contexts.append(Context(
            snap, bounds, monitor, remaining, self.builder.static(snap), committed.astype(np.float32),
            gaps=np.array([remaining[0] / float(snap.n_lines), remaining[1] / float(snap.n_lines)]),
            tradable=np.array([tradable_buckets(snap, m) for m in masks]),
            time_mask=np.where(np.isfinite(np.array([m[: H + 1] for m in masks])), 0.0, -1e9).astype(np.float32),
            q_safe=np.array([bounds.q_safe_buy[: H + 1], bounds.q_safe_sell[: H + 1]]).astype(np.float32),
            signed=(cb, cs),
        ))
        self._index[key] = i = len(self.contexts) - 1
        return i

    def batches(self) -> dict[tuple[str, int], list[int]]:
        """The decisions (row indices) of the running threads of every batch, by (agent_id, batch), in partner
        order (as the agent sorts them)."""
        if self._batches is None:
            c = self.col
            out: dict[tuple[str, int], list[int]] = defaultdict(list)
            for i, (aid, batch, nid) in enumerate(zip(c["agent_id"], c["batch"], c["negotiation_id"])):
                if batch is not None and nid is not None:  # L3 / L4 run on a thread only while its negotiation goes on
                    out[(aid, batch)].append(i)
            partner = c["partner"]
            self._batches = {k: sorted(v, key=lambda i: partner[i]) for k, v in out.items()}
        return self._batches

    def batch_rel_time(self, key: tuple[str, int]) -> float | None:
        """The relative time the monitor broadcasts for a batch: the mean over its running threads (None: no such
        batch)."""
        if key not in self._batch_rel:
            rows = self.batches().get(key)
            rel = self.col["rel_time"]
            # np.mean's own arithmetic (its sum, then / n) without its per-call overhead: the same float
            self._batch_rel[key] = None if rows is None else float(
                np.add.reduce(np.array([rel[i] or 0.0 for i in rows], dtype=float)) / len(rows))
        return self._batch_rel[key]

    def broadcast(self, ctx_id: int, rel_time: float) -> np.ndarray:
        """The monitor's c in this context at this relative time (remembered: the threads of a batch share it)."""
        key = (ctx_id, rel_time)
        c = self._broadcasts.get(key)
        if c is None:
            ctx = self.contexts[ctx_id]
            c = self._broadcasts[key] = ctx.monitor.broadcast(ctx.snap, ctx.bounds, self.builder.money_scale(ctx.snap),
                                                              rel_time, ctx.signed)
        return c


def fixed_list(values: np.ndarray, width: int) -> pa.FixedSizeListArray:
    """(N, width) -> a fixed-size list<float32> column."""
    flat = np.ascontiguousarray(np.asarray(values, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), width)


def macro_table(world: Path | WorldLog, builder: StateBuilder | None = None) -> pa.Table:
    """Every agent-day of one converted world (a directory, or its `WorldLog`), with features, labels and reward
    parts: the StateBuilder, the rule goal and the label per agent-day, read and written column by column."""
    log = world if isinstance(world, WorldLog) else WorldLog(world, (builder or StateBuilder()).spec)
    builder = log.builder
    c = log.col
    offers: dict[tuple[str, int], list[Trade]] = defaultdict(list)
    for aid, step, is_buy, q, t, p, rel in zip(c["agent_id"], c["step"], c["is_buy"], c["in_q"], c["in_t"], c["in_p"],
                                               c["rel_time"]):
        if q is not None:
            w = max(rel or 0.0, 0.05)  # later rounds say more about where the market is
            offers[(aid, step)].append(Trade(is_buy, t - step, q, p, w))
    y = pq.read_table(log.world / "daily.parquet", columns=["agent_id", "step", "shortfall_quantity", "balance"]).to_pydict()
    daily = {(a, s): (short, bal) for a, s, short, bal in zip(y["agent_id"], y["step"], y["shortfall_quantity"], y["balance"])}
    cols: dict[str, list] = defaultdict(list)
    for key in log.day_keys:
        snap, monitor = log.morning(key)
        m = builder.macro(snap)
        goal, mask = goal_label(snap, [Trade(*deal) for _, deal in log.deals_by_day.get(key, [])], offers.get(key, []))
        nxt = log.morning((key[0], key[1] + 1))
        today, before = daily.get(key), daily.get((key[0], key[1] - 1))
        cols["x_static"].append(m.x_static)
        cols["x_temporal"].append(m.x_temporal.reshape(-1))
        cols["x_role"].append(m.x_role)
        cols["goal"].append(goal)
        cols["goal_mask"].append(mask)
        cols["rule_goal"].append(monitor.goal.vector(snap))  # the monitor's goal: heuristic_goal of the morning
        cols["cash_delta"].append((today[1] - (before[1] if before is not None else snap.balance)) if today is not None else None)
        cols["phi_delta"].append((potential(nxt[0]) - potential(snap)) if nxt is not None else 0.0)
        cols["shortfall"].append(today[0] if today is not None else None)
    schema = macro_schema(builder.spec)
    if not log.day_keys:
        return schema.empty_table()
    arrays = {name: log.days_table.column(name) for name in ("run_id", "world_id", "agent_id", "step")}
    for name, values in cols.items():
        field = schema.field(name)
        arrays[name] = (fixed_list(np.stack(values), field.type.list_size) if pa.types.is_fixed_size_list(field.type)
                        else pa.array(values, type=field.type))
    return pa.Table.from_arrays([arrays[f.name] for f in schema], schema=schema)


def macro_rows(world: Path, builder: StateBuilder) -> list[dict[str, Any]]:
    """Every agent-day of one converted world as rows (`macro_table`)."""
    return macro_table(world, builder).to_pylist()


#: every table built per world from its events: name -> (schema of a FeatureSpec, table of a WorldLog). tasks.micro
#: and tasks.l4_distill add theirs when imported (this module does not import them: what reads only the macro
#: table does not depend on their code)
TABLES: dict[str, tuple[Callable[[FeatureSpec], pa.Schema], Callable[[WorldLog], pa.Table]]] = {
    "macro": (macro_schema, macro_table),
}
def macro_arrays(path: Path, spec: FeatureSpec | None = None) -> dict[str, np.ndarray]:
    """A macro file back as arrays: x_static (N,12), x_temporal (N,H+1,10), x_role (N,2), rule_goal (N,16)."""
    spec = spec or FeatureSpec()
    t = pq.read_table(path)
    n = t.num_rows
    return {
        "step": t.column("step").to_numpy(),
        "agent_id": np.asarray(t.column("agent_id").to_pylist()),
        "x_static": np.asarray(t.column("x_static").to_pylist(), dtype=np.float32).reshape(n, len(spec.static)),
        "x_temporal": np.asarray(t.column("x_temporal").to_pylist(), dtype=np.float32).reshape(n, spec.horizon + 1, len(spec.temporal)),
        "x_role": np.asarray(t.column("x_role").to_pylist(), dtype=np.float32).reshape(n, 2),
        "rule_goal": np.asarray(t.column("rule_goal").to_pylist(), dtype=np.float32).reshape(n, 16),
    }
