"""The small things a new user meets on the first day (issue 28 item 6), each with its exact text.

The summary names what it reads and what it rejects alike (records) and shows every piece counter; a record
without a `source` counts under its file; counts take their plural only when they are not one; library advice
stays out of the progress bar; a mixture names the field its outputs differ in; paths in a TOML config are read
from the file's folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from packsft import PackConfig, PackedOutput
from packsft.cli import main
from packsft.config import resolve_config
from packsft.run import run_pack
from packsft.stats import counted, format_summary, records_read
from tests.helpers import conv, write_conversations

REPO = Path(__file__).resolve().parents[1]
RECORDS = [conv(("user", f"Question {i}?"), ("assistant", f"Answer {i}.")) for i in range(6)]


@pytest.fixture(scope="module")
def packed(tmp_path_factory, demo_tokenizer_dir) -> Path:
    """Two files, one with a `source` column and one without; one empty record rejected at validation."""
    root = tmp_path_factory.mktemp("first-day")
    write_conversations(root / "data" / "a.parquet", [dict(r, source="chat") for r in RECORDS[:3]])
    write_conversations(root / "data" / "sub" / "b.parquet", RECORDS[3:] + [{"messages": []}])
    config = PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=64, max_reject_fraction=0.5)
    return run_pack(root / "data", root / "out", config, quiet=True).out_dir


def test_summary_counts_records_read_and_rejected_alike_and_shows_every_piece_counter(packed):
    dataset = PackedOutput(packed).dataset
    stats = dataset["stats"]
    assert (stats["conversations_read"], stats["records_rejected"], records_read(stats)) == (6, 1, 7)
    lines = format_summary(dataset).splitlines()
    start = lines.index("  records read 7, rejected 1, filtered by source 0")
    assert lines[start:start + 4] == [
        "  records read 7, rejected 1, filtered by source 0",
        "         1  empty message list",
        "  conversations packed 6, split 0, truncated 0, dropped 0",
        "  pieces 6 (0 from splits), exchanges split 0, prompts shortened 0",
    ]


def test_a_record_without_source_counts_under_its_file(packed):
    stats = PackedOutput(packed).dataset["stats"]
    assert {name: row["conversations"] for name, row in stats["per_source"].items()} == {"chat": 3, "sub/b.parquet": 3}
    text = format_summary(PackedOutput(packed).dataset)
    assert "\n  chat                            3 " in text and "\n  sub/b.parquet                   3 " in text


def test_summary_of_an_older_output_still_reads(packed):
    """Stats written before this version: no piece counters, a '(none)' source; the summary still prints."""
    dataset = json.loads((packed / "dataset.json").read_text())
    for key in ("pieces", "pieces_split", "exchanges_split", "prompts_shortened"):
        del dataset["stats"][key]
    dataset["stats"]["per_source"] = {"(none)": dataset["stats"]["per_source"]["chat"]}
    text = format_summary(dataset)
    assert "  pieces 0 (0 from splits), exchanges split 0, prompts shortened 0" in text
    assert "  source " not in text  # one unnamed source: no table, as before


def test_many_sources_are_cut_to_twenty_rows(packed):
    dataset = json.loads((packed / "dataset.json").read_text())
    row = dataset["stats"]["per_source"]["chat"]
    dataset["stats"]["per_source"] = {f"data/part-{i:05d}-of-a-long-name.parquet": row for i in range(23)}
    dataset["stats"]["per_source"]["a/very/long/folder/name/that/goes/on/and/on/part-00000.parquet"] = row
    lines = format_summary(dataset).splitlines()
    head = lines.index("  " + "source".ljust(38) + "    convs    fill  retention  truncated")  # the longest name shown
    assert lines[head + 1] == "  data/part-00000-of-a-long-name.parquet        3   66.2%     100.0%          0"
    assert len(lines[head + 1 : head + 21]) == 20 and lines[head + 21] == (
        "  ... and 4 more sources (all of them: packsft stats --json)")
    dataset["stats"]["per_source"] = {"a/very/long/folder/name/that/goes/on/and/on/part-00000.parquet": row, "b": row}
    assert "\n  a/very/long/folder/name/…d/on/part-00000.parquet        3 " in format_summary(dataset)


def test_counts_are_plural_unless_one(tmp_path, demo_tokenizer_dir):
    assert [counted(n, "file") for n in (0, 1, 2, 1024)] == ["0 files", "1 file", "2 files", "1,024 files"]
    write_conversations(tmp_path / "d" / "x.parquet", RECORDS)
    result = CliRunner().invoke(main, ["pack", str(tmp_path / "d"), str(tmp_path / "out"), "--tokenizer",
                                       str(demo_tokenizer_dir), "--seq-length", "64"])
    assert result.exit_code == 0, result.output
    assert "s (1 unit packed, 0 already done)\n" in result.output


def test_transformers_advice_stays_out_of_the_run():
    """Without PyTorch, transformers logs "PyTorch was not found" as it is imported: not under packsft's CLI."""
    script = ("import sys; sys.modules['torch'] = None\n"
              "from packsft.cli import main\n"
              "try:\n    main(['pack', '--help'])\nexcept SystemExit:\n    pass\n"
              "import transformers\n")
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    quiet = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert quiet.returncode == 0, quiet.stderr
    assert "PyTorch was not found" not in quiet.stderr
    # The same import without the CLI's setting shows it: the check above can fail.
    loud = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None\nimport transformers\n"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert "PyTorch was not found" in loud.stderr


