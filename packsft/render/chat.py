"""Render conversations with the tokenizer's own chat template (`--template chat`) and train what the model generates.

    rendering:  <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nYo<|im_end|>\n
    message 0:  |<--------- header + content + end + separator -->|
    message 1:                                 |<- generation prompt ->|<------- generated ------->|\n
    flags:       0 ...                                               0 | 1 ...                     1 |0

1. Each record renders as `apply_chat_template(messages, tools=tools, **kwargs)` does, with its tools and
   template kwargs (`--template-kwargs`, overridden by the row's own `chat_template_kwargs`), through
   transformers' own jinja renderer (`render_jinja_template`).
2. chat_layout.py finds, from the template's renderings of prefixes of the conversation, where each message
   starts and what each assistant turn generates: everything after its generation prompt
   (`add_generation_prompt=True` on the conversation before it), reasoning and tool calls included, through
   its end-of-turn token. That span is trained (`mask="assistant_only"`), unless the message's own train flag
   is off (`weight: 0`, `training: false`, a prompt-completion's prompt); system (and its tools block), user
   and tool-result tokens never are. `mask="all"` trains every token after the head.
3. The rendered texts are tokenized with character offsets and without added special tokens (the template
   text already holds any BOS it wants): by the fast encoder where it is proven for this template
   (`with_chat_path_proven`), else by the Rust tokenizer (chat_encode.py). Special-token strings inside the
   record's own strings (contents, reasoning, arguments) are plain text, as `apply_chat_template(...,
   sanitize_control_tokens=True)` makes them: a record cannot inject a control token.

`--turns`: `rendered` trains the one rendering; `last` only its final assistant turn; `inference` trains every
assistant turn that the template renders otherwise in history (Qwen3 drops reasoning there) in a rendering of
its own, where it is the last turn, after the history as the template shows it at inference (masked).

Message spans are header + content + end-of-turn (+ separator), so split.py can cut at message boundaries; the
conversation head is what precedes the first message (a BOS, a tools block the template opens with).
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from packsft.errors import MissingDependencyError
from packsft.read.records import ASSISTANT, TEXT, TOOL, USER, ChatExtras, Conversation, RecordRejected
from packsft.render.chat_encode import RenderingEncoder
from packsft.render.chat_layout import (
    HOLE,
    HOLE_PATTERN,
    STAND_IN_TOOLS,
    Layout,
    LocalRules,
    PrefixRenderings,
    Render,
    SkeletonCache,
    analyse,
    protect,
    shape_key,
    skeleton,
    splice,
)
from packsft.render.chat_probes import JOIN_PROBE, PROBE_MARK, probe_records
from packsft.render.roles import ROLE_CODES, RenderedBatch, count_special_strings
from packsft.render.tokenizer import TOKEN_ID_DTYPE, PackTokenizer
from packsft.stats import CHAT_TURN_COUNTERS

THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


class ChatRenderer:
    """Renders and lays out records with one tokenizer's template; caches what depends only on the tokenizer
    (special strings, the encoder, skeleton layouts per conversation shape, heads per tools and kwargs).

    Renders with transformers' own jinja renderer (`render_jinja_template`, what `apply_chat_template` calls)
    and the template kwargs transformers passes (its `special_tokens_map`), without loading the transformers
    tokenizer: importing that imports torch (seconds per worker).

    Args:
        fast: encode renderings with the fast encoder (chat_encode.py); default: where it is in use.
        template_kwargs: kwargs for every record (`--template-kwargs`); a record's own win.
    """

    def __init__(self, tokenizer: PackTokenizer, fast: bool | None = None,
                 template_kwargs: Mapping[str, Any] | None = None) -> None:
        self.tokenizer = tokenizer
        self.encoder = _rendering_encoder(tokenizer, fast)
        self.special_ids = self.encoder.special_ids
        strings = sorted({tokenizer.backend.id_to_token(int(i)) for i in self.special_ids} - {None}, key=len, reverse=True)
        self.specials = re.compile("|".join(map(re.escape, strings))) if strings else None
        bos = tokenizer.special_tokens_map.get("bos_token")
        self.bos_id = tokenizer.backend.token_to_id(bos) if isinstance(bos, str) else None
        self.bos_token = bos if isinstance(bos, str) and self.bos_id is not None and self.bos_id in self.special_ids else None
        eos = tokenizer.special_tokens_map.get("eos_token")
        self.eos_token = eos if isinstance(eos, str) else tokenizer.backend.id_to_token(tokenizer.eos_id)
        self.template_kwargs = dict(template_kwargs or {})
        # What depends only on the template: shared by the renderers of one process (a worker packs many units).
        key = (tokenizer.fingerprint, tokenizer.chat_renderer, json.dumps(tokenizer.chat_template, sort_keys=True))
        shared = _SHARED.setdefault(key, _Shared())
        self.skeletons = shared.skeletons
        self.prefix_texts = shared.prefix_texts  # PrefixRenderings' store
        self.heads = shared.heads
        # turns_rewritten_in_history, reasoning_tokens_dropped, inference_*: present (0) in every chat unit
        self.counts: Counter[str] = Counter(dict.fromkeys(CHAT_TURN_COUNTERS, 0))
        self.inference_prefixes: set[int] = set()  # id() of records --turns inference added
        self._jinja = _jinja_renderer(tokenizer)
        self.shared = shared

    @property
    def fixed_prompt(self) -> bool:
        """Whether the template's generation prompt is the same after every conversation prefix of the probes
        (given the tools and kwargs): then an assistant turn's prompt is not rendered per turn."""
        if self.shared.fixed_prompt is None:
            self.shared.fixed_prompt = _prompt_is_fixed(self)
        return self.shared.fixed_prompt

    @property
    def opener_rule(self) -> bool:
        """Whether every message of the probes' skeletons opens with the special token that opens the generation
        prompt (`analyse(opener=...)` then finds message starts without rendering prefixes)."""
        if self.shared.opener_rule is None:
            self.shared.opener_rule = _opener_rule_holds(self)
        return self.shared.opener_rule

    def _opener(self, render: Render, key: str) -> str | None:
        prompt = self._generic_prompt(render, key)
        found = self.specials.search(prompt) if prompt and self.specials is not None else None
        return found.group() if found else None

    def _rules(self, render: Render, key: str) -> LocalRules | None:
        """The template's LocalRules for these tools and kwargs (found once, from probe renderings)."""
        if key not in self.shared.rules:
            opener = self._opener(render, key)
            self.shared.rules[key] = None if opener is None else LocalRules(opener, _joins(self, render, key))
        return self.shared.rules[key]

    # -- rendering -----------------------------------------------------------------------------------------------
    def bind(self, tools: Any = None, kwargs: Mapping[str, Any] | None = None) -> Render:
        """A function rendering messages (with or without the generation prompt) with these tools and kwargs."""
        kwargs = dict(kwargs or {})
        return lambda messages, prompt: self._jinja(messages, tools, prompt, kwargs)

    def render_text(self, messages: Sequence[tuple[str, str]] | list[dict[str, Any]], tools: Any = None,
                    kwargs: Mapping[str, Any] | None = None, add_generation_prompt: bool = False) -> str:
        """The template's text for these messages; a template that raises rejects the record."""
        chat = [m if isinstance(m, dict) else {"role": m[0], "content": m[1]} for m in messages]
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
        """Where the record's messages and generated spans lie in its rendering (chat_layout.py)."""
        messages, tools = conv.chat_messages(), conv.tools
        kwargs = conv.template_kwargs(self.template_kwargs)
        text = self.render_text(messages, tools, kwargs)
        tools_special = tools is not None and self.specials is not None and bool(
            self.specials.search(json.dumps(tools, ensure_ascii=False)))
        if not tools_special:
            holed, values = skeleton(messages)
            stand_in = STAND_IN_TOOLS if tools else None
            skeleton_render = self.bind(stand_in, kwargs)
            skeleton_key = shape_key([], stand_in, kwargs)
            context = shape_key([], stand_in, kwargs)
            found = self.skeletons.get(shape_key(holed, stand_in, kwargs), functools.partial(
                _try_analyse, PrefixRenderings(skeleton_render, holed, context, self.prefix_texts), holed, self.specials,
                functools.partial(self._head_end, skeleton_render, skeleton_key, messages[0]["role"]),
                self._generic_prompt(skeleton_render, skeleton_key), self.fixed_prompt,
                self._rules(skeleton_render, skeleton_key) if self.opener_rule else None))
            spliced = splice(found, values, text, stand_in=stand_in is not None) if found is not None else None
            if spliced is not None:
                return spliced
        try:
            return self._analyse_record(messages, tools, kwargs, text)
        except RecordRejected:
            raise
        except ImportError:  # the environment, not the record
            require_jinja()
            raise
        except Exception as exc:
            raise RecordRejected(f"chat template refused a prefix of the conversation: {_first_line(exc)}") from None

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
        head = functools.partial(self._head_end, render, probe_key, messages[0]["role"])
        prompt = self._generic_prompt(render, probe_key)
        if not values:
            return analyse(render, messages, self.specials, head, text, prompt, self.fixed_prompt)
        spliced = splice(analyse(render, holed, self.specials, head, None, prompt, self.fixed_prompt), values, text)
        if spliced is None:
            raise RecordRejected("the chat template renders a special-token string inside the record differently "
                                 "from plain text, so it cannot be kept plain text; remove it from the record")
        return spliced

    def _head_end(self, render: Render, key: str, first_role: str, text: str) -> int:
        """Where the first message's own span starts: after a BOS and what the template puts before every first
        message (a tools block, a default system message), found once per tools, kwargs and first role."""
        key = f"{key}|{first_role}"
        if key not in self.heads:
            if len(self.heads) >= 4096:  # keyed by tools: records with tools of their own would fill it
                self.heads.clear()
            self.heads[key] = self._probe_head(render, first_role)
        head = self.heads[key]
        if head and text.startswith(head):
            return len(head)
        return len(self.bos_token) if self.bos_token and text.startswith(self.bos_token) else 0

    def _generic_prompt(self, render: Render, key: str) -> str | None:
        """The generation prompt after a one-message conversation (for a turn no conversation precedes)."""
        key = f"{key}|prompt"
        if key not in self.heads:
            mark = PROBE_MARK
            try:
                plain = render([{"role": USER, "content": mark}], False)
                prompted = render([{"role": USER, "content": mark}], True)
            except Exception:
                plain = prompted = ""
            self.heads[key] = prompted[len(plain):] if prompted.startswith(plain) and prompted != plain else None
        return self.heads[key]

    def _probe_head(self, render: Render, first_role: str) -> str | None:
        mark = PROBE_MARK
        try:
            probe = render([{"role": first_role, "content": mark}], False)
            plain = render([{"role": USER, "content": mark}], False)
            prompted = render([{"role": USER, "content": mark}], True)
        except Exception:
            return None
        opener = self.specials.search(prompted, len(plain)) if self.specials and prompted.startswith(plain) else None
        at = probe.find(mark)
        head = probe.rfind(opener.group(), 0, at) if opener is not None and at >= 0 else -1
        return probe[:head] if head > 0 else None

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
                prefix = _training_only(_prefix(conv, k + 1), [k])
                self.inference_prefixes.add(id(prefix))
                out.append(prefix)
            self.counts["inference_renderings_added"] += len(rewritten)
        return out


