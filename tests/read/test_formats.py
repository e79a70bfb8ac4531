"""Input formats (smoltalk/sharegpt/openai/text, parquet and JSON Lines) and bad records / bad files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from packsft import PackConfig
from packsft.cli import main
from packsft.errors import BadRecordError, ConfigError, InputError, UnusableOutputError
from packsft.read.inputs import list_inputs
from packsft.read.reader import open_input, read_conversations
from packsft.read.records import RejectLedger
from packsft.run import run_pack
from packsft.write.layout import ARRAY_FILES
from tests.helpers import assert_output_verifies, conv, write_conversations

TURNS = [
    [("system", "Be nice."), ("user", "What is two plus two?"), ("assistant", "Four.")],
    [("user", "Tell me a story. " * 12), ("assistant", "Once upon a time " * 30)],
    [("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye"), ("assistant", "Goodbye.")],
    [("assistant", "Welcome back."), ("user", "Thanks"), ("assistant", "Any time.")],
]
SHAREGPT_ROLE = {"system": "system", "user": "human", "assistant": "gpt"}


def smoltalk(turns, source="chat"):
    return conv(*turns, source=source)


def sharegpt(turns, source="chat"):
    return {"conversations": [{"from": SHAREGPT_ROLE[r], "value": c} for r, c in turns], "source": source}


def write_jsonl(path: Path, records: list, raw_lines: dict[int, str] | None = None) -> Path:
    """Records as JSON Lines (`.gz` compresses); raw_lines puts literal lines at given positions."""
    lines = [json.dumps(record) for record in records]
    for at, line in sorted((raw_lines or {}).items()):
        lines.insert(at, line)
    data = ("\n".join(lines) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


def pack(data_dir: Path, out: Path, tokenizer: Path, **config) -> dict:
    config.setdefault("seq_length", 64)
    config.setdefault("max_reject_fraction", 1.0)  # these tests count rejects on purpose
    skip = config.pop("skip_bad_files", False)
    strict = config.pop("strict", False)
    result = run_pack(data_dir, out, PackConfig(tokenizer=str(tokenizer), **config), quiet=True,
                      skip_bad_files=skip, strict=strict)
    return result.dataset


def arrays(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "shards").rglob("*.npy"))}


# --- same chunks from every format ----------------------------------------------------------------


@pytest.mark.parametrize("template", ["roles", "chat"])
@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("a.jsonl", lambda p: write_jsonl(p, [sharegpt(t) for t in TURNS])),
        ("a.jsonl.gz", lambda p: write_jsonl(p, [sharegpt(t) for t in TURNS])),
        ("a.jsonl", lambda p: write_jsonl(p, [smoltalk(t) for t in TURNS])),  # openai: the chat-API shape
        ("a.jsonl.gz", lambda p: write_jsonl(p, [smoltalk(t) for t in TURNS])),
        ("a.parquet", lambda p: write_conversations(p, [sharegpt(t) for t in TURNS])),
    ],
)
def test_every_format_packs_to_the_same_chunks(tmp_path, demo_tokenizer_dir, chatml_dir, template, name, write):
    tokenizer = chatml_dir if template == "chat" else demo_tokenizer_dir
    write_conversations(tmp_path / "ref" / "a.parquet", [smoltalk(t) for t in TURNS])
    write(tmp_path / "other" / name)
    reference = pack(tmp_path / "ref", tmp_path / "ref-out", tokenizer, template=template, strategy="bestfit")
    other = pack(tmp_path / "other", tmp_path / "other-out", tokenizer, template=template, strategy="bestfit")
    assert reference["rows"] > 0 and reference["stats"]["conversations_packed"] == 4
    assert arrays(tmp_path / "other-out") == arrays(tmp_path / "ref-out")
    assert other["stats"]["per_source"] == reference["stats"]["per_source"]


def test_auto_detection_is_said_and_recorded(tmp_path, demo_tokenizer_dir):
    write_jsonl(tmp_path / "d" / "a.jsonl", [sharegpt(t) for t in TURNS])
    write_jsonl(tmp_path / "d" / "b.jsonl.gz", [smoltalk(t) for t in TURNS])
    write_conversations(tmp_path / "d" / "c.parquet", [smoltalk(t) for t in TURNS])
    result = CliRunner().invoke(main, ["pack", str(tmp_path / "d"), str(tmp_path / "out"), "--tokenizer",
                                       str(demo_tokenizer_dir), "--seq-length", "64"])
    assert result.exit_code == 0, result.output
    said = [line for line in result.stderr.splitlines() if line.startswith("packsft: input format")]
    assert said == [
        "packsft: input format openai (auto, from the 'messages' key) for 1 file",
        "packsft: input format sharegpt (auto, from the 'conversations' key) for 1 file",
        "packsft: input format smoltalk (auto, from the 'messages' column) for 1 file",
    ]
    dataset = json.loads((tmp_path / "out" / "dataset.json").read_text())
    inputs = [shard["inputs"][0] for shard in dataset["shards"]]
    assert [(i["path"], i["input_format"], i["rows"]) for i in inputs] == [
        ("a.jsonl", "sharegpt", 4), ("b.jsonl.gz", "openai", 4), ("c.parquet", "smoltalk", 4)]
    assert dataset["config"]["input_format"] == "auto"


def test_text_format_from_json_lines(tmp_path, demo_tokenizer_dir):
    write_jsonl(tmp_path / "d" / "docs.jsonl", [{"text": "A short document."}, {"text": "Another one here."}])
    dataset = pack(tmp_path / "d", tmp_path / "out", demo_tokenizer_dir, input_format="text", strategy="linear")
    assert dataset["config"]["format"] == "text" and dataset["stats"]["conversations_read"] == 2


@pytest.mark.parametrize("strategy", ["bestfit", "aligned", "linear"])
def test_text_documents_pack_and_verify_in_every_strategy(tmp_path, demo_tokenizer_dir, strategy):
    docs = [{"text": " ".join(["word"] * (3 + 7 * i % 40))} for i in range(30)]
    write_jsonl(tmp_path / "d" / "docs.jsonl", docs)
    dataset = pack(tmp_path / "d", tmp_path / "out", demo_tokenizer_dir, input_format="text", strategy=strategy,
                   seq_length=32)
    assert dataset["stats"]["conversations_read"] == 30 and dataset["stats"]["chunks"] > 1
    assert_output_verifies(tmp_path / "out", deep=True)  # every document opens with BOS, its label untrained


def test_explicit_input_format_must_match_the_file(tmp_path, demo_tokenizer_dir):
    path = write_jsonl(tmp_path / "d" / "a.jsonl", [smoltalk(t) for t in TURNS])
    with pytest.raises(InputError) as error:
        pack(tmp_path / "d", tmp_path / "out", demo_tokenizer_dir, input_format="sharegpt")
    assert str(error.value) == f"{path}: no 'conversations' key for --input-format sharegpt (keys found: messages, source)"
    with pytest.raises(ConfigError, match="input_format = 'sharegpt' reads conversations, but format = 'text'"):
        PackConfig(format="text", input_format="sharegpt")


def test_role_map_extends_the_aliases(tmp_path, demo_tokenizer_dir):
    records = [{"conversations": [{"from": "Person", "value": "Hi"}, {"from": "robot", "value": "Hello!"}]}]
    write_jsonl(tmp_path / "d" / "a.jsonl", records)
    with pytest.raises(UnusableOutputError, match="nothing packed .*message has unknown role: 1"):
        pack(tmp_path / "d", tmp_path / "o1", demo_tokenizer_dir)
    mapped = pack(tmp_path / "d", tmp_path / "o2", demo_tokenizer_dir, role_map="person=user, robot=assistant")
    assert mapped["stats"]["conversations_packed"] == 1 and mapped["stats"]["records_rejected"] == 0
    with pytest.raises(ConfigError) as error:
        PackConfig(role_map="robot=wizard")
    assert str(error.value) == "--role-map 'robot=wizard': expected from=to with to one of system, user, assistant, tool (e.g. bot=assistant)"


def test_input_files_are_listed_recursively_and_sorted(tmp_path):
    names = ["b/x.jsonl.gz", "a.parquet", "b/a.jsonl", "c.json", "notes.txt", "b/c.parquet", "b/d.json.gz",
             "dataset_info.json", "b/tokenizer_config.json"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    # A folder's metadata JSON (Hugging Face, LLaMA-Factory, tokenizers) is not read as records.
    assert [name for name, _ in list_inputs(tmp_path).files] == [
        "a.parquet", "b/a.jsonl", "b/c.parquet", "b/d.json.gz", "b/x.jsonl.gz", "c.json"]


def test_json_lines_are_streamed(tmp_path):
    """The first batch comes out before a broken gzip stream far into the file is ever read."""
    path = write_jsonl(tmp_path / "big.jsonl.gz", [smoltalk(TURNS[0])] * 5000)
    path.write_bytes(path.read_bytes()[:-200])  # cut off: the gzip stream ends early
    batches = read_conversations(open_input(path), "conversation", RejectLedger(), batch_size=100)
    assert len(next(batches)[0]) == 100
    with pytest.raises(InputError, match="not a readable gzip file"):
        list(batches)


def test_a_line_that_is_not_json_is_one_counted_reject(tmp_path, demo_tokenizer_dir):
    """One malformed JSON Lines line is one bad record (file, row, reason, excerpt), never the whole file;
    --strict stops at it; --skip-bad-files has nothing to skip."""
    write_jsonl(tmp_path / "d" / "a.jsonl", [smoltalk(TURNS[0])] * 30, raw_lines={3: '{"messages": [}'})
    dataset = pack(tmp_path / "d", tmp_path / "out", demo_tokenizer_dir, skip_bad_files=True)
    assert dataset["stats"]["conversations_read"] == 30 and dataset["stats"]["files_skipped"] == 0
    assert dataset["stats"]["rejected_by_reason"] == {"line is not valid JSON": 1}
    entry = json.loads((tmp_path / "out" / "rejects.jsonl").read_text())
    assert entry == {"file": "a.jsonl", "row": 3, "reason": "line is not valid JSON (got Expecting value at character 14)",
                     "excerpt": '"{\\"messages\\": [}"'}
    with pytest.raises(BadRecordError, match="a.jsonl:3: line is not valid JSON"):
        pack(tmp_path / "d", tmp_path / "out2", demo_tokenizer_dir, strict=True)


# --- bad records: each with its exact reason ------------------------------------------------------

GOOD = [TURNS[0], TURNS[2]]
BAD_OPENAI = [
    ({"messages": None}, "messages is null"),
    ({"messages": []}, "empty message list"),
    ({"messages": "hello"}, "messages is not a list (got str)"),
    ({"messages": {"role": "user"}}, "messages is not a list (got dict)"),
    ({"messages": [42]}, "message 0 is not a mapping (got int)"),
    ({"messages": [{"content": "x"}]}, "message 0 has no role"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": None, "content": "x"}]}, "message 1 has no role"),
    ({"messages": [{"role": 3, "content": "x"}]}, "message 0 role is not a string (got int)"),
    ({"messages": [{"role": "user"}]}, "message 0 has no content"),
    ({"messages": [{"role": "user", "content": None}]}, "message 0 has no content"),
    ({"messages": [{"role": "user", "content": ["a"]}]}, "message 0 content part 0 is not a mapping (got str)"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "message 0 has unknown role 'wizard'"),
    ({"messages": [{"role": "user", "content": "only a question"}]}, "no assistant message"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}, "no assistant message"),
    ([1, 2], "record is not a JSON object (got list)"),
    ("just a string", "record is not a JSON object (got str)"),
    ({"text": "a document"}, "record has no 'messages' field"),
]
BAD_SHAREGPT = [
    ({"conversations": None}, "conversations is null"),
    ({"conversations": [{"from": "human"}]}, "message 0 has no content"),
    ({"conversations": [{"from": "gpt", "value": 5}]}, "message 0 content is not a string (got int)"),
    ({"conversations": [{"value": "x"}]}, "message 0 has no role"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "bot?", "value": "a"}]},
     "message 1 has unknown role 'bot?'"),
]


def interleave(good: list, bad: list) -> tuple[list, list[int]]:
    """good, bad, good, bad, ... then the rest; returns the records and the rows of the bad ones."""
    records, bad_rows = [], []
    for i in range(max(len(good), len(bad))):
        if i < len(good):
            records.append(good[i])
        if i < len(bad):
            bad_rows.append(len(records))
            records.append(bad[i])
    return records, bad_rows


def test_bad_records_are_rejected_with_their_reason_and_good_ones_all_packed(tmp_path, demo_tokenizer_dir):
    good_openai = [smoltalk(t) for t in GOOD * 9]
    good_sharegpt = [sharegpt(t) for t in GOOD * 3]
    openai, openai_rows = interleave(good_openai, [record for record, _ in BAD_OPENAI])
    share, share_rows = interleave(good_sharegpt, [record for record, _ in BAD_SHAREGPT])
    write_jsonl(tmp_path / "d" / "a.jsonl", openai)
    write_jsonl(tmp_path / "d" / "b.jsonl", share)
    dataset = pack(tmp_path / "d", tmp_path / "out", demo_tokenizer_dir)
    entries = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    expected = [("a.jsonl", row, reason) for row, (_, reason) in zip(openai_rows, BAD_OPENAI)]
    expected += [("b.jsonl", row, reason) for row, (_, reason) in zip(share_rows, BAD_SHAREGPT)]
    # Records failing validation are listed as read; 'no assistant message' ones after rendering.
    assert sorted((e["file"], e["row"], e["reason"]) for e in entries) == sorted(expected)
    assert all(e["excerpt"] for e in entries if e["reason"] != "record has no 'messages' field")
    stats = dataset["stats"]
    assert stats["records_rejected"] == len(BAD_OPENAI) + len(BAD_SHAREGPT) == 22
    assert stats["rejected_by_reason"]["message has no content"] == 3
    assert stats["rejected_by_reason"]["no assistant message"] == 2
    assert stats["conversations_packed"] == len(good_openai) + len(good_sharegpt)
    # The good records alone pack to exactly the same chunks.
    write_jsonl(tmp_path / "clean" / "a.jsonl", good_openai)
    write_jsonl(tmp_path / "clean" / "b.jsonl", good_sharegpt)
    pack(tmp_path / "clean", tmp_path / "clean-out", demo_tokenizer_dir)
    assert arrays(tmp_path / "out") == arrays(tmp_path / "clean-out")


def test_no_trained_token_is_a_reject_too(tmp_path, demo_tokenizer_dir):
    write_jsonl(tmp_path / "d" / "a.jsonl", [smoltalk([("assistant", "Unprompted hello.")]), smoltalk(TURNS[0])])
    dataset = pack(tmp_path / "d", tmp_path / "out", demo_tokenizer_dir, unprompted="mask")
    assert dataset["stats"]["rejected_by_reason"] == {"no trained token": 1}
    assert dataset["stats"]["conversations_packed"] == 1


def test_strict_stops_at_the_first_bad_record(tmp_path, demo_tokenizer_dir):
    write_jsonl(tmp_path / "d" / "a.jsonl", [smoltalk(TURNS[0]), {"messages": [{"role": "user"}]}])
    with pytest.raises(BadRecordError) as error:
        pack(tmp_path / "d", tmp_path / "out", demo_tokenizer_dir, strict=True)
    assert str(error.value) == "a.jsonl:1: message 0 has no content (drop --strict to skip and count bad records)"
    result = CliRunner().invoke(main, ["pack", str(tmp_path / "d"), str(tmp_path / "o2"), "--tokenizer",
                                       str(demo_tokenizer_dir), "--strict", "-q"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: a.jsonl:1: message 0 has no content (drop --strict to skip and count bad records)"


# --- bad files: an error naming the file, or skipped and listed ------------------------------------


def _parquet_bytes(tmp_path: Path) -> bytes:
    return write_conversations(tmp_path / "src" / "x.parquet", [smoltalk(t) for t in TURNS]).read_bytes()


BAD_FILES = [
    ("empty.parquet", lambda tmp: b"", "{path}: empty file (0 bytes)"),
    ("empty.jsonl", lambda tmp: b"", "{path}: empty file (0 bytes)"),
    ("text.parquet", lambda tmp: b"this is not parquet", "{path}: not a readable parquet file ("),
    ("cut.parquet", lambda tmp: _parquet_bytes(tmp)[:-40], "{path}: not a readable parquet file ("),
    ("schema.parquet", lambda tmp: None,
     "{path}: a 'prompt' column but no 'completion' column (columns found: prompt); prompt-completion records need "
     "both (rename the column that holds the responses to 'completion')"),
    ("broken.jsonl", lambda tmp: b'{"messages": [}\n\n{"messages": [}\n',
     "{path}: no line is valid JSON (the first: line is not valid JSON (got Expecting value at character 14))"),
    ("keys.jsonl", lambda tmp: b'{"answer": "x"}\n',
     "{path}: no conversation key (keys found: answer); records need 'messages', "
     "'conversations', 'prompt' and 'completion', or 'instruction' and 'output'"),
    ("half.jsonl", lambda tmp: b'{"instruction": "x", "response": "y"}\n',
     "{path}: an 'instruction' key but no 'output' key (keys found: instruction, response); Alpaca records need both "
     "(rename the key that holds the responses to 'output')"),
    ("list.jsonl", lambda tmp: b"[1, 2]\n",
     "{path}: the first record is not a JSON object (got list); JSON Lines input holds one object per line (name a "
     "file that holds one array of records *.json)"),
    ("blank.jsonl", lambda tmp: b"\n  \n", "{path}: no records (only blank lines, or an empty JSON array)"),
    ("latin1.jsonl", lambda tmp: '{"messages": "caf\u00e9"}\n'.encode("latin-1"),
     "{path}: not a readable UTF-8 text file, failed near line 1 ("),
    ("plain.jsonl.gz", lambda tmp: b'{"messages": []}\n', "{path}: not a readable gzip file, failed near line 1 ("),
    ("cut.jsonl.gz", lambda tmp: gzip.compress(b'{"messages": []}\n' * 2000, mtime=0)[:-12],
     "{path}: not a readable gzip file, failed near line "),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_file_is_an_error_naming_it(tmp_path, demo_tokenizer_dir, name, content, message):
    path = tmp_path / "d" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content(tmp_path)
    if data is None:
        write_conversations(path, [{"prompt": "x"}])
    else:
        path.write_bytes(data)
    write_conversations(tmp_path / "d" / "zz-good.parquet", [smoltalk(t) for t in TURNS])
    with pytest.raises(InputError) as error:
        pack(tmp_path / "d", tmp_path / "out", demo_tokenizer_dir)
    assert str(error.value).startswith(message.format(path=path)), str(error.value)
    # With --skip-bad-files the good file is packed and the bad one listed.
    dataset = pack(tmp_path / "d", tmp_path / "out2", demo_tokenizer_dir, skip_bad_files=True)
    assert [entry["path"] for entry in dataset["skipped_files"]] == [name]
    assert dataset["skipped_files"][0]["error"] == str(error.value)
    assert dataset["stats"]["files_skipped"] == 1 and dataset["stats"]["conversations_packed"] == 4


def test_skipped_files_are_in_the_summary_and_leave_an_empty_shard(tmp_path, demo_tokenizer_dir):
    write_conversations(tmp_path / "d" / "a.parquet", [smoltalk(t) for t in TURNS])
    write_jsonl(tmp_path / "d" / "b.jsonl", [smoltalk(TURNS[0])] * 100 + [{"messages": None}], raw_lines={101: "BAD"})
    # A byte that is not UTF-8, past what planning reads: the file cannot be decoded while it is packed (a line
    # that is not JSON would be one reject).
    (tmp_path / "d" / "b.jsonl").write_bytes((tmp_path / "d" / "b.jsonl").read_bytes().replace(b"BAD", b"\xff"))
    result = CliRunner().invoke(main, ["pack", str(tmp_path / "d"), str(tmp_path / "out"), "--tokenizer",
                                       str(demo_tokenizer_dir), "--skip-bad-files", "--seq-length", "64"])
    assert result.exit_code == 0, result.output
    assert "files skipped 1 (unreadable; see skipped_files in dataset.json)" in result.output
    assert f"packsft: skipping bad file: {tmp_path / 'd' / 'b.jsonl'}: not a readable UTF-8 text file" in result.stderr
    dataset = json.loads((tmp_path / "out" / "dataset.json").read_text())
    # The broken file's unit is complete but empty (so a rerun resumes instead of retrying it).
    assert [(shard["name"], shard["rows"]) for shard in dataset["shards"]][1] == ("00001", 0)
    assert [entry["path"] for entry in dataset["skipped_files"]] == ["b.jsonl"]
    assert dataset["stats"]["records_rejected"] == 0  # the skipped file's rejects are dropped with it
    assert (tmp_path / "out" / "rejects.jsonl").read_text() == ""
    tokens = np.load(tmp_path / "out" / "shards" / "00000" / ARRAY_FILES[0])
    assert tokens.shape[1] == 65


def test_a_rerun_of_a_failed_run_names_overwrite_for_the_units_it_resumes(tmp_path, demo_tokenizer_dir):
    """A run that failed its outcome check keeps its units; a rerun resumes them and fails again, saying that they
    were resumed and that --overwrite packs them again (after fixing, say, the environment)."""
    write_jsonl(tmp_path / "d" / "a.jsonl", [{"messages": [{"role": "wizard", "content": "x"}]}] * 3)
    config = PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=64)
    with pytest.raises(UnusableOutputError) as first:
        run_pack(tmp_path / "d", tmp_path / "out", config, quiet=True)
    assert "--overwrite" not in str(first.value)
    with pytest.raises(UnusableOutputError, match="1 of these units were packed by an earlier run and resumed as "
                                                  "they were; .* rerun with --overwrite to pack them again"):
        run_pack(tmp_path / "d", tmp_path / "out", config, quiet=True)
