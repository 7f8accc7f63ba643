"""How objects look in a notebook: a captioned two-column table of their fields (``_repr_html_``)."""

from __future__ import annotations

import html
from collections.abc import Mapping


def field_table(caption: str, rows: Mapping[str, object]) -> str:
    """An HTML table with ``caption`` and one ``name | value`` row per item; values are escaped."""
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(name)}</th><td style='text-align:left'>"
        f"{html.escape(str(value))}</td></tr>" for name, value in rows.items()
    )
    return f"<table><caption style='text-align:left'><b>{html.escape(caption)}</b></caption>{body}</table>"
