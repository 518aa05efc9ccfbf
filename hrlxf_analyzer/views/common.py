"""Pieces every view uses: messages, plain tables with links, query-string links and parameter pickers.

Pages are drawn on the server from the URL's query string, so every state of a page is a link; a picker
(`picker`) only rewrites the query string (one callback in `app`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlencode

import polars as pl
from dash import dcc, html

MAX_ROWS = 400  # rows drawn in one table; more are counted, not drawn (the page stays fast)


def href(path: str, **params: Any) -> str:
    """A link to a view with its query parameters (None values left out)."""
    clean = {k: v for k, v in params.items() if v is not None}
    return f"{path}?{urlencode(clean)}" if clean else path


def message(text: str, kind: str = "info") -> html.Div:
    """A sentence on the page in place of what could not be shown (never a traceback)."""
    return html.Div(text, className=f"msg msg-{kind}")


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:
            return ""
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, list):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def table(df: pl.DataFrame, links: Mapping[str, Callable[[dict[str, Any]], str | None]] | None = None,
          table_id: str | None = None, highlight: int | None = None, max_rows: int = MAX_ROWS,
          hide: Iterable[str] = ()) -> html.Div:
    """A plain HTML table of a frame; ``links`` turns a column's cells into links (href from the row, which
    still holds the ``hide`` columns)."""
    links = links or {}
    columns = [c for c in df.columns if c not in set(hide)]
    head = html.Tr([html.Th(c) for c in columns])
    rows = []
    for i, r in enumerate(df.head(max_rows).iter_rows(named=True)):
        cells = []
        for c in columns:
            text = fmt(r[c])
            target = links[c](r) if c in links else None
            cells.append(html.Td(dcc.Link(text or "open", href=target) if target else text, className=f"col-{c}"))
        rows.append(html.Tr(cells, className="current" if highlight == i else None))
    extra = [html.P(f"{df.height - max_rows} more rows not drawn (filter to narrow them)", className="note")] \
        if df.height > max_rows else []
    props = {"id": table_id} if table_id else {}
    return html.Div([html.Table([html.Thead(head), html.Tbody(rows)], className="data", **props), *extra],
                    className="table-wrap")


def picker(name: str, options: Iterable[Any], value: Any, label: str | None = None, clearable: bool = False) -> html.Div:
    """A dropdown that sets the query parameter ``name`` (handled by the app's one query-string callback)."""
    opts = [{"label": str(o), "value": str(o)} if not isinstance(o, dict) else o for o in options]
    return html.Div([html.Label(label or name),
                     dcc.Dropdown(id={"type": "qp", "name": name}, options=opts,
                                  value=None if value is None else str(value), clearable=clearable)],
                    className="picker")


def kv(items: Mapping[str, Any]) -> html.Dl:
    """A few labelled numbers."""
    return html.Dl([x for k, v in items.items() for x in (html.Dt(k), html.Dd(fmt(v)))], className="kv")


def int_param(params: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    """An integer query parameter; a bad one raises ValueError with a sentence."""
    text = params.get(name)
    if text in (None, ""):
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"bad {name} {text!r}: expected a whole number") from None


def figure_layout(fig: Any, height: int = 320) -> Any:
    fig.update_layout(height=height, margin=dict(l=50, r=20, t=40, b=40), template="plotly_white",
                      legend=dict(orientation="h", y=-0.15))
    return fig
