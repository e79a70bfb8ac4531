"""Record shapes: one input row (a parquet row or a JSON object) -> the parts of a `Conversation`.

    smoltalk / openai   {"messages": [{role, content, tool_calls?, ...}], "tools"?, "chat_template_kwargs"?}
    sharegpt            {"conversations": [{from, value}], "system"?, "tools"?}   (function_call / observation turns)
    prompt_completion   {"prompt": [...] | "text", "completion": [...] | "text"}   (TRL; only the completion trains)
    alpaca              {"instruction", "input"?, "output", "system"?, "history"?: [[user, assistant], ...]}
    text                {"text": "a document"}

Every conversation shape may carry `tools` (a list, or JSON text of one) and `chat_template_kwargs` (a mapping,
or JSON text); a field stored as JSON text is decoded per record, and text that is not JSON rejects the record.
Blank text in either means none; in a parquet struct column, a null field means the row does not have it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from packsft.read.records import (
    ASSISTANT,
    SYSTEM,
    TEXT,
    USER,
    ChatExtras,
    RecordRejected,
    drop_nulls,
    parse_json_field,
    validate_chat,
    validate_text,
)

# The field(s) each input format needs, and the message keys of its conversation field.
REQUIRED = {
    "smoltalk": ("messages",),
    "openai": ("messages",),
    "sharegpt": ("conversations",),
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
}
MESSAGE_KEYS = {"sharegpt": ("from", "value")}
TOOLS, KWARGS, SYSTEM_FIELD = "tools", "chat_template_kwargs", "system"
# Fields a shape reads when present (parquet reads only these columns besides the required ones).
OPTIONAL = {
    "smoltalk": (TOOLS, KWARGS),
    "openai": (TOOLS, KWARGS),
    "sharegpt": (TOOLS, KWARGS, SYSTEM_FIELD),
    "text": (),
    "prompt_completion": (TOOLS, KWARGS),
    "alpaca": ("input", SYSTEM_FIELD, "history", TOOLS, KWARGS),
}
Parts = tuple[tuple[tuple[str, str], ...], ChatExtras | None]


def to_conversation(shape: str, record: Mapping[str, Any], aliases: Mapping[str, str], *, structs: bool = False,
                    json_text: bool = False) -> Parts:
    """The (role, content) messages and extras of one record in `shape`; RecordRejected names what is wrong.

    Args:
        structs: the record comes from parquet struct columns, whose null fields mean "absent" (dropped).
        json_text: the file stores its conversation field as JSON text (decided by its first record or schema).
    """
    if shape == "text":
        return validate_text(record.get("text")), None
    if shape == "prompt_completion":
        messages, fields, train = _prompt_completion(record, aliases)
    elif shape == "alpaca":
        messages, fields, train = _alpaca(record)
    else:
        field = REQUIRED[shape][0]
        role_key, content_key = MESSAGE_KEYS.get(shape, ("role", "content"))
        value = parse_json_field(record.get(field), field) if json_text else record.get(field)
        messages, fields, train = validate_chat(value, aliases, field=field, role_key=role_key, content_key=content_key)
        if shape == "sharegpt":
            messages, fields, train = _with_system(record.get(SYSTEM_FIELD), messages, fields, train)
    # Most records have none of these: checked with as few calls as possible (read_conversations is hot).
    tools, kwargs = record.get(TOOLS), record.get(KWARGS)
    if tools is not None:
        tools = _tools(tools, structs)
    if kwargs is not None:
        kwargs = _kwargs(kwargs, structs)
    if tools and messages[0][0] == TEXT:  # never dropped silently
        raise RecordRejected("tools on a text prompt-completion row: a text row has no turns a template renders "
                             "them in; give the prompt as messages")
    if tools is None and kwargs is None and not any(fields) and train.count(None) == len(train):
        return messages, None
    return messages, ChatExtras(fields, train, tools, kwargs)


def _tools(value: Any, structs: bool) -> list[Any] | None:
    """A record's tool definitions: a list of mappings, or JSON text of one ("" and [] are no tools)."""
    tools = _decoded(value, TOOLS)
    if tools is None:
        return None
    if not isinstance(tools, (list, tuple)):
        raise RecordRejected(f"tools is not a list (got {type(tools).__name__})")
    for number, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise RecordRejected(f"tools entry {number} is not a mapping (got {type(tool).__name__})")
    # Only a struct column's nulls mean "absent"; in JSON a null is the record's own value.
    structs = structs and not isinstance(value, str)
    return [drop_nulls(tool) if structs else dict(tool) for tool in tools] or None


