"""The report's page shell (inline CSS and script) and its summary tables, built from dataset.json.

Every value comes from dataset.json `stats`, `counters`, `config` and `tokenizer`; a key that is
absent or None shows as "n/a", so reports of older or partial outputs still render.

The one script records any error on the page (a failed load, an exception, console.error) in
`data-errors` on <html> and counts chunk views and charts into `data-*` attributes on <body>:
the browser test reads those back from the DOM.
"""

from __future__ import annotations

import html
from string import Template
from typing import Any

from packsft.stats import records_read, warnings

# CSS class of each kind of agentic text (inspect.KIND_MARKERS) in the chunk views; the colours are in the page.
KIND_CLASSES = {"reasoning": "k-think", "tool call": "k-call", "tool result": "k-result", "tool defs": "k-tools"}


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:,}" if isinstance(value, int) else _esc(value)


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "n/a"


def _table(rows: list[tuple[str, str]], cls: str = "kv") -> str:
    """Two-column table; values are already-escaped HTML."""
    body = "".join(f"<tr><th>{_esc(key)}</th><td>{value}</td></tr>" for key, value in rows)
    return f'<table class="{cls}">{body}</table>'


def summary_html(dataset: dict[str, Any]) -> str:
    """Headline figures, config, tokenizer, conversations, rejects and the per-source table."""
    s = dataset.get("stats") or {}
    c = dataset.get("counters") or {}
    cfg = dataset.get("config") or {}

    def counted(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(label, _num(s.get(key, c.get(key)))) for label, key in pairs]

    try:
        read = _num(records_read(s))
    except KeyError:  # a partial stats block
        read = "n/a"
    conversation_rows = [("records read", read)] + counted([
        ("records rejected", "records_rejected"), ("records filtered by source", "records_filtered"),
        ("conversations packed", "conversations_packed"), ("split", "conversations_split"),
        ("truncated", "conversations_truncated"), ("dropped, too long", "conversations_dropped_long"),
        ("dropped, nothing trained", "conversations_dropped_no_trained"),
        ("dropped, unprompted", "conversations_dropped_unprompted"),
    ])
    piece_rows = counted([
        ("pieces", "pieces"), ("pieces from splits", "pieces_split"), ("exchanges split", "exchanges_split"),
        ("prompts shortened", "prompts_shortened"), ("trained tokens kept", "trained_tokens_kept"),
        ("trainable tokens available", "trainable_tokens_available"),
    ])
    reasons = s.get("rejected_by_reason", c.get("rejected_by_reason")) or {}
    reason_rows = [(reason, _num(n)) for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])]
    parts = [_cards(dataset, s), '<div class="columns">',
             f"<div><h3>Config</h3>{_table([(k, _esc(v)) for k, v in sorted(cfg.items())])}</div>",
             f"<div><h3>Tokenizer</h3>{_table(_tokenizer_rows(dataset))}</div>",
             f"<div><h3>Records and conversations</h3>{_table(conversation_rows)}</div>",
             f"<div><h3>Pieces and tokens</h3>{_table(piece_rows)}<h3>Rejects by reason</h3>"
             f"{_table(reason_rows) if reason_rows else '<p>none</p>'}</div>", "</div>",
             _per_source_table(s.get("per_source") or {})]
    try:
        notes = warnings(s, cfg)
    except (KeyError, TypeError):  # an older or partial stats block: no warnings rather than no report
        notes = []
    parts += [f'<p class="warning">warning: {_esc(note)}</p>' for note in notes]
    return "".join(parts)


