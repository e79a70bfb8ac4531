"""The two rendering encoders behind RenderingEncoder (chat/encode.py), the factory that chooses one, and the
objects a PackTokenizer builds on first use. Hermetic: the demo tokenizer with ChatML special tokens."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace

import pytest

from packsft import load_tokenizer
from packsft.render.chat.encode import (
    FastRenderingEncoder,
    HfRenderingEncoder,
    RenderingEncoder,
    rendering_encoder,
)
from packsft.render.encoder import GigatokenEncoder, TiktokenEncoder, read_bpe_spec

IM_START, IM_END = 728, 727
USER_HEAD = [IM_START, 85, 291, 82, 199]  # <|im_start|>user\n
# (rendering, spans of its contents, ids, character offsets): identical from both encoders.
RENDERINGS = {
    "turns": (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n", [(17, 19), (52, 54)],
        [*USER_HEAD, 40, 73, IM_END, 199, IM_START, 65, 629, 631, 84, 199, 57, 79, IM_END, 199],
        [(0, 12), (12, 13), (13, 15), (15, 16), (16, 17), (17, 18), (18, 19), (19, 29), (29, 30), (30, 42),
         (42, 43), (43, 46), (46, 50), (50, 51), (51, 52), (52, 53), (53, 54), (54, 64), (64, 65)],
    ),
    # The content's <|im_end|> is plain text: seven ordinary tokens, not id 727.
    "special string in content": (
        "<|im_start|>user\na<|im_end|>b<|im_end|>\n", [(17, 29)],
        [*USER_HEAD, 65, 28, 92, 73, 77, 63, 697, 92, 30, 66, IM_END, 199],
        [(0, 12), (12, 13), (13, 15), (15, 16), (16, 17), (17, 18), (18, 19), (19, 20), (20, 21), (21, 22),
         (22, 23), (23, 26), (26, 27), (27, 28), (28, 29), (29, 39), (39, 40)],
    ),
    # Byte tokens of one character share its offsets.
    "non-ascii": (
        "<|im_start|>user\ncafé 😀<|im_end|>\n", [(17, 23)],
        [*USER_HEAD, 67, 65, 70, 128, 103, 221, 173, 254, 247, 223, IM_END, 199],
        [(0, 12), (12, 13), (13, 15), (15, 16), (16, 17), (17, 18), (18, 19), (19, 20), (20, 21), (20, 21),
         (21, 22), (22, 23), (22, 23), (22, 23), (22, 23), (23, 33), (33, 34)],
    ),
    # A content across the template's <|im_start|> (characters 5..16): the fast encoder hands it to HF.
    "special string across a content edge": (
        "<|im_start|>user\nq<|im_end|>\n", [(5, 16)],
        [*USER_HEAD, 81, IM_END, 199],
        [(0, 12), (12, 13), (13, 15), (15, 16), (16, 17), (17, 18), (18, 28), (28, 29)],
    ),
}


@pytest.fixture(scope="module")
def chatml_hf(chatml_dir):
    return load_tokenizer(str(chatml_dir), "chat", encoder="hf")


def encoders(chatml) -> dict[str, RenderingEncoder]:
    return {"fast": FastRenderingEncoder(chatml, chatml.fast), "hf": HfRenderingEncoder(chatml)}


@pytest.mark.parametrize("name", list(RENDERINGS))
@pytest.mark.parametrize("kind", ["fast", "hf"])
def test_each_encoder_gives_these_ids_and_offsets(chatml, kind, name):
    text, spans, ids, offsets = RENDERINGS[name]
    ((got_ids, got_offsets),) = encoders(chatml)[kind].encode([text], [spans])
    assert got_ids.tolist() == ids
    assert [tuple(pair) for pair in got_offsets.tolist()] == offsets


def test_both_encoders_encode_a_batch_alike(chatml):
    texts, spans = [r[0] for r in RENDERINGS.values()], [r[1] for r in RENDERINGS.values()]
    fast, hf = (encoder.encode(texts, spans) for encoder in encoders(chatml).values())
    assert [ids.tolist() for ids, _ in fast] == [ids for _, _, ids, _ in RENDERINGS.values()]
    assert [(ids.tolist(), offsets.tolist()) for ids, offsets in fast] == \
        [(ids.tolist(), offsets.tolist()) for ids, offsets in hf]
    assert encoders(chatml)["fast"].special_ids.tolist() == encoders(chatml)["hf"].special_ids.tolist() == [0, 727, 728]


def test_the_factory_chooses_each_encoder(chatml, chatml_hf):
    assert type(rendering_encoder(chatml)) is FastRenderingEncoder
    assert type(rendering_encoder(chatml, "fast")) is FastRenderingEncoder
    assert type(rendering_encoder(chatml, "hf")) is HfRenderingEncoder
    assert type(rendering_encoder(chatml_hf)) is HfRenderingEncoder
    with pytest.raises(ValueError, match="the fast encoder is not in use for this tokenizer"):
        rendering_encoder(chatml_hf, "fast")
    # One per tokenizer and process: building the fast one's tables is not repeated.
    assert rendering_encoder(chatml) is rendering_encoder(chatml)


def test_the_fast_encoder_says_what_it_encodes(chatml):
    spec = read_bpe_spec(chatml.serialized)
    assert TiktokenEncoder(spec).normalized("e\u0301") == "e\u0301"  # no normalizer
    nfc = TiktokenEncoder(replace(spec, nfc=True))
    assert nfc.normalized("cafe\u0301") == "caf\u00e9" and nfc.normalized("plain") == "plain"
    assert GigatokenEncoder(chatml.serialized).normalized("e\u0301") == "e\u0301"
    with_nfc = json.loads(chatml.serialized) | {"normalizer": {"type": "NFC"}}
    assert GigatokenEncoder(json.dumps(with_nfc)).normalized("cafe\u0301") == "caf\u00e9"


def test_built_objects_are_shared_by_copies_and_never_pickled(chatml_dir):
    tokenizer = load_tokenizer(str(chatml_dir), "chat", encoder="auto", threads=2)
    fast = tokenizer.fast
    assert fast is not None and tokenizer.objects.fast is fast
    copy = replace(tokenizer, chat_renderer="hf")
    assert copy.objects is tokenizer.objects and copy.fast is fast
    received = pickle.loads(pickle.dumps(tokenizer))  # a thread pool of 2 would not pickle
    assert received == tokenizer and received.objects.fast is None and received.objects.backend is None
    assert received.encode_texts(["a<|im_end|>b"]) == tokenizer.encode_texts(["a<|im_end|>b"])