@dataclass
class _Shared:
    skeletons: SkeletonCache = field(default_factory=SkeletonCache)
    prefix_texts: dict[bytes, str] = field(default_factory=dict)
    heads: dict[str, str | None] = field(default_factory=dict)
    rules: dict[str, LocalRules | None] = field(default_factory=dict)  # per tools and kwargs
    fixed_prompt: bool | None = None  # ChatRenderer.fixed_prompt, once proven
    opener_rule: bool | None = None  # ChatRenderer.opener_rule, once proven


_SHARED: dict[tuple[str, str, str], _Shared] = {}
_ENCODERS: dict[tuple[str, str, bool | None], RenderingEncoder] = {}


def _rendering_encoder(tokenizer: PackTokenizer, fast: bool | None) -> RenderingEncoder:
    """One RenderingEncoder per tokenizer and process (building its tables costs ~0.3 s; a worker packs many units)."""
    key = (tokenizer.fingerprint, tokenizer.encoder, fast)
    if key not in _ENCODERS or _ENCODERS[key].tokenizer is not tokenizer:
        _ENCODERS.clear()
        _ENCODERS[key] = RenderingEncoder(tokenizer, fast)
    return _ENCODERS[key]


def _prompt_is_fixed(renderer: ChatRenderer) -> bool:
    for record in probe_records():
        messages, tools, kwargs = record.chat_messages(), record.tools, record.template_kwargs()
        render = renderer.bind(tools, kwargs)
        generic = renderer._generic_prompt(render, shape_key([], tools, kwargs))
        for k in range(1, len(messages) + 1):
            if k < len(messages) and messages[k]["role"] != ASSISTANT:
                continue
            try:
                plain, prompted = render(messages[:k], False), render(messages[:k], True)
            except Exception:
                continue
            if prompted != plain + (generic or ""):
                return False
    return True


