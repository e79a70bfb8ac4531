"""The one record type (`Conversation`), its validation, and the ledger of rejected records.

Every record is validated before rendering. A bad record is never a crash and never silently
dropped: it is counted by reason and listed in `rejects.jsonl` (or, with --strict, stops the job
with `file:row: reason`).

A conversation is its (role, content) pairs, which every renderer and the packer read, plus
`ChatExtras` where the record has more than that (agentic and reasoning data):

    message  role, content          -> messages[i] = (role, content); text parts joined with "\n"
             tool_calls             -> extras.fields[i]["tool_calls"]   (OpenAI shape; arguments as given)
             tool_call_id, name, .. -> extras.fields[i][...]            (any field packsft does not know, unchanged)
             reasoning_content      -> extras.fields[i]["reasoning_content"] (also read from reasoning, thinking)
             weight 0/1, training   -> extras.train[i]                  (False: context only, never trained)
    record   tools                  -> extras.tools                      (a list; JSON text is decoded)
             chat_template_kwargs   -> extras.template_kwargs            (a mapping; JSON text is decoded)

Roles are normalised: tool results (`tool`, `ipython`, `function`, `observation`) are TOOL.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from packsft.errors import BadRecordError, ConfigError

SYSTEM, USER, ASSISTANT, TOOL, TEXT = "system", "user", "assistant", "tool", "text"
ROLES = (SYSTEM, USER, ASSISTANT, TOOL)

# Role names seen in public chat datasets, normalised to ours. `--role-map` extends this table.
ROLE_ALIASES = {
    "system": SYSTEM,
    "user": USER,
    "human": USER,
    "assistant": ASSISTANT,
    "gpt": ASSISTANT,
    "chatgpt": ASSISTANT,
    "bing": ASSISTANT,
    "bard": ASSISTANT,
    "model": ASSISTANT,
    "bot": ASSISTANT,
    "prompter": USER,
    "developer": SYSTEM,
    "tool": TOOL,
    "ipython": TOOL,
    "function": TOOL,
    "observation": TOOL,
}
# ShareGPT's tool call turn (LLaMA-Factory): its value is the JSON of {"name", "arguments"} (or a list of them).
FUNCTION_CALL_ROLE = "function_call"
# The fields a reasoning trace comes in; templates read `reasoning_content` (Qwen3, DeepSeek), so a trace
# under another name is also given to them under that one.
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
# Per-message train flags: OpenAI's fine-tuning `weight` (0 or 1) and axolotl's `training` (bool).
TRAIN_KEYS = ("weight", "training")
# Text parts are joined as vLLM serves them (one string, parts separated by a newline).
PART_SEPARATOR = "\n"
TEXT_PART_TYPES = ("text", "input_text", "output_text")

EXCERPT_CHARS = 160


@dataclass(frozen=True, slots=True)
class ChatExtras:
    """What a record holds besides (role, content): per-message template fields and train flags, tools,
    template kwargs. Only records that have any of these carry it (plain chats stay as cheap as before)."""

    fields: tuple[Mapping[str, Any] | None, ...] = ()  # per message: passed to the chat template as given
    train: tuple[bool | None, ...] = ()  # per message: False never trains it; None follows --mask
    tools: list[Any] | None = None
    template_kwargs: Mapping[str, Any] | None = None
    # A rendering `--turns inference` added (render/chat/renderer.py for_turns): its one trained turn, last, laid out
    # in the rendering its generation prompt shows.
    as_prompted: bool = False

    def field(self, index: int, key: str) -> Any:
        fields = self.fields[index] if index < len(self.fields) else None
        return None if fields is None else fields.get(key)

    def trains(self, index: int) -> bool:
        """False where the record says this message is context only (weight 0, training false)."""
        return not self.train or index >= len(self.train) or self.train[index] is not False


@dataclass(frozen=True, slots=True)
class Conversation:
    """One validated record: a tuple of (role, content) messages, or TEXT messages for documents (a plain
    prompt-completion row is two: the prompt, never trained, and the completion)."""

    messages: tuple[tuple[str, str], ...]
    source: str | None = None
    file: str = ""
    row: int = 0
    extras: ChatExtras | None = None
    copies: int = 1  # renderings of it the output holds (--mix: read/mix.py)

    def chat_messages(self) -> list[dict[str, Any]]:
        """The messages as a chat template reads them (`apply_chat_template(messages)`)."""
        out = []
        for index, (role, content) in enumerate(self.messages):
            message: dict[str, Any] = {"role": role, "content": content}
            fields = self.extras.fields[index] if self.extras and index < len(self.extras.fields) else None
            if fields:
                message.update(fields)
            out.append(message)
        return out

    def trains(self, index: int) -> bool:
        return self.extras is None or self.extras.trains(index)

    @property
    def tools(self) -> list[Any] | None:
        return self.extras.tools if self.extras else None

    def template_kwargs(self, defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """`--template-kwargs` overridden by the row's own `chat_template_kwargs`."""
        own = self.extras.template_kwargs if self.extras else None
        return {**(defaults or {}), **(own or {})}

    def reasoning(self, index: int) -> str | None:
        """The message's reasoning trace from its own field (not `<think>` inside its content)."""
        if self.extras is None:
            return None
        for key in REASONING_KEYS:
            value = self.extras.field(index, key)
            if isinstance(value, str):
                return value
        return None

    def tool_calls(self, index: int) -> list[Mapping[str, Any]]:
        calls = self.extras.field(index, "tool_calls") if self.extras else None
        return list(calls) if calls else []

    @property
    def chars(self) -> int:
        """Characters of its contents, reasoning traces and tool-call arguments given as text: about what rendering
        it holds in memory."""
        total = sum(len(content) for _, content in self.messages)
        for index in range(len(self.messages)) if self.extras is not None else ():
            total += len(self.reasoning(index) or "")
            total += sum(len(arguments) for call in self.tool_calls(index)
                         if isinstance(arguments := (call.get("function") or {}).get("arguments"), str))
        return total


