"""Traced skeletons (render/chat/trace.py): a record whose shape's trace replays is its skeleton with its strings
spliced in, never rendered itself; the layout (text, message starts, trained spans) is exactly the one the record's
own rendering gives, whatever the template reads of its contents.

Hermetic: the demo tokenizer with ChatML tokens (tests/conftest.py `chatml_dir`), and templates that each read the
contents one way; the text is checked against transformers' `apply_chat_template`.
"""

from __future__ import annotations

import unicodedata
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers.normalizers import NFC

from packsft import load_tokenizer
from packsft.read.records import Conversation, RecordRejected
from packsft.render.chat import ChatRenderer
from packsft.render.chat.layout import HOLE, Layout
from packsft.render.chat.skeleton import skeleton
from packsft.render.chat.trace import Trace
from packsft.render.encoder import NFC_INERT

HEAD = "{% for m in messages %}<|im_start|>{{ m.role }}\n"
TAIL = "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
# How each template reads a message's content (`c`), where ChatML shows it as it is.
BODIES = {
    "as_is": "{{ m.content }}",
    "contains": "{% if '</think>' in m.content %}T:{% endif %}{{ m.content }}",
    "not_in": "{% if 'x' not in m.content %}no-x:{% endif %}{{ m.content }}",
    "in_a_string": "{% if m.content in 'abc def' %}sub:{% endif %}{{ m.content }}",
    "in_a_list": "{% if m.content in ['hi', 'yo'] %}greet:{% endif %}{{ m.content }}",
    "equals": "{% if m.content == 'hi' %}HI{% else %}{{ m.content }}{% endif %}",
    "startswith": "{% if m.content.startswith('x') %}X{% endif %}{{ m.content }}",
    "strip_method": "{{ m.content.strip() }}",
    "lstrip_last": "{% if loop.last %}{{ m.content.lstrip('\\n') }}{% else %}{{ m.content }}{% endif %}",
    "trim": "{{ m.content | trim }}",
    "upper": "{{ m.content | upper }}",
    "length": "{% if m.content | length > 3 %}long:{% endif %}{{ m.content }}",
    "messages_length": "{{ messages | length }}:{{ m.content }}",
    "slice": "{{ m.content[:3] }}|{{ m.content }}",
    "reversed_messages": "{{ (messages[::-1] | first).role }}:{{ m.content }}",
    "index": "{{ m.content[0] }}{{ m.content }}",
    "split": "{{ m.content.split('</think>')[-1] }}",
    "loop_over_chars": "{% for ch in m.content %}{{ ch }}{% endfor %}",
    "concat": "{{ m.content ~ '!' }}",
    "plus": "{{ '[' + m.content + ']' }}",
    "repeat": "{{ m.content * 2 }}",
    "percent": "{{ '%s.' % m.content }}",
    "format": "{{ '<{}>'.format(m.content) }}",
    "list_output": "{{ [m.content] }}",
    "tojson": "{{ m.content | tojson }}",
    "replace": "{{ m.content | replace('a', 'b') }}",
    "wordcount": "{{ m.content | wordcount }} {{ m.content }}",
    "set_block": "{% set shown %}<{{ m.content }}>{% endset %}{% if '?' in shown %}Q{% endif %}{{ shown }}",
    "macro": "{% macro show(c) %}{% if c.endswith('?') %}Q:{% endif %}{{ c }}{% endmacro %}{{ show(m.content) }}",
    "namespace": "{% set ns = namespace(last=m.content) %}{% if ns.last == 'hi' %}!{% endif %}{{ ns.last }}",
    "dict_key": "{% set d = {m.content: 1} %}{{ d['hi'] is defined }}{{ m.content }}",
    "changed": "{% if loop.changed(m.content) %}new:{% endif %}{{ m.content }}",
    "selectattr": "{{ messages | selectattr('content', 'equalto', 'hi') | list | length }}{{ m.content }}",
    "type_tests": "{% if m.content is string and m.content is defined %}{{ m.content }}{% endif %}",
    "truthiness": "{{ m.content if m.content else 'EMPTY' }}",
    "default": "{{ m.content | default('none') }}",
    "is_filter": "{% if m.content is filter %}F:{% endif %}{{ m.content }}",
    "items": "{% for key, value in m.items() %}{{ key }}={{ value }};{% endfor %}",
    "values_mapped": "{{ m.values() | map('upper') | join(',') }}",
    "iterator_mapped": "{{ messages | reverse | map(attribute='content') | map('upper') | join('|') }}",
    "reverse": "{{ m.content | reverse }}",
    "cycle": "{{ loop.cycle('odd', 'even') }}:{{ m.content }}",
    "cycler": "{% set c = cycler(m.role, m.content) %}{{ c.next() }}{{ c.next() }}",
    "generation": "{% generation %}{{ m.content }}{% endgeneration %}",
    "autoescape": "{% autoescape true %}{{ m.content }}{% endautoescape %}",
    "filter_block": "{% filter upper %}{{ m.content }}{% endfilter %}",
    "unpacked_loop": "{% for a, b, c in [m.content] %}{% if b == '0' %}zero{% endif %}{% endfor %}{{ m.content }}",
    "unpacked_set": "{% set a, b, c = m.content %}{% if b == '0' %}zero{% endif %}{{ m.content }}",
    "star_args": "{% set c = cycler(*m.content) %}{% if c.next() == c.next() %}same{% endif %}{{ m.content }}",
    "pairs": "{% for key, value in m.items() | list %}{{ key }}={{ value }};{% endfor %}",
}
# Templates that read contents only in ways a trace replays: their shapes are traced.
TRACED = ["as_is", "contains", "not_in", "in_a_string", "in_a_list", "equals", "startswith", "strip_method",
          "lstrip_last", "trim", "upper", "length", "messages_length", "slice", "reversed_messages",
          "split", "concat", "plus", "repeat", "percent", "tojson", "replace", "wordcount", "set_block", "macro",
          "namespace", "type_tests", "truthiness", "default", "is_filter", "items", "cycle", "cycler", "generation", "filter_block"]