def test_toml_paths_are_read_from_the_files_folder(tmp_path, demo_tokenizer_dir, monkeypatch):
    folder = tmp_path / "project"
    (folder / "templates").mkdir(parents=True)
    (folder / "tok").symlink_to(demo_tokenizer_dir)
    (folder / "config.toml").write_text('tokenizer = "tok"\nchat-template = "templates/chat.jinja"\n')
    monkeypatch.chdir(tmp_path)  # another working directory
    config = resolve_config(folder / "config.toml")
    assert (config.tokenizer, config.chat_template) == (str(folder / "tok"), str(folder / "templates" / "chat.jinja"))
    # A hub name, an absolute path and a flag stay as given.
    (folder / "hub.toml").write_text(f'tokenizer = "Qwen/Qwen3-8B"\nchat_template = "{folder / "x.jinja"}"\n')
    config = resolve_config(folder / "hub.toml")
    assert (config.tokenizer, config.chat_template) == ("Qwen/Qwen3-8B", str(folder / "x.jinja"))
    assert resolve_config(folder / "config.toml", tokenizer="gpt2").tokenizer == "gpt2"


def test_mixture_names_the_field_that_differs(tmp_path, demo_tokenizer_dir):
    pytest.importorskip("torch")
    from packsft.errors import ConfigError
    from packsft.loader import MixtureLoader

    write_conversations(tmp_path / "d" / "x.parquet", RECORDS)
    outs = [run_pack(tmp_path / "d", tmp_path / f"out{n}", PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=n),
                     quiet=True).out_dir for n in (64, 96)]
    with pytest.raises(ConfigError) as error:
        MixtureLoader({outs[0]: 0.5, outs[1]: 0.5}, 2)
    assert str(error.value) == (f"{outs[1]} and {outs[0]} differ in seq_length (96 and 64); a mixture needs outputs "
                                "packed alike")


def test_the_progress_bar_ends_at_its_total(tmp_path, demo_tokenizer_dir):
    """The bar of a --workers 1 pack advances by input records, rejected ones included (it ended at 2192/2209 on
    ShareGPT shard 0: records rejected while read were never counted)."""
    import io

    from tqdm import tqdm

    from packsft import load_tokenizer
    from packsft.read.records import RejectLedger
    from packsft.stages import open_unit, read_unit

    records = [conv(("user", f"q{i}"), ("assistant", f"a{i}")) for i in range(5)]
    records.insert(2, {"messages": []})  # rejected by the reader
    records.insert(4, {"messages": [{"role": "user", "content": "no answer"}]})  # rejected as untrainable
    path = write_conversations(tmp_path / "data" / "a.parquet", records)

    class Part:
        name, row_groups = "a.parquet", None

    Part.path = path
    config = PackConfig(tokenizer=str(demo_tokenizer_dir), batch_size=2)
    rejects = RejectLedger()
    with tqdm(total=len(records), file=io.StringIO()) as bar:
        read_unit([Part], open_unit([Part], config), config, load_tokenizer(str(demo_tokenizer_dir)), rejects, bar)
        assert (bar.n, rejects.total) == (len(records), 2)
