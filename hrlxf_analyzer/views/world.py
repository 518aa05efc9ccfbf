"""World view: one factory day by day (money, stock, shortfall, storage, contracts), its morning L1 bounds,
and for our agent the L2 goal per delivery bucket against what it signed that day."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from dash import dcc, html
from plotly.subplots import make_subplots

from hrlxf_analyzer import data as D
from hrlxf_analyzer.views.common import figure_layout, href, int_param, kv, message, picker, table

SERIES = (("balance", "balance (end of day)"), ("inventory_input", "input stock (end of day)"),
          ("inventory_output", "output stock (morning)"), ("shortfall_quantity", "shortfall"),
          ("storage_cost", "storage cost per unit (morning)"), ("signed", "contracts signed / executed"))


def pick_agent(agents: Any, asked: str | None) -> str:
    """The asked agent, else our agent if it played, else the first factory."""
    ids = agents["agent_id"].to_list()
    if asked:
        if asked not in ids:
            raise ValueError(f"no agent {asked!r} in this world (it has {', '.join(ids)})")
        return asked
    ours = agents.filter(agents["agent_class"] == D.HRL_CLASS)["agent_id"].to_list()
    return (ours or ids)[0]


def open_factory(store: D.Store, params: dict[str, str]) -> tuple[D.World, Any, str] | None:
    """The world and factory a page asks for (``world``, ``agent``); None while no world is given."""
    spec = params.get("world")
    if not spec:
        return None
    world = store.world(spec)
    agents = D.agents(world)
    if agents.height == 0:
        raise D.DataMissing(f"{world.title}: no tracked agent")
    return world, agents, pick_agent(agents, params.get("agent"))


def days_figure(days: Any, day: int | None) -> go.Figure:
    series = list(SERIES)
    if days["storage_paid"].is_not_null().any():  # money paid, where the world recorded it
        series[4] = ("storage_paid", "storage cost paid")
    fig = make_subplots(rows=2, cols=3, subplot_titles=[t for _, t in series], vertical_spacing=0.16)
    for i, (col, _) in enumerate(series):
        r, c = i // 3 + 1, i % 3 + 1
        fig.add_trace(go.Scatter(x=days["step"].to_list(), y=days[col].to_list(), name=col, mode="lines+markers",
                                 marker=dict(size=4)), row=r, col=c)
        if col == "signed":
            fig.add_trace(go.Scatter(x=days["step"].to_list(), y=days["executed"].to_list(), name="executed",
                                     mode="lines+markers", marker=dict(size=4)), row=r, col=c)
        if day is not None:
            fig.add_vline(x=day, line=dict(color="grey", dash="dot"), row=r, col=c)
    return figure_layout(fig, 520)


def bounds_figure(b: dict[str, Any], step: int) -> go.Figure:
    days = [step + k for k in range(len(b["q_safe_buy"]))]
    fig = go.Figure([go.Bar(x=days, y=b["q_safe_buy"], name="q_safe buy"),
                     go.Bar(x=days, y=b["q_safe_sell"], name="q_safe sell")])
    fig.update_layout(title=f"L1 bounds on the morning of day {step} (b_free = {b['b_free']:.1f})", barmode="group",
                      xaxis_title="delivery day", yaxis_title="units")
    return figure_layout(fig, 300)


def goal_figure(g: Any) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=["buy: quantity per bucket", "sell: quantity per bucket"])
    for c, side in ((1, "buy"), (2, "sell")):
        for col, name in ((f"goal_q_{side}", "L2 goal"), (f"rule_q_{side}", "rule goal"), (f"committed_{side}", "signed that day")):
            fig.add_trace(go.Bar(x=g["bucket"].to_list(), y=g[col].to_list(), name=name, legendgroup=name,
                                 showlegend=c == 1), row=1, col=c)
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="delivery offset bucket (days)")
    return figure_layout(fig, 330)


def render(store: D.Store, params: dict[str, str]) -> Any:
    opened = open_factory(store, params)
    if opened is None:
        return message("pick a world from the Overview (a collection world or an evaluation's / audit's tracked world)")
    world, agents, aid = opened
    spec = world.spec
    info = agents.filter(agents["agent_id"] == aid).row(0, named=True)
    days = D.agent_days(world, aid)
    day = int_param(params, "day", 0)
    steps = days["step"].to_list()
    if steps and day not in steps:
        raise ValueError(f"bad day {day}: this world has days {steps[0]}..{steps[-1]}")
    snap = D.morning(world, aid, day)
    bounds = D.l1_bounds(snap)
    threads = D.threads(world, aid, day)
    parts: list[Any] = [
        html.H2(f"World {world.title}"),
        html.Div([picker("agent", [{"label": f"{a} ({c})", "value": a} for a, c in agents.select("agent_id", "agent_class").iter_rows()], aid),
                  picker("day", steps, day)], className="pickers"),
        kv({"agent": aid, "class": info["agent_class"], "level": info["level"], "lines": info["n_lines"],
            "score": info["score"]}),
        dcc.Graph(id="world-days", figure=days_figure(days, day), config={"displaylogo": False}),
        html.H3(f"Day {day}"),
        html.Div([html.Div(dcc.Graph(id="world-bounds", figure=bounds_figure(bounds, day), config={"displaylogo": False}),
                           className="half"),
                  html.Div(_goal(world, aid, info["agent_class"], day), className="half")], className="row"),
        html.H3(f"Negotiations of day {day}"),
        table(threads, links={"partner": lambda r: href("/replay", world=spec, agent=aid, day=day, partner=r["partner"])},
              table_id="world-threads") if threads.height else message("no negotiation that day"),
        html.H3("Day by day"),
        table(days, table_id="world-table", highlight=steps.index(day) if day in steps else None),
    ]
    return html.Div(parts)


def _goal(world: D.World, aid: str, agent_class: str, day: int) -> Any:
    if agent_class != D.HRL_CLASS:
        return message(f"L2's goal exists for {D.HRL_CLASS} only (this factory is {agent_class})")
    g = D.goal_table(world, aid, day)
    if g is None:
        return message("this log has no goal for the day (written before the tracker recorded our agent's plan)")
    return html.Div([html.H4(f"L2 goal of the day (source: {g['source'][0]}) against what was signed"),
                     dcc.Graph(id="world-goal", figure=goal_figure(g), config={"displaylogo": False}),
                     table(g.drop("source"), table_id="world-goal-table")])
