"""The CLI end to end on small data: output layout, errors users can cause, help and docs."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from packsft.cli import main
from tests.helpers import assert_output_verifies, conv, write_conversations

README = Path(__file__).resolve().parents[1] / "README.md"

RECORDS = [
    conv(("system", "Be nice."), ("user", "What is two plus two?"), ("assistant", "Four."), source="math"),
    conv(("user", "Tell me a long story. " * 20), ("assistant", "Once upon a time " * 40), source="story"),
    conv(("assistant", "...continued answer"), ("user", "thanks"), ("assistant", "You are welcome."), source="chat"),
    {"messages": [], "source": "chat"},
    conv(("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye"), ("assistant", "Goodbye."), source="chat"),
]


@pytest.fixture
def data_dir(tmp_path) -> Path:
    write_conversations(tmp_path / "data" / "b" / "part-1.parquet", RECORDS[:3])
    write_conversations(tmp_path / "data" / "a.parquet", RECORDS[3:])
    return tmp_path / "data"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def pack(data_dir, out, tokenizer_dir, *extra) -> tuple[int, str]:
    # RECORDS hold one bad record in five, more than the default --max-reject-fraction allows.
    return run("pack", str(data_dir), str(out), "--tokenizer", str(tokenizer_dir), "--seq-length", "64", "-q",
               "--max-reject-fraction", "0.5", *extra)


@pytest.mark.parametrize("strategy", ["linear", "aligned", "bestfit"])
def test_pack_writes_the_documented_layout(data_dir, tmp_path, demo_tokenizer_dir, strategy):
    out = tmp_path / "out"
    code, output = pack(data_dir, out, demo_tokenizer_dir, "--strategy", strategy)
    assert code == 0, output
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["format_version"] == 1
    assert dataset["config"]["strategy"] == strategy and dataset["config"]["seq_length"] == 64
    assert dataset["tokenizer"]["special_ids"]["bos"] is not None
    assert len(dataset["tokenizer"]["files_sha256"]) == 2
    assert [s["name"] for s in dataset["shards"]] == ["00000", "00001"]  # a.parquet before b/part-1.parquet
    assert [s["inputs"][0]["path"] for s in dataset["shards"]] == ["a.parquet", "b/part-1.parquet"]
    total = 0
    for shard in dataset["shards"]:
        folder = out / "shards" / shard["name"]
        tokens = np.load(folder / "tokens.npy", mmap_mode="r", allow_pickle=False)
        mask = np.load(folder / "loss_mask.npy", mmap_mode="r", allow_pickle=False)
        assert tokens.dtype == np.uint16 and tokens.shape == (shard["rows"], 65)
        assert mask.dtype == np.uint8 and mask.shape == (shard["rows"], 64)
        for name, meta in shard["files"].items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == meta["sha256"]
        total += shard["rows"]
    assert dataset["rows"] == total == dataset["stats"]["chunks"]
    assert dataset["stats"]["records_rejected"] == 1
    assert (out / "rejects.jsonl").read_text().count("empty message list") == 1
    assert not list(out.rglob("*.tmp-*")) and not list((out / "shards").glob(".tmp-*"))
    assert_output_verifies(out, deep=True)


def test_stats_json_has_the_documented_keys(data_dir, tmp_path, demo_tokenizer_dir):
    out = tmp_path / "out"
    assert pack(data_dir, out, demo_tokenizer_dir, "--strategy", "aligned")[0] == 0
    code, output = run("stats", str(out), "--json")
    stats = json.loads(output)
    for key in ("chunks", "seq_length", "fill", "trained_fraction", "bos_start_fraction", "conversations_read",
                "conversations_packed", "conversations_truncated", "conversations_dropped", "records_rejected",
                "trainable_tokens_available", "trained_tokens_kept", "trained_retention"):
        assert key in stats
    assert stats["conversations_read"] == 4 and stats["bos_start_fraction"] == 1.0
    code, output = run("stats", str(out))
    assert code == 0 and "trained retention" in output and "story" in output


def test_source_filter_keeps_only_matching_rows(data_dir, tmp_path, demo_tokenizer_dir):
    out = tmp_path / "out"
    assert pack(data_dir, out, demo_tokenizer_dir, "--source-filter", "chat")[0] == 0
    stats = json.loads(run("stats", str(out), "--json")[1])
    assert stats["conversations_read"] == 2 and stats["records_filtered"] == 2
    assert stats["records_rejected"] == 1  # the filter runs first; this bad record is a 'chat' one


def test_config_file_with_flag_override(data_dir, tmp_path, demo_tokenizer_dir):
    config = tmp_path / "c.toml"
    config.write_text(f'tokenizer = "{demo_tokenizer_dir}"\nstrategy = "aligned"\nseq-length = 32\nmask = "all"\n'
                      'max-reject-fraction = 0.5\n')
    out = tmp_path / "out"
    code, output = run("pack", str(data_dir), str(out), "--config", str(config), "--seq-length", "48", "-q")
    assert code == 0, output
    resolved = json.loads((out / "dataset.json").read_text())["config"]
    assert resolved["strategy"] == "aligned" and resolved["seq_length"] == 48 and resolved["mask"] == "all"
    assert resolved["long"] == "truncate"


def test_inspect_shows_the_seed_view(data_dir, tmp_path, demo_tokenizer_dir):
    out = tmp_path / "out"
    assert pack(data_dir, out, demo_tokenizer_dir, "--strategy", "aligned")[0] == 0
    code, output = run("inspect", str(out), "--chunk", "0", "--tokens")
    assert code == 0, output
    assert "✓ starts at BOS : True" in output
    assert "<BOS      >" in output and "<USR      >" in output and "▶ <ASST     >" in output
    assert "context before first trained label" in output and "segment 1 at 0" in output
    assert re.search(r"^\s+0\s+\d+\s+\d+\s+[01]\s+'", output, re.M)  # token table


def test_repacking_is_byte_identical(data_dir, tmp_path, demo_tokenizer_dir):
    a, b = tmp_path / "a", tmp_path / "b"
    assert pack(data_dir, a, demo_tokenizer_dir)[0] == 0
    assert pack(data_dir, b, demo_tokenizer_dir)[0] == 0
    for path in sorted((a / "shards").rglob("*.npy")):
        assert path.read_bytes() == (b / path.relative_to(a)).read_bytes()


# --- errors a user can cause: one line, exit 1 -----------------------------------------------------


def _error(code: int, output: str) -> str:
    assert code == 1, output
    assert "Traceback" not in output
    return output.strip()


def test_missing_data_dir(tmp_path, demo_tokenizer_dir):
    out = _error(*pack(tmp_path / "nope", tmp_path / "out", demo_tokenizer_dir))
    assert out == f"Error: {tmp_path / 'nope'}: no such file or folder. Pass the folder (or the files) that hold your records: *.parquet, *.jsonl[.gz] or *.json[.gz]"


def test_data_dir_without_parquet(tmp_path, demo_tokenizer_dir):
    (tmp_path / "empty").mkdir()
    out = _error(*pack(tmp_path / "empty", tmp_path / "out", demo_tokenizer_dir))
    assert out.endswith("no *.parquet, *.jsonl[.gz] or *.json[.gz] files under it. Pass the folder that holds them")


def test_file_without_messages_column_names_the_columns(tmp_path, demo_tokenizer_dir):
    path = write_conversations(tmp_path / "d" / "x.parquet", [{"prompt": "a", "answer": "b"}])
    out = _error(*pack(tmp_path / "d", tmp_path / "out", demo_tokenizer_dir))
    assert out == (
        f"Error: {path}: a 'prompt' column but no 'completion' column (columns found: prompt, answer); prompt-completion "
        "records need both (rename the column that holds the responses to 'completion')"
    )


def test_text_column_suggests_text_format(tmp_path, demo_tokenizer_dir):
    write_conversations(tmp_path / "d" / "x.parquet", [{"text": "a document"}])
    assert _error(*pack(tmp_path / "d", tmp_path / "out", demo_tokenizer_dir)) == (
        f"Error: {tmp_path / 'd' / 'x.parquet'}: no conversation column (columns found: text); records need 'messages', "
        "'conversations', 'prompt' and 'completion', or 'instruction' and 'output'; for plain documents use "
        "--input-format text")
    code, output = pack(tmp_path / "d", tmp_path / "out", demo_tokenizer_dir, "--input-format", "text", "--strategy", "linear")
    assert code == 0, output


def test_format_is_a_hidden_alias_of_input_format(tmp_path, demo_tokenizer_dir):
    """--format text, the old flag, still packs documents as --input-format text does; help names only the new one."""
    write_conversations(tmp_path / "d" / "x.parquet", [{"text": f"document {i}"} for i in range(5)])
    outputs = []
    for flags in (["--format", "text"], ["--input-format", "text"]):
        out = tmp_path / flags[0].strip("-")
        code, output = pack(tmp_path / "d", out, demo_tokenizer_dir, *flags, "--strategy", "linear")
        assert code == 0, output
        outputs.append(b"".join(path.read_bytes() for path in sorted((out / "shards").rglob("*.npy"))))
    assert outputs[0] == outputs[1]
    help_text = " ".join(CliRunner().invoke(main, ["pack", "--help"]).output.split())  # unwrapped
    assert "--input-format" in help_text and "the old --format text, still accepted" in help_text
    assert "--format [conversation|text]" not in help_text and "--input-format [" in help_text


def test_unreadable_parquet(tmp_path, demo_tokenizer_dir):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "bad.parquet").write_bytes(b"this is not parquet")
    out = _error(*pack(tmp_path / "d", tmp_path / "out", demo_tokenizer_dir))
    assert out.startswith(f"Error: {tmp_path / 'd' / 'bad.parquet'}: not a readable parquet file")
    assert not (tmp_path / "out").exists()


def test_unknown_tokenizer_path(data_dir, tmp_path):
    out = _error(*pack(data_dir, tmp_path / "out", tmp_path / "no-tokenizer"))
    assert "no-tokenizer'" in out and "no such folder" in out


@pytest.mark.parametrize("length", ["1", "0", "-5"])
def test_seq_length_below_two(data_dir, tmp_path, demo_tokenizer_dir, length):
    code, output = run("pack", str(data_dir), str(tmp_path / "out"), "--tokenizer", str(demo_tokenizer_dir),
                       "--seq-length", length)
    assert _error(code, output) == f"Error: seq_length must be an integer >= 2, got {length}"


def test_refuses_a_foreign_non_empty_out_dir_even_with_overwrite(data_dir, tmp_path, demo_tokenizer_dir):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        assert "not a packsft output" in _error(*pack(data_dir, out, demo_tokenizer_dir, *extra))
    assert (out / "precious.txt").read_text() == "keep me"


def test_existing_output_resumes_with_the_same_settings_and_needs_overwrite_for_others(data_dir, tmp_path, demo_tokenizer_dir):
    out = tmp_path / "out"
    assert pack(data_dir, out, demo_tokenizer_dir)[0] == 0
    assert pack(data_dir, out, demo_tokenizer_dir)[0] == 0  # the same settings: nothing to redo
    message = _error(*pack(data_dir, out, demo_tokenizer_dir, "--strategy", "aligned"))
    assert "made differently (long 'split' -> 'truncate', strategy 'bestfit' -> 'aligned')" in message
    assert "pass --overwrite to replace it" in message
    assert pack(data_dir, out, demo_tokenizer_dir, "--strategy", "aligned", "--overwrite")[0] == 0


def test_stats_on_incomplete_output(tmp_path):
    (tmp_path / "out").mkdir()
    assert "no dataset.json" in _error(*run("stats", str(tmp_path / "out")))


def test_inspect_chunk_out_of_range(data_dir, tmp_path, demo_tokenizer_dir):
    out = tmp_path / "out"
    assert pack(data_dir, out, demo_tokenizer_dir)[0] == 0
    assert "chunk 999 does not exist" in _error(*run("inspect", str(out), "--chunk", "999"))


def test_every_command_has_help_and_appears_in_the_readme():
    readme = README.read_text()
    for name, command in main.commands.items():
        code, output = run(name, "--help")
        assert code == 0 and "Example:" in output, name
        assert f"packsft {name}" in readme, f"README does not mention `packsft {name}`"
        for param in command.params:
            if getattr(param, "help", None) is None and param.param_type_name == "option":
                pytest.fail(f"{name} {param.name} has no help text")


@pytest.mark.parametrize("strategy", ["linear", "bestfit"])
def test_parquet_export_matches_the_arrays(data_dir, tmp_path, demo_tokenizer_dir, strategy):
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    code, output = pack(data_dir, out, demo_tokenizer_dir, "--strategy", strategy, "--output-format", "both")
    assert code == 0, output
    for folder in sorted((out / "shards").iterdir()):
        table = pq.read_table(folder / "chunks.parquet")
        assert table.column_names == ["input_ids", "loss_mask", "seq_lengths"]
        tokens = np.load(folder / "tokens.npy")
        mask = np.load(folder / "loss_mask.npy")
        lengths = np.load(folder / "segment_lengths.npy")
        offsets = np.load(folder / "row_segments.npy")
        assert np.array_equal(np.array(table.column("input_ids").to_pylist()), tokens)
        assert np.array_equal(np.array(table.column("loss_mask").to_pylist()), mask)
        for row, seqs in enumerate(table.column("seq_lengths").to_pylist()):
            assert sum(seqs) == 65
            pieces = lengths[offsets[row] : offsets[row + 1]].tolist()
            assert seqs[: len(pieces)] == pieces and len(seqs) - len(pieces) == (1 if sum(pieces) < 65 else 0)


def test_parquet_only_output(data_dir, tmp_path, demo_tokenizer_dir):
    out = tmp_path / "out"
    assert pack(data_dir, out, demo_tokenizer_dir, "--output-format", "parquet")[0] == 0
    assert sorted(p.name for p in (out / "shards" / "00000").iterdir()) == ["chunks.parquet", "manifest.json", "rejects.jsonl"]


def test_the_command_ends_without_interpreter_teardown_and_keeps_its_output_and_status(data_dir, tmp_path,
                                                                                      demo_tokenizer_dir):
    """`python -m packsft` (and the `packsft` script) run cli.run: exit handlers, flushed streams, the status of
    `main`; a piped reader gets every line, also where it stops reading early."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "packsft"]
    packed = subprocess.run([*command, "pack", str(data_dir), str(out), "--tokenizer", str(demo_tokenizer_dir), "-q",
                             "--seq-length", "64", "--max-reject-fraction", "0.5"], capture_output=True, text=True,
                            timeout=300)
    assert packed.returncode == 0, packed.stderr
    assert (out / "dataset.json").exists()
    stats = subprocess.run([*command, "stats", str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert stats.returncode == 0 and json.loads(stats.stdout) == json.loads(run("stats", str(out), "--json")[1])
    missing = subprocess.run([*command, "stats", str(tmp_path / "nothing")], capture_output=True, text=True, timeout=300)
    assert missing.returncode == run("stats", str(tmp_path / "nothing"))[0] != 0
    assert "nothing" in missing.stderr
    # The reader closes the pipe after one line: no BrokenPipeError report, status 0.
    shell = f"{shlex.join([*command, 'inspect', str(out), '--chunk', '0'])} | head -n 1"
    piped = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, timeout=300)
    assert piped.stdout.count("\n") == 1 and "Error" not in piped.stderr and "Broken" not in piped.stderr
