"""The tracker: every decision of any agent class, and what it saw, as an append-only event log.

`tracked(cls, log_dir)` wraps any StdAgent / StdSyncAgent (ours or scml-agents')
without editing it. Each agent instance appends JSON lines to
``<log_dir>/<agent_id>.jsonl`` (schema: schemas/events.schema.json):

* ``agent_initialized``: class and full module path, level, roles, lines, steps, initial balance;
* ``day_snapshot``: the full `Snapshot` at the start of each day;
* ``decision``: one row per thread per batch: negotiation id, partner, role,
  round and relative time, the offer received, the op, the offer sent, the
  version of the Snapshot the agent saw (it changes with every deal) and the
  batch id (the agent's count of earlier batches), so the tables can group
  the threads decided together. A thread whose negotiation is already over
  has no negotiation id and no round (negmas ignores the response);
* ``negotiation_end``: success (with the agreement) or failure.

Contracts, shortfalls and scores are world facts: the collect stage writes
them once per world. Rows are buffered and written at the end of each day
and when the world ends (`close`), so tracking costs little inside a world.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from negmas.sao import ResponseType

from .intercept import DecisionHook, Offers, Responses, intercept
from .snapshot import DEFAULT_HORIZON, snapshot_from_awi, well_formed

EVENTS_SCHEMA_VERSION = 1
_OPS = {ResponseType.ACCEPT_OFFER: "accept", ResponseType.REJECT_OFFER: "reject", ResponseType.END_NEGOTIATION: "end"}


def _outcome(o: Any) -> list | None:
    return [int(o[0]), int(o[1]), float(o[2])] if o is not None and well_formed(o) else None


class TrackerHook(DecisionHook):
    """Writes one agent's events; changes nothing it sees."""

    def __init__(self, agent: Any, log_dir: Path, horizon: int = DEFAULT_HORIZON):
        self.path = Path(log_dir) / f"{agent.id}.jsonl"
        self.horizon = horizon
        self.buffer: list[str] = []
        self.version = 0
        self.batches = 0  # on_batch calls so far: the next batch's id
        self.initial_balance: float | None = None
        self.started = False

    # ------------------------------------------------------------ writing
    def emit(self, event: dict[str, Any]) -> None:
        event["v"] = EVENTS_SCHEMA_VERSION
        self.buffer.append(json.dumps(event, separators=(",", ":")))

    def flush(self) -> None:
        if not self.buffer:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write("\n".join(self.buffer) + "\n")
        self.buffer.clear()

    def _start(self, agent: Any) -> None:
        if self.started:
            return
        self.started = True
        awi = agent.awi
        self.initial_balance = float(awi.current_balance) if awi.current_step == 0 else None
        cls = type(agent)
        base = next((c for c in cls.__mro__ if not c.__module__.startswith("hrlxf_agent.intercept")), cls)
        self.emit({
            "type": "agent_initialized", "step": int(awi.current_step), "agent_id": agent.id,
            "class": base.__name__, "module": f"{base.__module__}.{base.__name__}",
            "level": int(awi.level), "can_buy": not awi.is_first_level, "can_sell": not awi.is_last_level,
            "n_lines": int(awi.n_lines), "n_steps": int(awi.n_steps), "initial_balance": self.initial_balance,
        })

    # ------------------------------------------------------------ hooks
    def on_day(self, agent: Any) -> None:
        self._start(agent)
        self.flush()
        snap = snapshot_from_awi(agent.awi, horizon=self.horizon, version=self.version,
                                 initial_balance=self.initial_balance or 0.0)
        event = {"type": "day_snapshot", "step": snap.step, "version": self.version, "snapshot": snap.to_dict()}
        note = getattr(agent, "plan_note", None)  # our agent's L2 goal of the day (the analyzer shows it)
        plan = note() if callable(note) else None
        if plan is not None:
            event["plan"] = plan
        self.emit(event)

    def on_batch(self, agent: Any, kind: str, offers: Offers, responses: Responses) -> Responses:
        self._start(agent)
        awi = agent.awi
        suppliers = set(awi.my_suppliers)
        step = int(awi.current_step)
        negotiators = getattr(agent, "negotiators", {})
        batch = self.batches
        self.batches += 1
        for partner, r in responses.items():
            entry = negotiators.get(partner)
            nmi = getattr(entry[0], "nmi", None) if entry else None
            state = nmi.state if nmi is not None else None
            self.emit({
                "type": "decision", "step": step, "version": self.version, "batch": batch, "kind": kind, "partner": partner,
                "negotiation_id": getattr(nmi, "id", None), "is_buy": partner in suppliers,
                "round": int(state.step) if state is not None else None,
                "rel_time": float(state.relative_time) if state is not None else None,
                "offer_in": _outcome(offers.get(partner)),
                "op": _OPS.get(r.response, str(r.response.name).lower()),
                "offer_out": _outcome(r.outcome) if r.response == ResponseType.REJECT_OFFER else None,
            })
        return responses

    def on_deal(self, agent: Any, partner: str, agreement: Any) -> None:
        self.version += 1
        self.emit({"type": "negotiation_end", "step": int(agent.awi.current_step), "partner": partner,
                   "success": True, "agreement": _outcome(agreement), "version": self.version})

    def on_failure(self, agent: Any, partner: str) -> None:
        self.emit({"type": "negotiation_end", "step": int(agent.awi.current_step), "partner": partner,
                   "success": False, "agreement": None, "version": self.version})

    def close(self) -> None:
        self.flush()


def tracked(cls: type, log_dir: Path, horizon: int = DEFAULT_HORIZON) -> type:
    """``cls`` with every decision and day logged under ``log_dir``."""
    return intercept(cls, lambda agent: TrackerHook(agent, log_dir, horizon), "Tracked")
