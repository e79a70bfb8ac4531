"""What a chat template does, seen before packing (`packsft template`).

    describe_template(tokenizer) -> TemplateReport
      examples            one rendering per record shape (and --example's record), trained spans marked
      generation_prompt   what add_generation_prompt=True appends
      stop tokens         the tokenizer's stop ids, and which of them each example's trained runs end with
      history             turns rendered otherwise when not last, reasoning dropped; history_rewrites on a plain
                          conversation, with and without `enable_thinking: false` (the pack summary's advice too)
      fields              what the template reads (template_fields.py)
      prefixes            whether rendering messages[:i] gives a prefix of rendering the whole conversation

Every rendering is packsft's own (render/chat/renderer.py), so what is shown is what `pack --template chat` trains.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from packsft.errors import InputError, TokenizerError
from packsft.read.json_input import first_json_record
from packsft.read.reader import DETECT
from packsft.read.records import ROLE_ALIASES, ChatExtras, Conversation, RecordRejected, validate_chat
from packsft.read.shapes import to_conversation
from packsft.render.chat import ChatRenderer, render_chat
from packsft.render.chat.probes import PROBES_VERSION
from packsft.render.tokenizer import PackTokenizer, chat_template_sha256, load_tokenizer
from packsft.render.tokenizer_cache import cache_key, read_entry, write_entry
from packsft.report.template_fields import template_fields

# The kwarg that makes reasoning templates (Qwen3, SmolLM3, ...) render a turn without reasoning as it shows it in
# history: the empty think block moves into the generation prompt.
THINKING_OFF = {"enable_thinking": False}
# A conversation without reasoning, tools or a system message: two plain turns.
PLAIN_TWO_TURNS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                   {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
# One record per shape packsft reads, as OpenAI-style records.
EXAMPLES: dict[str, dict[str, Any]] = {
    "plain": {"messages": PLAIN_TWO_TURNS[:2]},
    "system": {"messages": [{"role": "system", "content": "Be brief."}, *PLAIN_TWO_TURNS[:2]]},
    "multi-turn": {"messages": PLAIN_TWO_TURNS},
    "tool call": {"tools": [WEATHER_TOOL], "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "id": "call_0", "function": {
            "name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "call_0", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "21 °C."}]},
    "reasoning_content": {"messages": [{"role": "user", "content": "2+2?"}, {
        "role": "assistant", "content": "4.", "reasoning_content": "Two and two make four."}]},
    "think in content": {"messages": [{"role": "user", "content": "2+2?"}, {
        "role": "assistant", "content": "<think>\nTwo and two make four.\n</think>\n\n4."}]},
}


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
    # Cached per tokenizer (its fingerprint covers the template) and kwargs: it analyses the template in the
    # planning process (about 1.7 s for qwen3), which would otherwise add that to every run's wall time.
    key = cache_key("chat-history", {"fingerprint": tokenizer.fingerprint, "kwargs": kwargs,
                                     "probes": PROBES_VERSION})
    entry = read_entry("proofs", key)
    if entry is not None and {"plain_turns_rewritten", "thinking_off_keeps_history"} <= set(entry):
        return {name: bool(entry[name]) for name in ("plain_turns_rewritten", "thinking_off_keeps_history")}
    rewritten = _rewrites_plain_turn(tokenizer, kwargs)
    fixed = rewritten and not _rewrites_plain_turn(tokenizer, {**kwargs, **THINKING_OFF})
    found = {"plain_turns_rewritten": rewritten, "thinking_off_keeps_history": fixed}
    write_entry("proofs", key, found)
    return found


@dataclass
class Example:
    """One record rendered as `pack --template chat` trains it."""

    shape: str
    text: str = ""  # the rendering, decoded token run by token run
    trained: list[tuple[int, int]] = field(default_factory=list)  # [start, end) character spans of `text`
    tokens: int = 0
    trained_tokens: int = 0
    run_ends: list[str] = field(default_factory=list)  # the last token of each trained run
    rewritten_turns: list[int] = field(default_factory=list)  # message indices shown otherwise in history
    reasoning_tokens_dropped: int = 0
    stop_appended: str = ""  # the stop token packsft appends where the template renders none after the last turn
    ended_without_stop: int = 0  # trained turns that end with a template token the model does not stop on
    unstable_prefixes: list[int] = field(default_factory=list)  # i where render(messages[:i]) is no prefix
    refused_prefixes: list[int] = field(default_factory=list)  # i where the template refuses messages[:i]
    error: str | None = None  # the template refused the record


@dataclass
class TemplateReport:
    tokenizer: str
    chat_template_sha256: str | None
    chat_template_file: str | None
    generation_prompt: str | None  # None: add_generation_prompt=True does not extend the rendering
    generation_renderings: tuple[str, str]  # a user message rendered without and with the generation prompt
    stop_tokens: list[tuple[int, str]]
    fields: dict[str, Any]
    history: dict[str, bool]
    examples: list[Example]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_template_tokenizer(name: str, chat_template: Any = None) -> PackTokenizer:
    """The tokenizer with its chat template (or `chat_template`, a render.tokenizer.ChatTemplateFile, instead)."""
    tokenizer = load_tokenizer(name, "auto", chat_template=chat_template)
    if tokenizer.template != "chat":
        raise TokenizerError(f"tokenizer {name!r} has no chat template, so there is nothing to show; "
                             "pass --chat-template FILE")
    return tokenizer


def read_example(path: str | Path) -> tuple[str, Conversation]:
    """The first record of a JSON or JSON Lines file (any conversation shape `pack` reads) and its shape."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--example {path}: cannot be read ({exc})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = first_json_record(path)  # JSON Lines
    if isinstance(value, list) and value:
        value = value[0]
    shape = next((name for name, needed in DETECT.items() if isinstance(value, dict) and all(k in value for k in needed)),
                 None)
    if shape is None:
        raise InputError(f"--example {path}: not a record with 'messages', 'conversations', 'prompt' and 'completion', "
                         "or 'instruction' and 'output'")
    shape = "openai" if shape == "messages" else shape
    try:
        messages, extras = to_conversation(shape, value, ROLE_ALIASES)
    except RecordRejected as bad:
        raise InputError(f"--example {path}: {bad.reason}") from None
    return shape, Conversation(messages, extras=extras)


