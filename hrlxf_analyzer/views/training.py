"""Training: each model's metrics and loss curves, each bundle's headline, and the online fine-tuning runs'
learning curves (reward, the paired evaluations against the start and PenguinAgent with their half widths,
the PPO diagnostics)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import polars as pl
from dash import dcc, html
from plotly.subplots import make_subplots

from hrlxf_analyzer import data as D
from hrlxf_analyzer.views.common import figure_layout, message, picker, table

CURVES = ("reward", "score", "eval/vs_start", "eval/vs_penguin", "l3/approx_kl", "l3/entropy", "l3/value_loss",
          "l3/clipfrac", "l2/approx_kl", "l2/entropy", "l2/value_loss", "l2/day_reward")


def loss_figure(hist: pl.DataFrame, model: str) -> go.Figure:
    fig = go.Figure()
    for (part, metric), g in hist.filter(pl.col("model") == model).group_by("part", "metric", maintain_order=True):
        g = g.sort("epoch")
        fig.add_trace(go.Scatter(x=g["epoch"].to_list(), y=g["value"].to_list(), name=f"{part} {metric}", mode="lines+markers"))
    fig.update_layout(title=f"{model}: loss curves", xaxis_title="epoch")
    return figure_layout(fig, 320)


def finetune_figure(m: pl.DataFrame) -> go.Figure:
    """One small chart per curve the run logged; eval points carry their 95% half widths."""
    curves = [c for c in CURVES if c in m.columns and m[c].is_not_null().any()]
    cols = 3
    fig = make_subplots(rows=max(1, -(-len(curves) // cols)), cols=cols, subplot_titles=curves, vertical_spacing=0.1)
    for i, c in enumerate(curves):
        g = m.filter(pl.col(c).is_not_null())
        hw = f"{c}_half_width"
        err = dict(type="data", array=g[hw].to_list()) if hw in g.columns else None
        fig.add_trace(go.Scatter(x=g["iteration"].to_list(), y=g[c].to_list(), error_y=err, name=c, mode="lines+markers",
                                 showlegend=False), row=i // cols + 1, col=i % cols + 1)
    return figure_layout(fig, 260 * max(1, -(-len(curves) // cols)))


def render(store: D.Store, params: dict[str, str]) -> Any:
    root = store.root
    metrics, hist, bundles, runs = D.model_metrics(root), D.histories(root), D.bundles(root), D.finetune_runs(root)
    if not (metrics or bundles.height or runs):
        return message("no models, bundles or fine-tuning runs here (run `hrlxf train`, `hrlxf finetune`, or `make run`)",
                       "missing")
    parts: list[Any] = [html.H2("Training")]
    parts.append(html.H3("Bundles"))
    parts.append(table(bundles, table_id="bundles") if bundles.height else message("no bundle (run `hrlxf train`)", "missing"))
    parts.append(html.H3("Models"))
    if not metrics:
        parts.append(message("no trained model (run `hrlxf train`)", "missing"))
    for model, values in metrics.items():
        kv = pl.DataFrame({"metric": list(values), "value": list(values.values())}, schema={"metric": pl.String, "value": pl.Float64})
        curves = dcc.Graph(figure=loss_figure(hist, model), config={"displaylogo": False}) \
            if hist.filter(pl.col("model") == model).height else message(f"{model}: no history.json")
        parts.append(html.Section([html.H4(model), html.Div([html.Div(table(kv, table_id=f"metrics-{model}"), className="narrow"),
                                                             html.Div(curves, className="wide")], className="row")],
                                  className="card"))
    parts.append(html.H3("Online fine-tuning"))
    if not runs:
        parts.append(message("no fine-tuning run (run `hrlxf finetune`)", "missing"))
    else:
        run = params.get("run") or runs[-1]
        if run not in runs:
            raise ValueError(f"no fine-tuning run {run!r} (runs: {', '.join(runs)})")
        m = D.finetune_metrics(root, run)
        last = m.tail(1).select([c for c in ("iteration", "phase", "score", "reward", "eval/vs_start", "eval/vs_penguin",
                                              "unsafe", "illegal") if c in m.columns])
        parts += [html.Div([picker("run", runs, run)], className="pickers"),
                  html.P(f"{m.height} iterations logged; last:"), table(last, table_id="finetune-last"),
                  dcc.Graph(id="finetune-curves", figure=finetune_figure(m), config={"displaylogo": False})]
    return html.Div(parts)
