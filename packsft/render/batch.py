"""The stage contract between rendering and packing: `RenderedBatch` (token ids, train flags, message spans of a
batch of conversations), the role codes of its messages, the helpers that read it, and the `Renderer` protocol
that the role-token renderer (roles.py) and the chat-template renderer (render/chat/renderer.py) implement.

    ids        BOS <|user|> q q q <|assistant|> a a a EOS | BOS ...        (flat, every conversation of the batch)
    flags       0     0     0 0 0      1        1 1 1  1  |  0  ...        (1 = trained as a label)
    conv_offsets  0 ................................... 10 ...            (CSR: conversation c = ids[o[c]:o[c+1]])
    msg_starts / msg_ends / msg_roles / msg_headers                        (one entry per message)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from packsft.read.records import ASSISTANT, SYSTEM, TEXT, TOOL, USER, Conversation
from packsft.stats import ChatTurns

RenderMode = Literal["roles", "chat"]  # --template: the role tokens, or the tokenizer's chat template
ROLE_CODES = {SYSTEM: 0, USER: 1, ASSISTANT: 2, TEXT: 3, TOOL: 4}
SYSTEM_CODE, USER_CODE, ASSISTANT_CODE, TEXT_CODE, TOOL_CODE = 0, 1, 2, 3, 4

# Receives a conversation a renderer cannot render, with the reason (packsft/stages.py writes it to rejects.jsonl).
Reject = Callable[[Conversation, str], None]


class Renderer(Protocol):
    """Renders batches of conversations for one tokenizer and template (render/renderers.py chooses one).

    `counts` holds what a chat template did to trained turns (None for role tokens); `prepare` gives the records
    to render for `--turns` (the records themselves for role tokens); `keep` keeps what later packs use again.
    """

    @property
    def counts(self) -> ChatTurns | None: ...

    def prepare(self, conversations: list[Conversation]) -> list[Conversation]: ...

    def render(self, conversations: list[Conversation], reject: Reject | None = None) -> RenderedBatch: ...

    def keep(self) -> None:
        """Keep what rendering found that later packs use again (render/chat/kept.py), once a unit is rendered."""


@dataclass
class RenderedBatch:
    """Rendered conversations as flat arrays.

    Conversation c is `ids[conv_offsets[c]:conv_offsets[c+1]]`; its messages are
    `conv_msg_offsets[c] .. conv_msg_offsets[c+1]`, message m covering
    `ids[msg_starts[m]:msg_ends[m]]` (role token + content; the BOS before the first message and the
    EOS after the last belong to the conversation, not to a message).
    """

    ids: np.ndarray  # TOKEN_ID_DTYPE (int32: 4 bytes a token)
    flags: np.ndarray  # uint8, 1 = train on this token as a label
    conv_offsets: np.ndarray  # int64, len n+1
    conv_msg_offsets: np.ndarray  # int64, len n+1
    msg_starts: np.ndarray  # int64, len M
    msg_ends: np.ndarray  # int64, len M
    msg_roles: np.ndarray  # uint8 ROLE_CODES
    sources: list[str | None]
    unprompted: np.ndarray  # bool per conversation: opens with an assistant turn no user message prompts
    # How the batch was rendered. "roles": each message opens with one role token, which also ends the
    # previous turn. "chat": the tokenizer's template, whose messages open with `msg_headers` tokens.
    mode: RenderMode
    msg_headers: np.ndarray  # int64, len M: header tokens at the start of each message span (before its content)
    # Messages whose content held a special-token string (encoded as plain text), over all rendered.
    special_strings: int = 0

    def __len__(self) -> int:
        return len(self.conv_offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.conv_offsets)

    @functools.cached_property
    def trained_totals(self) -> np.ndarray:
        """flag_totals of the train flags, made once a batch (the flags are never changed in place; `select` and
        `concat` make new batches): the trainable tokens per conversation, the label counts of the packer
        (pack/labels.py) and `trained_unprompted` all read it, where each made its own pass over the tokens."""
        return flag_totals(self.flags)

    def trainable_per_conversation(self) -> np.ndarray:
        totals = self.trained_totals
        return totals[self.conv_offsets[1:]] - totals[self.conv_offsets[:-1]]

    def select(self, keep: np.ndarray) -> RenderedBatch:
        """The conversations where `keep` is true, as a new batch."""
        index = np.flatnonzero(keep)
        if len(index) == len(self):
            return self
        lengths = self.lengths[index]
        msg_counts = np.diff(self.conv_msg_offsets)[index]
        token_src = concat_ranges(self.conv_offsets[index], lengths)
        msg_src = concat_ranges(self.conv_msg_offsets[index], msg_counts)
        conv_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # Shift message positions from the old conversation start to the new one.
        shift = np.repeat(conv_offsets[:-1] - self.conv_offsets[index], msg_counts)
        return RenderedBatch(
            ids=self.ids[token_src],
            flags=self.flags[token_src],
            conv_offsets=conv_offsets,
            conv_msg_offsets=np.concatenate([[0], np.cumsum(msg_counts)]).astype(np.int64),
            msg_starts=self.msg_starts[msg_src] + shift,
            msg_ends=self.msg_ends[msg_src] + shift,
            msg_roles=self.msg_roles[msg_src],
            sources=[self.sources[i] for i in index.tolist()],
            unprompted=self.unprompted[index],
            mode=self.mode,
            msg_headers=self.msg_headers[msg_src],
            special_strings=self.special_strings,
        )

    @staticmethod
    def concat(batches: list[RenderedBatch]) -> RenderedBatch:
        """Join batches into one table (offsets shifted), e.g. to pack a whole unit of work at once."""
        batches = [batch for batch in batches if len(batch)] or batches[:1]
        if len(batches) == 1:
            return batches[0]
        modes = {b.mode for b in batches}
        if len(modes) > 1:
            raise ValueError(f"cannot join batches rendered in different modes: {sorted(modes)}")
        token_shift = np.cumsum([0] + [len(b.ids) for b in batches[:-1]])
        msg_shift = np.cumsum([0] + [len(b.msg_starts) for b in batches[:-1]])
        return RenderedBatch(
            ids=np.concatenate([b.ids for b in batches]),
            flags=np.concatenate([b.flags for b in batches]),
            conv_offsets=np.concatenate(
                [b.conv_offsets[:-1] + s for b, s in zip(batches, token_shift)] + [[sum(len(b.ids) for b in batches)]]
            ),
            conv_msg_offsets=np.concatenate(
                [b.conv_msg_offsets[:-1] + s for b, s in zip(batches, msg_shift)]
                + [[sum(len(b.msg_starts) for b in batches)]]
            ),
            msg_starts=np.concatenate([b.msg_starts + s for b, s in zip(batches, token_shift)]),
            msg_ends=np.concatenate([b.msg_ends + s for b, s in zip(batches, token_shift)]),
            msg_roles=np.concatenate([b.msg_roles for b in batches]),
            sources=[source for b in batches for source in b.sources],
            unprompted=np.concatenate([b.unprompted for b in batches]),
            mode=batches[0].mode,
            msg_headers=np.concatenate([b.msg_headers for b in batches]),
            special_strings=sum(b.special_strings for b in batches),
        )


def flag_totals(flags: np.ndarray) -> np.ndarray:
    """[0, cumsum(flags)...] of 0/1 flags: int32 (4 bytes a token, not 8) wherever the total fits."""
    dtype = np.int32 if len(flags) < np.iinfo(np.int32).max else np.int64
    totals = np.zeros(len(flags) + 1, dtype)
    np.cumsum(flags, dtype=dtype, out=totals[1:])
    return totals


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for each (s, n), without a Python loop."""
    before = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else np.zeros(0, np.int64)
    return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - before, lengths)