def _joins(renderer: ChatRenderer, render: Render, key: str) -> dict[tuple[str, str], tuple[str, int]]:
    """LocalRules.joins: for two tool results in a row, the text between their contents and where the second starts
    in it, from the rendering of `_JOIN_PROBE`'s prefixes."""
    holed, _ = skeleton(JOIN_PROBE)
    head = functools.partial(renderer._head_end, render, key, USER)
    try:
        layout = analyse(render, holed, renderer.specials, head, None, renderer._generic_prompt(render, key))
    except Exception:  # a template without tool results
        return {}
    first, second = (HOLE_PATTERN.search(layout.text, layout.starts[i]) for i in (2, 3))
    if first is None or second is None or not first.end() <= layout.starts[3] <= second.start():
        return {}
    return {(TOOL, TOOL): (layout.text[first.end():second.start()], layout.starts[3] - first.end())}


def _opener_rule_holds(renderer: ChatRenderer) -> bool:
    """Whether LocalRules find the message starts that rendering the prefixes finds, on every probe's skeleton."""
    for record in probe_records():
        holed, _ = skeleton(record.chat_messages())
        tools = STAND_IN_TOOLS if record.tools else None
        kwargs = record.template_kwargs()
        render, key = renderer.bind(tools, kwargs), shape_key([], tools, kwargs)
        rules = renderer._rules(render, key)
        if rules is None:
            return False
        head = functools.partial(renderer._head_end, render, key, holed[0]["role"])
        prompt = renderer._generic_prompt(render, key)
        try:
            rendered = analyse(render, holed, renderer.specials, head, None, prompt)
        except Exception:
            continue
        if analyse(render, holed, renderer.specials, head, None, prompt, rules=rules).starts != rendered.starts:
            return False
    return True