class RecordRejected(Exception):
    """Internal signal: this record is bad for the given reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_role_map(text: str | None) -> dict[str, str]:
    """ROLE_ALIASES extended by `--role-map from=to,...` (targets: system, user, assistant)."""
    aliases = dict(ROLE_ALIASES)
    for item in (text or "").split(","):
        if not item.strip():
            continue
        source, sep, target = item.partition("=")
        source, target = source.strip().lower(), target.strip().lower()
        if not sep or not source or target not in ROLES:
            raise ConfigError(
                f"--role-map {item.strip()!r}: expected from=to with to one of {', '.join(ROLES)} (e.g. bot=assistant)"
            )
        aliases[source] = target
    return aliases


def validate_messages(
    raw: Any,
    role_aliases: Mapping[str, str] = ROLE_ALIASES,
    *,
    field: str = "messages",
    role_key: str = "role",
    content_key: str = "content",
) -> tuple[tuple[str, str], ...]:
    """Check a raw message list and return normalised (role, content) pairs (see `validate_chat`)."""
    return validate_chat(raw, role_aliases, field=field, role_key=role_key, content_key=content_key)[0]


ChatParts = tuple[tuple[tuple[str, str], ...], tuple[Mapping[str, Any] | None, ...], tuple[bool | None, ...]]


def validate_chat(
    raw: Any,
    role_aliases: Mapping[str, str] = ROLE_ALIASES,
    *,
    field: str = "messages",
    role_key: str = "role",
    content_key: str = "content",
) -> ChatParts:
    """Check a raw message list: (role, content) pairs, per-message template fields, per-message train flags.

    Raises RecordRejected with a reason that names the message index. `field`, `role_key` and
    `content_key` name the ShareGPT shape (`conversations`, `from`, `value`) or the chat-API one.
    """
    if raw is None:
        raise RecordRejected(f"{field} is null")
    if isinstance(raw, (str, bytes, Mapping)) or not hasattr(raw, "__len__"):
        raise RecordRejected(f"{field} is not a list (got {type(raw).__name__})")
    if len(raw) == 0:
        raise RecordRejected("empty message list")
    messages: list[tuple[str, str]] = []
    extra: list[Mapping[str, Any] | None] = []
    train: list[bool | None] = []
    for index, message in enumerate(raw):
        if type(message) is not dict and not isinstance(message, Mapping):  # the ABC check only where needed
            raise RecordRejected(f"message {index} is not a mapping (got {type(message).__name__})")
        role, content = message.get(role_key), message.get(content_key)
        if role is None:
            raise RecordRejected(f"message {index} has no role")
        if not isinstance(role, str):
            raise RecordRejected(f"message {index} role is not a string (got {type(role).__name__})")
        name = role.strip().lower()
        normalised = role_aliases.get(name)
        if len(message) == 2 and type(content) is str and normalised is not None and name != FUNCTION_CALL_ROLE:
            # The plain message, (role, content) and nothing else: most of every corpus, so kept cheap.
            if not content.isascii() and not _valid_unicode(content):
                raise RecordRejected(f"message {index} content {_NOT_UNICODE}")
            fields, flag = None, None
        else:
            normalised, content, fields, flag = _chat_message(index, message, name, normalised, role_key, content_key)
        messages.append((normalised, content))
        extra.append(fields)
        train.append(flag)
    return tuple(messages), tuple(extra), tuple(train)


_NOT_UNICODE = ("is not valid Unicode (a lone surrogate, from a JSON \\ud800-\\udfff escape); no tokenizer can "
                "encode it unchanged")


def _chat_message(
    index: int, message: Mapping[str, Any], name: str, normalised: str | None, role_key: str, content_key: str
) -> tuple[str, str, dict[str, Any] | None, bool | None]:
    """(role, content, template fields, train flag) of a message that has more than a role and text content."""
    fields = {key: value for key, value in message.items() if key != role_key and key != content_key
              and value is not None}
    if name == FUNCTION_CALL_ROLE and role_key == "from":
        normalised, content = ASSISTANT, ""
        fields["tool_calls"] = _sharegpt_calls(index, message.get(content_key))
    else:
        if normalised is None:
            raise RecordRejected(f"message {index} has unknown role {message.get(role_key)!r}")
        content = _content(index, message.get(content_key), has_calls=bool(fields.get("tool_calls")))
    flag = _train_flag(index, fields)
    if "tool_calls" in fields:
        fields["tool_calls"] = validate_tool_calls(index, fields["tool_calls"])
    reasoning = next((fields[key] for key in REASONING_KEYS if key in fields), None)
    if reasoning is not None:
        if not isinstance(reasoning, str):
            raise RecordRejected(f"message {index} reasoning is not a string (got {type(reasoning).__name__})")
        fields.setdefault("reasoning_content", reasoning)
    for what, text in (("content", content), ("reasoning", reasoning)):
        if text is not None and not _valid_unicode(text):
            raise RecordRejected(f"message {index} {what} {_NOT_UNICODE}")
    return normalised, content, fields or None, flag


def _content(index: int, content: Any, *, has_calls: bool) -> str:
    """A message's content as one string: text parts joined; null only where the message calls tools."""
    if content is None:
        if has_calls:
            return ""  # OpenAI sends content null next to tool_calls; templates read it as text
        raise RecordRejected(f"message {index} has no content")
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        texts = []
        for number, part in enumerate(content):
            if not isinstance(part, Mapping):
                raise RecordRejected(f"message {index} content part {number} is not a mapping (got {type(part).__name__})")
            kind = part.get("type", "text")
            if kind not in TEXT_PART_TYPES:
                raise RecordRejected(f"message {index} has a content part of type {kind!r}; packsft packs text only "
                                     "(drop or describe non-text parts upstream)")
            text = part.get("text")
            if not isinstance(text, str):
                raise RecordRejected(f"message {index} content part {number} has no text")
            texts.append(text)
        return PART_SEPARATOR.join(texts)
    raise RecordRejected(f"message {index} content is not a string (got {type(content).__name__})")


