"""Skeleton layouts kept across packs (render/chat/kept.py): a later process lays records out from the kept layouts
without analysing their shapes, exactly as analysing them does; a kept layout the template no longer renders (a
template that shows today's date) is analysed again; long ones are not kept.

Hermetic: the demo tokenizer with ChatML tokens (tests/conftest.py `chatml_dir`), in a cache of the test's own.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from packsft import load_tokenizer
from packsft.read.records import Conversation
from packsft.render.chat import ChatRenderer, facts, kept
from packsft.render.tokenizer_cache import cache_dir, cache_key

CONVERSATIONS = [
    Conversation((("user", "hi"), ("assistant", "hello there"))),
    Conversation((("system", "be brief"), ("user", "why?"), ("assistant", "because"), ("user", "ok"),
                  ("assistant", "a</think>b"))),
    Conversation((("user", "ü ß 你好"), ("assistant", "x"), ("user", "y"), ("assistant", "z"))),
]


@pytest.fixture
def chatml(chatml_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PACKSFT_CACHE", str(tmp_path / "cache"))
    return load_tokenizer(str(chatml_dir), "chat", encoder="auto")


def _process(monkeypatch) -> None:
    """As in a new worker process: no template facts found yet."""
    monkeypatch.setattr(facts, "_FACTS", {})


def _rendered(tokenizer) -> tuple[np.ndarray, ...]:
    batch = ChatRenderer(tokenizer).render(CONVERSATIONS)
    return batch.ids, batch.flags, batch.msg_starts, batch.msg_ends, batch.msg_headers


def _analysed(monkeypatch) -> list[str]:
    """Shapes analysed from here on (TemplateFacts._skeleton_layout), in the order they are."""
    calls: list[str] = []
    analyse = facts.TemplateFacts._skeleton_layout

    def counted(self, bind, holed, tools, kwargs):
        calls.append(json.dumps(holed))
        return analyse(self, bind, holed, tools, kwargs)

    monkeypatch.setattr(facts.TemplateFacts, "_skeleton_layout", counted)
    return calls


def _entry(tokenizer):
    facts_key = kept.layouts_key(tokenizer.fingerprint, tokenizer.chat_renderer, tokenizer.chat_template)
    folder = cache_dir()
    assert folder is not None
    return folder / "layouts" / f"{cache_key('layouts', facts_key)}.json"


def test_a_later_process_lays_records_out_from_kept_layouts_as_analysing_them_does(chatml, monkeypatch):
    _process(monkeypatch)
    analysed = _analysed(monkeypatch)
    first = _rendered(chatml)
    assert len(analysed) == 3  # one shape each
    assert not _entry(chatml).exists()  # kept once the unit is rendered:
    ChatRenderer(chatml).keep()
    assert len(json.loads(_entry(chatml).read_text())["layouts"]) == 3
    _process(monkeypatch)
    analysed.clear()
    again = _rendered(chatml)
    assert analysed == []
    for found, expected in zip(again, first):
        np.testing.assert_array_equal(found, expected)


def test_a_kept_layout_the_template_renders_otherwise_now_is_analysed_again(chatml, monkeypatch):
    _process(monkeypatch)
    first = _rendered(chatml)
    ChatRenderer(chatml).keep()
    entry = _entry(chatml)
    stale = json.loads(entry.read_text())
    for _, layout in stale["layouts"]:  # rendered on another day, say
        layout["text"] = layout["text"].replace("<|im_start|>", "<|im_start|>x", 1)
    entry.write_text(json.dumps(stale))
    _process(monkeypatch)
    analysed = _analysed(monkeypatch)
    again = _rendered(chatml)
    assert len(analysed) == 3
    for found, expected in zip(again, first):
        np.testing.assert_array_equal(found, expected)
    ChatRenderer(chatml).keep()  # the layouts analysed now replace the stale ones
    assert all("<|im_start|>x" not in layout["text"] for _, layout in json.loads(entry.read_text())["layouts"])


def test_long_layouts_are_not_kept_and_an_unreadable_entry_is_none(chatml, monkeypatch):
    _process(monkeypatch)
    monkeypatch.setattr(kept, "KEPT_LAYOUT_CHARS", 120)
    ChatRenderer(replace(chatml)).render(CONVERSATIONS)
    ChatRenderer(chatml).keep()
    texts = [layout["text"] for _, layout in json.loads(_entry(chatml).read_text())["layouts"]]
    assert len(texts) == 1 and len(texts[0]) <= 120  # the two-message shape only
    _entry(chatml).write_text(json.dumps({"layouts": [["shape", {"text": 1}]]}))
    assert kept.KeptLayouts(kept.layouts_key(chatml.fingerprint, chatml.chat_renderer, chatml.chat_template)
                            ).get("shape") is None
