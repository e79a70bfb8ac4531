"""Plain chat records validated straight from their Arrow columns, without a Python dict per message.

Most records of a SmolTalk-style parquet file are plain: a `messages` list of {role, content} structs and no other
field the shape reads. Converting the batch's column with `to_pylist()` makes a dict per message, which
`validate_chat` then takes apart again: 35-40 ms a ShareGPT shard, a fifth of what reading it costs. Here the
role and content columns become two lists of strings, and a record is plain where

- its list is neither null nor empty,
- every message's role is a string that a known role alias names (not ShareGPT's function_call),
- every content is a string,

which is exactly when `validate_chat` takes its plain path and `to_conversation` returns no extras: the same
(role, content) pairs. (`validate_chat` also refuses text with a lone surrogate, which JSON can hold; Arrow's
strings are UTF-8, which cannot: Python's strict UTF-8 decoding refuses the bytes of one.) Every other record
(None in the returned list) is converted and validated as before, one at a time, so its rejection reads as it
always did.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import pyarrow as pa

from packsft.read.records import FUNCTION_CALL_ROLE

Messages = tuple[tuple[str, str], ...]
MESSAGES, ROLE, CONTENT = "messages", "role", "content"
# The shapes whose conversation is a `messages` list of {role, content} (shapes.py).
PLAIN_SHAPES = ("smoltalk", "openai")


def plain_column(kind: pa.DataType) -> bool:
    """Whether a `messages` column of this type holds only {role, content} string structs (then `plain_messages`
    reads it)."""
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_struct(kind.value_type):
        return False
    fields = {field.name: field.type for field in kind.value_type}
    return fields.keys() == {ROLE, CONTENT} and all(pa.types.is_string(t) or pa.types.is_large_string(t)
                                                    for t in fields.values())


def plain_messages(column: pa.Array, aliases: Mapping[str, str]) -> list[Messages | None]:
    """Per record of a `plain_column` column: its (role, content) pairs where it is plain, else None."""
    offsets = column.offsets.to_pylist()
    structs = column.values
    children = dict(zip((field.name for field in structs.type), structs.flatten()))  # the struct's nulls included
    roles, contents = children[ROLE].to_pylist(), children[CONTENT].to_pylist()
    names = {role: _plain_role(role, aliases) for role in set(roles) if role is not None}
    mapped = [names.get(role) for role in roles]
    nulls = column.is_null().to_pylist() if column.null_count else None
    out: list[Messages | None] = []
    for record, (start, end) in enumerate(zip(offsets, offsets[1:])):
        kept, texts = mapped[start:end], contents[start:end]
        if start == end or None in kept or None in texts or (nulls is not None and nulls[record]):
            out.append(None)
        else:
            out.append(cast(Messages, tuple(zip(kept, texts))))  # no None in either (checked above)
    return out


def _plain_role(role: str, aliases: Mapping[str, str]) -> str | None:
    name = role.strip().lower()
    return aliases.get(name) if name != FUNCTION_CALL_ROLE else None
