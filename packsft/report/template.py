"""What a chat template does, seen before packing (`packsft template`).

    history_rewrites   does the template show a plain earlier turn otherwise than the model generates it, and does
                       `enable_thinking: false` undo that (the pack summary's advice; run/plan.py records it)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from packsft.read.records import ChatExtras, Conversation, RecordRejected, validate_chat
from packsft.render.chat import ChatRenderer
from packsft.render.tokenizer import PackTokenizer

# The kwarg that makes reasoning templates (Qwen3, SmolLM3, ...) render a turn without reasoning as it shows it in
# history: the empty think block moves into the generation prompt.
THINKING_OFF = {"enable_thinking": False}
# A conversation without reasoning, tools or a system message: two plain turns.
PLAIN_TWO_TURNS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                   {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]


def conversation(messages: list[dict[str, Any]], tools: Any = None,
                 kwargs: Mapping[str, Any] | None = None) -> Conversation:
    """A Conversation as the reader builds it from an OpenAI-style record."""
    pairs, fields, train = validate_chat(messages)
    return Conversation(pairs, extras=ChatExtras(fields, train, tools, dict(kwargs) if kwargs else None))


def _rewrites_plain_turn(tokenizer: PackTokenizer, kwargs: Mapping[str, Any]) -> bool:
    try:
        return any(ChatRenderer(tokenizer, template_kwargs=kwargs).layout(conversation(PLAIN_TWO_TURNS)).rewritten)
    except RecordRejected:  # a template that refuses the kwarg, or plain turns: nothing to advise
        return False


def history_rewrites(tokenizer: PackTokenizer, template_kwargs: Mapping[str, Any] | None = None) -> dict[str, bool]:
    """Whether the template renders the earlier turn of a plain two-turn conversation (no reasoning) otherwise in
    history than as the last turn (`plain_turns_rewritten`), and whether adding `enable_thinking: false` to
    `template_kwargs` renders it the same both ways (`thinking_off_keeps_history`)."""
    kwargs = dict(template_kwargs or {})
    rewritten = _rewrites_plain_turn(tokenizer, kwargs)
    fixed = rewritten and not _rewrites_plain_turn(tokenizer, {**kwargs, **THINKING_OFF})
    return {"plain_turns_rewritten": rewritten, "thinking_off_keeps_history": fixed}
