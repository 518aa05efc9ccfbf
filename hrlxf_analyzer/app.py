"""The Dash app: a nav bar, one page per view routed on the URL, every script served from this machine.

`create_app(root)` builds it; each view module has ``render(store, params) -> component`` (pure, timed by
`tasks.bench_analyzer`) and, when it steps through something, ``register(app, store)`` for its callbacks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, urlencode

import dash
from dash import ALL, Input, Output, State, ctx, dcc, html

from hrlxf_analyzer.data import DataMissing, Store
from hrlxf_analyzer.views import common, decisions, overview, replay, training, world

log = logging.getLogger(__name__)

VIEWS: dict[str, tuple[str, Callable[[Store, dict[str, str]], Any]]] = {
    "/": ("Overview", overview.render),
    "/world": ("World", world.render),
    "/replay": ("Replay", replay.render),
    "/decisions": ("Decisions", decisions.render),
    "/training": ("Training", training.render),
}
# a picker that changes one of these drops the ones after it (a new world has other agents, days, partners)
ORDER = ("world", "agent", "day", "partner")


def render_page(store: Store, path: str, params: dict[str, str]) -> Any:
    """The page of a path, or a sentence saying why it cannot be drawn."""
    if path not in VIEWS:
        return common.message(f"no page {path!r}: try " + ", ".join(VIEWS), "error")
    try:
        return VIEWS[path][1](store, params)
    except DataMissing as e:
        return common.message(str(e), "missing")
    except ValueError as e:  # bad query parameters
        return common.message(str(e), "error")
    except Exception as e:  # a page never shows a traceback; the log keeps it
        log.exception("rendering %s %s", path, params)
        return common.message(f"this page could not be drawn: {type(e).__name__}: {e}", "error")


def with_param(search: str, name: str, value: Any) -> str:
    """The query string with one parameter set (or removed) and the ones that depend on it dropped."""
    params = dict(parse_qsl((search or "").lstrip("?")))
    if name in ORDER:
        for later in ORDER[ORDER.index(name) + 1:]:
            params.pop(later, None)
    if value in (None, ""):
        params.pop(name, None)
    else:
        params[name] = str(value)
    return "?" + urlencode(params) if params else ""


def create_app(data_root: Path) -> dash.Dash:
    store = Store(Path(data_root))
    app = dash.Dash(__name__, serve_locally=True, external_stylesheets=[], external_scripts=[],
                    assets_folder=str(Path(__file__).parent / "assets"), suppress_callback_exceptions=True,
                    title="hrlxf analyze", update_title=None)
    nav = html.Nav([html.Span("HRL-XF analyzer", className="brand"),
                    *[dcc.Link(name, href=path, className="nav-link") for path, (name, _) in VIEWS.items()
                      if path not in ("/world", "/replay")],
                    html.Span(str(Path(data_root).resolve()), className="root")], className="nav")
    app.layout = html.Div([dcc.Location(id="url", refresh=False), nav, html.Main(id="page")])

    @app.callback(Output("page", "children"), Input("url", "pathname"), Input("url", "search"))
    def route(pathname: str | None, search: str | None) -> Any:
        return render_page(store, pathname or "/", dict(parse_qsl((search or "").lstrip("?"))))

    @app.callback(Output("url", "search"), Input({"type": "qp", "name": ALL}, "value"), State("url", "search"),
                  prevent_initial_call=True)
    def set_param(values: list[Any], search: str | None) -> Any:
        trigger = ctx.triggered_id
        if not isinstance(trigger, dict):
            return dash.no_update
        value = next((i["value"] for i in ctx.inputs_list[0] if i["id"] == trigger), None)
        new = with_param(search or "", trigger["name"], value)
        return dash.no_update if new == (search or "") else new

    replay.register(app, store)
    return app