def _cards(dataset: dict[str, Any], s: dict[str, Any]) -> str:
    """The headline figures, one card each."""
    cards = [
        ("rows", _num(dataset.get("rows", s.get("chunks")))),
        ("tokens per row (L+1)", _num((dataset.get("seq_length") or 0) + 1)),
        ("fill", _pct(s.get("fill"))),
        ("trained fraction", _pct(s.get("trained_fraction"))),
        ("starts at BOS", _pct(s.get("bos_start_fraction"))),
        ("trained retention", _pct(s.get("trained_retention"))),
        ("context completeness", _pct(s.get("context_completeness"))),
        ("turn prefix completeness", _pct(s.get("turn_prefix_completeness"))),
        ("BOS + user before", _pct(s.get("labels_with_bos_and_user"))),
    ]
    body = "".join(f'<div class="card"><b>{value}</b><span>{_esc(name)}</span></div>' for name, value in cards)
    return f'<div class="cards">{body}</div>'


def _tokenizer_rows(dataset: dict[str, Any]) -> list[tuple[str, str]]:
    tok = dataset.get("tokenizer") or {}
    special = tok.get("special_ids") or {}
    return [
        ("name", _esc(tok.get("name", "n/a"))),
        ("template", _esc(tok.get("template", "n/a"))),
        ("vocabulary", _num(tok.get("vocab_size"))),
        ("fingerprint", _esc((tok.get("fingerprint") or "")[:12] or "n/a")),
        ("special ids", _esc(", ".join(f"{k} {v}" for k, v in sorted(special.items())) or "n/a")),
        ("dtype", _esc(dataset.get("dtype", "n/a"))),
        ("tokens stored", _num(dataset.get("tokens"))),
    ]


PER_SOURCE_FILL_NOTE = ("A source's fill counts each of its conversations' tokens once, against the padding of the rows "
                        "they sit in; the overall fill also counts the context a split repeats, so a single source "
                        "can read below it.")


def _per_source_table(per_source: dict[str, Any]) -> str:
    if not per_source:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("source", "conversations", "fill", "retention", "kept / trainable",
                                             "truncated", "dropped"))
    body = "".join(
        f"<tr><td>{_esc(name)}</td><td>{_num(row.get('conversations'))}</td><td>{_pct(row.get('fill'))}</td>"
        f"<td>{_pct(row.get('trained_retention'))}</td><td>{_num(row.get('trained_tokens_kept'))} / "
        f"{_num(row.get('trainable_tokens_available'))}</td><td>{_num(row.get('truncated'))}</td>"
        f"<td>{_num(row.get('dropped'))}</td></tr>"
        for name, row in per_source.items()
    )
    return (f'<h3>Per source</h3><table class="grid"><tr>{head}</tr>{body}</table>'
            f"<p class=\"note\">{_esc(PER_SOURCE_FILL_NOTE)}</p>")


