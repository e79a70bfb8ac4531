"""The fast chat path (chat/encode.py): renderings encoded by the fast encoder give HF's ids and offsets exactly.

Hermetic tests use the demo tokenizer with the ChatML template; the real ones ../shared/tokenizers/qwen3
(NFC normalizer, non-special added tokens such as <think>, ids above 65535).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packsft import PackConfig, load_tokenizer
from packsft.read.records import Conversation, RecordRejected
from packsft.render.chat import ChatRenderer, render_chat
from packsft.render.chat import encode as chat_encode_module
from packsft.render.chat.encode import FastRenderingEncoder, HfRenderingEncoder, rendering_encoder
from packsft.render.chat.probes import PROBE_CONVERSATIONS, probe_records
from packsft.render.chat.proof import (
    chat_markers,
    chat_rendering_difference,
    fast_chat_difference,
    with_chat_path_proven,
)
from packsft.run import run_pack
from tests.helpers import assert_output_verifies, conv, write_conversations

# Pieces content is drawn from: special-token strings, template tags, whitespace runs at the edges,
# text NFC rewrites (e + combining acute), characters that byte-level tokens split (emoji, CJK).
PIECES = ["<|im_end|>", "<|im_start|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>", "\n", "\n\n", " ",
          "  ", "\t", "e\u0301", "é", "😀", "中文", "hello", " world", "'s", "123", "{\"a\": 1}", "\u00a0", "<|"]
contents = st.lists(st.sampled_from(PIECES), max_size=8).map("".join)
turns = st.lists(st.tuples(st.sampled_from(["user", "assistant", "system"]), contents), min_size=1, max_size=4)
RENDERERS: dict[str, tuple[ChatRenderer, HfRenderingEncoder]] = {}


@pytest.fixture(scope="module")
def qwen3(qwen3_dir):
    tokenizer = load_tokenizer(str(qwen3_dir), "chat", encoder="auto")
    assert tokenizer.encoder == "gigatoken", tokenizer.encoder_note
    return tokenizer


def encodings(tokenizer, conversations):
    """(fast, hf) encodings of the renderings of `conversations` the template renders faithfully."""
    if tokenizer.fingerprint not in RENDERERS:  # building one parses the tokenizer: once per test module
        RENDERERS[tokenizer.fingerprint] = (ChatRenderer(tokenizer, rendering_encoder(tokenizer, "fast")),
                                            HfRenderingEncoder(tokenizer))
    renderer, reference = RENDERERS[tokenizer.fingerprint]
    located = []
    for messages in conversations:
        try:
            located.append(renderer.locate(messages))
        except RecordRejected:  # e.g. qwen3 moves an assistant's <think> block out of its content
            continue
    texts, spans = [t for t, _ in located], [s for _, s in located]
    return renderer.encoder.encode(texts, spans), reference.encode(texts, spans)


def assert_same(fast, hf):
    assert len(fast) == len(hf)
    for (fast_ids, fast_offsets), (hf_ids, hf_offsets) in zip(fast, hf):
        assert fast_ids.tolist() == hf_ids.tolist()
        assert fast_offsets.tolist() == hf_offsets.tolist()


def test_probe_conversations_encode_as_hf_does(chatml):
    assert_same(*encodings(chatml, PROBE_CONVERSATIONS))
    assert fast_chat_difference(chatml) is None


def test_content_special_strings_are_plain_text_in_the_fast_path(chatml):
    (ids, offsets), = encodings(chatml, [(("user", "a<|im_end|>b"), ("assistant", "c"))])[0][:1]
    im_start, im_end = (chatml.backend.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>"))
    assert ids.tolist().count(im_start) == 2 and ids.tolist().count(im_end) == 2  # the template's own only
    assert offsets[-1].tolist()[1] == len("<|im_start|>user\na<|im_end|>b<|im_end|>\n<|im_start|>assistant\nc<|im_end|>\n")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(turns, min_size=1, max_size=3))
def test_fast_path_equals_hf_on_random_contents(chatml, conversations):
    assert_same(*encodings(chatml, [tuple(t) for t in conversations]))


def test_a_difference_refuses_the_fast_chat_path(chatml, monkeypatch):
    real = chat_encode_module._char_offsets

    def shifted(*args):
        return real(*args) + 1

    monkeypatch.setattr(chat_encode_module, "_char_offsets", shifted)
    difference = fast_chat_difference(chatml)
    assert difference is not None and "differs from HF's" in difference
    proven = with_chat_path_proven(chatml, cache=False)
    assert proven.encoder == "hf" and "fast chat path does not reproduce" in proven.encoder_note


def test_a_rendering_difference_renders_through_apply_chat_template(chatml, monkeypatch):
    import packsft.render.chat.jinja as chat_template

    real = chat_template._quick_template

    class Changed:  # an environment that renders otherwise than the installed transformers: a space more
        def __init__(self, source):
            self.template = real(source)

        def render(self, **context):
            return self.template.render(**context) + " "

    monkeypatch.setattr(chat_template, "_quick_template", Changed)
    assert "differs from apply_chat_template" in chat_rendering_difference(chatml)
    proven = with_chat_path_proven(chatml, cache=False)
    assert proven.chat_renderer == "hf" and proven.encoder == "gigatoken"  # the fast encoder still proven on its renderings
    messages = (("user", "Hi"), ("assistant", "Yo"))
    expected = chatml.hf.apply_chat_template([{"role": r, "content": c} for r, c in messages], tokenize=False)
    assert ChatRenderer(proven).render_text(messages) == expected != ChatRenderer(chatml).render_text(messages)


def test_renderings_the_fast_path_cannot_place_go_the_hf_way(chatml):
    # A special-token string across a content's edge (a content "start|>user" after a template's "<|im_"):
    # characters 5..16 cut "<|im_start|>" (0..12).
    encoder = FastRenderingEncoder(chatml, chatml.fast)
    text, spans = "<|im_start|>user\nq<|im_end|>\n", [[(5, 16)]]
    assert encoder._layout(text, spans[0]) is None
    (ids, _), = encoder.encode([text], spans)
    (hf_ids, _), = encoder.hf.encode([text], spans)
    assert ids.tolist() == hf_ids.tolist()


# --- real: qwen3 ------------------------------------------------------------------------------


@pytest.mark.slow
def test_qwen3_probe_conversations_and_proof(qwen3):
    assert_same(*encodings(qwen3, PROBE_CONVERSATIONS))
    assert fast_chat_difference(qwen3) is None


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(turns, min_size=1, max_size=3))
def test_qwen3_fast_path_equals_hf_on_random_contents(qwen3, conversations):
    assert_same(*encodings(qwen3, [tuple(t) for t in conversations]))


def test_qwen3_render_chat_fast_equals_hf_with_masks(qwen3):
    conversations = probe_records()  # plain chats, and tools, tool calls, reasoning, template kwargs
    rejected: list[str] = []
    fast = render_chat(conversations, qwen3, renderer=ChatRenderer(qwen3, rendering_encoder(qwen3, "fast")),
                       reject=lambda _, reason: rejected.append(reason))
    hf = render_chat(conversations, qwen3, renderer=ChatRenderer(qwen3, rendering_encoder(qwen3, "hf")),
                     reject=lambda *_: None)
    for name in ("ids", "flags", "msg_starts", "msg_ends", "msg_headers", "conv_offsets"):
        assert np.array_equal(getattr(fast, name), getattr(hf, name)), name
    assert fast.flags.sum() > 0
    # qwen3 moves the assistant's <think> block out of its content: spans come from its renderings, so every
    # record it renders is packed (none "cannot be located").
    assert rejected == [] and len(fast) == len(conversations)


# Llama 3's layout: a BOS from the template, headers between two special tokens, <|eot_id|> ends a turn.
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
    "{{ m.content | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@pytest.fixture(scope="module")
def llama3_style(tmp_path_factory, demo_tokenizer_dir):
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("llama3-style")
    hf = AutoTokenizer.from_pretrained(demo_tokenizer_dir)
    hf.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                           "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"]})
    hf.chat_template = LLAMA3
    hf.save_pretrained(folder)
    tokenizer = load_tokenizer(str(folder), "chat", encoder="auto")
    assert tokenizer.encoder == "gigatoken", tokenizer.encoder_note
    return tokenizer


@pytest.mark.slow
def test_llama3_style_template_fast_path_masks_and_markers(llama3_style, tmp_path):
    assert fast_chat_difference(llama3_style) is None
    conversations = [Conversation((("system", " Be brief. "), ("user", "Hi <|eot_id|> there"), ("assistant", "Hello!\n"))),
                     Conversation((("user", "q"), ("assistant", "a"), ("user", "again"), ("assistant", "b")))]
    fast = render_chat(conversations, llama3_style,
                       renderer=ChatRenderer(llama3_style, rendering_encoder(llama3_style, "fast")))
    hf = render_chat(conversations, llama3_style,
                     renderer=ChatRenderer(llama3_style, rendering_encoder(llama3_style, "hf")))
    for name in ("ids", "flags", "msg_starts", "msg_ends", "msg_headers", "conv_offsets"):
        assert np.array_equal(getattr(fast, name), getattr(hf, name)), name
    backend = llama3_style.backend
    first = fast.ids[: fast.conv_offsets[1]].tolist()
    assert first[0] == backend.token_to_id("<|begin_of_text|>") and first.count(backend.token_to_id("<|eot_id|>")) == 3
    # Trained: the assistant contents (trimmed by the template) and their <|eot_id|>, nothing else.
    trained = [backend.decode(fast.ids[fast.conv_offsets[c]:fast.conv_offsets[c + 1]][
        fast.flags[fast.conv_offsets[c]:fast.conv_offsets[c + 1]] == 1].tolist(), skip_special_tokens=False)
        for c in range(2)]
    assert trained == ["Hello!<|eot_id|>", "a<|eot_id|>b<|eot_id|>"]
    user, assistant = (backend.encode(role, add_special_tokens=False).ids[0] for role in ("user", "assistant"))
    assert chat_markers(llama3_style) == {"header_start": backend.token_to_id("<|start_header_id|>"), "user_role": user,
                                          "assistant_role": assistant, "end_of_turn": backend.token_to_id("<|eot_id|>")}
    # Packed with splits (L=32) and verified, the chat check reading rows by <|start_header_id|>.
    records = [conv(("user", f"Question {i}?"), ("assistant", " ".join(["answer"] * (i % 9 + 1)))) for i in range(40)]
    write_conversations(tmp_path / "data" / "part.parquet", records)
    config = PackConfig(tokenizer=llama3_style.name, template="chat", seq_length=32)
    result = run_pack(tmp_path / "data", tmp_path / "out", config, quiet=True, workers=1)
    assert result.dataset is not None and result.dataset["stats"]["trained_retention"] == 1.0
    assert result.dataset["stats"]["conversations_split"] > 0
    assert_output_verifies(tmp_path / "out", deep=True)
