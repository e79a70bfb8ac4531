"""Prove a tokenizer's chat path before it packs: packsft's renderer against `apply_chat_template`, the fast
encoding against HF's, on the probe records (probes.py); and the ids `verify` reads chat rows by.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from packsft.read.records import ASSISTANT, USER, Conversation, RecordRejected
from packsft.render.chat.encode import rendering_encoder
from packsft.render.chat.jinja import require_jinja
from packsft.render.chat.probes import PROBES_VERSION, probe_records
from packsft.render.chat.renderer import ChatRenderer, render_chat
from packsft.render.chat.sandbox import ENVIRONMENT_VERSION
from packsft.render.tokenizer import PackTokenizer
from packsft.render.tokenizer_cache import cache_key, read_entry, write_entry


def chat_rendering_difference(tokenizer: PackTokenizer) -> str | None:
    """None where packsft's renderer (jinja.py, in its own template environment) renders the probes exactly as
    `hf.apply_chat_template` does (or refuses the same ones), with and without the generation prompt; else
    the first difference."""
    renderer = ChatRenderer(tokenizer, rendering_encoder(tokenizer, "hf"))
    for record in probe_records():
        chat, tools, kwargs = record.chat_messages(), record.tools, record.template_kwargs()
        for prompt in (False, True):
            theirs = _rendered_or_error(functools.partial(
                tokenizer.hf.apply_chat_template, chat, tools=tools, add_generation_prompt=prompt, tokenize=False,
                **kwargs))
            mine = _rendered_or_error(functools.partial(renderer.render_text, chat, tools, kwargs, prompt))
            if (mine is None) != (theirs is None) or (mine is not None and mine != theirs):
                return f"the rendering of {record.messages[0][1][:30]!r}… differs from apply_chat_template"
    return None


def fast_chat_difference(tokenizer: PackTokenizer) -> str | None:
    """None where encoding renderings with the fast encoder gives exactly the HF encoding's ids, masks and
    message spans on the probes; else the first difference."""
    fast = tokenizer.fast
    if fast is not None and not fast.byte_level:
        return f"the {fast.backend} encoder of this tokenizer is not byte-level (token bytes do not place its tokens)"
    rejected: list[Conversation] = []
    batches = [render_chat(probe_records(), tokenizer, reject=lambda c, _: rejected.append(c),
                           renderer=ChatRenderer(tokenizer, rendering_encoder(tokenizer, encoder)))
               for encoder in ("fast", "hf")]
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
    require_jinja()
    key = cache_key("chat-proof", {"fingerprint": tokenizer.fingerprint, "encoder": tokenizer.encoder,
                                   "probes": PROBES_VERSION, "environment": ENVIRONMENT_VERSION})
    entry = read_entry("proofs", key) if cache else None
    if entry is not None and all(isinstance(entry.get(k), (str, type(None))) for k in ("render", "encode")):
        render, encode = entry["render"], entry["encode"]
    else:
        render = chat_rendering_difference(tokenizer)
        rendered_by = replace(tokenizer, chat_renderer="hf") if render else tokenizer
        encode = fast_chat_difference(rendered_by) if tokenizer.encoder != "hf" else None
        if cache:
            write_entry("proofs", key, {"render": render, "encode": encode})
    if render:
        tokenizer = replace(tokenizer, chat_renderer="hf")
    if encode:
        tokenizer = replace(tokenizer, encoder="hf",
                            encoder_note=f"the fast chat path does not reproduce this template: {encode}")
    return tokenizer


# Bumped when chat_markers reads templates otherwise (2: roles that are special tokens), so cached ones are read again.
MARKERS_VERSION = 2


def chat_markers(tokenizer: PackTokenizer) -> dict[str, int] | None:
    """The ids `verify` reads chat-template rows by, from the template's own text around the contents:

        <|im_start|> user \\n  q  <|im_end|> \\n <|im_start|> assistant \\n  a  <|im_end|> \\n
        header_start user_role               header_start  assistant_role     end_of_turn

    None where the template opens messages with no special token or names both roles with the same token (a role
    may be a special token itself, as Command-R7B's are).
    """
    renderer = ChatRenderer(tokenizer, rendering_encoder(tokenizer, "hf"))
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
    # A role may be a special token of its own (Command-R7B's <|USER_TOKEN|>, <|CHATBOT_TOKEN|>); never the header
    # start or the end of turn itself.
    if user_role == assistant_role or {user_role, assistant_role} & {header_start, int(ends[0])}:
        return None
    return {"header_start": header_start, "user_role": user_role, "assistant_role": assistant_role,
            "end_of_turn": int(ends[0])}


def output_identity(tokenizer: PackTokenizer) -> dict[str, object]:
    """What dataset.json records about the tokenizer: `identity()`, plus `chat_markers` for chat templates (cached
    per tokenizer fingerprint and library versions: the planning process then never imports transformers)."""
    identity: dict[str, object] = tokenizer.identity()
    if tokenizer.template == "chat":
        key = cache_key("chat-markers", {"fingerprint": tokenizer.fingerprint, "version": MARKERS_VERSION})
        entry = read_entry("proofs", key)
        if entry is None or "markers" not in entry:
            entry = {"markers": chat_markers(tokenizer)}
            write_entry("proofs", key, entry)
        identity["chat_markers"] = entry["markers"]
    return identity