CONTENTS = ["hi", "yo", "abc", "x marks", "  padded  ", "\nleading newline", "why?", "a</think>b", "</think>",
            "aaaa", "say \"hi\"\n", "ü ß 你好", "x", "trim", "<b>&</b>"]


@pytest.fixture(scope="session")
def chatml_fast(chatml_dir):
    return load_tokenizer(str(chatml_dir), "chat", encoder="auto")


def _template(name: str) -> str:
    return HEAD + BODIES[name] + TAIL


def _renderers(tokenizer, name: str) -> tuple[ChatRenderer, ChatRenderer]:
    """A renderer that traces skeletons, and one that renders every record (the reference)."""
    templated = replace(tokenizer, chat_template=_template(name))
    traced, rendered = ChatRenderer(templated), ChatRenderer(templated)
    rendered._tracer = None
    return traced, rendered


def _conversations() -> list[Conversation]:
    out = []
    for i, content in enumerate(CONTENTS):
        other = CONTENTS[(i * 5 + 3) % len(CONTENTS)]
        out.append(Conversation((("user", content), ("assistant", other))))
        out.append(Conversation((("system", other), ("user", content), ("assistant", content), ("user", other),
                                 ("assistant", other))))
    return out


def _laid_out(renderer: ChatRenderer, conv: Conversation) -> Layout | str:
    """The record's layout, or why the template refused it."""
    try:
        return renderer.layout(conv)
    except RecordRejected as refused:
        return refused.reason


@pytest.mark.parametrize("name", sorted(BODIES))
def test_layouts_are_those_of_the_records_own_rendering(name, chatml_fast):
    traced, rendered = _renderers(chatml_fast, name)
    for conv in _conversations():
        layout = _laid_out(traced, conv)
        assert layout == _laid_out(rendered, conv), conv.messages
        if isinstance(layout, Layout):
            assert layout.text == chatml_fast.hf.apply_chat_template(conv.chat_messages(), tokenize=False,
                                                                     chat_template=_template(name))


@pytest.mark.parametrize("name", sorted(BODIES))
def test_shapes_are_traced_where_every_read_replays(name, chatml_fast):
    traced, _ = _renderers(chatml_fast, name)
    for conv in _conversations():
        _laid_out(traced, conv)
    found = list(traced.facts.traces.entries.values())
    assert found and all((entry is not None) == (name in TRACED) for entry in found)


def test_a_traced_shape_renders_no_record(chatml_fast):
    traced, _ = _renderers(chatml_fast, "contains")
    calls = []
    jinja = traced._jinja
    traced._jinja = lambda *args: calls.append(args) or jinja(*args)
    traced.layout(Conversation((("user", "first"), ("assistant", "one"))))  # the shape's skeleton renders
    calls.clear()
    for content in ("second", "third", "a fourth, longer answer"):
        traced.layout(Conversation((("user", content), ("assistant", content.upper()))))
    assert calls == []
    # A record whose content the template reads otherwise than the skeleton's is rendered itself.
    conv = Conversation((("user", "q"), ("assistant", "a</think>b")))
    layout = traced.layout(conv)
    assert calls[0][0] == conv.chat_messages() and "T:a</think>b" in layout.text


def test_a_trace_holds_what_the_template_read_and_replays_it(chatml_fast):
    traced, _ = _renderers(chatml_fast, "contains")
    holed, _ = skeleton(Conversation((("user", "q"), ("assistant", "a"))).chat_messages())
    entry = traced.facts.traced_layout(traced.bind, traced._tracer, holed, {})
    assert entry is not None
    trace: Trace = entry[1]
    assert [(args, result) for _, args, _, result in trace.ops] == [
        (("</think>", "in", HOLE.format(0)), False), (("</think>", "in", HOLE.format(1)), False)]
    assert trace.replays(["q", "a"]) and not trace.replays(["q", "a</think>"])


contents = st.text(alphabet=st.sampled_from(list("ab x?!\n\"<>/thinkü")), max_size=12)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=contents, second=contents, name=st.sampled_from(sorted(BODIES)))
def test_any_contents_lay_out_as_rendered(first, second, name, chatml_fast):
    traced, rendered = _renderers(chatml_fast, name)
    for conv in (Conversation((("user", first), ("assistant", second))),
                 Conversation((("user", second), ("assistant", first), ("user", first), ("assistant", second)))):
        assert _laid_out(traced, conv) == _laid_out(rendered, conv)


def test_nfc_inert_text_is_its_own_nfc():
    """`NFC_INERT` lets a run skip normalizing: every character it admits is NFC alone and next to any other."""
    nfc = NFC()
    admitted = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000 and NFC_INERT.fullmatch(chr(c))]
    assert len(admitted) > 30_000
    assert all(nfc.normalize_str(char) == char for char in admitted)
    assert all(unicodedata.combining(char) == 0 for char in admitted)
    text = "".join(admitted)
    assert nfc.normalize_str(text) == text
    assert not NFC_INERT.fullmatch("e\u0301") and not NFC_INERT.fullmatch("\u1100\u1161")
