"""Decisions: the audit's unsafe and illegal decisions, filtered by agent, kind of violation and world, each
linked to its replay in the audit's tracked world."""

from __future__ import annotations

from typing import Any

import polars as pl
from dash import html

from hrlxf_analyzer import data as D
from hrlxf_analyzer.views.common import href, int_param, message, picker, table


def render(store: D.Store, params: dict[str, str]) -> Any:
    root = store.root
    doc = D.audit_doc(root)
    agent, violation = params.get("agent") or None, params.get("violation") or None
    world = int_param(params, "wid", None)
    names = sorted(doc.get("agents", {}))
    if agent and agent not in names:
        raise ValueError(f"no agent {agent!r} in the audit (it audited {', '.join(names)})")
    if violation and violation not in D.VIOLATIONS:
        raise ValueError(f"bad violation {violation!r}: one of {', '.join(D.VIOLATIONS)}")
    summary = pl.DataFrame([{"agent": a, **{k: v.get(k) for k in ("worlds", "decisions", "unsafe_buy", "unsafe_sell",
                                                                   "unsafe_any", "illegal", "off_grid", "score_mean")}}
                            for a, v in doc.get("agents", {}).items()])
    worlds = sorted({r["world"] for r in doc.get("per_world", [])})
    flagged = D.audit_decisions(root, agent, violation, world)
    link = {"partner": lambda r: href("/replay", world=r["world_spec"], agent=r["agent_id"], day=r["step"],
                                      partner=r["partner"]) if r["world_spec"] else None}
    return html.Div([
        html.H2("Audit: unsafe and illegal decisions"),
        table(summary, table_id="audit-summary"),
        html.Div([picker("agent", names, agent, clearable=True),
                  picker("violation", D.VIOLATIONS, violation, "kind of violation", clearable=True),
                  picker("wid", worlds, world, "world", clearable=True)], className="pickers"),
        html.P(f"{flagged.height} decisions" + ("" if flagged.height == 0 or flagged["world_spec"].is_not_null().all()
                                                 else " (some without a tracked world: no replay for those)"),
               id="decisions-count"),
        table(flagged, links=link, table_id="decisions-table", hide=("world_spec",)) if flagged.height
        else message("no decision matches these filters"),
    ])
