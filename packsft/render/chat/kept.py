"""Skeleton layouts kept across packs in the tokenizer cache (render/tokenizer_cache.py), per tokenizer and template.

    first pack:  shape --analyse (about 1.5 renderings a message, and the template's probes)--> layout --> kept
    later packs: shape --kept layout--> checked against the skeleton's trace, rendered now --> spliced records

Every worker of every pack analysed the ~50-100 shapes of its first unit again (qwen3 on ShareGPT: ~0.15 s a worker,
a fifth of its first unit). A kept layout is used only where it is checked (facts.TemplateFacts._traced_layout): the
skeleton's trace renders it now, and a kept layout whose text differs from that rendering (a template that renders
today's date) is analysed again. Layouts of long skeletons are not kept (agentic traces: most are shapes of their own),
and the entry is bounded in characters, the latest shapes first.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from typing import Any

from packsft.render.chat.layout import Layout
from packsft.render.tokenizer_cache import cache_key, read_entry, write_entry

# A layout of a rendering longer than this is not kept (a long trace is a shape of its own).
KEPT_LAYOUT_CHARS = 16_000
# At most this many characters of layouts per template (a few MB of JSON, read in milliseconds).
KEPT_CHARS = 1_000_000


class KeptLayouts:
    """The kept layouts of one tokenizer and template, by shape key: read on first need, and the ones this process
    analysed added to the entry by `keep`."""

    def __init__(self, facts: dict[str, Any]) -> None:
        self.key = cache_key("layouts", facts)
        self._kept: dict[str, Layout] | None = None
        self._added: dict[str, Layout] = {}

    def get(self, shape: str) -> Layout | None:
        if self._kept is None:
            self._kept = _layouts(read_entry("layouts", self.key))
        return self._kept.get(shape)

    def add(self, shape: str, layout: Layout) -> None:
        if len(layout.text) <= KEPT_LAYOUT_CHARS:
            self._added[shape] = layout

    def keep(self) -> None:
        """Add the layouts analysed since the last call to the entry (as it is now: other workers add theirs)."""
        if not self._added:
            return
        kept = dict(self._added)  # this process's first, in place of any kept before for the same shape
        for shape, layout in _layouts(read_entry("layouts", self.key)).items():
            kept.setdefault(shape, layout)
        entries, chars = [], 0
        for shape, layout in kept.items():
            chars += len(shape) + len(layout.text)
            if chars > KEPT_CHARS:
                break
            entries.append([shape, asdict(layout)])
        with contextlib.suppress(UnicodeEncodeError):  # a lone surrogate in a template: nothing kept
            write_entry("layouts", self.key, {"layouts": entries})
        if self._kept is not None:
            self._kept.update(self._added)
        self._added.clear()


def _layouts(entry: dict[str, Any] | None) -> dict[str, Layout]:
    """The layouts of an entry; none where it cannot be read as layouts."""
    found: dict[str, Layout] = {}
    try:
        for shape, fields in (entry or {}).get("layouts", []):
            found[shape] = Layout(
                fields["text"], fields["head_end"], list(fields["starts"]), list(fields["bodies"]),
                [tuple(span) if span is not None else None for span in fields["generated"]],
                list(fields["rewritten"]), [tuple(span) for span in fields["data"]],
                list(fields["endings"]), fields["appended"])
    except (TypeError, ValueError, KeyError, AttributeError):
        return {}
    return found


def layouts_key(tokenizer_fingerprint: str, renderer: str, template: Any) -> dict[str, Any]:
    """What kept layouts depend on besides the library versions (cache_key adds those: packsft's and jinja2's)."""
    return {"fingerprint": tokenizer_fingerprint, "renderer": renderer,
            "template": json.dumps(template, sort_keys=True)}
