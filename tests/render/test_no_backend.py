"""A chat worker that encodes with the fast encoder never builds the Rust tokenizer (`PackTokenizer.backend`, ~50 MiB
and ~0.4 s for qwen3): token names come from the serialized tokenizer's added tokens, runs the normalizer changes are
placed through HF's alignments, dropped reasoning is counted by the fast encoder and the texts of tokens for cutting
long turns come from its vocabulary, each with the backend's answers. Hermetic with the ChatML demo tokenizer; the
GPT-2 and Qwen3 checks use ../shared and skip without it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from packsft import load_tokenizer
from packsft.read.records import Conversation
from packsft.render.chat.encode import FastRenderingEncoder, HfRenderingEncoder, nfc_alignment
from packsft.render.chat.renderer import ChatRenderer, render_chat
from packsft.render.tokenizer import (
    PackTokenizer,
    TokenTexts,
    read_added_tokens,
    token_texts,
    tokenizer_from_state,
)

RECORDS = [
    Conversation((("user", "Say <|im_end|> now"), ("assistant", "<think>\nwhy <|im_start|> not\n</think>\n\nOk"),
                  ("user", "And café 😀?"), ("assistant", "<think>\nhm\n</think>\n\nSure."))),
    Conversation((("user", "Hi"), ("assistant", "Yo"))),
]
COUNTED = ["a <|im_end|> b", "<think> c </think>", "cafe\u0301 and é", "x<|endoftext|><|im_start|>", "plain", ""]


def worker_tokenizer(tokenizer: PackTokenizer) -> PackTokenizer:
    """The tokenizer as a worker process receives it: its state, nothing built."""
    return tokenizer_from_state(tokenizer.state(), tokenizer.name, encoder=tokenizer.encoder)


@pytest.fixture(scope="module")
def qwen3(qwen3_dir):
    tokenizer = load_tokenizer(str(qwen3_dir), "chat", encoder="auto")
    assert tokenizer.encoder == "gigatoken", tokenizer.encoder_note
    return tokenizer


@pytest.mark.parametrize("name", ["chatml", "qwen3"])
def test_a_chat_worker_renders_without_the_backend(request, name):
    tokenizer = worker_tokenizer(request.getfixturevalue(name))
    renderer = ChatRenderer(tokenizer)
    batch = render_chat(RECORDS, tokenizer, renderer=renderer)
    texts = token_texts(tokenizer)
    cut_texts = [texts[int(i)] for i in batch.ids]
    marker = tokenizer.encode_few(["[... 3 tokens omitted ...]"])
    assert isinstance(renderer.encoder, FastRenderingEncoder)
    assert tokenizer.objects.backend is None

    reference = worker_tokenizer(request.getfixturevalue(name))
    hf = ChatRenderer(reference, HfRenderingEncoder(reference))
    expected = render_chat(RECORDS, reference, renderer=hf)
    for field in ("ids", "flags", "msg_starts", "msg_ends", "msg_headers"):
        assert np.array_equal(getattr(batch, field), getattr(expected, field)), field
    assert renderer.counts == hf.counts
    assert (renderer.specials.pattern, renderer.stop_tokens, renderer.eos_token) == (
        hf.specials.pattern, hf.stop_tokens, hf.eos_token)
    backend_texts = TokenTexts.of_backend(reference.backend)
    assert cut_texts == [backend_texts[int(i)] for i in batch.ids]
    assert marker == reference.encode_texts_hf(["[... 3 tokens omitted ...]"])


def test_qwen3_dropped_reasoning_is_counted_without_the_backend(qwen3):
    tokenizer = worker_tokenizer(qwen3)
    renderer = ChatRenderer(tokenizer)
    render_chat(RECORDS, tokenizer, renderer=renderer)
    # "\nwhy <|im_start|> not\n" as HF counts it: "\n", "why", " ", "<|im_start|>" (one token), " not", "\n"
    assert renderer.counts.reasoning_tokens_dropped == 6
    assert tokenizer.objects.backend is None


# Renderings whose runs qwen3's NFC changes: composed marks ("x\u0307" -> U+1E8B), reordered ones, a singleton
# (U+037E -> ";"), marks after an added token (HF cuts "<think>" out before it normalizes) and inside contents.
NORMALIZED = [  # (rendering, its contents)
    ("<|im_start|>user\nwhat is x\u0307 = a\u0301\u0323?<|im_end|>\n", ["what is x\u0307 = a\u0301\u0323?"]),
    ("<|im_start|>assistant\n<think>\u0338 cafe\u0301</think>\u0301\n\nok\u037e<|im_end|>\n",
     ["<think>\u0338 cafe\u0301</think>\u0301\n\nok\u037e"]),
    ("<|im_start|>user\n\u30bf\u3099<|im_end|>\u0308<|im_start|>assistant\n\u0308a<|im_end|>", ["\u30bf\u3099"]),
    ("<think>\u0301</think>x\u0307", []),
]


def test_runs_the_normalizer_changes_are_placed_without_the_backend(qwen3):
    tokenizer = worker_tokenizer(qwen3)
    fast = FastRenderingEncoder(tokenizer, tokenizer.fast)
    texts = [text for text, _ in NORMALIZED]
    spans = [[(text.index(c), text.index(c) + len(c)) for c in contents] for text, contents in NORMALIZED]
    assert all(tokenizer.fast.normalized(text) != text for text in texts)
    mine = fast.encode(texts, spans)
    assert fast.count(texts) == sum(len(ids) for ids, _ in mine)
    assert tokenizer.objects.backend is None

    theirs = HfRenderingEncoder(worker_tokenizer(qwen3)).encode(texts, spans)
    for (ids, offsets), (hf_ids, hf_offsets) in zip(mine, theirs):
        assert ids.tolist() == hf_ids.tolist()
        assert offsets.tolist() == hf_offsets.tolist()


def test_nfc_alignment_is_hf_s():
    # HF aligns a composed character with its first component and a reordered mark with where it was.
    normalized, origin = nfc_alignment("ab x\u0307 a\u0301\u0323")
    assert normalized == "ab \u1e8b \u1ea1\u0301"
    assert origin.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4], [5, 6], [6, 7], [8, 9]]


@pytest.mark.parametrize("name", ["chatml", "qwen3"])
def test_count_is_what_the_rust_tokenizer_counts(request, name):
    tokenizer = worker_tokenizer(request.getfixturevalue(name))
    fast = FastRenderingEncoder(tokenizer, tokenizer.fast)
    for text in COUNTED:  # "cafe\u0301" changes under qwen3's NFC: the fast path hands that text to HF
        assert fast.count([text]) == len(tokenizer.encode_batch([text])[0]), text
    assert fast.count(COUNTED) == HfRenderingEncoder(tokenizer).count(COUNTED)


@pytest.mark.parametrize("name", ["chatml", "gpt2", "qwen3"])
def test_added_tokens_answer_as_the_backend(request, name):
    tokenizer = (load_tokenizer(str(request.getfixturevalue("gpt2_dir")), "roles", encoder="auto") if name == "gpt2"
                 else request.getfixturevalue(name))
    backend = Tokenizer.from_str(tokenizer.serialized)
    added = read_added_tokens(tokenizer.serialized)
    decoder = backend.get_added_tokens_decoder()
    assert added.contents == {i: token.content for i, token in decoder.items()}
    assert added.special == tuple(token.content for _, token in sorted(decoder.items()) if token.special)
    for token_id in [*decoder, 0, 1, 200, tokenizer.vocab_size - 1]:
        token = backend.id_to_token(token_id)
        assert tokenizer.id_to_token(token_id) == token
        assert tokenizer.token_to_id(token) == backend.token_to_id(token)


def test_added_tokens_are_found_in_any_member_order():
    spec = {"version": "1.0", "model": {"vocab": {"added_tokens": 0}}, "truncation": None,
            "added_tokens": [{"id": 7, "content": "<s>", "special": True}, {"id": 8, "content": "<t>"}], "x": [1]}
    added = read_added_tokens(json.dumps(spec, indent=2))
    assert (added.ids, added.contents, added.special) == ({"<s>": 7, "<t>": 8}, {7: "<s>", 8: "<t>"}, ("<s>",))
    assert read_added_tokens(json.dumps({"version": "1.0", "model": {}})).contents == {}


@pytest.mark.parametrize("name", ["chatml", "gpt2", "qwen3"])
@pytest.mark.parametrize("backend", ["gigatoken", "tiktoken"])
def test_token_texts_of_the_fast_encoder_are_the_backend_s(request, name, backend):
    folder = request.getfixturevalue(f"{name}_dir")
    tokenizer = load_tokenizer(str(folder), "roles" if name == "gpt2" else "chat", encoder=backend)
    mine = TokenTexts.of_fast(tokenizer.fast, tokenizer.added_tokens, tokenizer.vocab_size)
    theirs = TokenTexts.of_backend(Tokenizer.from_str(tokenizer.serialized))
    assert len(mine) == len(theirs)
    assert list(mine) == list(theirs)
    assert mine[-1] == theirs[-1]


@pytest.mark.parametrize("name", ["chatml", "gpt2", "qwen3"])
def test_token_texts_of_the_serialized_vocabulary_are_the_backend_s(request, name):
    folder = request.getfixturevalue(f"{name}_dir")
    tokenizer = load_tokenizer(str(folder), "roles" if name == "gpt2" else "chat", prove=False)
    mine = TokenTexts.of_vocab(tokenizer.serialized, tokenizer.added_tokens, tokenizer.vocab_size)
    assert mine is not None
    assert list(mine) == list(TokenTexts.of_backend(Tokenizer.from_str(tokenizer.serialized)))


def test_a_process_without_an_encoder_reads_token_texts_without_building_the_backend(chatml_dir):
    tokenizer = worker_tokenizer(load_tokenizer(str(chatml_dir), "chat"))
    texts = token_texts(tokenizer)
    assert texts[0] is not None and tokenizer.objects.backend is None and tokenizer.objects.fast is None
