"""Rendering: exact ids for the seed's role format, both mask policies, batch == per-message encode."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from packsft import load_tokenizer
from packsft.read.records import ChatExtras, Conversation
from packsft.render.batch import RenderedBatch
from packsft.render.roles import render_roles

BOS, EOS, PAD, USR, ASST, SYS = 50257, 50256, 50258, 50259, 50260, 50261

CONVERSATION = Conversation(
    (("system", "Be brief."), ("user", "Hi there"), ("assistant", "Hello!"), ("user", "Bye"), ("assistant", "Bye."))
)
# BOS SYS "Be brief." USR "Hi there" ASST "Hello!" USR "Bye" ASST "Bye." EOS, with GPT-2 ids.
EXPECTED_IDS = [BOS, SYS, 3856, 4506, 13, USR, 17250, 612, ASST, 15496, 0, USR, 3886, 68, ASST, 3886, 68, 13, EOS]
EXPECTED_ASSISTANT_ONLY = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1]
EXPECTED_ALL = [0] + [1] * 18


@pytest.fixture(scope="module")
def gpt2(gpt2_dir):
    return load_tokenizer(str(gpt2_dir))


def test_gpt2_gets_the_seed_special_tokens(gpt2):
    assert gpt2.vocab_size == 50262
    assert gpt2.special_ids == {"bos": BOS, "eos": EOS, "pad": PAD, "user": USR, "assistant": ASST, "system": SYS}
    assert gpt2.token_dtype == "uint16"


@pytest.mark.parametrize(
    ("mask", "expected"), [("assistant_only", EXPECTED_ASSISTANT_ONLY), ("all", EXPECTED_ALL)]
)
def test_role_rendering_pins_ids_and_flags(gpt2, mask, expected):
    batch = render_roles([CONVERSATION], gpt2, mask=mask)
    assert batch.ids.tolist() == EXPECTED_IDS
    assert batch.flags.tolist() == expected
    assert batch.msg_starts.tolist() == [1, 5, 8, 11, 14]
    assert batch.msg_ends.tolist() == [5, 8, 11, 14, 18]


def test_eos_is_trained_only_after_an_assistant_turn(gpt2):
    ends_with_user = Conversation((("user", "a"), ("assistant", "b"), ("user", "c")))
    batch = render_roles([ends_with_user], gpt2)
    assert batch.ids[-1] == EOS and batch.flags[-1] == 0
    assert batch.flags[batch.msg_starts[2]] == 1  # the user token after an assistant turn ends that turn


def test_unprompted_mask_keeps_the_turn_as_context(gpt2):
    unprompted = Conversation((("assistant", "continued"), ("user", "q"), ("assistant", "a")))
    keep = render_roles([unprompted], gpt2, unprompted="keep")
    masked = render_roles([unprompted], gpt2, unprompted="mask")
    assert keep.unprompted.tolist() == [True]
    first_user = masked.msg_starts[1]
    assert masked.flags[:first_user + 1].sum() == 0  # the masked turn and the turn end after it
    assert masked.flags[first_user + 1 :].tolist() == keep.flags[first_user + 1 :].tolist()


def test_text_documents_are_bos_content_eos_all_but_bos_trained(gpt2):
    # The BOS keeps a document's first token from being trained as the continuation of the document
    # before it in a row (bestfit rows failed verify without it).
    batch = render_roles([Conversation((("text", "Hello world"),)), Conversation((("text", "Hi"),))], gpt2)
    assert batch.ids.tolist() == [gpt2.bos_id, 15496, 995, EOS, gpt2.bos_id, 17250, EOS]
    assert batch.flags.tolist() == [0, 1, 1, 1, 0, 1, 1]


def _per_message(tokenizer, conversation):
    ids = [tokenizer.bos_id]
    for role, content in conversation.messages:
        ids.append(tokenizer.role_ids[role])
        # Content is plain text: a special-token string in it is not a special token.
        ids.extend(tokenizer.hf.encode(content, add_special_tokens=False, split_special_tokens=True))
    return ids + [tokenizer.eos_id]


@pytest.mark.slow
def test_batched_rendering_equals_per_message_encode_on_real_data(gpt2, sharegpt_dir):
    from packsft.read.records import validate_messages

    table = pq.ParquetFile(sharegpt_dir / "shard_00001.parquet").read_row_group(0, columns=["messages"])
    conversations = [Conversation(validate_messages(m)) for m in table.column("messages").to_pylist()[:300] if m]
    batch = render_roles(conversations, gpt2)
    for index, conversation in enumerate(conversations):
        start, end = batch.conv_offsets[index], batch.conv_offsets[index + 1]
        assert batch.ids[start:end].tolist() == _per_message(gpt2, conversation)


def test_batched_rendering_equals_per_message_encode_with_demo_tokenizer(demo_tokenizer_dir):
    tokenizer = load_tokenizer(str(demo_tokenizer_dir))
    conversations = [
        Conversation((("user", "Ünïcödé ✓ 😀 and <|user|> text"), ("assistant", "  spaces\n\nnew lines\t"))),
        Conversation((("user", ""), ("assistant", "x"))),
    ]
    batch = render_roles(conversations, tokenizer)
    for index, conversation in enumerate(conversations):
        start, end = batch.conv_offsets[index], batch.conv_offsets[index + 1]
        assert batch.ids[start:end].tolist() == _per_message(tokenizer, conversation)


def test_select_and_concat_keep_the_layout(gpt2):
    a = render_roles([CONVERSATION], gpt2)
    b = render_roles([Conversation((("user", "q"), ("assistant", "a")))], gpt2)
    joined = RenderedBatch.concat([a, b, a])
    assert len(joined) == 3
    picked = joined.select(np.array([False, True, True]))
    assert picked.ids.tolist() == b.ids.tolist() + a.ids.tolist()
    assert picked.msg_starts.tolist() == b.msg_starts.tolist() + (a.msg_starts + len(b.ids)).tolist()


def test_tool_calls_and_results_use_no_new_token(gpt2):
    # README "Rendering": a call is text in the assistant turn, a result a <|user|> turn of text; the vocabulary
    # stays the seed's 50,262 ids, so GPT-2 outputs of plain chats keep their bytes.
    call = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    conversation = Conversation(
        (("user", "Hi there"), ("assistant", ""), ("tool", "Bye")),
        extras=ChatExtras(fields=(None, {"tool_calls": [call]}, None)),
    )
    batch = render_roles([conversation], gpt2)
    call_ids = [27, 25981, 62, 13345, 29, 198, 4895, 3672, 1298, 366, 69, 1600, 366, 853, 2886, 1298, 1391, 11709, 198,
                3556, 25981, 62, 13345, 29]  # '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    # '<tool_response>\nBye\n</tool_response>'
    result_ids = [27, 25981, 62, 26209, 29, 198, 3886, 68, 198, 3556, 25981, 62, 26209, 29]
    assert batch.ids.tolist() == [BOS, USR, 17250, 612, ASST, *call_ids, USR, *result_ids, EOS]
    assert batch.flags.tolist() == [0, 0, 0, 0, 1, *[1] * len(call_ids), 1, *[0] * len(result_ids), 0]
    assert gpt2.vocab_size == 50262 and int(batch.ids.max()) < 50262
