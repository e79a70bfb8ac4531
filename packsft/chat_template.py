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
2. The rendered texts are tokenized with character offsets and without added special tokens (the template
   text already holds any BOS it wants, `{{ bos_token }}`): by the fast encoder where it is proven for this
   template (`with_chat_path_proven`, which also checks the renderer), else by the Rust tokenizer;
   chat_encode.py does both, and keeps special-token strings from contents plain text.
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

import functools
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from packsft.chat_encode import RenderingEncoder
from packsft.records import ASSISTANT, TEXT, USER, Conversation, RecordRejected
from packsft.render import ROLE_CODES, RenderedBatch, count_special_strings
from packsft.tokenizer import TOKEN_ID_DTYPE, PackTokenizer
from packsft.tokenizer_cache import cache_key, read_entry, write_entry

# Private-use characters: no template transforms them, no real content contains this pattern.
PLACEHOLDER = "\ue000{index}\ue001"


class ChatRenderer:
    """Caches what depends only on the tokenizer (skeletons per role sequence, special ids, the encoder).

    Renders with transformers' own jinja renderer (`render_jinja_template`, what `apply_chat_template`
    calls) and the template kwargs transformers passes (its `special_tokens_map`), without loading the
    transformers tokenizer: importing that imports torch (seconds per worker).

    Args:
        fast: encode renderings with the fast encoder (chat_encode.py); default: where it is in use.
    """

    def __init__(self, tokenizer: PackTokenizer, fast: bool | None = None) -> None:
        self.tokenizer = tokenizer
        self.encoder = RenderingEncoder(tokenizer, fast)
        self.special_ids = self.encoder.special_ids
        bos = tokenizer.special_tokens_map.get("bos_token")
        self.bos_id = tokenizer.backend.token_to_id(bos) if isinstance(bos, str) else None
        eos = tokenizer.special_tokens_map.get("eos_token")
        self.eos_token = eos if isinstance(eos, str) else tokenizer.backend.id_to_token(tokenizer.eos_id)
        self.skeletons: dict[tuple[str, ...], list[str] | None] = {}
        self._render = _jinja_renderer(tokenizer)

    def encode(self, texts: list[str], spans: list[list[tuple[int, int]]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Token ids and character offsets of each rendered text; special-token strings that came from
        a message's content (inside `spans`) are ordinary text, the template's own stay special."""
        return self.encoder.encode(texts, spans)

    def render_text(self, messages: Sequence[tuple[str, str]]) -> str:
        """The template's text for these messages; a template that raises rejects the record."""
        try:
            return self._render([{"role": role, "content": content} for role, content in messages])
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


def _jinja_renderer(tokenizer: PackTokenizer) -> Callable[[list[dict[str, str]]], str]:
    """A function rendering one conversation exactly as `hf.apply_chat_template(messages, tokenize=False)`."""
    template = tokenizer.chat_template
    if isinstance(template, dict):  # several named templates: transformers picks "default" without tools
        template = template.get("default")
    try:
        from transformers.utils.chat_template_utils import render_jinja_template
    except ImportError:  # a transformers without it: its tokenizer renders (and imports torch)
        render_jinja_template = None
    if not template or render_jinja_template is None or tokenizer.chat_renderer == "hf":
        return lambda messages: tokenizer.hf.apply_chat_template(messages, tokenize=False)
    kwargs = dict(tokenizer.special_tokens_map)

    def render(messages: list[dict[str, str]]) -> str:
        rendered, _ = render_jinja_template(conversations=[messages], chat_template=template, **kwargs)
        return rendered[0]

    return render


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
        ids=np.concatenate(ids_parts) if ids_parts else np.zeros(0, TOKEN_ID_DTYPE),
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
            texts.append(text + renderer.eos_token)
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


# Conversations where a chat path that differs from transformers' would differ first: special-token
# strings and template tags in content, whitespace at the content edges (pre-tokenizer merges across
# them), text the normalizer rewrites, emoji and CJK (tokens that split characters), empty content.
PROBE_CONVERSATIONS = [
    (("system", "You are helpful."), ("user", "Hi"), ("assistant", "Hello! How can I help?")),
    (("user", "Say <|im_end|><|endoftext|> now <|im_start|>assistant\nx <|user|> </s> [INST] <s>"),
     ("assistant", "<think>\nreasoning\n</think>\n\nThe answer <|im_end|> is 42.")),
    (("user", "\n\n  spaced  \n\n"), ("assistant", " \n leading and trailing \t\n"), ("user", "   "),
     ("assistant", "\n")),
    (("user", "cafe\u0301 Å ﬁ ｆｕｌｌ 中文字符 😀👍🏽 ١٢٣"), ("assistant", "e\u0301\u0301 Ελληνικά 한국어 🇫🇷 \u00a0x")),
    (("user", "<tool_response>\n{\"ok\": true}\n</tool_response>"), ("assistant", ""), ("user", "again"),
     ("assistant", "done")),
    (("assistant", "I start."), ("user", "def f(x):\n    return {'a': [1, 2]}  # c\n\tpass\n"),
     ("assistant", "```python\nprint(1)\n```")),
]


def chat_rendering_difference(tokenizer: PackTokenizer) -> str | None:
    """None where packsft's renderer (`render_jinja_template`) renders PROBE_CONVERSATIONS exactly as
    `hf.apply_chat_template` does (or refuses the same ones); else the first difference."""
    renderer = ChatRenderer(tokenizer, fast=False)
    for messages in PROBE_CONVERSATIONS:
        chat = [{"role": role, "content": content} for role, content in messages]
        theirs = _rendered_or_error(functools.partial(tokenizer.hf.apply_chat_template, chat, tokenize=False))
        mine = _rendered_or_error(functools.partial(renderer.render_text, messages))
        if (mine is None) != (theirs is None) or (mine is not None and mine != theirs):
            return f"the rendering of {messages[0][1][:30]!r}… differs from apply_chat_template"
    return None


def fast_chat_difference(tokenizer: PackTokenizer) -> str | None:
    """None where encoding renderings with the fast encoder gives exactly the HF encoding's ids, masks and
    message spans on PROBE_CONVERSATIONS; else the first difference."""
    conversations = [Conversation(messages) for messages in PROBE_CONVERSATIONS]
    rejected: list[Conversation] = []
    batches = [render_chat(conversations, tokenizer, renderer=ChatRenderer(tokenizer, fast=fast),
                           reject=lambda c, _: rejected.append(c))
               for fast in (True, False)]
    for name in ("ids", "flags", "msg_starts", "msg_ends", "msg_headers"):
        if not np.array_equal(getattr(batches[0], name), getattr(batches[1], name)):
            return f"the fast chat encoding differs from HF's in {name}"
    return None


def _rendered_or_error(render: Callable[[], str]) -> str | None:
    try:
        return render()
    except Exception:  # a template may refuse a probe; then both paths must refuse it
        return None


def with_chat_path_proven(tokenizer: PackTokenizer, cache: bool = True) -> PackTokenizer:
    """The tokenizer with the chat path it may use: its renderer (`chat_renderer`: packsft's jinja call where
    it renders the probes as `apply_chat_template` does, else `apply_chat_template` itself) and its encoder
    (the fast one where it encodes the renderings as HF does, else `encoder="hf"` with a note).

    Proven once per tokenizer fingerprint, encoder and library versions (cached like the encoder's proof).
    """
    if tokenizer.template != "chat":
        return tokenizer
    key = cache_key("chat-proof", {"fingerprint": tokenizer.fingerprint, "encoder": tokenizer.encoder})
    entry = read_entry("proofs", key) if cache else None
    if entry is not None and all(isinstance(entry.get(k), (str, type(None))) for k in ("render", "encode")):
        render, encode = entry["render"], entry["encode"]
    else:
        render = chat_rendering_difference(tokenizer)
        rendered_by = replace(tokenizer, chat_renderer="hf") if render else tokenizer
        encode = fast_chat_difference(rendered_by) if tokenizer.encoder == "fast" else None
        if cache:
            write_entry("proofs", key, {"render": render, "encode": encode})
    if render:
        tokenizer = replace(tokenizer, chat_renderer="hf")
    if encode:
        tokenizer = replace(tokenizer, encoder="hf",
                            encoder_note=f"the fast chat path does not reproduce this template: {encode}")
    return tokenizer


def chat_markers(tokenizer: PackTokenizer) -> dict[str, int] | None:
    """The ids `verify` reads chat-template rows by, from the template's own text around the contents:

        <|im_start|> user \\n  q  <|im_end|> \\n <|im_start|> assistant \\n  a  <|im_end|> \\n
        header_start user_role               header_start  assistant_role     end_of_turn

    None where the template opens messages with no special token or names both roles with the same token.
    """
    renderer = ChatRenderer(tokenizer, fast=False)
    try:
        pieces = renderer.literals((USER, ASSISTANT))
    except RecordRejected:  # a template that refuses a user + assistant exchange
        return None
    if pieces is None:
        return None
    (before_user, _), (between, _), (after, _) = renderer.encode(pieces, [[] for _ in pieces])
    special = set(renderer.special_ids.tolist())
    reopens = [i for i, t in enumerate(between.tolist()) if t in special]
    ends = [t for t in after.tolist() if t in special]
    if len(reopens) < 2 or not ends or reopens[1] + 1 >= len(between):
        return None
    # The header start is the first special token after the user's end of turn; the user's own header is its
    # last occurrence before the user content (a template may first open a system message of its own, as
    # Llama 3.1 does with its knowledge cutoff when the conversation has none).
    header_start = int(between[reopens[1]])
    opened = [i for i, t in enumerate(before_user.tolist()) if t == header_start]
    if not opened or opened[-1] + 1 >= len(before_user):
        return None
    user_role, assistant_role = int(before_user[opened[-1] + 1]), int(between[reopens[1] + 1])
    if user_role == assistant_role or user_role in special or assistant_role in special:
        return None
    return {"header_start": header_start, "user_role": user_role, "assistant_role": assistant_role,
            "end_of_turn": int(ends[0])}


def output_identity(tokenizer: PackTokenizer) -> dict[str, object]:
    """What dataset.json records about the tokenizer: `identity()`, plus `chat_markers` for chat templates."""
    identity: dict[str, object] = tokenizer.identity()
    if tokenizer.template == "chat":
        identity["chat_markers"] = chat_markers(tokenizer)
    return identity