def describe_template(tokenizer: PackTokenizer, example: tuple[str, Conversation] | None = None,
                      template_kwargs: Mapping[str, Any] | None = None) -> TemplateReport:
    """What the tokenizer's chat template does to each shape of record (and to `example`, from read_example)."""
    conversations = {shape: to_conversation("openai", record, ROLE_ALIASES) for shape, record in EXAMPLES.items()}
    cases = [(shape, Conversation(messages, extras=extras)) for shape, (messages, extras) in conversations.items()]
    if example is not None:
        cases.append((f"--example ({example[0]})", example[1]))
    kwargs = dict(template_kwargs or {})
    source = tokenizer.chat_template
    fields = template_fields(source, tuple(tokenizer.special_tokens_map)) if isinstance(source, str) else None
    without, with_prompt = _generation_renderings(ChatRenderer(tokenizer, template_kwargs=kwargs))
    return TemplateReport(
        tokenizer=tokenizer.name, chat_template_sha256=chat_template_sha256(source),
        chat_template_file=tokenizer.chat_template_file,
        generation_prompt=with_prompt[len(without):] if with_prompt.startswith(without) and with_prompt != without
        else None,
        generation_renderings=(without, with_prompt),
        stop_tokens=[(int(i), _token(tokenizer, i)) for i in (tokenizer.stop_ids or (tokenizer.eos_id,))],
        fields=fields.to_dict() if fields else {}, history=history_rewrites(tokenizer, kwargs),
        examples=[_example(tokenizer, shape, conv, kwargs) for shape, conv in cases])


def _token(tokenizer: PackTokenizer, token_id: int) -> str:
    return str(tokenizer.backend.decode([int(token_id)], skip_special_tokens=False))


def _generation_renderings(renderer: ChatRenderer) -> tuple[str, str]:
    user = [{"role": "user", "content": "Hi"}]
    try:
        return renderer.render_text(user, kwargs=renderer.template_kwargs), renderer.render_text(
            user, kwargs=renderer.template_kwargs, add_generation_prompt=True)
    except RecordRejected:
        return "", ""


def _example(tokenizer: PackTokenizer, shape: str, conv: Conversation, kwargs: dict[str, Any]) -> Example:
    """One record rendered and encoded as the pack does, its trained runs, rewrites and prefix renderings."""
    renderer = ChatRenderer(tokenizer, template_kwargs=kwargs)
    try:
        batch = render_chat([conv], tokenizer, renderer=renderer)
        layout = renderer.layout(conv)
    except RecordRejected as bad:
        return Example(shape, error=bad.reason)
    example = Example(shape, tokens=len(batch.ids), trained_tokens=int(batch.flags.sum()),
                      rewritten_turns=[i for i, changed in enumerate(layout.rewritten) if changed],
                      reasoning_tokens_dropped=renderer.counts.reasoning_tokens_dropped,
                      stop_appended=layout.appended,
                      ended_without_stop=renderer.counts.turns_ended_without_stop_token)
    add_runs(example, tokenizer, batch.ids, batch.flags)
    example.unstable_prefixes, example.refused_prefixes = _prefixes(renderer, conv)
    return example


def add_runs(example: Example, tokenizer: PackTokenizer, ids: np.ndarray, flags: np.ndarray) -> None:
    """Decode `ids` into the example's text run by run of equal train flag, recording the trained runs."""
    trained = flags.astype(bool)
    bounds = [0, *(np.flatnonzero(np.diff(trained)) + 1).tolist(), len(trained)]
    for start, end in zip(bounds[:-1], bounds[1:]):
        piece = tokenizer.backend.decode(ids[start:end].tolist(), skip_special_tokens=False)
        if trained[start]:
            example.trained.append((len(example.text), len(example.text) + len(piece)))
            example.run_ends.append(_token(tokenizer, ids[end - 1]))
        example.text += piece


