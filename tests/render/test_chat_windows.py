"""Windows (render/chat/layout.py): a skeleton's turn is rendered as the last message from the conversation since
the last user message before it, where facts.py proved on probes that this gives the rendering of the conversation
through the turn; elsewhere the whole conversation before the turn is rendered, as before. Layouts are those of the
record's own analysis either way, and the text is `apply_chat_template`'s.

Hermetic: the demo tokenizer with ChatML tokens (tests/conftest.py `chatml_dir`) and templates of our own.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packsft import load_tokenizer
from packsft.read.records import ChatExtras, Conversation
from packsft.render.chat import ChatRenderer
from packsft.render.chat.layout import Windows, analyse
from packsft.render.chat.skeleton import shape_key, skeleton

# Qwen3's rule, shortened: a turn after the last user message shows its reasoning when it is last or has any.
REASONING = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in messages %}{% if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor -%}"
    "{%- for m in messages -%}<|im_start|>{{ m.role }}\n"
    "{%- if m.role == 'assistant' and loop.index0 > ns.last_user and (loop.last or m.reasoning_content) -%}"
    "<think>{{ m.reasoning_content or '' }}</think>{%- endif %}{{ m.content }}<|im_end|>\n{% endfor -%}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif -%}")
# The last turn says "again" after the second question: what it shows depends on messages before its window.
COUNTING = (
    "{%- set ns = namespace(users=0) -%}"
    "{%- for m in messages -%}{% if m.role == 'user' %}{% set ns.users = ns.users + 1 %}{% endif -%}"
    "<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and loop.last and ns.users > 1 %}(again) {% endif -%}"
    "{{ m.content }}<|im_end|>\n{% endfor -%}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif -%}")


@pytest.fixture(scope="session")
def chatml_fast(chatml_dir):
    return load_tokenizer(str(chatml_dir), "chat", encoder="auto")


def _renderer(tokenizer, template: str) -> ChatRenderer:
    return ChatRenderer(replace(tokenizer, chat_template=template))


def _windows(renderer: ChatRenderer) -> Windows | None:
    return renderer.facts.windows(renderer.bind, None, {})


def _conversation(roles: list[str], reasoning: list[bool]) -> Conversation:
    messages = tuple((role, f"{role} {i}") for i, role in enumerate(roles))
    fields = tuple({"reasoning_content": f"why {i}"} if role == "assistant" and thinks else None
                   for i, (role, thinks) in enumerate(zip(roles, reasoning)))
    return Conversation(messages, extras=ChatExtras(fields))


def _assert_as_analysed(renderer: ChatRenderer, conv: Conversation, template: str) -> None:
    """The layout is that of the record's own analysis (prefixes rendered whole), on apply_chat_template's text."""
    layout = renderer.layout(conv)
    own = renderer._analyse_record(conv.chat_messages(), None, {}, layout.text)
    assert (layout.starts, layout.bodies, layout.generated, layout.rewritten) == (
        own.starts, own.bodies, own.generated, own.rewritten)
    assert layout.text == renderer.tokenizer.hf.apply_chat_template(conv.chat_messages(), tokenize=False,
                                                                     chat_template=template)


def test_a_template_that_renders_from_the_last_question_on_is_laid_out_through_windows(chatml_fast):
    renderer = _renderer(chatml_fast, REASONING)
    assert _windows(renderer) is not None
    roles = ["user", "assistant", "tool", "assistant", "user", "assistant", "user", "assistant", "tool", "assistant"]
    conv = _conversation(roles, [False, True, False, False, False, True, False, True, False, False])
    renderer.layout(_conversation(["user", "assistant"], [False, False]))  # the template's facts, found once
    calls: list[int] = []
    jinja = renderer._jinja
    renderer._jinja = lambda messages, *rest: calls.append(len(messages)) or jinja(messages, *rest)
    layout = renderer.layout(conv)
    # Turns 1, 5 and 7 show reasoning in history only where a later question does not hide it; each last turn
    # shows its own think block.
    assert layout.rewritten == [False, True, False, True, False, True, False, False, False, False]
    # Turns 1 and 3 (after the first question) render the conversation through them, and turn 5 the conversation
    # before it (its history: the first question's exchange); turns 5 and 7 render only their window, from the
    # question before them (two messages each), never the 6 or 8 messages through them.
    assert calls and not any(5 < n < len(roles) for n in calls), calls
    _assert_as_analysed(renderer, conv, REASONING)


# Qwen3's rule without its think block on the last turn: a turn's own rendering never changes when it is last, but
# the reasoning of the turns before it in its tool loop shows when it is prompted and is hidden once a question follows.
HIDDEN_LATER = REASONING.replace("(loop.last or m.reasoning_content)", "m.reasoning_content")


def test_a_turn_prompted_after_reasoning_that_a_later_question_hides_is_rewritten(chatml_fast):
    renderer = _renderer(chatml_fast, HIDDEN_LATER)
    conv = _conversation(["user", "assistant", "tool", "assistant", "user", "assistant"],
                         [False, True, False, False, False, False])
    layout = renderer.layout(conv)
    # Turn 3 is generated after turn 1's reasoning (the question before it is the last one then) and trained after
    # the rendering, which hides it: trained after other context than it is prompted with.
    assert layout.rewritten == [False, True, False, True, False, False]
    _assert_as_analysed(renderer, conv, HIDDEN_LATER)


def test_a_template_whose_last_turn_reads_earlier_questions_renders_the_whole_conversation(chatml_fast):
    renderer = _renderer(chatml_fast, COUNTING)
    assert _windows(renderer) is None
    conv = _conversation(["user", "assistant"] * 3, [False] * 6)
    layout = renderer.layout(conv)
    # Turn 3, last, says "(again)" (two questions before it); turn 1 does not: only turn 3 is rewritten.
    assert layout.rewritten == [False, False, False, True, False, False]
    _assert_as_analysed(renderer, conv, COUNTING)
    # Windows taken without their proof would miss it: the window of turn 3 holds one question.
    holed, _ = skeleton(conv.chat_messages())
    render, key = renderer.bind(None, {}), shape_key([], None, {})
    facts = renderer.facts
    wrong = Windows("user", lambda messages: render(messages, False), lambda text: 0)
    forced = analyse(render, holed, facts.markers(render, key), lambda text: 0, None, facts.generic_prompt(render, key),
                     windows=wrong)
    assert forced.rewritten == [False] * 6


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=st.lists(st.tuples(st.sampled_from(["user", "tool"]), st.integers(0, 2), st.booleans()),
                      min_size=1, max_size=6))
def test_any_conversation_lays_out_as_analysed(turns, chatml_fast):
    """A message (a question or a tool result), then 0-2 assistant turns with or without reasoning, repeated."""
    roles, reasoning = ["user"], [False]
    for role, answers, thinks in turns:
        roles += [role] + ["assistant"] * answers
        reasoning += [False] + [thinks] * answers
    renderer = _renderer(chatml_fast, REASONING)
    _assert_as_analysed(renderer, _conversation(roles, reasoning), REASONING)
