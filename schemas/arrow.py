"""Arrow schemas of the typed event tables (``<lake>/events/<run_id>/<world_id>/*.parquet``), version 2.

One table per event kind, one directory per world. ``snapshot_json`` keeps the
whole `Snapshot` exactly (``Snapshot.from_dict(json.loads(...))``): the tables
stage rebuilds features from it with the runtime StateBuilder.

Version 2 adds ``decisions.batch`` (the tracker's batch id; null for logs
written before the tracker had it). Readers of version-1 tables treat a
missing ``batch`` column as all null.
"""

from __future__ import annotations

import pyarrow as pa

EVENT_TABLES_VERSION = 2

_KEYS = [pa.field("run_id", pa.string(), nullable=False), pa.field("world_id", pa.string(), nullable=False)]
_OUTCOME = [("q", pa.int64()), ("t", pa.int64()), ("p", pa.float64())]


def _outcome_fields(prefix: str) -> list[pa.Field]:
    return [pa.field(f"{prefix}_{name}", typ) for name, typ in _OUTCOME]


AGENTS = pa.schema(_KEYS + [
    pa.field("agent_id", pa.string(), nullable=False), pa.field("agent_class", pa.string()), pa.field("module", pa.string()),
    pa.field("level", pa.int64()), pa.field("can_buy", pa.bool_()), pa.field("can_sell", pa.bool_()),
    pa.field("n_lines", pa.int64()), pa.field("n_steps", pa.int64()), pa.field("initial_balance", pa.float64()),
    pa.field("score", pa.float64()),
], metadata={"version": str(EVENT_TABLES_VERSION)})

DAYS = pa.schema(_KEYS + [
    pa.field("agent_id", pa.string(), nullable=False), pa.field("step", pa.int64(), nullable=False),
    pa.field("version", pa.int64()), pa.field("snapshot_json", pa.string(), nullable=False),
], metadata={"version": str(EVENT_TABLES_VERSION)})

DECISIONS = pa.schema(_KEYS + [
    pa.field("agent_id", pa.string(), nullable=False), pa.field("seq", pa.int64(), nullable=False),
    pa.field("step", pa.int64(), nullable=False), pa.field("version", pa.int64()), pa.field("batch", pa.int64()),
    pa.field("kind", pa.string()), pa.field("partner", pa.string()), pa.field("negotiation_id", pa.string()), pa.field("is_buy", pa.bool_()),
    pa.field("round", pa.int64()), pa.field("rel_time", pa.float64()),
    *_outcome_fields("in"), pa.field("op", pa.string()), *_outcome_fields("out"),
], metadata={"version": str(EVENT_TABLES_VERSION)})

OUTCOMES = pa.schema(_KEYS + [
    pa.field("agent_id", pa.string(), nullable=False), pa.field("step", pa.int64(), nullable=False),
    pa.field("partner", pa.string()), pa.field("success", pa.bool_()), pa.field("version", pa.int64()),
    *_outcome_fields("agreement"),
], metadata={"version": str(EVENT_TABLES_VERSION)})

CONTRACTS = pa.schema(_KEYS + [
    pa.field("contract_id", pa.string()), pa.field("seller", pa.string()), pa.field("buyer", pa.string()),
    pa.field("delivery_time", pa.int64()), pa.field("quantity", pa.int64()), pa.field("unit_price", pa.float64()),
    pa.field("signed_at", pa.int64()), pa.field("executed_at", pa.int64()), pa.field("nullified_at", pa.int64()),
], metadata={"version": str(EVENT_TABLES_VERSION)})

DAILY = pa.schema(_KEYS + [
    pa.field("agent_id", pa.string(), nullable=False), pa.field("step", pa.int64(), nullable=False),
    pa.field("shortfall_quantity", pa.int64()), pa.field("inventory_input", pa.int64()), pa.field("balance", pa.float64()),
], metadata={"version": str(EVENT_TABLES_VERSION)})

QUARANTINE = pa.schema(_KEYS + [pa.field("reason", pa.string(), nullable=False)],
                       metadata={"version": str(EVENT_TABLES_VERSION)})

TABLES = {"agents": AGENTS, "days": DAYS, "decisions": DECISIONS, "outcomes": OUTCOMES, "contracts": CONTRACTS, "daily": DAILY}
