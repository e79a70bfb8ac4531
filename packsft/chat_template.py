"""Render conversations with the tokenizer's own chat template (`--template chat`) and mask by character spans.

Templates are not prefix-stable (qwen3 adds `<think>\\n\\n</think>\\n\\n` to the *last* assistant turn
only), so masks come from the full rendering of each conversation:

    rendered:  <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\nYo<|im_end|>\\n
    skeleton:  <|im_start|>user\\n\\ue0000\\ue001<|im_end|>\\n<|im_start|>assistant\\n<think>...\\n\\n\\ue0001\\ue001<|im_end|>\\n
    message 0: |<--- header --->|Hi|<-eot->|\\n|            (span = header + content + eot + separator)
    message 1:                                 |<|im_start|>assistant\\n<think>...|Yo|<|im_end|>|  tail: \\n
    flags:      0 ...                    0 | 0  |0 ...                             0 |1 | 1       |  0

1. The skeleton renders the same roles with a placeholder per content (cached per role sequence); its
   literal pieces around the placeholders locate each content in the real rendering. When the template
   copies contents verbatim (the usual case) splicing the contents into the skeleton gives back the
   rendering exactly; otherwise (a template that rewrites a content, e.g. strips it) the literal pieces
   are matched in order and the content is what lies between them, as rendered.
2. The rendered texts are tokenized in one batch by the Rust tokenizer, with character offsets and
   without added special tokens: the template text already holds any BOS it wants (`{{ bos_token }}`).
3. Train flags (`mask="assistant_only"`): tokens overlapping an assistant content span, plus its
   end-of-turn tokens. End-of-turn rule: after the content, up to and including the first *special*
   token (hf `added_tokens_decoder[id].special`) that the template emits before the next message's
   content (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `</s>`). A template with no special token there
   gets no end-of-turn flag. What follows (qwen3's `\\n`) is untrained: it stays in the message's span up
   to the next message's first special token, or is the conversation's tail after the last message.
   `mask="all"` trains every token after the head.

Message spans are header + content + end-of-turn (+ separator), so split.py can cut at message boundaries; the
conversation head is a leading BOS token when the rendering starts with one (empty for qwen3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from packsft.records import ASSISTANT, TEXT, USER, Conversation, RecordRejected
from packsft.render import ROLE_CODES, RenderedBatch, count_special_strings
from packsft.tokenizer import PackTokenizer

# Private-use characters: no template transforms them, no real content contains this pattern.
PLACEHOLDER = "\ue000{index}\ue001"


def plain_text_backend(hf: Any) -> Any:
    """A copy of hf's Rust tokenizer that tokenizes special-token strings as ordinary text.

    A copy, because `encode_special_tokens` is a setting of the tokenizer object and the original must
    keep encoding the template's own special tokens as special.
    """
    from tokenizers import Tokenizer

    plain = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    plain.encode_special_tokens = True
    return plain


class ChatRenderer:
    """Caches what depends only on the tokenizer (skeletons per role sequence, special ids)."""

    def __init__(self, tokenizer: PackTokenizer) -> None:
        self.tokenizer = tokenizer
        hf = tokenizer.hf
        self.special_ids = np.array(
            sorted({i for i, t in hf.added_tokens_decoder.items() if t.special} | set(hf.all_special_ids)), np.int64
        )
        self.bos_id = hf.bos_token_id
        self.skeletons: dict[tuple[str, ...], list[str] | None] = {}
        self.plain: Any = None  # plain_text_backend(hf), built when a content holds a special-token string

    def encode(self, texts: list[str], spans: list[list[tuple[int, int]]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Token ids and character offsets of each rendered text; special-token strings that came from
        a message's content (inside `spans`) are ordinary text, the template's own stay special.

        One batch call into the Rust tokenizer. Only a rendering whose content produced a special token
        (rare) is re-encoded: the text between the template's own special tokens is tokenized as plain
        text, which is exactly how the tokenizer treats that text when no special string is in it.
        """
        backend = self.tokenizer.hf.backend_tokenizer
        # transformers leaves this switch as its last call set it (split_special_tokens=True keeps it on);
        # the template's own special tokens must be special here.
        backend.encode_special_tokens = False
        encodings = backend.encode_batch(texts, add_special_tokens=False) if texts else []
        out = []
        for text, encoding, located in zip(texts, encodings, spans):
            ids = np.asarray(encoding.ids, np.int64)
            offsets = np.asarray(encoding.offsets, np.int64).reshape(-1, 2)
            from_content = self._special_in_content(ids, offsets, located)
            if from_content.any():
                ids, offsets = self._encode_plain_between(text, ids, offsets, from_content)
            out.append((ids, offsets))
        return out

    def _special_in_content(self, ids: np.ndarray, offsets: np.ndarray, located: list[tuple[int, int]]) -> np.ndarray:
        """Per token: a special token whose characters lie inside a message content."""
        special = np.isin(ids, self.special_ids)
        if not special.any() or not located:
            return np.zeros(len(ids), bool)
        bounds = np.asarray(located, np.int64).reshape(-1, 2)
        inside = np.zeros(len(ids), bool)
        for at in np.flatnonzero(special).tolist():
            start, end = offsets[at]
            inside[at] = bool(((bounds[:, 0] <= start) & (end <= bounds[:, 1]) & (bounds[:, 0] < bounds[:, 1])).any())
        return inside

    def _encode_plain_between(self, text: str, ids: np.ndarray, offsets: np.ndarray,
                              from_content: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keep the template's special tokens; tokenize the text between them as plain text."""
        if self.plain is None:
            self.plain = plain_text_backend(self.tokenizer.hf)
        keep = np.flatnonzero(np.isin(ids, self.special_ids) & ~from_content)
        cuts = [(int(offsets[k, 0]), int(offsets[k, 1])) for k in keep.tolist()]
        id_parts, offset_parts, cursor = [], [], 0
        for k, (start, end) in zip(keep.tolist() + [None], cuts + [(len(text), len(text))]):
            if start > cursor:
                piece = self.plain.encode(text[cursor:start], add_special_tokens=False)
                id_parts.append(np.asarray(piece.ids, np.int64))
                offset_parts.append(np.asarray(piece.offsets, np.int64).reshape(-1, 2) + cursor)
            if k is not None:
                id_parts.append(ids[k : k + 1])
                offset_parts.append(offsets[k : k + 1])
            cursor = max(cursor, end)
        return np.concatenate(id_parts), np.concatenate(offset_parts)

    def render_text(self, messages: Sequence[tuple[str, str]]) -> str:
        """The template's text for these messages; a template that raises rejects the record."""
        try:
            return self.tokenizer.hf.apply_chat_template(
                [{"role": role, "content": content} for role, content in messages], tokenize=False
            )
        except Exception as exc:  # jinja's TemplateError from raise_exception(), or any template bug
            reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            raise RecordRejected(f"chat template refused the conversation: {reason}") from None

    def literals(self, roles: tuple[str, ...]) -> list[str] | None:
        """The template text around each content: n+1 pieces, or None if a content is not rendered once."""
        if roles not in self.skeletons:
            skeleton = self.render_text([(role, PLACEHOLDER.format(index=i)) for i, role in enumerate(roles)])
            pieces: list[str] = []
            cursor = 0
            for i in range(len(roles)):
                mark = PLACEHOLDER.format(index=i)
                at = skeleton.find(mark, cursor)
                if at < 0 or skeleton.count(mark) != 1:
                    break
                pieces.append(skeleton[cursor:at])
                cursor = at + len(mark)
            self.skeletons[roles] = pieces + [skeleton[cursor:]] if len(pieces) == len(roles) else None
        return self.skeletons[roles]

    def locate(self, messages: Sequence[tuple[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """Rendered text and the character span of every message's content in it."""
        roles = tuple(role for role, _ in messages)
        text = self.render_text(messages)
        pieces = self.literals(roles)
        if pieces is None:
            raise RecordRejected("chat template does not render every message once")
        spans, cursor = [], 0
        if "".join(p + c for p, (_, c) in zip(pieces, messages)) + pieces[-1] == text:
            for piece, (_, content) in zip(pieces, messages):
                cursor += len(piece)
                spans.append((cursor, cursor + len(content)))
                cursor += len(content)
            return text, spans
        # The template rewrote some content: match the literal pieces in order instead.
        if not text.startswith(pieces[0]):
            raise RecordRejected("chat template output does not match its own skeleton")
        cursor = len(pieces[0])
        for i, piece in enumerate(pieces[1:]):
            last = i == len(messages) - 1
            end = len(text) - len(piece) if last and text.endswith(piece) else text.find(piece, cursor)
            if end < cursor or (last and end + len(piece) != len(text)):
                raise RecordRejected(f"message {i} cannot be located in the chat template rendering")
            spans.append((cursor, end))
            cursor = end + len(piece)
        return text, spans


def render_chat(
    conversations: list[Conversation],
    tokenizer: PackTokenizer,
    *,
    mask: str = "assistant_only",
    unprompted: str = "keep",
    renderer: ChatRenderer | None = None,
    reject: Callable[[Conversation, str], None] | None = None,
) -> RenderedBatch:
    """Render with the tokenizer's chat template; see the module docstring for the masking rule.

    Text documents (role TEXT) render as their text + the EOS token, all trained. A conversation
    the template cannot render faithfully goes to `reject(conversation, reason)` and is left out
    of the batch (without `reject`, RecordRejected is raised).
    """
    renderer = renderer or ChatRenderer(tokenizer)
    kept, texts, spans = _render_all(conversations, tokenizer, renderer, reject)
    encodings = renderer.encode(texts, spans)

    ids_parts, flag_parts, headers = [], [], []
    starts: list[int] = []
    ends: list[int] = []
    conv_lens = np.zeros(len(kept), np.int64)
    conv_unprompted = np.zeros(len(kept), bool)
    base = 0
    for c, (conv, (ids, offsets), located) in enumerate(zip(kept, encodings, spans)):
        flags, (msg_starts, msg_ends, msg_headers, is_unprompted) = _flags_and_spans(
            ids, offsets, conv, located, renderer, mask, unprompted
        )
        starts.extend(s + base for s in msg_starts)
        ends.extend(e + base for e in msg_ends)
        headers.extend(msg_headers)
        conv_unprompted[c] = is_unprompted
        conv_lens[c] = len(ids)
        base += len(ids)
        ids_parts.append(ids)
        flag_parts.append(flags)

    msg_counts = np.fromiter((len(c.messages) for c in kept), np.int64, len(kept))
    return RenderedBatch(
        ids=np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int64),
        flags=np.concatenate(flag_parts) if flag_parts else np.zeros(0, np.uint8),
        conv_offsets=np.concatenate([[0], np.cumsum(conv_lens)]).astype(np.int64),
        conv_msg_offsets=np.concatenate([[0], np.cumsum(msg_counts)]).astype(np.int64),
        msg_starts=np.asarray(starts, np.int64),
        msg_ends=np.asarray(ends, np.int64),
        msg_roles=np.fromiter((ROLE_CODES[r] for c in kept for r, _ in c.messages), np.uint8),
        sources=[c.source for c in kept],
        unprompted=conv_unprompted,
        msg_headers=np.asarray(headers, np.int64),
        special_strings=count_special_strings([content for c in conversations for _, content in c.messages], tokenizer),
    )


def _render_all(
    conversations: list[Conversation], tokenizer: PackTokenizer, renderer: ChatRenderer,
    reject: Callable[[Conversation, str], None] | None,
) -> tuple[list[Conversation], list[str], list[list[tuple[int, int]]]]:
    """The conversations the template renders faithfully, their texts and content spans."""
    kept, texts, spans = [], [], []
    for conv in conversations:
        if conv.messages[0][0] == TEXT:
            text = conv.messages[0][1]
            texts.append(text + tokenizer.hf.eos_token)
            spans.append([(0, len(text))])
        else:
            try:
                text, located = renderer.locate(conv.messages)
            except RecordRejected as bad:
                if reject is None:
                    raise
                reject(conv, bad.reason)
                continue
            texts.append(text)
            spans.append(located)
        kept.append(conv)
    return kept, texts, spans


def _flags_and_spans(
    ids: np.ndarray,
    offsets: np.ndarray,
    conv: Conversation,
    located: list[tuple[int, int]],
    renderer: ChatRenderer,
    mask: str,
    unprompted: str,
) -> tuple[np.ndarray, tuple[list[int], list[int], list[int], bool]]:
    """Train flags of one rendered conversation and its message spans (token positions)."""
    n = len(ids)
    flags = np.zeros(n, np.uint8)
    roles = [role for role, _ in conv.messages]
    if roles == [TEXT]:
        flags[1:] = 1
        return flags, ([0], [n - 1], [0], False)
    token_starts, token_ends = offsets[:, 0], offsets[:, 1]
    is_special = np.isin(ids, renderer.special_ids)
    head = 1 if n and renderer.bos_id is not None and ids[0] == renderer.bos_id else 0
    first_user = roles.index(USER) if USER in roles else len(roles)
    is_unprompted = ASSISTANT in roles[:first_user]
    masked_before = first_user if (unprompted == "mask" and is_unprompted) else 0
    starts, ends, headers = [], [], []
    span_start = head
    for i, (cs, ce) in enumerate(located):
        # Content tokens: those overlapping [cs, ce). Empty content has none and starts where it would be.
        first = int(np.searchsorted(token_ends, cs, side="right"))
        after = int(np.searchsorted(token_starts, ce, side="left")) if ce > cs else first
        limit = int(np.searchsorted(token_starts, located[i + 1][0], side="left")) if i + 1 < len(located) else n
        specials = np.flatnonzero(is_special[after:limit])
        end = after + int(specials[0]) + 1 if len(specials) else after
        # The separator after the end of turn (qwen3's '\n') stays with this message: the next
        # message's span starts at its header's first special token (<|im_start|>), if it has one.
        boundary = end
        if i + 1 < len(located):
            header_specials = np.flatnonzero(is_special[end:limit])
            boundary = end + int(header_specials[0]) if len(header_specials) else end
        if i >= masked_before and mask == "all":
            flags[span_start:boundary] = 1
        elif i >= masked_before and roles[i] == ASSISTANT:
            flags[first:end] = 1
        starts.append(span_start)
        ends.append(boundary)
        headers.append(max(first - span_start, 0))
        span_start = boundary
    if mask == "all" and masked_before < len(roles):
        flags[span_start:] = 1
    flags[0] = 0  # the first token of a conversation is never a label (it starts a segment)
    return flags, (starts, ends, headers, is_unprompted)
