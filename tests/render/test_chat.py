"""`--template chat`: masks from the tokenizer's own chat template, checked against the rendered text.

Hermetic tests use the demo tokenizer with a small ChatML template (with `{% generation %}` blocks, so
transformers' own assistant mask can be compared); the real checks use ../shared/tokenizers/qwen3.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from packsft import PackConfig, PackedOutput, load_tokenizer
from packsft.errors import TokenizerError
from packsft.pack.bins import pack_bestfit
from packsft.pack.rows import build_chunks
from packsft.pack.split import split_long
from packsft.read.records import Conversation, RecordRejected, validate_messages
from packsft.render.batch import RenderedBatch
from packsft.render.chat import ChatRenderer, render_chat
from packsft.render.chat.proof import chat_markers
from packsft.report.inspect import render_chunk, tokenizer_for
from packsft.run import run_pack
from packsft.verify.invariants import ChatMarkers, check_chat_turns
from tests.helpers import CHATML, conv, write_conversations


@pytest.fixture(scope="session")
def chatml(chatml_dir):
    return load_tokenizer(str(chatml_dir), "chat")


@pytest.fixture(scope="session")
def qwen3(qwen3_dir):
    return load_tokenizer(str(qwen3_dir), "chat")


def conversation(*turns: tuple[str, str]) -> Conversation:
    return Conversation(tuple(turns))


def trained_runs(batch: RenderedBatch, c: int, tokenizer) -> list[str]:
    """Decoded runs of consecutive trained tokens of conversation c."""
    start, end = batch.conv_offsets[c], batch.conv_offsets[c + 1]
    ids, flags = batch.ids[start:end], batch.flags[start:end]
    index = np.flatnonzero(flags)
    runs = np.split(index, np.flatnonzero(np.diff(index) > 1) + 1) if len(index) else []
    return [tokenizer.hf.decode(ids[run].tolist()) for run in runs]


# --- hermetic: demo tokenizer + ChatML ------------------------------------------------------------


def test_trains_assistant_contents_and_their_end_of_turn(chatml):
    batch = render_chat([conversation(("system", "Be brief."), ("user", "Hi there"), ("assistant", "Hello!"),
                                      ("user", "Bye"), ("assistant", "Goodbye."))], chatml)
    assert trained_runs(batch, 0, chatml) == ["Hello!<|im_end|>", "Goodbye.<|im_end|>"]
    text = chatml.hf.decode(batch.ids.tolist())
    assert text == chatml.hf.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
         {"role": "assistant", "content": "Goodbye."}], tokenize=False)
    # Message spans: header + content + end-of-turn + separator, contiguous; the last '\n' is the tail.
    spans = [chatml.hf.decode(batch.ids[s:e].tolist()) for s, e in zip(batch.msg_starts, batch.msg_ends)]
    assert spans == ["<|im_start|>system\nBe brief.<|im_end|>\n", "<|im_start|>user\nHi there<|im_end|>\n",
                     "<|im_start|>assistant\nHello!<|im_end|>\n", "<|im_start|>user\nBye<|im_end|>\n",
                     "<|im_start|>assistant\nGoodbye.<|im_end|>"]
    assert batch.msg_ends[-1] == len(batch.ids) - 1 and batch.msg_starts[0] == 0
    header = len(chatml.hf.encode("<|im_start|>assistant\n", add_special_tokens=False))
    assert batch.msg_headers.tolist()[2] == header


def test_agrees_with_the_templates_generation_mask(chatml):
    conversations = [
        conversation(("user", "How do I boil an egg?"), ("assistant", "Nine minutes, then cold water.")),
        conversation(("assistant", "Welcome back."), ("user", "Thanks"), ("assistant", "")),
        conversation(("system", "x"), ("user", "a\n\nb"), ("assistant", " spaced  "), ("user", "ok")),
    ]
    batch = render_chat(conversations, chatml)
    for c, item in enumerate(conversations):
        messages = [{"role": r, "content": t} for r, t in item.messages]
        expected = chatml.hf.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                 return_assistant_tokens_mask=True)
        start, end = batch.conv_offsets[c], batch.conv_offsets[c + 1]
        assert batch.ids[start:end].tolist() == expected["input_ids"]
        assert batch.flags[start:end].tolist() == expected["assistant_masks"]


def test_unprompted_mask_and_mask_all(chatml):
    item = conversation(("assistant", "Welcome."), ("user", "Hi"), ("assistant", "Hello."))
    keep = render_chat([item], chatml)
    masked = render_chat([item], chatml, unprompted="mask")
    assert keep.unprompted.tolist() == [True] and masked.unprompted.tolist() == [True]
    assert trained_runs(keep, 0, chatml) == ["Welcome.<|im_end|>", "Hello.<|im_end|>"]
    assert trained_runs(masked, 0, chatml) == ["Hello.<|im_end|>"]
    everything = render_chat([item], chatml, mask="all")
    assert everything.flags.tolist() == [0] + [1] * (len(everything.ids) - 1)


def test_template_that_rewrites_content_is_located_as_rendered(chatml):
    trimming = replace(chatml, chat_template="{% for m in messages %}[{{ m.role }}]{{ m.content | trim }}<|im_end|>"
                                             "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}")
    batch = render_chat([conversation(("user", "  q  "), ("assistant", "\n a \n"))], trimming)
    assert chatml.hf.decode(batch.ids.tolist()) == "[user]q<|im_end|>[assistant]a<|im_end|>"
    assert trained_runs(batch, 0, chatml) == ["a<|im_end|>"]
    # A template that renders no assistant message gives the turn nothing to train (the record is then rejected
    # as untrainable by the pipeline), never a wrong span.
    users_only = replace(chatml, chat_template="{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}"
                                               "{% endif %}{% endfor %}")
    assert trained_runs(render_chat([conversation(("user", "q"), ("assistant", "a"))], users_only), 0, chatml) == []


def test_a_template_that_raises_rejects_the_record(chatml):
    strict = replace(chatml, chat_template=(
        "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ))
    rejected = []
    batch = render_chat([conversation(("system", "s"), ("user", "q"), ("assistant", "a")),
                         conversation(("user", "q"), ("assistant", "a"))], strict, renderer=ChatRenderer(strict),
                        reject=lambda c, reason: rejected.append(reason))
    assert rejected == ["chat template refused the conversation: System role not supported"]
    assert len(batch) == 1 and trained_runs(batch, 0, chatml) == ["a<|im_end|>"]


def test_split_keeps_chat_headers_whole(chatml):
    long = " ".join(["word"] * 120)
    batch = render_chat([conversation(("system", "Be brief."), ("user", "Question one?"), ("assistant", long),
                                      ("user", "Question two?"), ("assistant", "Short."))], chatml)
    pieces, counts = split_long(batch, 40, "split")
    assert counts.conversations_split == 1 and counts.exchanges_split >= 1
    assert int(pieces.flags.sum()) == int(batch.flags.sum())  # nothing trainable lost
    for p in range(len(pieces)):
        ids = pieces.ids[pieces.offsets[p] : pieces.offsets[p + 1]]
        flags = pieces.flags[pieces.offsets[p] : pieces.offsets[p + 1]]
        assert len(ids) <= 41 and flags[0] == 0
        text = chatml.hf.decode(ids.tolist())
        if p:  # every later piece re-opens with a whole user turn, after the system message when it fits too
            assert text.startswith(("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQuestion",
                                    "<|im_start|>user\nQuestion")), text
        trained = chatml.hf.decode(ids[flags == 1].tolist())
        assert "assistant" not in trained and "user" not in trained


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    turns=st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), st.integers(0, 60)), min_size=1,
                   max_size=8),
    seq_length=st.integers(24, 120),
)
def test_split_never_loses_a_trained_token(chatml, turns, seq_length):
    item = conversation(*[(role, " ".join(["answer"] * n)) for role, n in turns])
    batch = render_chat([item], chatml)
    pieces, _ = split_long(batch, seq_length, "split")
    assert int(pieces.flags.sum()) == int(batch.flags.sum())
    assert (pieces.lengths <= seq_length + 1).all()
    assert not pieces.flags[pieces.offsets[:-1]].any()  # no piece starts with a trained label


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(turns=[("system", 14), ("user", 4), ("assistant", 0), ("system", 0)], seq_length=48, turn_cut=0,
         unprompted="keep")  # an empty turn cut after its end-of-turn: only its separator was left to continue
@given(
    turns=st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), st.integers(0, 60)), min_size=1,
                   max_size=8),
    seq_length=st.integers(24, 120),
    turn_cut=st.sampled_from([0, 4]),
    unprompted=st.sampled_from(["keep", "mask"]),
)
def test_split_rows_pass_verify_chat_check(chatml, turns, seq_length, turn_cut, unprompted):
    """Rows of any split read as the template rendered them: every repeated or cut assistant turn keeps a
    label in its piece (a cut right after <|im_end|> used to leave a piece repeating a whole turn untrained)."""
    item = conversation(*[(role, " ".join(["answer"] * n)) for role, n in turns])
    batch = render_chat([item], chatml, unprompted=unprompted)
    pieces, _ = split_long(batch, seq_length, "split", turn_cut=turn_cut)
    rows = build_chunks(pieces, pack_bestfit(pieces.lengths, seq_length + 1), seq_length, chatml.pad_id)
    markers = ChatMarkers.of(chat_markers(chatml), "chat")
    assert markers is not None
    assert check_chat_turns(rows.tokens, rows.loss_mask, rows.segment_lengths, rows.row_segments,
                            markers=markers, unprompted=unprompted) == []


def test_tokenizer_without_chat_template_names_the_alternative(demo_tokenizer_dir):
    with pytest.raises(TokenizerError) as error:
        load_tokenizer(str(demo_tokenizer_dir), "chat")
    assert str(error.value) == (
        f"tokenizer {str(demo_tokenizer_dir)!r} has no chat template; use --template roles to render with role tokens"
    )


@pytest.mark.parametrize("strategy", ["bestfit", "aligned", "linear"])
def test_pack_with_chatml_records_the_template_hash(tmp_path, chatml_dir, strategy):
    records = [conv(("user", f"Question {i}?"), ("assistant", f"Answer {i}. " * (i % 7 + 1))) for i in range(30)]
    write_conversations(tmp_path / "data" / "part.parquet", records)
    config = PackConfig(tokenizer=str(chatml_dir), template="chat", strategy=strategy, seq_length=64)
    result = run_pack(tmp_path / "data", tmp_path / "out", config, quiet=True)
    assert result.dataset["tokenizer"]["chat_template_sha256"] == hashlib.sha256(CHATML.encode()).hexdigest()
    assert result.dataset["stats"]["trained_retention"] == 1.0
    assert result.dataset["stats"]["bos_start_fraction"] is None  # no BOS in this template: n/a
    output = PackedOutput(result.out_dir)
    view = render_chunk(output, 0, tokenizer_for(output))
    assert "<user       > 'Question" in view and "<end of turn>" in view


# --- qwen3 on real data ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shard0_conversations(sharegpt_dir):
    rows = pq.read_table(sharegpt_dir / "shard_00000.parquet", columns=["messages"]).column("messages").to_pylist()
    out = []
    for row, raw in enumerate(rows):
        try:
            out.append(Conversation(validate_messages(raw), None, "shard_00000.parquet", row))
        except RecordRejected:
            pass
    return out


def qwen3_generated(messages: tuple[tuple[str, str], ...]) -> list[str]:
    """What qwen3 generates for each assistant turn, written out from its template's rule: a turn after the last
    user message opens with its think block (empty where the content has none), the others are their content."""
    last_user = max((i for i, (role, _) in enumerate(messages) if role == "user"), default=len(messages) - 1)
    out = []
    for i, (role, content) in enumerate(messages):
        if role != "assistant":
            continue
        reasoning = ""
        if "</think>" in content:
            reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
            content = content.split("</think>")[-1].lstrip("\n")
        if i > last_user and (i == len(messages) - 1 or reasoning):
            content = "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
        out.append(content + "<|im_end|>")
    return out


@pytest.mark.slow
def test_qwen3_trains_what_the_model_generates(qwen3, shard0_conversations):
    """Every conversation of shard 0: the trained runs are exactly what qwen3 generates for each assistant turn
    (its last turn with the empty think block, the generation prompt excluded) through <|im_end|>."""
    batch = render_chat(shard0_conversations, qwen3)
    assert len(batch) == len(shard0_conversations) == 2192
    wrong = []
    for c, item in enumerate(shard0_conversations):
        if trained_runs(batch, c, qwen3) != qwen3_generated(item.messages):
            wrong.append(item.row)
    assert wrong == []
    assert trained_runs(batch, 0, qwen3)[-1].startswith("<think>\n\n</think>\n\n")


@pytest.mark.slow
def test_qwen3_packs_with_uint32_ids_in_every_strategy(tmp_path, qwen3, qwen3_dir, sharegpt_dir):
    table = pq.read_table(sharegpt_dir / "shard_00000.parquet").slice(0, 150)
    valid = []
    for raw in table.column("messages").to_pylist():
        try:
            valid.append(Conversation(validate_messages(raw)))
        except RecordRejected:
            pass
    rendered = render_chat(valid, qwen3)
    rendered = rendered.select(rendered.trainable_per_conversation() > 0)
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "part.parquet")
    for strategy in ("bestfit", "aligned", "linear"):
        config = PackConfig(tokenizer=str(qwen3_dir), template="chat", strategy=strategy, seq_length=1024,
                            long=None if strategy == "linear" else "split")
        result = run_pack(tmp_path / "data", tmp_path / strategy, config, quiet=True)
        stats = result.dataset["stats"]
        assert result.dataset["dtype"] == "uint32" and stats["trained_retention"] == 1.0
        output = PackedOutput(result.out_dir)
        tokens = output.array(0, "tokens")
        assert tokens.dtype == np.uint32 and int(tokens.max()) >= 151644  # <|im_start|> survives
        if strategy != "linear":
            # No label at a segment start is trained, even though chat pieces have no BOS.
            lengths, offsets = output.array(0, "segment_lengths"), output.array(0, "row_segments")
            mask = output.array(0, "loss_mask")
            for r in range(len(tokens)):
                seg = lengths[offsets[r] : offsets[r + 1]]
                starts = np.cumsum(seg) - seg
                assert not mask[r, starts[starts > 0] - 1].any()
        else:
            # The stream, rows overlapping by one token, is exactly the rendered ids (uint32 round trip).
            stream = np.concatenate([tokens[0], tokens[1:, 1:].reshape(-1)])[: len(rendered.ids)]
            assert np.array_equal(stream.astype(np.int64), rendered.ids)
        trained = tokens[:, 1:][output.array(0, "loss_mask") == 1]
        assert int((trained == 151644).sum()) == 0  # never a header token
    shutil.rmtree(tmp_path / "data")


def test_chat_markers_read_the_users_own_header(chatml):
    """A template that opens with a system message of its own (as Llama 3.1 does) still names the user role."""
    markers = chat_markers(chatml)
    assert markers is not None
    user = chatml.backend.encode("user", add_special_tokens=False).ids[0]
    assistant = chatml.backend.encode("assistant", add_special_tokens=False).ids[0]
    assert markers == {"header_start": chatml.backend.token_to_id("<|im_start|>"), "user_role": user,
                       "assistant_role": assistant, "end_of_turn": chatml.backend.token_to_id("<|im_end|>")}
    auto_system = replace(chatml, chat_template=(
        "{% if messages[0].role != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}" + CHATML))
    assert chat_markers(auto_system) == markers
    assert chat_markers(replace(chatml, chat_template="{% for m in messages %}{{ m.content }}\n{% endfor %}")) is None