def _train_flag(index: int, fields: dict[str, Any]) -> bool | None:
    """The message's own train flag (`weight` 0/1 or `training`), removed from the template fields."""
    flag = None
    weight = fields.pop("weight", None)
    if weight is not None:
        if isinstance(weight, bool) or weight not in (0, 1):
            raise RecordRejected(f"message {index} weight must be 0 or 1 (got {weight!r})")
        flag = bool(weight)
    training = fields.pop("training", None)
    if training is not None:
        if not isinstance(training, bool):
            raise RecordRejected(f"message {index} training must be true or false (got {training!r})")
        flag = training if flag is None else flag and training
    return flag


def validate_tool_calls(index: int, calls: Any) -> list[dict[str, Any]]:
    """OpenAI tool calls (`[{type, id?, function: {name, arguments}}]`, or JSON text of that), checked.

    `arguments` stays as given (JSON text or an object): templates print text as it is and objects with
    `tojson`. Text that is not JSON is refused, as the model would learn to emit broken calls.
    """
    calls = parse_json_field(calls, f"message {index} tool_calls")
    if isinstance(calls, Mapping):
        calls = [calls]
    if not isinstance(calls, (list, tuple)):
        raise RecordRejected(f"message {index} tool_calls is not a list (got {type(calls).__name__})")
    checked = []
    for number, call in enumerate(calls):
        if not isinstance(call, Mapping):
            raise RecordRejected(f"message {index} tool call {number} is not a mapping (got {type(call).__name__})")
        call = {key: value for key, value in call.items() if value is not None}
        function = call.get("function", call)
        if not isinstance(function, Mapping):
            raise RecordRejected(f"message {index} tool call {number} function is not a mapping")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise RecordRejected(f"message {index} tool call {number} has no function name")
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                json.loads(arguments)
            except json.JSONDecodeError as exc:
                raise RecordRejected(f"message {index} tool call {number} arguments are not valid JSON "
                                     f"({json_problem(exc)})") from None
        checked.append(drop_nulls(call))
    return checked