def _kwargs(value: Any, structs: bool) -> dict[str, Any] | None:
    """A record's chat_template_kwargs: a mapping, or JSON text of one ("" and {} are none)."""
    kwargs = _decoded(value, KWARGS)
    if kwargs is None:
        return None
    if not isinstance(kwargs, Mapping):
        raise RecordRejected(f"chat_template_kwargs is not a mapping (got {type(kwargs).__name__})")
    return (drop_nulls(kwargs) if structs and not isinstance(value, str) else dict(kwargs)) or None


def _decoded(value: Any, what: str) -> Any:
    """A record-level field that may be JSON text; blank text is an absent field, as datasets write "no tools"."""
    if isinstance(value, str) and not value.strip():
        return None
    return parse_json_field(value, what)


def _with_system(system: Any, messages, fields, train):
    """A record-level `system` (ShareGPT, Alpaca) as the first message, unless the conversation has its own."""
    if system is None or system == "":
        return messages, fields, train
    if not isinstance(system, str):
        raise RecordRejected(f"system is not a string (got {type(system).__name__})")
    if messages and messages[0][0] == SYSTEM:
        return messages, fields, train
    return ((SYSTEM, system),) + messages, (None,) + fields, (None,) + train


def _prompt_completion(record: Mapping[str, Any], aliases: Mapping[str, str]):
    """TRL's prompt-completion row: the prompt is context, only the completion trains. Both are text (a plain
    prompt, which may be empty, and its continuation) or both message lists (as TRL, text is never decoded)."""
    prompt, completion = record.get("prompt"), record.get("completion")
    if isinstance(prompt, str) and isinstance(completion, str):
        messages = (validate_text(prompt, "prompt")[0] if prompt else (TEXT, ""),
                    validate_text(completion, "completion")[0])
        return messages, (None, None), (False, None)
    if isinstance(prompt, str) or isinstance(completion, str):
        raise RecordRejected("prompt and completion must both be text or both be message lists")
    head, tail = _part_of(prompt, "prompt", aliases), _part_of(completion, "completion", aliases)
    return head[0] + tail[0], head[1] + tail[1], (False,) * len(head[0]) + tail[2]


def _part_of(raw: Any, field: str, aliases: Mapping[str, str]):
    """validate_chat, with a message's reason saying which list it is in ('completion message 0 has no content')."""
    try:
        return validate_chat(raw, aliases, field=field)
    except RecordRejected as bad:
        raise RecordRejected(f"{field} {bad.reason}" if bad.reason.startswith("message ") else bad.reason) from None


def _alpaca(record: Mapping[str, Any]):
    """Alpaca as LLaMA-Factory reads it: history pairs, then instruction and input (joined by a newline) -> output."""
    instruction, extra, output = record.get("instruction"), record.get("input"), record.get("output")
    for name, value in (("instruction", instruction), ("output", output), ("input", extra)):
        if value is not None and not isinstance(value, str):
            raise RecordRejected(f"{name} is not a string (got {type(value).__name__})")
    if not instruction and not extra:
        raise RecordRejected("empty instruction")
    if output is None:
        raise RecordRejected("output is null")
    chat: list[dict[str, Any]] = []
    history = _decoded(record.get("history"), "history") or []
    if not isinstance(history, (list, tuple)):
        raise RecordRejected(f"history is not a list (got {type(history).__name__})")
    for turn in history:
        if not isinstance(turn, (list, tuple)) or len(turn) != 2 or not all(isinstance(text, str) for text in turn):
            raise RecordRejected("history is not a list of [instruction, response] pairs of text")
        chat += [{"role": USER, "content": turn[0]}, {"role": ASSISTANT, "content": turn[1]}]
    chat += [{"role": USER, "content": "\n".join(text for text in (instruction, extra) if text)},
             {"role": ASSISTANT, "content": output}]
    return _with_system(record.get(SYSTEM_FIELD), *validate_chat(chat, field="alpaca"))