def _try_analyse(render: Render, messages: list[dict[str, Any]], specials: re.Pattern[str] | None,
                 head: Callable[[str], int], prompt: str | None, fixed_prompt: bool,
                 rules: LocalRules | None = None) -> Layout | None:
    try:
        return analyse(render, messages, specials, head, None, prompt, fixed_prompt, rules)
    except Exception:  # the template refuses the skeleton (it inspects contents): analyse the record itself
        return None


def _prefix(conv: Conversation, n: int) -> Conversation:
    extras = conv.extras
    if extras is not None:
        extras = ChatExtras(extras.fields[:n], extras.train[:n], extras.tools, extras.template_kwargs)
    return replace(conv, messages=conv.messages[:n], extras=extras)


def _training_only(conv: Conversation, turns: list[int]) -> Conversation:
    """The record with every message but `turns` untrained."""
    extras = conv.extras or ChatExtras()
    fields = extras.fields or (None,) * len(conv.messages)
    train = tuple(None if i in turns else False for i in range(len(conv.messages)))
    return replace(conv, extras=ChatExtras(fields, train, extras.tools, extras.template_kwargs))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip() or type(exc).__name__).splitlines()[0]


def require_jinja() -> None:
    """Fail at start-up, naming the install, where the chat path cannot run (it is no fault of any record)."""
    try:
        import jinja2
    except ImportError:
        raise MissingDependencyError("--template chat renders the tokenizer's chat template with jinja2, which is not "
                                     "installed: pip install 'jinja2>=3.1' (packsft declares it; reinstall packsft)") from None
    major, minor = (int(part) for part in jinja2.__version__.split(".")[:2])
    if (major, minor) < (3, 1):
        raise MissingDependencyError(f"--template chat needs jinja2 3.1 or later (transformers' chat templates); "
                                     f"{jinja2.__version__} is installed: pip install -U 'jinja2>=3.1'")