def _sharegpt_calls(index: int, value: Any) -> list[dict[str, Any]]:
    """ShareGPT's `function_call` turn: JSON text of {"name", "arguments"} (or a list of them), as OpenAI calls."""
    calls = parse_json_field(value, f"message {index} function_call")
    calls = calls if isinstance(calls, list) else [calls]
    out = []
    for call in calls:
        if not isinstance(call, Mapping):
            raise RecordRejected(f"message {index} function_call is not a JSON object")
        arguments = call.get("arguments", {})
        out.append({"type": "function", "function": {"name": call.get("name"), "arguments": arguments}})
    return out


def parse_json_field(value: Any, what: str) -> Any:
    """A field that may come as JSON text (many datasets store tools, calls and kwargs so), decoded."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise RecordRejected(f"{what} is not valid JSON (got {json_problem(exc)})") from None


def json_problem(exc: json.JSONDecodeError, start: int = 0) -> str:
    """What is wrong with JSON text and where, counted from `start`: 'Expecting value at character 3'."""
    at = "" if exc.msg.endswith(" at") else " at"  # "Unterminated string starting at" names its own place
    return f"{exc.msg}{at} character {exc.pos - start}"


def drop_nulls(value: Any) -> Any:
    """Mappings without their null entries, recursively: a parquet struct column holds every field any row has,
    null where a row has none, and a template would print those (`tojson`) as if the row had them."""
    if isinstance(value, Mapping):
        return {key: drop_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, (list, tuple)):
        return [drop_nulls(item) for item in value]
    return value


def _valid_unicode(text: str) -> bool:
    """False for text holding a lone surrogate (JSON decodes a lone "\\ud83d" into one; UTF-8 cannot hold it)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_text(raw: Any, field: str = "text") -> tuple[tuple[str, str], ...]:
    """A document (or a plain prompt or completion, named by `field`) as one TEXT message."""
    if raw is None:
        raise RecordRejected(f"{field} is null")
    if not isinstance(raw, str):
        raise RecordRejected(f"{field} is not a string (got {type(raw).__name__})")
    if not raw:
        raise RecordRejected(f"empty {field}")
    if not _valid_unicode(raw):
        raise RecordRejected(f"{field} {_NOT_UNICODE}")
    return ((TEXT, raw),)


@dataclass
class RejectLedger:
    """Counts rejected records by reason and keeps their details for rejects.jsonl."""

    strict: bool = False
    counts: Counter[str] = field(default_factory=Counter)
    entries: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, file: str, row: int, reason: str, record: Any = None) -> None:
        if self.strict:
            raise BadRecordError(f"{file}:{row}: {reason} (drop --strict to skip and count bad records)")
        self.counts[_reason_key(reason)] += 1
        self.entries.append({"file": file, "row": row, "reason": reason, "excerpt": excerpt(record)})

    def replay(self, entries: list[dict[str, Any]]) -> None:
        """Take the rejects another ledger recorded (its `entries`), as if they were rejected here."""
        for entry in entries:
            if self.strict:
                raise BadRecordError(f"{entry['file']}:{entry['row']}: {entry['reason']} (drop --strict to skip and "
                                     "count bad records)")
            self.counts[_reason_key(entry["reason"])] += 1
            self.entries.append(entry)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_jsonl(self) -> str:
        return "".join(json.dumps(entry, ensure_ascii=True) + "\n" for entry in self.entries)


# Words followed by an index in reasons ('message 3', 'tool call 1', 'content part 0', 'tools entry 2').
_INDEXED = frozenset({"message", "call", "part", "entry"})


def _reason_key(reason: str) -> str:
    """Group reasons that differ only by indices and values ('message 3 tool call 1 has no function name' ->
    'message tool call has no function name')."""
    words = reason.split()
    words = [word for i, word in enumerate(words) if not (i and word.isdigit() and words[i - 1] in _INDEXED)]
    key = " ".join(words)
    return key.split(" (got ")[0].split(" '")[0]


def excerpt(record: Any) -> str:
    try:
        text = json.dumps(record, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        text = repr(record)
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"
