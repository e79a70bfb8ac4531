"""A turn longer than a row is cut at a safe boundary: after a line or a sentence, never inside a tool call or its
JSON (pack/cuts.py SafeCuts); its continuation repeats the turn's header and the text before the cut, masked, after
a marker that says how much was left out."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import numpy as np
import pytest

from packsft import PackConfig, PackedOutput
from packsft.pack.cuts import SafeCuts
from packsft.render.tokenizer import TokenTexts, load_output_tokenizer
from packsft.run import run_pack
from tests.helpers import output_arrays

# One character a token: the texts table of a stand-in vocabulary (ids are character codes).
CHARS = tuple(chr(i) for i in range(128))
TEXTS = TokenTexts(len(CHARS), CHARS.__getitem__)


def ids(text: str) -> np.ndarray:
    return np.array([ord(c) for c in text], np.int64)


def test_cut_prefers_a_line_then_a_sentence_within_the_window():
    safe = SafeCuts(lambda: TEXTS)
    text = "first line\nA sentence ends here. and more words go on and on"
    assert text[: safe.cut(ids(text), 40)] == "first line\nA sentence ends here."  # no line end in the window
    lines = "x" * 30 + "\n" + "y" * 40
    assert lines[: safe.cut(ids(lines), 40)] == "x" * 30 + "\n"


@pytest.mark.parametrize("call", [
    '<tool_call>\n{"name": "f", "arguments": {"q": "a. b\\nc"}}\n</tool_call>',
    '[TOOL_CALLS][{"name": "f", "arguments": {"q": "a. b\\nc"}}]',
    '<|tool_call_begin|>f<|tool_call_argument_begin|>{"q": "a. b\\nc"}<|tool_call_end|>',
])
def test_cut_never_falls_inside_a_tool_call(call):
    text = "Some reasoning. " * 3 + call + " tail"
    safe = SafeCuts(lambda: TEXTS)
    start = text.index(call[:3])
    for room in range(start + 5, len(text) - 1):
        cut = safe.cut(ids(text), room)
        assert cut <= start or cut >= start + len(call), (room, text[:cut])


@pytest.mark.parametrize("call", [
    '<tool_call>\n{"name": "f", "arguments": {"q": "a. b\\nc"}}\n</tool_call>',
    '[TOOL_CALLS][{"name": "f", "arguments": {"q": "a. b\\nc"}}]',
])
def test_without_lines_the_cut_moves_only_out_of_a_tool_call(call):
    """--cut-at-lines off: the cut falls where the room ends, unless that is inside a tool call (a bracket before the
    call opens no tag: the text is searched from the first token that holds one)."""
    text = "Some [reasoning] here.\n" * 3 + call + " tail"
    start = text.index(call[:3])
    for safe in (SafeCuts(lambda: TEXTS, at_lines=False), SafeCuts(lambda: TEXTS, at_lines=False)):  # flags kept
        for room in range(1, len(text) - 1):
            cut = safe.cut(ids(text), room)
            if start < room < start + len(call):
                assert cut <= start or cut >= start + len(call), (room, text[:cut])
            else:
                assert cut == room


def test_spans_of_json_without_a_closing_tag_end_with_the_json():
    safe = SafeCuts(lambda: TEXTS)
    text = '[TOOL_CALLS][{"a": "]}"}] after'
    assert safe.tool_spans(text) == [(0, text.index(" after"))]


# --- the long-trace corpus at a short row, with qwen3's chat template -------------------------------


def long_turn_records(count: int, seed: int = 0) -> list[dict]:
    """Agentic records whose assistant turns (reasoning, then 2-5 tool calls, each well shorter than a row) exceed
    a row of 384 tokens."""
    rng = random.Random(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()

    def prose(n: int) -> str:
        return " ".join(rng.choice(words) + ("." if rng.random() < 0.1 else "") for _ in range(n))

    tools = [{"type": "function", "function": {"name": "search", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}}}}}]
    records = []
    for _ in range(count):
        calls = [{"type": "function", "id": f"c{k}", "function": {"name": "search", "arguments": json.dumps(
            {"query": prose(rng.randint(5, 40)), "notes": [prose(6) for _ in range(rng.randint(1, 3))]})}}
            for k in range(rng.randint(2, 5))]
        messages = [{"role": "user", "content": prose(30)},
                    {"role": "assistant", "content": prose(rng.randint(50, 300)), "tool_calls": calls,
                     "reasoning_content": prose(rng.randint(100, 600))}]
        messages += [{"role": "tool", "tool_call_id": c["id"], "content": prose(20)} for c in calls]
        messages.append({"role": "assistant", "content": prose(rng.randint(20, 200))})
        records.append({"messages": messages, "tools": tools})
    return records


def cut_inside_tool_call(out) -> int:
    """Segments whose last trained text leaves a tool call open (a cut inside it)."""
    output = PackedOutput(out)
    tokenizer = load_output_tokenizer(output.dataset["tokenizer"]).hf
    bad = 0
    for index in range(len(output)):
        row = output.row(index)
        for start, length in zip(row.segment_starts.tolist(), row.segment_lengths.tolist()):
            text = tokenizer.decode(row.tokens[start : start + length].tolist())
            bad += text.rfind("<tool_call>") > text.rfind("</tool_call>")
    return bad


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long-turns")
    with open(folder / "data.jsonl", "w") as handle:
        for record in long_turn_records(40):
            handle.write(json.dumps(record) + "\n")
    return folder


@pytest.mark.slow
def test_no_cut_inside_a_tool_call_on_long_turns(corpus, qwen3_dir, tmp_path, monkeypatch):
    config = PackConfig(tokenizer=str(qwen3_dir), template="chat", seq_length=384)
    safe = run_pack(corpus, tmp_path / "safe", config, quiet=True, workers=1).out_dir
    assert PackedOutput(safe).dataset["counters"]["exchanges_split"] > 0
    assert cut_inside_tool_call(safe) == 0
    # --cut-at-lines cuts after lines and sentences, and never inside a tool call either.
    lines = run_pack(corpus, tmp_path / "lines", replace(config, cut_at_lines=True), quiet=True, workers=1).out_dir
    assert cut_inside_tool_call(lines) == 0
    assert output_arrays(lines) != output_arrays(safe)
    # The same pack cutting where the room ends (the old cut) does cut inside tool calls: the check sees them.
    monkeypatch.setattr("packsft.stages.SafeCuts", lambda texts, at_lines: None)
    anywhere = run_pack(corpus, tmp_path / "anywhere", config, quiet=True, workers=1).out_dir
    assert cut_inside_tool_call(anywhere) > 0


@pytest.mark.slow
def test_a_continuation_repeats_the_header_and_the_text_before_its_cut(corpus, qwen3_dir, tmp_path):
    config = PackConfig(tokenizer=str(qwen3_dir), template="chat", seq_length=384)
    out = run_pack(corpus, tmp_path / "out", config, quiet=True, workers=1).out_dir
    output = PackedOutput(out)
    tokenizer = load_output_tokenizer(output.dataset["tokenizer"]).hf
    continuations = 0
    for index in range(len(output)):
        row = output.row(index)
        labels = np.concatenate([[0], row.loss_mask])
        for start, length in zip(row.segment_starts.tolist(), row.segment_lengths.tolist()):
            text = tokenizer.decode(row.tokens[start : start + length].tolist())
            if "tokens omitted]" not in text.split("<|im_start|>assistant\n")[-1]:
                continue
            continuations += 1
            head, _, rest = text.rpartition("<|im_start|>assistant\n")
            marker_end = text.index("tokens omitted] ", len(head)) + len("tokens omitted] ")
            # Header, marker and the text before the cut are context (untrained); the continuation trains after it.
            context = len(tokenizer(text[:marker_end], add_special_tokens=False)["input_ids"])
            assert not labels[start + 1 : start + context].any()
            assert labels[start + context : start + length].any()
    assert continuations
