"""Issue 27 item 4: `packsft verify` reads what a chat-template output trains, and never lies.

packsft's own split pieces pass (an assistant turn a piece repeats as context is no lost answer), and each
failure class is caught on a deliberately broken output: a small ChatML output (the hermetic `chatml_dir`
tokenizer) whose loss_mask bits are flipped with `rewrite_array`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from packsft import PackConfig
from packsft.run import run_pack
from packsft.stats import UnitCounters, summarize
from packsft.verify import check_output, verify_output
from packsft.verify.chat_turns import (
    ANSWER_HOLE,
    GENERATION_PROMPT,
    NEXT_TURN,
    UNTRAINED_ANSWER,
    UNTRAINED_STOP,
    USER_TEXT,
    ChatMarkers,
    Messages,
)
from tests.helpers import load_array, rewrite_array, write_conversations

ROOT = Path(__file__).resolve().parents[2]
MASK = "shards/00000/loss_mask.npy"
# Answers that differ from their first word: an answer is identified by its first tokens (KEY_TOKENS).
ANSWERS = ["Paris is the capital of France.", "Blue, like a clear summer sky at noon.",
           "Four, since two and two make four.", "Seven days make one week, always.",
           "Water boils at one hundred degrees.", "Tokyo is the largest city in Japan."]


def two_turns(i: int) -> dict:
    """Two exchanges; no answer of one conversation is an answer of another (a repeat's trained copy would be)."""
    return {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": f"Question {i}?"},
        {"role": "assistant", "content": ANSWERS[i]},
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": f"Then {i}: " + ANSWERS[(i + 1) % len(ANSWERS)].lower()},
    ]}


def tool_round(i: int) -> dict:
    """A tool call and its result, then an answer: at 128 tokens a row, the answer's pieces repeat the call."""
    words = "the quick brown fox jumps over a lazy dog while seven birds sing loudly".split()

    def text(n: int) -> str:
        return " ".join(words[(i + k) % len(words)] for k in range(n))

    return {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Question " + text(5)},
        {"role": "assistant", "content": "Let me look " + text(12)},
        {"role": "tool", "content": "result " + text(8)},
        {"role": "assistant", "content": "Answer " + text(30)},
    ]}


def pack(tmp_path: Path, records: list[dict], tokenizer: Path, seq_length: int) -> Path:
    write_conversations(tmp_path / "data" / "chat.parquet", records)
    config = PackConfig(tokenizer=str(tokenizer), template="chat", seq_length=seq_length)
    run_pack(tmp_path / "data", tmp_path / "out", config, quiet=True)
    return tmp_path / "out"


@pytest.fixture(scope="module")
def chat_out(tmp_path_factory, chatml_dir) -> Path:
    """Six two-turn conversations, none split (one segment each)."""
    return pack(tmp_path_factory.mktemp("chat-turns"), [two_turns(i) for i in range(6)], chatml_dir, 256)


@pytest.fixture
def broken(chat_out, tmp_path_factory) -> Path:
    """A copy of chat_out to break (outside tmp_path, which conftest verifies after each test)."""
    return Path(shutil.copytree(chat_out, tmp_path_factory.mktemp("broken") / "out"))


def markers(out: Path) -> ChatMarkers:
    found = ChatMarkers.of(json.loads((out / "dataset.json").read_text())["tokenizer"]["chat_markers"], "chat")
    assert found is not None
    return found


Turn = tuple[str, int, int, int]  # role, header column, first content column, end-of-turn column


def messages_of_row(out: Path, row: int) -> list[Turn]:
    """The messages in row `row` of shard 0. Content starts after the header's last token, the one before the first
    label of an assistant message (a newline in ChatML)."""
    ids, mask = markers(out), load_array(out, 0, "loss_mask.npy")[row]
    tokens = load_array(out, 0, "tokens.npy")[row].tolist()
    roles = {ids.user_role: "user", ids.assistant_role: "assistant"}
    heads = [column for column, token in enumerate(tokens) if token == ids.header_start]
    answer = next(h for h in heads if tokens[h + 1] == ids.assistant_role)
    header_end = tokens[answer + int(np.flatnonzero(mask[answer:])[0])]  # the flag of token i is mask[i - 1]
    return [(roles.get(tokens[h + 1], "system"), h, tokens.index(header_end, h) + 1, tokens.index(ids.end_of_turn, h))
            for h in heads]


def set_labels(out: Path, row: int, columns: range | list[int], value: int) -> int:
    """Set the label flags of the tokens at `columns` of a row (the flag of token i is loss_mask[i - 1]); how many
    flags changed."""
    mask = load_array(out, 0, "loss_mask.npy").copy()
    before = int(mask.sum())
    for column in columns:
        mask[row, column - 1] = value
    rewrite_array(out, 0, "loss_mask.npy", mask)
    return abs(int(mask.sum()) - before)


def chat_problems(out: Path, deep: bool = False) -> list[str]:
    """What verify says about the loss mask (flipping bits also leaves counters.trained_tokens_kept stale)."""
    return [str(p) for p in verify_output(out, deep=deep) if p.file == MASK]


def first_turns(out: Path) -> tuple[Turn, Turn, Turn]:
    """Row 0's first answer, the user message after it, and its second answer (row 0 starts with a conversation)."""
    found = messages_of_row(out, 0)[:5]
    assert [role for role, *_ in found] == ["system", "user", "assistant", "user", "assistant"]
    return found[2], found[3], found[4]


# --- packsft's own output passes ---------------------------------------------------------------------------


