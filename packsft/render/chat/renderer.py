"""Render conversations with the tokenizer's own chat template (`--template chat`) and train what the model generates.

    rendering:  <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nYo<|im_end|>\n
    message 0:  |<--------- header + content + end + separator -->|
    message 1:                                 |<- generation prompt ->|<------- generated ------->|\n
    flags:       0 ...                                               0 | 1 ...                     1 |0

1. Each record renders as `apply_chat_template(messages, tools=tools, **kwargs)` does, with its tools and
   template kwargs (`--template-kwargs`, overridden by the row's own `chat_template_kwargs`), in the environment
   `apply_chat_template` renders in (jinja.py, sandbox.py: no transformers import). A record without tools whose shape's skeleton was
   traced (trace.py) is not rendered: where the template's reads of its strings answer as they did for the
   skeleton's placeholders, its rendering is the skeleton with its strings spliced in (skeleton.Splicer).
2. layout.py finds, from the template's renderings of prefixes of the conversation, where each message
   starts and what each assistant turn generates: everything after its generation prompt
   (`add_generation_prompt=True` on the conversation before it), reasoning and tool calls included, through
   its end-of-turn token. That span is trained (`mask="assistant_only"`), unless the message's own train flag
   is off (`weight: 0`, `training: false`, a prompt-completion's prompt); system (and its tools block), user
   and tool-result tokens never are. `mask="all"` trains every token after the head.
3. The rendered texts are tokenized with character offsets and without added special tokens (the template
   text already holds any BOS it wants): by the fast encoder where it is proven for this template
   (`with_chat_path_proven`), else by the Rust tokenizer (encode.py). Special-token strings inside the
   record's own strings (contents, reasoning, arguments) are plain text, as `apply_chat_template(...,
   sanitize_control_tokens=True)` makes them: a record cannot inject a control token.

`--turns`: `rendered` trains the one rendering; `last` only its final assistant turn; `inference` trains every
assistant turn that the template renders otherwise in history (Qwen3 drops reasoning there) in a rendering of
its own, where it is the last turn, after the history as the template shows it at inference (masked).

Message spans are header + content + end-of-turn (+ separator), so pack/split.py can cut at message boundaries
(flags.py); the conversation head is what precedes the first message (a BOS, a tools block the template
opens with).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from packsft.read.records import ASSISTANT, TEXT, ChatExtras, Conversation, RecordRejected
from packsft.render.batch import ROLE_CODES, Reject, RenderedBatch, any_of, count_special_strings
from packsft.render.chat.encode import RenderingEncoder, rendering_encoder
from packsft.render.chat.facts import template_facts
from packsft.render.chat.flags import flags_and_spans, text_flags
from packsft.render.chat.jinja import jinja_renderer, require_jinja, skeleton_tracer
from packsft.render.chat.layout import (
    HOLE,
    HOLE_PATTERN,
    NONE,
    OTHER,
    STOP,
    Layout,
    Markers,
    Render,
    analyse,
    without_trailer,
)
from packsft.render.chat.sandbox import template_data
from packsft.render.chat.skeleton import STAND_IN_TOOLS, protect, shape_key, skeleton, splice
from packsft.render.tokenizer import TOKEN_ID_DTYPE, PackTokenizer
from packsft.stats import ChatTurns

THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
# A think block that opens a text: its tags are groups 1 and 3.
THINK_BLOCK = re.compile(r"\s*(<think>)(.*?)(</think>)", re.DOTALL)


class ChatRenderer:
    """Renders and lays out records with one tokenizer's template; what depends only on the template (heads,
    generation prompts, skeleton layouts per conversation shape) is its `facts` (facts.py).

    Renders in the environment `apply_chat_template` renders in (jinja.py) with the template kwargs transformers
    passes (its `special_tokens_map`), without importing transformers (its tokenizer classes import torch: seconds
    per worker); the chat proof compares the two before a tokenizer packs.

    Args:
        encoder: encodes the renderings (encode.py); default: `rendering_encoder(tokenizer)`, the fast
            one where the tokenizer's fast encoder is in use.
        template_kwargs: kwargs for every record (`--template-kwargs`); a record's own win.
        mask, unprompted, turns: the run's `--mask`, `--unprompted` and `--turns` (`render` and `prepare` follow
            them; the Renderer protocol of render/batch.py).
    """

    def __init__(self, tokenizer: PackTokenizer, encoder: RenderingEncoder | None = None,
                 template_kwargs: Mapping[str, Any] | None = None, *, mask: str = "assistant_only",
                 unprompted: str = "keep", turns: str = "rendered") -> None:
        self.tokenizer = tokenizer
        self.mask, self.unprompted, self.turns = mask, unprompted, turns
        self.encoder = encoder if encoder is not None else rendering_encoder(tokenizer)
        self.special_ids = self.encoder.special_ids
        # Token names come from the tokenizer's added tokens where they are ones (PackTokenizer.id_to_token): a worker
        # encoding with the fast encoder then never builds the Rust tokenizer.
        self.specials = any_of(tuple(tokenizer.id_to_token(int(i)) for i in self.special_ids))
        # SmolLM3's <think> and </think> are special tokens; Qwen's are not (`_reasoning_tags`).
        self.think_tags_special = self.specials is not None and all(
            self.specials.fullmatch(tag) for tag in ("<think>", "</think>"))
        self.stop_tokens = [t for i in (tokenizer.stop_ids or (tokenizer.eos_id,))
                            if (t := tokenizer.id_to_token(int(i))) is not None]
        bos = tokenizer.special_tokens_map.get("bos_token")
        bos_id = tokenizer.token_to_id(bos) if isinstance(bos, str) else None
        bos_token = bos if isinstance(bos, str) and bos_id is not None and bos_id in self.special_ids else None
        eos = tokenizer.special_tokens_map.get("eos_token")
        self.eos_token = eos if isinstance(eos, str) else tokenizer.id_to_token(tokenizer.eos_id) or ""
        self.template_kwargs = dict(template_kwargs or {})
        self.facts = template_facts(tokenizer, Markers(self.specials, any_of(tuple(self.stop_tokens))), bos_token)
        # what the template did to trained turns (stats.ChatTurns): present (0) in every chat unit
        self.counts = ChatTurns()
        self._jinja = jinja_renderer(tokenizer)
        self._tracer = skeleton_tracer(tokenizer)

    # -- the Renderer protocol (render/batch.py) ----------------------------------------------------------------
    def prepare(self, conversations: list[Conversation]) -> list[Conversation]:
        """The records to render for the run's `--turns` (`for_turns`)."""
        return self.for_turns(conversations, self.turns)

    def render(self, conversations: list[Conversation], reject: Reject | None = None) -> RenderedBatch:
        """`render_chat` with this renderer, the run's mask and unprompted policy."""
        return render_chat(conversations, self.tokenizer, mask=self.mask, unprompted=self.unprompted, renderer=self,
                           reject=reject)

    def keep(self) -> None:
        """Keep the skeleton layouts this process analysed for later packs (kept.py)."""
        if self.facts.kept is not None:
            self.facts.kept.keep()

    # -- rendering -----------------------------------------------------------------------------------------------
    def bind(self, tools: Any = None, kwargs: Mapping[str, Any] | None = None) -> Render:
        """A function rendering messages (with or without the generation prompt) with these tools and kwargs. The
        messages it is given are plain data (`template_data`): those of a record `_layout` converted, or built by
        packsft from them."""
        plain_tools, plain_kwargs = template_data(tools), template_data(dict(kwargs or {}))
        return lambda messages, prompt: self._jinja(messages, plain_tools, prompt, plain_kwargs)

    def render_text(self, messages: Sequence[tuple[str, str]] | list[dict[str, Any]], tools: Any = None,
                    kwargs: Mapping[str, Any] | None = None, add_generation_prompt: bool = False) -> str:
        """The template's text for these messages; a template that raises rejects the record."""
        chat = template_data([m if isinstance(m, dict) else {"role": m[0], "content": m[1]} for m in messages])
        return self._rendered(chat, tools, kwargs, add_generation_prompt)

    def _rendered(self, chat: list[dict[str, Any]], tools: Any, kwargs: Mapping[str, Any] | None,
                  add_generation_prompt: bool = False) -> str:
        """`render_text` of messages that are plain data already."""
        try:
            return self.bind(tools, kwargs)(chat, add_generation_prompt)
        except ImportError:  # the environment, not the record: never a per-record reject
            require_jinja()
            raise
        except Exception as exc:  # jinja's TemplateError from raise_exception(), or any template bug
            raise RecordRejected(f"chat template refused the conversation: {_first_line(exc)}") from None

    def encode(self, texts: list[str], spans: list[list[tuple[int, int]]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Token ids and character offsets of each rendered text; special-token strings that came from
        the record (inside `spans`) are ordinary text, the template's own stay special."""
        return self.encoder.encode(texts, spans)

    # -- layout --------------------------------------------------------------------------------------------------
    def layout(self, conv: Conversation) -> Layout:
        """Where the record's messages and generated spans lie in its rendering (layout.py); for a rendering that
        `--turns inference` added, in the rendering the model is prompted with (`_as_prompted`)."""
        found = self._layout(conv)
        return self._as_prompted(conv, found) if conv.extras is not None and conv.extras.as_prompted else found

    def _as_prompted(self, conv: Conversation, layout: Layout) -> Layout:
        """The layout of a `--turns inference` rendering (its last turn the one trained) moved onto the history as
        the generation prompt shows it, where the template shows that history otherwise once the turn follows
        (gpt-oss keeps the analysis of earlier tool-calling turns in the prompt of the next, and drops it when
        that next turn is rendered): the turn is then trained after the context the model is prompted with."""
        k = len(conv.messages) - 1
        if k < 1 or conv.messages[k - 1][0] == ASSISTANT or layout.generated[k] is None:
            return layout
        before = self._layout(_prefix(conv, k))
        tools, kwargs = conv.tools, conv.template_kwargs(self.template_kwargs)
        trailer = self.facts.markers(self.bind(tools, kwargs), shape_key([], tools, kwargs)).trailer
        history = without_trailer(before.text, trailer)
        start = layout.starts[k]
        if layout.text.startswith(history) and len(history) == start:
            return layout
        shift = len(history) - start
        body, end = layout.generated[k]  # type: ignore[misc]
        return Layout(
            history + layout.text[start:], before.head_end, [*before.starts, start + shift],
            [*before.bodies, layout.bodies[k] + shift], [*before.generated, (body + shift, end + shift)],
            [*before.rewritten, layout.rewritten[k]],
            [*before.data, *((a + shift, b + shift) for a, b in layout.data if a >= start)],
            [*before.endings, layout.endings[k]], layout.appended)

    def _layout(self, conv: Conversation) -> Layout:
        messages, tools = conv.chat_messages(), conv.tools
        kwargs = conv.template_kwargs(self.template_kwargs)
        if tools is None and self._tracer is not None:  # the record's rendering without rendering it: trace.py
            holed, values = skeleton(messages)
            traced = self.facts.traced_layout(self.bind, self._tracer, holed, kwargs)
            if traced is not None and traced[1].replays(values):
                return self._finished(traced[0](values))
        # The record renders: its data as transformers hands it to a template (plain JSON types), converted once here
        # for every rendering below (its prefixes, windows and skeleton).
        messages, tools, kwargs = template_data(messages), template_data(tools), template_data(kwargs)
        holed, values = skeleton(messages)
        text = self._rendered(messages, tools, kwargs)
        tools_special = tools is not None and self.specials is not None and bool(
            self.specials.search(json.dumps(tools, ensure_ascii=False)))
        if not tools_special:
            stand_in = STAND_IN_TOOLS if tools else None
            found = self.facts.skeleton_layout(self.bind, holed, stand_in, kwargs)
            spliced = splice(found, values, text, stand_in=stand_in is not None) if found is not None else None
            if spliced is None and stand_in is not None:  # the record's own tools (a template that escapes strings)
                found = self.facts.skeleton_layout(self.bind, holed, tools, kwargs)
                spliced = splice(found, values, text) if found is not None else None
            if spliced is not None:
                return self._finished(spliced)
        try:
            return self._finished(self._analyse_record(messages, tools, kwargs, text))
        except RecordRejected:
            raise
        except ImportError:  # the environment, not the record
            require_jinja()
            raise
        except Exception as exc:
            raise RecordRejected(f"chat template refused a prefix of the conversation: {_first_line(exc)}") from None

    def _finished(self, layout: Layout) -> Layout:
        return self._stopped(self._reasoning_tags(layout))

    def _reasoning_tags(self, layout: Layout) -> Layout:
        """The layout with the tags of a think block that opens an assistant turn's text left out of its data spans,
        where the tokenizer has them as special tokens (SmolLM3): that block is the model's own reasoning, which it
        generates with those tokens, so they stay tokens, as `apply_chat_template` encodes them. Any other
        special-token string in a record stays plain text."""
        if not self.think_tags_special:
            return layout
        turns = [(layout.bodies[k], span[1]) for k, span in enumerate(layout.generated) if span is not None]
        data: list[tuple[int, int]] = []
        for start, end in layout.data:
            found = THINK_BLOCK.match(layout.text, start, end)
            if found is None or not any(lo <= start and end <= hi for lo, hi in turns):
                data.append((start, end))
                continue
            pieces = [(start, found.start(1)), (found.end(1), found.start(3)), (found.end(3), end)]
            data.extend(piece for piece in pieces if piece[0] < piece[1])
        return replace(layout, data=data)

    def _stopped(self, layout: Layout) -> Layout:
        """The layout with EOS appended where the last turn renders no token at all after what it generates (GLM
        ends no turn: the model stops on the next role token, which the last turn has none of). EOS is one of the
        model's stop tokens; it is trained as the turn's end (counted as `stop_tokens_appended`)."""
        if not layout.endings or layout.endings[-1] != NONE or layout.generated[-1] is None:
            return layout
        body, end = layout.generated[-1]
        if not layout.text[body:end].strip():  # the template renders nothing of the turn: nothing to end
            return layout
        text = layout.text + self.eos_token
        return replace(layout, text=text, generated=[*layout.generated[:-1], (body, len(text))],
                       endings=[*layout.endings[:-1], STOP], appended=self.eos_token)

    def _analyse_record(self, messages: list[dict[str, Any]], tools: Any, kwargs: dict[str, Any], text: str) -> Layout:
        """The layout of the record itself (its shape's skeleton did not reproduce it): special-token strings in its
        strings (and in its tools) are placeholders while it is analysed, so they stay plain text."""
        values: list[str] = []
        holed = messages
        if self.specials is not None:
            holed, values = protect(messages, self.specials)
            if tools is not None:
                holed_tools, tool_values = protect([{"tools": tools}], self.specials)
                renumbered = re.sub("\ue000(\\d+)\ue001", lambda m: HOLE.format(int(m.group(1)) + len(values)),
                                    json.dumps(holed_tools[0]["tools"], ensure_ascii=False))
                tools, values = json.loads(renumbered), values + tool_values
        render = self.bind(tools, kwargs)
        probe_key = shape_key([], tools, kwargs)
        head = functools.partial(self.facts.head_end, render, probe_key, messages[0]["role"])
        prompt = self.facts.generic_prompt(render, probe_key)
        fixed_prompt = self.facts.fixed_prompt(self.bind)
        markers = self.facts.markers(render, probe_key)
        history = not self.facts.history_as_prompted(self.bind)
        if not values:
            return analyse(render, messages, markers, head, text, prompt, fixed_prompt, history=history)
        spliced = splice(analyse(render, holed, markers, head, None, prompt, fixed_prompt, history=history), values,
                         text)
        if spliced is None:
            raise RecordRejected("the chat template renders a special-token string inside the record differently "
                                 "from plain text, so it cannot be kept plain text; remove it from the record")
        return spliced

    def literals(self, roles: tuple[str, ...]) -> list[str] | None:
        """The template text around each content of a conversation with these roles: n+1 pieces, or None where a
        content is not rendered exactly once, in order."""
        text = self.render_text([(role, HOLE.format(i)) for i, role in enumerate(roles)])
        found = [int(m.group(1)) for m in HOLE_PATTERN.finditer(text)]
        if found != list(range(len(roles))):
            return None
        return HOLE_PATTERN.split(text)[::2]

    def locate(self, messages: Sequence[tuple[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """Rendered text and the character spans of the record's own strings in it (for encoder tests)."""
        layout = self.layout(Conversation(tuple(messages)))
        return layout.text, layout.data

    # -- --turns ---------------------------------------------------------------------------------------------
    def for_turns(self, conversations: list[Conversation], turns: str) -> list[Conversation]:
        """The records to render for `--turns`: `last` trains only each record's final assistant turn;
        `inference` adds, after a record, one prefix of it per trained turn the template rewrites in history
        (that turn last, the only one trained), and trains the record itself on the other turns."""
        if turns == "rendered":
            return conversations
        out = []
        for conv in conversations:
            assistants = [i for i, (role, _) in enumerate(conv.messages) if role == ASSISTANT and conv.trains(i)]
            if not assistants or conv.messages[0][0] == TEXT:
                out.append(conv)
                continue
            if turns == "last":
                out.append(_training_only(conv, assistants[-1:]))
                continue
            try:
                rewritten = [k for k in assistants if self.layout(conv).rewritten[k]]
            except RecordRejected:
                out.append(conv)  # rendering rejects it again, with the reason
                continue
            out.append(_training_only(conv, [k for k in assistants if k not in rewritten]) if rewritten else conv)
            for k in rewritten:
                out.append(_training_only(_prefix(conv, k + 1), [k], as_prompted=True))
            self.counts.inference_renderings_added += len(rewritten)
        return out


def _prefix(conv: Conversation, n: int) -> Conversation:
    extras = conv.extras
    if extras is not None:
        extras = ChatExtras(extras.fields[:n], extras.train[:n], extras.tools, extras.template_kwargs)
    return replace(conv, messages=conv.messages[:n], extras=extras)


def _training_only(conv: Conversation, turns: list[int], *, as_prompted: bool = False) -> Conversation:
    """The record with every message but `turns` untrained (`as_prompted`: a rendering `--turns inference` adds)."""
    extras = conv.extras or ChatExtras()
    fields = extras.fields or (None,) * len(conv.messages)
    train = tuple(None if i in turns else False for i in range(len(conv.messages)))
    return replace(conv, extras=ChatExtras(fields, train, extras.tools, extras.template_kwargs, as_prompted))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip() or type(exc).__name__).splitlines()[0]


def render_chat(
    conversations: list[Conversation],
    tokenizer: PackTokenizer,
    *,
    mask: str = "assistant_only",
    unprompted: str = "keep",
    renderer: ChatRenderer | None = None,
    reject: Reject | None = None,
) -> RenderedBatch:
    """Render with the tokenizer's chat template; see the module docstring for the masking rule.

    Text documents (role TEXT) render as their text + the EOS token, all trained (a prompt-completion row's
    prompt untrained). A record the template cannot render goes to `reject(conversation, reason)` and is left
    out of the batch (without `reject`, RecordRejected is raised).
    """
    renderer = renderer or ChatRenderer(tokenizer)
    kept, texts, spans, layouts = _render_all(conversations, renderer, reject)
    encodings = renderer.encode(texts, spans)

    ids_parts, flag_parts, headers = [], [], []
    starts: list[int] = []
    ends: list[int] = []
    conv_lens = np.zeros(len(kept), np.int64)
    conv_unprompted = np.zeros(len(kept), bool)
    base = 0
    for c, (conv, (ids, offsets), layout) in enumerate(zip(kept, encodings, layouts)):
        if layout is None:
            flags, (msg_starts, msg_ends, msg_headers, is_unprompted) = text_flags(ids, offsets, conv, spans[c])
        else:
            flags, (msg_starts, msg_ends, msg_headers, is_unprompted) = flags_and_spans(
                ids, offsets, conv, layout, mask, unprompted)
            _count_turns(renderer, conv, layout, flags)
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
        mode="chat",
        msg_headers=np.asarray(headers, np.int64),
        special_strings=count_special_strings([content for c in conversations for _, content in c.messages],
                                              tokenizer.special_tokens),
    )


def _render_all(
    conversations: list[Conversation], renderer: ChatRenderer, reject: Callable[[Conversation, str], None] | None,
) -> tuple[list[Conversation], list[str], list[list[tuple[int, int]]], list[Layout | None]]:
    """The records the template renders, their texts, the spans of their own strings, and their layouts."""
    kept, texts, spans = [], [], []
    layouts: list[Layout | None] = []
    for conv in conversations:
        if conv.messages[0][0] == TEXT:
            bounds, cursor = [], 0
            for _, content in conv.messages:
                bounds.append((cursor, cursor + len(content)))
                cursor += len(content)
            texts.append("".join(content for _, content in conv.messages) + renderer.eos_token)
            spans.append(bounds)
            layouts.append(None)
        else:
            try:
                layout = renderer.layout(conv)
            except RecordRejected as bad:
                if reject is None:
                    raise
                reject(conv, bad.reason)
                continue
            texts.append(layout.text)
            spans.append(layout.data)
            layouts.append(layout)
        kept.append(conv)
    return kept, texts, spans, layouts


def _count_turns(renderer: ChatRenderer, conv: Conversation, layout: Layout, flags: np.ndarray) -> None:
    """What the rendering does to trained turns: rewritten when not last (`turns_rewritten_in_history`), reasoning
    left out (`reasoning_tokens_dropped`); and the repeated context of `--turns inference` renderings."""
    dropped = []  # reasoning texts the rendering leaves out, counted in one call (a long trace has hundreds)
    for k, span in enumerate(layout.generated):
        if span is None or not conv.trains(k):
            continue
        if layout.rewritten[k]:
            renderer.counts.turns_rewritten_in_history += 1
        if layout.endings[k] == OTHER:
            renderer.counts.turns_ended_without_stop_token += 1
        reasoning = conv.reasoning(k)
        if reasoning is None:
            found = THINK.search(conv.messages[k][1])
            reasoning = found.group(1) if found else None
        end = layout.starts[k + 1] if k + 1 < len(layout.starts) else len(layout.text)
        if reasoning and reasoning.strip() and reasoning.strip() not in layout.text[layout.starts[k]:end]:
            dropped.append(reasoning)
    if dropped:  # as HF counts them: special-token strings are one token each
        renderer.counts.reasoning_tokens_dropped += renderer.encoder.count(dropped)
    if layout.appended and conv.trains(len(layout.generated) - 1):
        renderer.counts.stop_tokens_appended += 1
    if conv.extras is not None and conv.extras.as_prompted:
        trained = np.flatnonzero(flags)
        renderer.counts.inference_context_tokens += int(trained[0]) if len(trained) else len(flags)