PAGE_TEMPLATE = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<script>
window.reportErrors = [];
function reportError(text) {
  window.reportErrors.push(String(text));
  document.documentElement.setAttribute("data-errors", String(window.reportErrors.length));
  document.documentElement.setAttribute("data-error-text", window.reportErrors.join(" | "));
}
window.addEventListener("error", function (e) {
  reportError(e.message || ("failed to load " + ((e.target && (e.target.src || e.target.href)) || "a resource")));
}, true);
window.addEventListener("unhandledrejection", function (e) { reportError(e.reason); });
var consoleError = console.error;
console.error = function () { reportError(Array.prototype.join.call(arguments, " ")); consoleError.apply(console, arguments); };
</script>
<style>
body { font: 14px/1.45 system-ui, sans-serif; color: #1d2330; margin: 0 auto; max-width: 1240px; padding: 0 20px 40px; }
header { border-bottom: 1px solid #d8dce6; margin-bottom: 8px; }
h1 { margin: 16px 0 2px; font-size: 22px; } h2 { margin: 22px 0 8px; font-size: 18px; }
h3 { margin: 12px 0 6px; font-size: 14px; } h3 small { font-weight: normal; color: #5b6475; }
header p { margin: 0 0 10px; color: #5b6475; } p.note { color: #5b6475; font-size: 0.9em; } nav a { margin-right: 14px; color: #2856b6; }
.cards { display: flex; flex-wrap: wrap; gap: 8px; }
.card { flex: 1 1 0; border: 1px solid #d8dce6; border-radius: 6px; padding: 6px 10px; }
.card b { display: block; font-size: 20px; } .card span { color: #5b6475; font-size: 12px; }
.columns { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 16px; }
table { border-collapse: collapse; font-size: 12.5px; } th, td { padding: 2px 8px 2px 0; text-align: left; vertical-align: top; }
table.kv th { color: #5b6475; font-weight: normal; } td { overflow-wrap: anywhere; }
table.grid th, table.grid td { border-bottom: 1px solid #e6e9f0; padding-right: 16px; }
.warning { color: #9a5b00; }
#charts { display: flex; flex-wrap: wrap; gap: 10px; } figure { margin: 0; }
figcaption { font-size: 12px; color: #5b6475; max-width: 384px; }
svg.chart { background: #fafbfd; border: 1px solid #e6e9f0; }
svg .axis { stroke: #8a93a6; } svg .bar { fill: #4b7bd8; } svg .bar:hover { fill: #1f4fa8; }
svg .tick, svg .title, svg .marker-label { font-size: 11px; fill: #3a4252; }
svg .marker { stroke: #c0392b; stroke-dasharray: 4 3; stroke-width: 1.5; } svg .marker-label { fill: #c0392b; }
.legend span { margin-right: 12px; }
.chunk { border: 1px solid #d8dce6; border-radius: 6px; padding: 4px 10px 10px; margin: 10px 0; }
.tokens { font: 12px/1.7 ui-monospace, monospace; white-space: pre-wrap; word-break: break-all; }
.t { border-radius: 2px; } .t:hover { outline: 1px solid #1d2330; }
.tr { background: #c9f0cf; } .ms { background: #eceef3; color: #5b6475; } .pd { color: #b0b6c3; }
.rl { font-weight: bold; font-size: 10px; padding: 0 3px; margin: 0 1px; border: 1px solid #7b5cc4; color: #5a3ea8; }
.k-think { box-shadow: inset 0 -3px 0 #8e44ad; } .k-call { box-shadow: inset 0 -3px 0 #d35400; }
.k-result { box-shadow: inset 0 -3px 0 #1a8f9e; } .k-tools { box-shadow: inset 0 -3px 0 #8a7a2e; }
.bd { display: block; margin-top: 6px; font: bold 11px system-ui, sans-serif; color: #c0392b; border-top: 2px solid #c0392b; }
.bd:first-child { margin-top: 0; }
details.fold summary { cursor: pointer; color: #2856b6; font-family: system-ui, sans-serif; }
</style>
</head>
<body>
<header>
<h1>packsft report</h1>
<p>$out_dir · packsft $version</p>
<nav><a href="#summary">Summary</a><a href="#charts-title">Charts</a><a href="#chunks">Chunks</a></nav>
</header>
<h2 id="summary">Summary</h2>
$summary
<h2 id="charts-title">Charts</h2>
<div id="charts">$charts</div>
<h2 id="chunks">Chunks ($chunk_count shown)</h2>
<p class="legend"><span class="t tr">trained label</span><span class="t ms">masked label</span>
<span class="t pd">· pad</span><span class="t ms rl">user</span> control token, named by its part in the template
(role, end of turn, stop, BOS)
<span style="color:#c0392b">▸ segment</span> conversation boundary. Hover a token for its id, position, flag and text.<br>
Underlined: <span class="t ms k-think">reasoning</span><span class="t ms k-call">tool call</span>
<span class="t ms k-result">tool result</span><span class="t ms k-tools">tool definitions</span></p>
$chunks
<script>
(function () {
  var body = document.body;
  body.setAttribute("data-chunk-views", String(document.querySelectorAll("article.chunk").length));
  body.setAttribute("data-charts", String(document.querySelectorAll("svg.chart").length));
  body.setAttribute("data-tokens", String(document.querySelectorAll("article.chunk span.t").length));
  document.documentElement.setAttribute("data-errors", String(window.reportErrors.length));
  body.setAttribute("data-ready", "1");
})();
</script>
</body>
</html>
""")