def _jinja_renderer(tokenizer: PackTokenizer) -> Callable[[list[dict[str, Any]], Any, bool, dict[str, Any]], str]:
    """A function rendering one conversation exactly as `hf.apply_chat_template(messages, tools=tools,
    add_generation_prompt=prompt, tokenize=False, **kwargs)`."""
    template = tokenizer.chat_template
    try:
        from transformers.utils.chat_template_utils import render_jinja_template
    except ImportError:  # a transformers without it: its tokenizer renders (and imports torch)
        render_jinja_template = None
    if not template or render_jinja_template is None or tokenizer.chat_renderer == "hf":
        return lambda messages, tools, prompt, kwargs: tokenizer.hf.apply_chat_template(
            messages, tools=tools, add_generation_prompt=prompt, tokenize=False, **kwargs)
    special = dict(tokenizer.special_tokens_map)
    direct = _compiled_renderer()

    def render(messages: list[dict[str, Any]], tools: Any, prompt: bool, kwargs: dict[str, Any]) -> str:
        chosen: Any = template
        if isinstance(template, dict):  # several named templates: as transformers picks them
            chosen = template.get("tool_use") if tools is not None and "tool_use" in template else template.get("default")
        if direct is not None:
            return direct(chosen, messages, tools, prompt, {**special, **kwargs})
        rendered, _ = render_jinja_template(conversations=[messages], tools=tools, chat_template=chosen,
                                            add_generation_prompt=prompt, **{**special, **kwargs})
        return rendered[0]

    return render


