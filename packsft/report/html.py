"""`packsft report`: one self-contained HTML page that shows a packed output instead of describing it.

    ┌ packsft report ──────────────────────────────────────────────┐
    │ summary: figures, config, tokenizer, rejects, per source      │
    │ charts (inline SVG): conversation lengths with L marked,      │
    │                      fill per row, trained fraction per row   │
    │ chunk views: one <span> per token of the row (L+1 tokens)     │
    │   ▸ segment 1 · 230 tokens                                    │
    │   [BOS][USR] What is … [ASST] It is …  (green = trained label)  │
    │   ▸ segment 2 …                      ·····  (grey = pad)       │
    └──────────────────────────────────────────────────────────────┘

Control tokens show as a badge named by the part they play in the template, as `inspect` names its sections
(markers.py): a chat turn's header opener is its role (`user`), `<|im_end|>` is `end of turn`, not "EOS"; the
token's own text is in its tooltip. Tokens of reasoning, tool calls, tool results and tool definitions
(inspect.token_kinds) carry a kind class (page.KIND_CLASSES) that underlines them in the kind's colour, over the
trained/masked background.

Nothing is fetched: CSS, the one script and the charts are inline, so the file opens from disk and
can be attached to an issue. Conversation text is untrusted and every piece of it goes through
html.escape. A token's colour is the train flag of the label it is (loss_mask[i] belongs to
tokens[i+1]); position 0 is never a label.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from packsft.pack.rows import row_lengths
from packsft.report.charts import bar_chart, empty_chart, fraction_chart
from packsft.report.inspect import MID_CONV, Section, sections, token_kinds, tokenizer_for, trained_tokens
from packsft.report.markers import template_markers
from packsft.report.page import KIND_CLASSES, PAGE_TEMPLATE, summary_html
from packsft.stats import LENGTH_BIN
from packsft.version import __version__
from packsft.write.layout import PackedOutput

DEFAULT_CHUNKS = 5
# Per-row figures read at most this many rows (evenly spaced) so a report of a huge output stays quick.
MAX_SAMPLE_ROWS = 20_000
# Chunks longer than this many tokens show the rest behind a <details> fold.
FOLD_AT = 768

def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def row_figures(output: PackedOutput, max_rows: int = MAX_SAMPLE_ROWS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(global row indices, fill per row, trained fraction per row) over all rows or an even sample.

    fill = sum of the row's segment lengths / (L+1); trained = loss-mask sum / L.
    """
    total, L = len(output), output.seq_length
    rows = np.arange(total) if total <= max_rows else np.unique(np.linspace(0, total - 1, max_rows).astype(np.int64))
    fill, trained = np.zeros(len(rows)), np.zeros(len(rows))
    for shard in range(len(output.shards)):
        lo, hi = output.row_offsets[shard], output.row_offsets[shard + 1]
        pick = np.flatnonzero((rows >= lo) & (rows < hi))
        if not len(pick):
            continue
        local = rows[pick] - lo
        used = row_lengths(np.asarray(output.array(shard, "segment_lengths")), np.asarray(output.array(shard, "row_segments")))
        fill[pick] = used[local] / (L + 1)
        trained[pick] = output.array(shard, "loss_mask")[local].sum(axis=1, dtype=np.int64) / L
    return rows, fill, trained


