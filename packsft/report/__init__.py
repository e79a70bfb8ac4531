"""Show what an output holds: `packsft inspect` in a terminal, `packsft report` as one HTML page; and what a
chat template trains before anything is packed: `packsft template`.

    inspect.py          a chunk as sections (or tokens) with trained parts marked
    markers.py          control tokens named by their part in the template (role, end of turn, stop)
    html.py             the report: summary, charts, token-level chunk views
    page.py             the page template and the summary table
    charts.py           inline SVG charts
    template.py         a chat template's renderings per record shape, prompt, stops, rewrites, prefixes
    template_fields.py  the message fields, tools and kwargs a template's jinja source reads
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from packsft.report.html import write_report
    from packsft.report.inspect import render_chunk, tokenizer_for
    from packsft.report.template import describe_template, format_template_report, history_rewrites

# Each public name and the module it comes from, imported on first use: a pack's planner reads template.py alone
# (history_rewrites), and neither it nor a worker imports the report's page, charts or click (13 ms a process).
_SOURCES = {
    "describe_template": "packsft.report.template", "format_template_report": "packsft.report.template",
    "history_rewrites": "packsft.report.template", "render_chunk": "packsft.report.inspect",
    "tokenizer_for": "packsft.report.inspect", "write_report": "packsft.report.html",
}

__all__ = ["describe_template", "format_template_report", "history_rewrites", "render_chunk", "tokenizer_for",
           "write_report"]


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module 'packsft.report' has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value
    return value
