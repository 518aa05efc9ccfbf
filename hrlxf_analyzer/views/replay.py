"""Negotiation replay: one thread of one agent, decision by decision (prev / next / slider), with both sides'
offers, L1's room for each offer's delivery day and b_free then, the op, the outcome, and the batch the
decision was taken in (the agent's other threads of the same call)."""

from __future__ import annotations

from typing import Any

import dash
import plotly.graph_objects as go
import polars as pl
from dash import Input, Output, State, dcc, html
from plotly.subplots import make_subplots

from hrlxf_analyzer import data as D
from hrlxf_analyzer.views.common import figure_layout, fmt, href, int_param, kv, message, picker, table
from hrlxf_analyzer.views.world import open_factory

SHOWN = ["round", "batch", "kind", "in_q", "in_t", "in_p", "op", "out_q", "out_t", "out_p", "room_in", "room_out", "b_free"]


def figure(rows: list[dict[str, Any]], index: int) -> go.Figure:
    """Quantity, delivery day and unit price of each side's offers by decision, L1's room beside the quantities."""
    x = list(range(len(rows)))
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, subplot_titles=["quantity", "delivery day", "unit price"],
                        vertical_spacing=0.08)
    for r, key in ((1, "q"), (2, "t"), (3, "p")):
        for side, name, symbol, color in (("in", "partner's offer", "circle", "#1f77b4"),
                                          ("out", "our offer", "diamond", "#d62728")):
            fig.add_trace(go.Scatter(x=x, y=[row[f"{side}_{key}"] for row in rows], name=name, legendgroup=name,
                                     showlegend=r == 1, mode="lines+markers", line=dict(color=color),
                                     marker=dict(symbol=symbol, size=8, color=color)),
                          row=r, col=1)
    fig.add_trace(go.Scatter(x=x, y=[row["room_in"] for row in rows], name="q_safe at the partner's day",
                             mode="lines", line=dict(dash="dash", color="#1f77b4", width=1)), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=[row["room_out"] for row in rows], name="q_safe at our day",
                             mode="lines", line=dict(dash="dot", color="#d62728", width=1)), row=1, col=1)
    for r in (1, 2, 3):
        fig.add_vline(x=index, line=dict(color="black", width=1), row=r, col=1)
    fig.update_xaxes(title_text="decision (round)", row=3, col=1)
    return figure_layout(fig, 520)


def frame(store: D.Store, data: dict[str, Any], index: int) -> tuple[go.Figure, Any, Any, Any]:
    """Everything that moves with the slider: chart, the state of that decision, the rounds table, its batch."""
    rows = data["rows"]
    index = max(0, min(index, len(rows) - 1))
    row = rows[index]
    state = kv({"decision": f"{index + 1} of {len(rows)}", "round": row["round"], "op": row["op"],
                "partner's offer (q, day, p)": _offer(row, "in"), "our offer (q, day, p)": _offer(row, "out"),
                "L1 room at the partner's day": row["room_in"], "L1 room at our day": row["room_out"],
                "B_free": row["b_free"], "thread live": row["negotiation_id"] is not None})
    rounds = table(pl.DataFrame(rows).select(SHOWN), table_id="replay-rounds", highlight=index)
    if row["batch"] is None:
        batch = message("this log has no batch ids (written before the tracker recorded them)")
    else:
        world = store.world(data["spec"])
        others = D.batch(world, data["aid"], int(row["batch"]))
        batch = html.Div([html.H4(f"Batch {row['batch']}: the {others.height} threads decided in that call"),
                          table(others, table_id="replay-batch-table",
                                links={"partner": lambda r: href("/replay", world=data["spec"], agent=data["aid"],
                                                                 day=data["day"], partner=r["partner"])})])
    return figure(rows, index), state, rounds, batch


def _offer(row: dict[str, Any], side: str) -> str:
    if row[f"{side}_q"] is None:
        return "none"
    return f"{row[f'{side}_q']} @ day {row[f'{side}_t']}, {fmt(row[f'{side}_p'])}"


