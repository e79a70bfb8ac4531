"""Bar charts as inline SVG strings, so the HTML report needs no plotting library and no network.

    count
    1234 ┤      ▆▆            ╎ L = 2048
         │   ▆▆ ██ ▆▆         ╎
       0 ┼───██─██─██─▆▆──────╎──────
         0        512       1024  ≥ 16128 tokens

Each bar carries a <title> (the browser's hover tooltip) with its bin and count. Numbers placed in
the markup are formatted here; every label goes through html.escape because the caller may pass text
taken from the data.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence

import numpy as np

WIDTH, HEIGHT = 384, 210
LEFT, RIGHT, TOP, BOTTOM = 48, 14, 28, 40
X_TICKS = 5


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def bar_chart(
    counts: Sequence[int],
    edges: Sequence[float],
    *,
    label: Callable[[float], str],
    x_title: str,
    open_ended: bool = False,
    marker: tuple[float, str] | None = None,
) -> str:
    """An SVG histogram of `counts` over bins [edges[i], edges[i+1]).

    Args:
        label: formats a bin edge for the x axis and the tooltips.
        open_ended: the last bin holds everything from edges[-2] up (drawn as "≥ edges[-2]").
        marker: (x value, text) drawn as a dashed vertical line, e.g. the sequence length L.
    """
    n = len(counts)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = max(max(counts, default=0), 1)
    lo, hi = float(edges[0]), float(edges[-1])

    def x_of(value: float) -> float:
        return LEFT + plot_w * (min(max(value, lo), hi) - lo) / (hi - lo)

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img">',
        f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}"/>',
        f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}"/>',
    ]
    for value in (0, top // 2, top) if top > 1 else (0, top):
        y = TOP + plot_h - plot_h * value / top
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value:,}</text>')
    for i, count in enumerate(counts):
        x0, x1 = x_of(edges[i]), x_of(edges[i + 1])
        h = plot_h * count / top
        last = open_ended and i == n - 1
        span = f"≥ {label(edges[i])}" if last else f"{label(edges[i])} – {label(edges[i + 1])}"
        parts.append(
            f'<rect class="bar" x="{x0 + 0.5:.1f}" y="{TOP + plot_h - h:.1f}" width="{max(x1 - x0 - 1, 0.5):.1f}" '
            f'height="{h:.1f}"><title>{_esc(span)}: {count:,}</title></rect>'
        )
    step = max(1, math.ceil(n / X_TICKS))
    for i in range(0, n + 1, step):
        if open_ended and i == n:
            continue
        text = f"≥ {label(edges[i])}" if open_ended and i == n - 1 else label(edges[i])
        parts.append(
            f'<text class="tick" x="{x_of(edges[i]):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{_esc(text)}</text>'
        )
    parts.append(
        f'<text class="title" x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle">{_esc(x_title)}</text>'
    )
    if marker is not None:
        parts.append(_marker(x_of(marker[0]), marker[1]))
    parts.append("</svg>")
    return "".join(parts)


def _marker(x: float, text: str) -> str:
    """A dashed vertical line at x with its label on the side that has room (never clipped at the edge)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    anchor, dx = ("start", 4) if x < LEFT + plot_w / 2 else ("end", -4)
    return (f'<line class="marker" x1="{x:.1f}" y1="{TOP - 8}" x2="{x:.1f}" y2="{TOP + plot_h}"/>'
            f'<text class="marker-label" x="{x + dx:.1f}" y="{TOP - 10}" text-anchor="{anchor}">{_esc(text)}</text>')


def fraction_chart(values: np.ndarray, *, x_title: str, bins: int = 20) -> str:
    """Histogram of values in [0, 1] (fill or trained fraction per row), the mean marked."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Values of exactly 1.0 (a full row) belong in the last bin, not past it.
    counts = np.bincount(np.minimum((np.asarray(values) * bins).astype(np.int64), bins - 1), minlength=bins)
    mean = float(np.mean(values)) if len(values) else 0.0
    return bar_chart(counts.tolist(), edges.tolist(), label=lambda v: f"{100 * v:.0f}%", x_title=x_title,
                     marker=(mean, f"mean {100 * mean:.1f}%"))


def empty_chart(message: str) -> str:
    """A chart-sized placeholder saying why a chart has nothing to draw."""
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img">'
        f'<text class="title" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">{_esc(message)}</text></svg>'
    )