def charts_html(output: PackedOutput) -> str:
    """The three charts, each a <figure> holding one inline <svg class="chart">."""
    L = output.seq_length
    histogram = (output.dataset.get("counters") or {}).get("length_histogram")
    if histogram and any(histogram):
        # Show bins up to the last non-empty one or the one holding L, whichever is further.
        shown = max(max(i for i, c in enumerate(histogram) if c) + 1, min(L // LENGTH_BIN + 1, len(histogram)), 8)
        shown = min(shown, len(histogram))
        lengths = bar_chart(
            histogram[:shown], [i * LENGTH_BIN for i in range(shown + 1)], label=lambda v: f"{v:,.0f}",
            x_title="rendered conversation length (tokens)", open_ended=shown == len(histogram),
            marker=(L, f"L = {L:,}"),
        )
    else:
        lengths = empty_chart("no length histogram recorded in this output")
    rows, fill, trained = row_figures(output)
    scope = (
        f"all {len(rows):,} rows" if len(rows) == len(output)
        else f"a sample of {len(rows):,} of {len(output):,} rows, evenly spaced (the same rows every time)"
    )
    figures = [
        (lengths, f"Conversations by rendered length, bins of {LENGTH_BIN} tokens; the dashed line is L."),
        (fraction_chart(fill, x_title="fill per row") if len(rows) else empty_chart("no rows"),
         f"Fill per row: non-pad tokens / (L+1), over {scope}."),
        (fraction_chart(trained, x_title="trained fraction per row") if len(rows) else empty_chart("no rows"),
         f"Trained fraction per row: trained labels / L, over {scope}."),
    ]
    return "".join(f'<figure>{svg}<figcaption>{_esc(caption)}</figcaption></figure>' for svg, caption in figures)


def _token_span(token_id: int, pos: int, text: str, flag: str, role: str | None, kind: str | None = None) -> str:
    cls = {"trained": "t tr", "masked": "t ms", "pad": "t pd", "no label (row start)": "t ms"}[flag]
    title = f"id {token_id} · pos {pos} · {flag}" + (f" · {text} · {role}" if role else "") + (f" · {kind}" if kind else "")
    if kind:
        cls += f" {KIND_CLASSES[kind]}"
    if flag == "pad":
        shown = "·"
    elif role:
        cls += " rl"
        shown = role
    else:
        shown = text.replace("\n", "↵\n") or "∅"
    return f'<span class="{cls}" title="{_esc(title)}">{_esc(shown)}</span>'


def chunk_html(output: PackedOutput, index: int, pieces: dict[int, str], found: list[Section],
               bos_id: int | None, fold_at: int = FOLD_AT) -> str:
    """One <article class="chunk">: a header line and every token of the row as a <span>.

    Args:
        found: the row's `inspect.sections`: they name its control tokens and its kinds of agentic text.
        bos_id: the tokenizer's BOS, None where it has none.
    """
    kinds = token_kinds(found)
    names = {s.start: s.role for s in found if s.role != MID_CONV}
    row = output.row(index)
    shard, local = output.locate(index)
    ids = row.tokens.tolist()
    L = len(row.loss_mask)
    nonpad = int(row.segment_lengths.sum())
    n_trained = int(row.loss_mask.sum())
    starts = {int(s): (k + 1, int(n)) for k, (s, n) in enumerate(zip(row.segment_starts, row.segment_lengths)) if n}
    head: list[str] = []
    tail: list[str] = []
    for pos, token_id in enumerate(ids):
        spans = head if pos < fold_at else tail
        if pos in starts:
            k, n = starts[pos]
            note = "" if bos_id is None or token_id == bos_id else " (starts mid-conversation)"
            spans.append(f'<span class="bd">▸ segment {k} · {n:,} tokens{note}</span>')
        if pos >= nonpad:
            flag = "pad"
        elif pos == 0:
            flag = "no label (row start)"
        else:
            flag = "trained" if row.loss_mask[pos - 1] else "masked"
        spans.append(_token_span(token_id, pos, pieces[token_id], flag, names.get(pos), kinds.get(pos)))
    body = "".join(head)
    if tail:
        body += (f'<details class="fold"><summary>show the other {len(ids) - fold_at:,} tokens '
                 f'(positions {fold_at:,}–{len(ids) - 1:,})</summary>{"".join(tail)}</details>')
    start = "no BOS" if bos_id is None else "starts at BOS" if ids[0] == bos_id else "does not start at BOS"
    header = (
        f"Chunk {index:,} <small>shard {_esc(output.shards[shard])}, row {local:,} · trained {n_trained:,}/{L:,} "
        f"({100 * n_trained / L:.1f}%) · segments {len(starts)} · padding {L + 1 - nonpad:,} · "
        f"{start}</small>"
    )
    return f'<article class="chunk" id="chunk-{index}"><h3>{header}</h3><div class="tokens">{body}</div></article>'


def decode_pieces(tokenizer: Any, token_ids: Sequence[int]) -> dict[int, str]:
    """Text of each distinct token id, decoded one id at a time but in one batch call."""
    unique = sorted(set(int(t) for t in token_ids))
    texts = tokenizer.hf.batch_decode([[t] for t in unique], skip_special_tokens=False,
                                      clean_up_tokenization_spaces=False)
    return dict(zip(unique, texts))


def write_report(out_dir: str | Path, html_path: str | Path, *, chunks: Sequence[int] | None = None,
                 count: int = DEFAULT_CHUNKS, tokenizer: str | None = None, fold_at: int = FOLD_AT) -> Path:
    """Write the HTML report of the packed output in `out_dir` to `html_path`.

    Args:
        chunks: global row indices to show; None shows the first `count` chunks.
        tokenizer: tokenizer folder to decode with if it moved since packing (must be the same one).
        fold_at: tokens of a chunk shown before the rest folds behind <details>.
    """
    output = PackedOutput(out_dir)
    indices = list(range(min(count, len(output)))) if chunks is None else [int(i) for i in chunks]
    for index in indices:
        output.locate(index)  # an OutputError naming the valid range, before any work
    dataset = output.dataset
    views = ""
    if indices:
        tok = tokenizer_for(output, tokenizer)
        markers = template_markers(tok)
        rows = [output.row(i) for i in indices]
        pieces = decode_pieces(tok, np.concatenate([row.tokens for row in rows]).tolist())
        views = "".join(
            chunk_html(output, i, pieces, sections(row.tokens, trained_tokens(row.loss_mask), tok, markers=markers,
                                                   pad_from=int(row.segment_lengths.sum())), tok.bos_id, fold_at)
            for i, row in zip(indices, rows))
    page = PAGE_TEMPLATE.substitute(
        title=_esc(f"packsft report: {Path(out_dir).resolve().name}"),
        out_dir=_esc(Path(out_dir).resolve()),
        version=_esc(__version__),
        summary=summary_html(dataset),
        charts=charts_html(output),
        chunk_count=len(indices),
        chunks=views or "<p>No chunks selected.</p>",
    )
    path = Path(html_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
