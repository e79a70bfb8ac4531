"""Show what an output holds: `packsft inspect` in a terminal, `packsft report` as one HTML page; and what a
chat template trains before anything is packed: `packsft template`.

    inspect.py          a chunk as sections (or tokens) with trained parts marked
    markers.py          control tokens named by their part in the template (role, end of turn, stop)
    html.py             the report: summary, charts, token-level chunk views
    page.py             the page template and the summary table
    charts.py           inline SVG charts
    template.py         a chat template's renderings per record shape, prompt, stops, rewrites, prefixes
    template_fields.py  the message fields, tools and kwargs a template's jinja source reads

Import from the module itself: this package imports none of them, so that a pack's planner, which reads
template.py alone (history_rewrites), never imports the page, the charts or click (13 ms a process).
"""
