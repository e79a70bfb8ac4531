"""A piece that re-opens inside a turn that an earlier message opened keeps that turn's header (pack/context.py
`ContextPlanner.turn_opener`).

Gemma 4 renders a tool call, its results and the answer after them as one model turn: only the call opens with
`<|turn>model`. A piece of a split conversation that opens at a result or at the answer must repeat the call turn
(shortened where it does not fit whole), else the answer reads as trained inside the turn before it, the user's or
the system's (`packsft verify`: "a token of a user, system or tool message is trained"). The real template and the
zoo's Gemma 4 tokenizer (tests/render/zoo.py) render the records (test_split_parts.py: role tokens find no opener).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from packsft import PackConfig, load_tokenizer
from packsft.pack.context import ContextPlanner
from packsft.pack.spans import MessageSpans
from packsft.pack.split import split_long
from packsft.render.chat import render_chat
from packsft.run import run_pack
from tests.helpers import assert_output_verifies
from tests.render.zoo import BY_NAME, RECORDS, TEMPLATES, build_tokenizer, conversation

needs_zoo = pytest.mark.skipif(not TEMPLATES.is_dir() or not (TEMPLATES.parent / "tokenizers" / "gpt2").is_dir(),
                               reason=f"the real chat templates and GPT-2 tokenizer are not at {TEMPLATES.parent} "
                                      "(the shared assets are only in the developer checkout and CI)")
TOOL_SHAPES = ("tools_dict", "tools_json", "parallel", "tools_two_users", "tool_trace_thinking")


@pytest.fixture(scope="module")
def gemma4(tmp_path_factory):
    folder = build_tokenizer(BY_NAME["gemma4"], tmp_path_factory.mktemp("gemma4"))
    return folder, load_tokenizer(str(folder), "chat", encoder="auto")


def _marker(tokenizer):
    return lambda omitted: tokenizer.hf.encode(f"[… {omitted} tokens omitted] ", add_special_tokens=False)


@needs_zoo
@pytest.mark.parametrize("seq_length", [48, 64, 96, 112, 128, 144, 160])
@pytest.mark.parametrize("shape", TOOL_SHAPES)
def test_every_trained_label_of_a_gemma4_piece_is_inside_a_model_turn(shape, seq_length, gemma4):
    _, tokenizer = gemma4
    batch = render_chat([conversation(RECORDS[shape])], tokenizer)
    table, _ = split_long(batch, seq_length, "split", marker=_marker(tokenizer))
    turn = tokenizer.hf.convert_tokens_to_ids("<|turn>")
    model = tokenizer.hf.encode("<|turn>model\n", add_special_tokens=False)
    for p, (a, b) in enumerate(zip(table.offsets[:-1], table.offsets[1:])):
        ids, flags = table.ids[a:b].tolist(), table.flags[a:b]
        for label in np.flatnonzero(flags).tolist():
            opened = max(at for at in range(label) if ids[at] == turn)  # every piece holds the system turn
            assert ids[opened:opened + len(model)] == model, (
                f"piece {p}: label {label} is in the turn {tokenizer.hf.decode(ids[opened:opened + 4])!r}: "
                f"{tokenizer.hf.decode(ids)!r}")
    assert table.flags.sum() == batch.flags.sum()  # every label kept, once


@needs_zoo
def test_a_gemma4_answer_that_reopens_a_piece_repeats_its_turn_so_far_shortened_to_the_header_and_its_end(gemma4):
    """Two rounds of calls in one model turn at L=128: the piece of the last answer repeats the turn from its header
    (the first call's) to the last result: the header, the omission marker, the end of the second call and its
    result. Without it the answer would follow the user's turn."""
    _, tokenizer = gemma4
    batch = render_chat([conversation(RECORDS["tool_trace_thinking"])], tokenizer)
    table, counts = split_long(batch, 128, "split", marker=_marker(tokenizer))
    last = tokenizer.hf.decode(table.ids[table.offsets[-2]:].tolist())
    assert len(table) == 3 and counts.prompted_labels == counts.prompted_labels_complete
    assert last.endswith('Compare Paris and Rome.<turn|>\n<|turn>model\n<|channel>thought\n[… 49 tokens omitted] '
                         ':<|"|>Rome<|"|>}<tool_call|><|tool_response>response:get_weather{value:<|"|>25<|"|>}'
                         '<tool_response|>Rome is warmer.<turn|>\n')
    assert tokenizer.hf.decode(table.ids[table.offsets[-2]:][table.flags[table.offsets[-2]:] == 1].tolist()) == (
        "Rome is warmer.<turn|>")


@needs_zoo
@pytest.mark.slow
def test_the_gemma4_tool_shapes_pack_and_verify_at_a_short_seq_length(gemma4, tmp_path):
    """The template zoo's pipeline (scripts/template_zoo.py) at L=128, where pieces re-open inside model turns."""
    folder, _ = gemma4
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "zoo.jsonl").write_text("".join(json.dumps(RECORDS[s]) + "\n" for s in TOOL_SHAPES))
    run_pack(tmp_path / "data", tmp_path / "out", PackConfig(tokenizer=str(folder), template="chat", seq_length=128),
             quiet=True)
    assert_output_verifies(tmp_path / "out")


@needs_zoo
def test_the_opener_of_a_gemma4_answer_is_the_first_call_of_its_turn(gemma4):
    _, tokenizer = gemma4
    batch = render_chat([conversation(RECORDS["tool_trace_thinking"])], tokenizer)  # s u a(call) t a(call) t a
    planner = ContextPlanner(MessageSpans(batch, 0, 129))
    assert [planner.turn_opener(i) for i in range(7)] == [None, None, None, 2, 2, 2, 2]