def render(store: D.Store, params: dict[str, str]) -> Any:
    opened = open_factory(store, params)
    if opened is None:
        return message("pick a world, then a negotiation: open a world from the Overview or a decision from Decisions")
    world, agents, aid = opened
    spec = world.spec
    days = D.days_with_threads(world, aid)
    if not days:
        return message(f"{aid} negotiated with no one in {world.title}")
    day = int_param(params, "day", days[0])
    if day not in days:
        raise ValueError(f"bad day {day}: {aid} negotiated on days {days[0]}..{days[-1]} ({len(days)} days)")
    threads = D.threads(world, aid, day)
    partners = threads["partner"].to_list()
    partner = params.get("partner") or threads.sort("decisions", descending=True, maintain_order=True)["partner"][0]
    if partner not in partners:
        raise ValueError(f"{aid} did not negotiate with {partner!r} on day {day} (partners: {', '.join(partners)})")
    rows = D.replay(world, aid, day, partner).drop("q_safe").to_dicts()
    start = int_param(params, "round", None)
    index = next((i for i, r in enumerate(rows) if r["round"] == start), 0) if start is not None else 0
    data = {"spec": spec, "aid": aid, "day": day, "partner": partner, "rows": rows}
    end = D.outcome(world, aid, day, partner)
    if end is None:
        result = "no end logged (the world ended first)"
    elif end["success"]:
        result = f"deal: {end['agreement_q']} units, delivery day {end['agreement_t']}, unit price {fmt(end['agreement_p'])}"
    else:
        result = "no agreement"
    side = "buys from" if rows[0]["is_buy"] else "sells to"
    fig, state, rounds, batch = frame(store, data, index)
    options = [{"label": f"{p} ({'deal' if d else 'no deal'})", "value": p}
               for p, d in threads.select("partner", "deal").iter_rows()]
    return html.Div([
        html.H2(f"Replay: {aid} {side} {partner}, day {day}"),
        html.P([dcc.Link(f"world {world.title}", href=href("/world", world=spec, agent=aid, day=day))]),
        html.Div([picker("agent", agents["agent_id"].to_list(), aid), picker("day", days, day),
                  picker("partner", options, partner)], className="pickers"),
        html.P(f"Outcome: {result}", id="replay-outcome", className="outcome"),
        dcc.Store(id="replay-data", data=data),
        html.Div([html.Button("◀ prev", id="replay-prev", n_clicks=0), html.Button("next ▶", id="replay-next", n_clicks=0),
                  html.Div(dcc.Slider(id="replay-slider", min=0, max=max(0, len(rows) - 1), step=1, value=index,
                                      marks={i: "·" if r["round"] is None else str(r["round"]) for i, r in enumerate(rows)}
                                      if len(rows) <= 40 else None),
                           className="slider")], className="stepper"),
        html.Div([html.Div(dcc.Graph(id="replay-graph", figure=fig, config={"displaylogo": False}), className="wide"),
                  html.Div(state, id="replay-state", className="narrow")], className="row"),
        html.Div(rounds, id="replay-table"),
        html.Div(batch, id="replay-batch"),
    ])


def register(app: dash.Dash, store: D.Store) -> None:
    """The stepping callbacks: buttons move the slider; the slider redraws the frame."""

    @app.callback(Output("replay-slider", "value"), Input("replay-prev", "n_clicks"), Input("replay-next", "n_clicks"),
                  State("replay-slider", "value"), State("replay-slider", "max"), prevent_initial_call=True)
    def step(_prev: int, _next: int, value: int, top: int) -> int:
        move = -1 if dash.ctx.triggered_id == "replay-prev" else 1
        return max(0, min((value or 0) + move, top or 0))

    @app.callback(Output("replay-graph", "figure"), Output("replay-state", "children"), Output("replay-table", "children"),
                  Output("replay-batch", "children"), Input("replay-slider", "value"), State("replay-data", "data"),
                  prevent_initial_call=True)
    def redraw(index: int, data: dict[str, Any]) -> tuple[Any, ...]:
        try:
            return frame(store, data, int(index or 0))
        except D.DataMissing as e:
            return dash.no_update, message(str(e), "missing"), dash.no_update, dash.no_update
