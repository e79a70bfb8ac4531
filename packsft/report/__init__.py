"""Show what an output holds: `packsft inspect` in a terminal, `packsft report` as one HTML page.

    inspect.py  a chunk as sections (or tokens) with trained parts marked
    html.py     the report: summary, charts, token-level chunk views
    page.py     the page template and the summary table
    charts.py   inline SVG charts
"""

from packsft.report.html import write_report
from packsft.report.inspect import render_chunk, tokenizer_for

__all__ = ["render_chunk", "tokenizer_for", "write_report"]
