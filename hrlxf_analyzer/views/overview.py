"""Overview: what the data root holds. The collections (worlds done / failed, events per agent type, the
quarantine) and every paired evaluation (candidate - reference with its interval, a forest plot, per-candidate
metrics, unsafe / illegal counts), each linked to the worlds behind it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import polars as pl
from dash import dcc, html

from hrlxf_analyzer import data as D
from hrlxf_analyzer.views.common import figure_layout, href, message, table

EMPTY = ("This data root holds nothing yet. `make run` fills it all; or step by step: `hrlxf collect` (expert worlds), "
         "`hrlxf tables` (the lake), `hrlxf train` (models), `hrlxf evaluate` (paired evaluations), `hrlxf audit` "
         "(unsafe / illegal decisions), `hrlxf finetune` (online learning).")
SIDE_COLOR = {1: "#2a9d4b", -1: "#c0392b", 0: "#7f8c8d"}


def forest(paired: pl.DataFrame) -> go.Figure:
    """Each paired difference with its 95% interval (green above 0, red below, grey holding 0)."""
    rows = paired.filter(pl.col("mean").is_not_null()).to_dicts()
    fig = go.Figure()
    for i, p in enumerate(rows):
        color = SIDE_COLOR[p["side"]]
        err = dict(type="data", symmetric=False, array=[p["hi"] - p["mean"]], arrayminus=[p["mean"] - p["lo"]],
                   color=color, thickness=2) if p["lo"] is not None else None
        fig.add_trace(go.Scatter(x=[p["mean"]], y=[f"{p['a']} - {p['b']}"], error_x=err, mode="markers",
                                 marker=dict(color=color, size=9), showlegend=False,
                                 hovertemplate=f"{p['a']} - {p['b']}: %{{x:+.4f}}<extra></extra>"))
    fig.add_vline(x=0, line=dict(color="black", width=1))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(xaxis_title="paired score difference, 95% interval")
    return figure_layout(fig, 120 + 40 * max(1, len(rows)))


def render(store: D.Store, params: dict[str, str]) -> Any:
    root = store.root
    runs, evals = D.collections(root), D.evaluations(root)
    audit = (D.audit_dir(root) / "audit.json").exists()
    has_training = any(root.glob("models/*/metrics.json")) or any(root.glob("finetune/*/metrics.jsonl"))
    if not (runs or evals or audit or has_training):
        return message(EMPTY, "missing")
    parts: list[Any] = [html.H2("Collections")]
    parts += [_collection(r) for r in runs] or [message("no collection (run `hrlxf collect`, then `hrlxf tables`)", "missing")]
    q = D.quarantine(root)
    parts += [html.H3(f"Quarantine ({q.height} worlds)"),
              table(q, table_id="quarantine") if q.height else html.P("no world quarantined", className="note")]
    parts.append(html.H2("Evaluations"))
    parts += [_evaluation(root, p) for p in evals] or [message("no evaluation (run `hrlxf evaluate`)", "missing")]
    parts.append(html.P([dcc.Link("audit decisions", href="/decisions") if audit else "no audit (run `hrlxf audit`)",
                         " · ", dcc.Link("training", href="/training")]))
    return html.Div(parts)


def _collection(run: dict[str, Any]) -> Any:
    s, rid = run["summary"], run["run_id"]
    events = pl.DataFrame([{"agent type": k, "events": v} for k, v in sorted((s.get("events_per_agent_type") or {}).items())],
                          schema={"agent type": pl.String, "events": pl.Int64})
    failed = pl.DataFrame([{"world": f.get("world_id"), "error": f.get("error")} for f in s.get("failed", [])],
                          schema={"world": pl.String, "error": pl.String})
    worlds = run["lake_worlds"]
    return html.Section([
        html.H3(f"Run {rid}"),
        html.P(f"{s.get('worlds_done', 0)} worlds done, {s.get('worlds_failed', 0)} failed, {s.get('events', 0):,} events"
               f" in {s.get('seconds', 0)} s; {len(worlds)} worlds in the lake", className=f"run-{rid}"),
        html.Div([html.Div(table(events, table_id=f"events-{rid}"), className="half"),
                  html.Div([html.H4("failures"), table(failed) if failed.height else html.P("none", className="note")],
                           className="half")], className="row"),
        html.Div([html.Span("worlds: ")] + [dcc.Link(w, href=href("/world", world=f"lake:{rid}/{w}"), className="chip")
                                            for w in worlds] if worlds else
                 message(f"run {rid} is not in the lake yet (run `hrlxf tables`)", "missing"), className="chips"),
    ], className="card")


def _evaluation(root: Path, path: Path) -> Any:
    rel = str(path.relative_to(root))
    try:
        doc = D._json(path)
        paired, cands = D.paired_table(doc), D.candidate_table(doc)
        worlds_dir, worlds = D.eval_worlds(root, path, doc)
    except D.DataMissing as e:
        return html.Section([html.H3(rel), message(str(e), "missing")], className="card")
    cfg = doc.get("config", {})
    parts = [html.H3(rel),
             html.P(f"{doc.get('worlds', {}).get('complete', '?')} worlds x {cfg.get('steps', '?')} steps, reference "
                    f"{doc.get('reference')}; dropped worlds: {len(doc.get('worlds', {}).get('dropped', []))}"),
             table(paired.drop("side"), table_id=f"paired-{rel}"),
             dcc.Graph(figure=forest(paired), config={"displaylogo": False}) if paired.height else message("no paired difference"),
             html.H4("per candidate"), table(cands)]
    if worlds_dir is None:
        parts.append(message("this evaluation predates the worlds' tracker logs (no worlds_dir in evaluation.json): "
                             "run `hrlxf evaluate` again to replay its worlds", "missing"))
    elif worlds.height:
        specs = {(r["world"], r["candidate"]): r["world_spec"] for r in worlds.iter_rows(named=True)}
        wide = worlds.pivot(on="candidate", index="world", values="score", aggregate_function="first").sort("world")
        links = {c: (lambda r, c=c: href("/world", world=specs.get((r["world"], c))) if specs.get((r["world"], c)) else None)
                 for c in wide.columns if c != "world"}
        tracked = worlds["world_spec"].is_not_null().sum()
        parts += [html.H4(f"worlds ({tracked} of {worlds.height} tracked; a score links to its world)"),
                  table(wide, links=links, table_id=f"worlds-{rel}")]
    return html.Section(parts, className="card")
