"""The one record type (`Conversation`), its validation, and the ledger of rejected records.

Every record is validated before rendering. A bad record is never a crash and never silently
dropped: it is counted by reason and listed in `rejects.jsonl` (or, with --strict, stops the job
with `file:row: reason`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from packsft.errors import BadRecordError, ConfigError

SYSTEM, USER, ASSISTANT, TEXT = "system", "user", "assistant", "text"
ROLES = (SYSTEM, USER, ASSISTANT)

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
}

EXCERPT_CHARS = 160


@dataclass(frozen=True, slots=True)
class Conversation:
    """One validated record: a tuple of (role, content) messages, or one TEXT message for documents."""

    messages: tuple[tuple[str, str], ...]
    source: str | None = None
    file: str = ""
    row: int = 0


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
    """Check a raw message list and return normalised (role, content) pairs.

    Raises RecordRejected with a reason that names the message index. `field`, `role_key` and
    `content_key` name the ShareGPT shape (`conversations`, `from`, `value`) or the chat-API one.
    """
    if raw is None:
        raise RecordRejected(f"{field} is null")
    if isinstance(raw, (str, bytes, Mapping)) or not hasattr(raw, "__len__"):
        raise RecordRejected(f"{field} is not a list (got {type(raw).__name__})")
    if len(raw) == 0:
        raise RecordRejected("empty message list")
    messages = []
    for index, message in enumerate(raw):
        if not isinstance(message, Mapping):
            raise RecordRejected(f"message {index} is not a mapping (got {type(message).__name__})")
        role, content = message.get(role_key), message.get(content_key)
        if role is None:
            raise RecordRejected(f"message {index} has no role")
        if not isinstance(role, str):
            raise RecordRejected(f"message {index} role is not a string (got {type(role).__name__})")
        if content is None:
            raise RecordRejected(f"message {index} has no content")
        if not isinstance(content, str):
            raise RecordRejected(f"message {index} content is not a string (got {type(content).__name__})")
        normalised = role_aliases.get(role.strip().lower())
        if normalised is None:
            raise RecordRejected(f"message {index} has unknown role {role!r}")
        if not _valid_unicode(content):
            raise RecordRejected(f"message {index} content is not valid Unicode (a lone surrogate, from a JSON "
                                 "\\ud800-\\udfff escape); no tokenizer can encode it unchanged")
        messages.append((normalised, content))
    return tuple(messages)


def _valid_unicode(text: str) -> bool:
    """False for text holding a lone surrogate (JSON decodes a lone "\\ud83d" into one; UTF-8 cannot hold it)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_text(raw: Any) -> tuple[tuple[str, str], ...]:
    if raw is None:
        raise RecordRejected("text is null")
    if not isinstance(raw, str):
        raise RecordRejected(f"text is not a string (got {type(raw).__name__})")
    if not raw:
        raise RecordRejected("empty text")
    if not _valid_unicode(raw):
        raise RecordRejected("text is not valid Unicode (a lone surrogate, from a JSON \\ud800-\\udfff escape); "
                             "no tokenizer can encode it unchanged")
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

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_jsonl(self) -> str:
        return "".join(json.dumps(entry, ensure_ascii=True) + "\n" for entry in self.entries)


def _reason_key(reason: str) -> str:
    """Group reasons that differ only by message index ('message 3 has no role' -> 'message has no role')."""
    words = reason.split()
    if len(words) > 2 and words[0] == "message" and words[1].isdigit():
        words = words[:1] + words[2:]
    key = " ".join(words)
    return key.split(" (got ")[0].split(" '")[0]


def excerpt(record: Any) -> str:
    try:
        text = json.dumps(record, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        text = repr(record)
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"