def _compiled_renderer() -> Callable[[str, list[dict[str, Any]], Any, bool, dict[str, Any]], str] | None:
    """`render_jinja_template`'s own steps for one conversation without its per-call overhead (~20% of a render):
    the compiled template (cached by transformers), its plain-data conversion of everything the template sees
    (the sandbox's guard) and its reasoning-field aliases. None where this transformers names them otherwise;
    the chat proof compares the result with `apply_chat_template` either way."""
    try:
        from transformers.utils.chat_template_utils import (
            _alias_reasoning_fields,
            _compile_jinja_template,
            _plain_template_data,
        )
    except ImportError:
        return None

    def render(template: str, messages: list[dict[str, Any]], tools: Any, prompt: bool, kwargs: dict[str, Any]) -> str:
        return _compile_jinja_template(template).render(
            messages=_alias_reasoning_fields(_plain_template_data(messages)), tools=_plain_template_data(tools),
            documents=None, add_generation_prompt=prompt, **_plain_template_data(kwargs))

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
            flags, (msg_starts, msg_ends, msg_headers, is_unprompted) = _text_flags(ids, offsets, conv, spans[c])
        else:
            flags, (msg_starts, msg_ends, msg_headers, is_unprompted) = _flags_and_spans(
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
        special_strings=count_special_strings([content for c in conversations for _, content in c.messages], tokenizer),
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


def _text_flags(ids: np.ndarray, offsets: np.ndarray, conv: Conversation, bounds: list[tuple[int, int]]):
    """A document (one TEXT message) trains all but its first token; a plain prompt-completion row (two) trains
    the completion and the EOS."""
    n = len(ids)
    flags = np.zeros(n, np.uint8)
    token_starts = offsets[:, 0]
    firsts = [int(np.searchsorted(token_starts, lo, side="left")) for lo, _ in bounds]
    for i, first in enumerate(firsts):
        if conv.trains(i):
            stop = firsts[i + 1] if i + 1 < len(firsts) else n
            flags[first:stop] = 1
    flags[0] = 0
    ends = firsts[1:] + [n - 1]
    return flags, (firsts, ends, [0] * len(firsts), False)


def _flags_and_spans(
    ids: np.ndarray, offsets: np.ndarray, conv: Conversation, layout: Layout, mask: str, unprompted: str,
) -> tuple[np.ndarray, tuple[list[int], list[int], list[int], bool]]:
    """Train flags of one rendered record and its message spans (token positions)."""
    n = len(ids)
    flags = np.zeros(n, np.uint8)
    roles = [role for role, _ in conv.messages]
    token_starts, token_ends = offsets[:, 0], offsets[:, 1]
    first_user = roles.index(USER) if USER in roles else len(roles)
    is_unprompted = ASSISTANT in roles[:first_user]
    masked_before = first_user if (unprompted == "mask" and is_unprompted) else 0

    def token_at(x: int) -> int:  # the first token starting at or after character x (a message boundary)
        return int(np.searchsorted(token_starts, x, side="left"))

    def token_over(x: int) -> int:  # the first token ending after character x (a generated span starts there)
        return int(np.searchsorted(token_ends, x, side="right"))

    starts = [token_at(x) for x in layout.starts]
    ends = starts[1:] + [n]
    bodies = [min(token_over(x), end) for x, end in zip(layout.bodies, ends)]
    for i, span in enumerate(layout.generated):
        if i < masked_before or not conv.trains(i):
            continue
        if mask == "all":
            flags[starts[i]:ends[i]] = 1
        elif span is not None and roles[i] == ASSISTANT:
            flags[token_over(span[0]):token_at(span[1])] = 1
    if mask == "all":
        for i in range(max(masked_before, 0), len(roles)):
            if conv.trains(i) and roles[i] != ASSISTANT:
                flags[starts[i]:ends[i]] = 1
        if masked_before == 0 and len(roles):
            flags[token_at(layout.head_end):starts[0]] = 1
    flags[0] = 0  # the first token of a conversation is never a label (it starts a segment)
    # The last message's span ends where the rendering's tail (after its end-of-turn) begins.
    if roles:
        ends[-1] = max(starts[-1], min(n, token_at(layout.generated[-1][1]) if layout.generated[-1] else n))
    headers = [max(body - start, 0) for body, start in zip(bodies, starts)]
    return flags, (starts, ends, headers, is_unprompted)


def _count_turns(renderer: ChatRenderer, conv: Conversation, layout: Layout, flags: np.ndarray) -> None:
    """What the rendering does to trained turns: rewritten when not last (`turns_rewritten_in_history`), reasoning
    left out (`reasoning_tokens_dropped`); and the repeated context of `--turns inference` renderings."""
    for k, span in enumerate(layout.generated):
        if span is None or not conv.trains(k):
            continue
        if layout.rewritten[k]:
            renderer.counts["turns_rewritten_in_history"] += 1
        reasoning = conv.reasoning(k)
        if reasoning is None:
            found = THINK.search(conv.messages[k][1])
            reasoning = found.group(1) if found else None
        end = layout.starts[k + 1] if k + 1 < len(layout.starts) else len(layout.text)
        if reasoning and reasoning.strip() and reasoning.strip() not in layout.text[layout.starts[k]:end]:
            renderer.counts["reasoning_tokens_dropped"] += len(
                renderer.tokenizer.backend.encode(reasoning, add_special_tokens=False).ids)
    if id(conv) in renderer.inference_prefixes:
        trained = np.flatnonzero(flags)
        renderer.counts["inference_context_tokens"] += int(trained[0]) if len(trained) else len(flags)