def rows_with_untrained_stops(out: Path, shard: int) -> int:
    """Rows of a shard that hold an assistant message whose end-of-turn is untrained (what verify once refused)."""
    tokens = load_array(out, shard, "tokens.npy")
    found = Messages(tokens, load_array(out, shard, "loss_mask.npy"), load_array(out, shard, "segment_lengths.npy"),
                     load_array(out, shard, "row_segments.npy"), markers(out))
    return len(np.unique(found.ends[~found.trained.reshape(-1)[found.ends]] // tokens.shape[1]))


def test_split_tool_rounds_repeat_the_call_untrained_and_pass(tmp_path, chatml_dir):
    """Pieces of an answer that follows a tool result repeat the calling turn, masked, as context: its end-of-turn
    is untrained there. Verify once read that as a header from content ("an assistant message's end-of-turn token
    is not trained") on these 3 rows; the turn is trained in the conversation's first piece."""
    out = pack(tmp_path, [tool_round(i) for i in range(6)], chatml_dir, 128)
    assert rows_with_untrained_stops(out, 0) == 3  # the repeated calls
    assert verify_output(out) == []


@pytest.mark.slow
def test_qwen3_tool_corpus_split_passes(tmp_path, qwen3_dir, sharegpt_dir):
    """Issue 27's reproduction on real assets: the tool-calling corpus (scripts/tool_corpus.py, seed 0), qwen3's
    template, rows of 2,048 tokens. Verify flagged 7 rows of this output (and 181 of a 300k-token corpus at 1,024)."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "tool_corpus.py"), str(tmp_path / "tools"), "--tokens",
                    "20000", "--files", "2"], check=True, capture_output=True)
    config = PackConfig(tokenizer=str(qwen3_dir), template="chat", seq_length=2048)
    run_pack(tmp_path / "tools", tmp_path / "out", config, quiet=True)
    assert rows_with_untrained_stops(tmp_path / "out", 0) + rows_with_untrained_stops(tmp_path / "out", 1) == 7
    assert verify_output(tmp_path / "out") == []


# --- each failure class on a broken output --------------------------------------------------------------------


def test_trained_generation_prompt(broken):
    (_, head, content, _), _, _ = first_turns(broken)
    set_labels(broken, 0, range(head, content), 1)  # <|im_start|>assistant\n
    ids = markers(broken)
    assert chat_problems(broken) == [
        f"{MASK} row 0 (chunk 0): " + GENERATION_PROMPT.format(header=ids.header_start, role=ids.assistant_role)]


def test_trained_next_turn_token(broken):
    _, (_, head, _, _), _ = first_turns(broken)
    set_labels(broken, 0, [head], 1)  # the <|im_start|> after the first answer's <|im_end|>\n
    assert chat_problems(broken) == [f"{MASK} row 0 (chunk 0): " + NEXT_TURN.format(header=markers(broken).header_start)]


def test_trained_user_text(broken):
    _, (_, _, content, end), _ = first_turns(broken)
    set_labels(broken, 0, range(content, end), 1)  # "And then?"
    assert chat_problems(broken) == [f"{MASK} row 0 (chunk 0): {USER_TEXT}"]


@pytest.mark.parametrize("turn", [0, 2], ids=["earlier", "last"])
def test_untrained_answer(broken, turn):
    """An answer untrained as a whole (as gpt-oss's earlier turns were). The earlier one reads like a turn a piece
    repeats as context (before the first label, followed by a user message): no trained copy of it exists."""
    _, _, content, end = first_turns(broken)[turn]
    set_labels(broken, 0, range(content, end + 1), 0)  # its text and <|im_end|>
    assert chat_problems(broken) == [f"{MASK} row 0 (chunk 0): {UNTRAINED_ANSWER}"]


def test_untrained_answer_inside_trained_text(broken):
    (_, _, content, end), _, _ = first_turns(broken)
    set_labels(broken, 0, [(content + end) // 2], 0)
    assert chat_problems(broken) == [f"{MASK} row 0 (chunk 0): {ANSWER_HOLE}"]


def test_untrained_stop(broken):
    (_, _, _, end), _, _ = first_turns(broken)
    set_labels(broken, 0, [end], 0)  # the first answer's <|im_end|>
    assert chat_problems(broken) == [
        f"{MASK} row 0 (chunk 0): " + UNTRAINED_STOP.format(end=markers(broken).end_of_turn)]


def test_answer_untrained_up_to_a_trained_stop_takes_deep(broken):
    """Plain verify cannot tell this one from the arrays: an answer untrained but for its end-of-turn reads like
    the continuation of a turn cut right before its <|im_end|> (with no room for the text before the cut). Here
    the counters are fixed up too, as a packer that computed this mask would write them: `--deep` re-packs and
    finds the mask differs."""
    (_, _, content, end), _, _ = first_turns(broken)
    lost = set_labels(broken, 0, range(content, end), 0)
    manifest_path = broken / "shards" / "00000" / "manifest.json"
    manifest, dataset = json.loads(manifest_path.read_text()), json.loads((broken / "dataset.json").read_text())
    for counters in (manifest["counters"], dataset["counters"]):
        counters["trained_tokens_kept"] -= lost
    dataset["stats"] = json.loads(json.dumps(summarize(UnitCounters.from_dict(dataset["counters"]),
                                                       dataset["seq_length"], len(dataset["skipped_files"]))))
    manifest_path.write_text(json.dumps(manifest))
    (broken / "dataset.json").write_text(json.dumps(dataset))
    assert verify_output(broken) == []
    report = check_output(broken, deep=True)
    assert [str(p) for p in report.problems] == [
        f"{MASK}: differs from a fresh pack of chat.parquet (first at row 0)",
        "shards/00000/manifest.json: counters differ from a fresh pack of chat.parquet (trained_tokens_kept)"]