def _prefixes(renderer: ChatRenderer, conv: Conversation) -> tuple[list[int], list[int]]:
    """The i (1..n-1) where rendering messages[:i] is not a prefix of rendering the whole, and where it is refused."""
    messages, kwargs = conv.chat_messages(), conv.template_kwargs(renderer.template_kwargs)
    whole = renderer.render_text(messages, conv.tools, kwargs)
    unstable, refused = [], []
    for i in range(1, len(messages)):
        try:
            part = renderer.render_text(messages[:i], conv.tools, kwargs)
        except RecordRejected:
            refused.append(i)
            continue
        if not whole.startswith(part):
            unstable.append(i)
    return unstable, refused


# Trained text in a terminal: green, as `packsft inspect` colours it; elsewhere between brackets.
GREEN, RESET = "\x1b[32m", "\x1b[0m"
OPEN, CLOSE = "[[", "]]"


def marked(example: Example, color: bool = False) -> str:
    """The example's rendering with its trained runs coloured (`color`) or between [[ and ]]."""
    start, end = (GREEN, RESET) if color else (OPEN, CLOSE)
    out, at = [], 0
    for first, last in example.trained:
        out += [example.text[at:first], start, example.text[first:last], end]
        at = last
    return "".join([*out, example.text[at:]])


def format_template_report(report: TemplateReport, color: bool = False) -> str:
    """`packsft template` as text: the template's facts, then each example with its trained runs marked."""
    stops = {token for _, token in report.stop_tokens}
    fields = report.fields
    lines = [f"chat template of {report.tokenizer} (sha256 {(report.chat_template_sha256 or '-')[:12]}"
             + (f", from {report.chat_template_file})" if report.chat_template_file else ")"),
             _generation_line(report),
             "  stop tokens: " + ", ".join(f"{token!r} ({i})" for i, token in report.stop_tokens)]
    if fields:
        lines.append(f"  reads: message fields {', '.join(fields['message_fields']) or 'none'}; "
                     f"tools {'yes' if fields['reads_tools'] else 'no'}; kwargs {', '.join(fields['kwargs']) or 'none'}")
    lines.append("  history: " + _history_line(report.history))
    lines.append(f"  trained text is {'green' if color else f'between {OPEN} and {CLOSE}'}")
    for example in report.examples:
        lines += ["", f"── {example.shape} " + "─" * max(0, 60 - len(example.shape))]
        lines += _example_lines(example, stops, color)
    return "\n".join(lines)


def _generation_line(report: TemplateReport) -> str:
    if report.generation_prompt is not None:
        return f"  generation prompt: {report.generation_prompt!r} (what add_generation_prompt=True appends)"
    without, with_prompt = report.generation_renderings
    return f"  generation prompt: none appended (a user message renders {without!r}, with the prompt {with_prompt!r})"


def _history_line(history: Mapping[str, bool]) -> str:
    if not history.get("plain_turns_rewritten"):
        return "a plain earlier turn is shown as the model generates it"
    if history.get("thinking_off_keeps_history"):
        return ("a plain earlier turn is shown otherwise than generated; with --template-kwargs "
                "'{\"enable_thinking\": false}' as generated")
    return "a plain earlier turn is shown otherwise than generated (--turns inference trains each as generated)"


def _example_lines(example: Example, stops: set[str], color: bool) -> list[str]:
    if example.error is not None:
        return [f"  refused by the template: {example.error}"]
    ends = [f"{end!r}" + ("" if end in stops else " (not a stop token)") for end in example.run_ends]
    lines = [marked(example, color),
             f"  trained {example.trained_tokens} of {example.tokens} tokens; trained runs end with "
             + (", ".join(ends) if ends else "nothing: no token is trained")]
    if example.rewritten_turns:
        lines.append("  history: shown otherwise than generated when not the last turn: message "
                     + ", ".join(map(str, example.rewritten_turns)))
    if example.reasoning_tokens_dropped:
        lines.append(f"  reasoning: {example.reasoning_tokens_dropped} tokens of the record's reasoning are not rendered")
    if example.stop_appended:
        lines.append(f"  stop: the template renders no stop token after the last turn; packsft appends "
                     f"{example.stop_appended!r} (EOS) and trains it")
    if example.ended_without_stop:
        lines.append(f"  stop: {example.ended_without_stop} trained turn(s) end with a template token that is not one of "
                     "the model's stop tokens; it is trained as the turn's end")
    if example.unstable_prefixes or example.refused_prefixes:
        lines.append("  prefixes: " + "; ".join(part for part in (
            f"messages[:i] renders as no prefix of the whole for i = {', '.join(map(str, example.unstable_prefixes))}"
            if example.unstable_prefixes else "",
            f"refused for i = {', '.join(map(str, example.refused_prefixes))}" if example.refused_prefixes else "")
            if part))
    else:
        lines.append("  prefixes: stable (each messages[:i] renders as a prefix of the whole)")
    return lines