def count_special_strings(texts: list[str], special_tokens: Iterable[str]) -> int:
    """How many texts contain a special token's string (`<|endoftext|>`, a role token, `<|im_start|>`).

    Such content is encoded as plain text; `stats` reports the count (`special_strings_in_content`) so a
    dataset full of template strings is seen.
    """
    pattern = any_of(tuple(special_tokens))
    return sum(1 for text in texts if pattern.search(text)) if pattern is not None and texts else 0


@functools.lru_cache(maxsize=32)
def any_of(strings: tuple[str, ...]) -> re.Pattern[str] | None:
    """A pattern matching any of these strings, the longest first (None without any): the one way packsft builds
    its special-token and stop-token patterns."""
    ordered = sorted({s for s in strings if s}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, ordered))) if ordered else None


def count_users_before(roles: np.ndarray, conv_msg_offsets: np.ndarray, msg_conv: np.ndarray) -> np.ndarray:
    """Per message: how many user messages come before it in its conversation."""
    user_cum = np.concatenate([[0], np.cumsum(roles == USER_CODE)])
    return user_cum[:-1] - user_cum[conv_msg_offsets[:-1]][msg_conv]


def trained_unprompted(batch: RenderedBatch) -> int:
    """Train flags set inside assistant turns that no user message prompts (the turn content only)."""
    if not len(batch.msg_roles):
        return 0
    msg_conv = np.repeat(np.arange(len(batch)), np.diff(batch.conv_msg_offsets))
    users_before = count_users_before(batch.msg_roles, batch.conv_msg_offsets, msg_conv)
    selected = np.flatnonzero((batch.msg_roles == ASSISTANT_CODE) & (users_before == 0))
    if not len(selected):
        return 0
    flag_cum = batch.trained_totals
    return int((flag_cum[batch.msg_ends[selected]] - flag_cum[batch.msg_starts[selected]]).sum())
