"""`packsft pack --dry-run --limit N`: the first N records rendered with their trained text marked, the counts
and the records the pack would reject, and nothing written (OUT_DIR is not created)."""

from __future__ import annotations

import json

from packsft import PackConfig
from packsft.run.preview import format_preview, preview
from tests.helpers import cli_run

RECORDS = [
    {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]},
    {"text": "no messages here"},
    {"messages": [{"role": "user", "content": "Only a question"}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4"}]},
    {"messages": [{"role": "user", "content": "never read"}, {"role": "assistant", "content": "x"}]},
]

EXPECTED = """\
── d.jsonl:0 ── 11 tokens, 6 trained
<|beginoftext|><|user|>Hi?[[<|assistant|>Hello.<|endoftext|>]]
── d.jsonl:3 ── 18 tokens, 3 trained
<|beginoftext|><|system|>Be brief.<|user|>2+2?[[<|assistant|>4<|endoftext|>]]

dry run: 4 records read, 2 renderings kept, 29 tokens, 9 trained; 1 rendering longer than a row of 17 tokens
would reject 2 records
       1  record has no 'messages' field
       1  no assistant message
  d.jsonl:1: record has no 'messages' field
  d.jsonl:2: no assistant message
nothing was written (drop --dry-run to pack)
"""


def test_dry_run_shows_the_first_records_marked_and_writes_nothing(tmp_path, demo_tokenizer_dir):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in RECORDS))
    result = cli_run("pack", str(data), str(tmp_path / "out"), "--tokenizer", str(demo_tokenizer_dir),
                     "--seq-length", "16", "--dry-run", "--limit", "4")
    assert result.exit_code == 0, result.output
    assert result.output == EXPECTED
    assert not (tmp_path / "out").exists()


def test_the_preview_counts_as_the_pack_does(tmp_path, demo_tokenizer_dir):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in RECORDS))
    shown = preview(data, PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=16), limit=2)
    assert (shown.records, len(shown.examples), dict(shown.rejected)) == (2, 1, {"record has no 'messages' field": 1})
    assert "[[<|assistant|>Hello.<|endoftext|>]]" in format_preview(shown)


def test_limit_without_dry_run_is_a_usage_error(tmp_path, demo_tokenizer_dir):
    result = cli_run("pack", str(tmp_path), str(tmp_path / "out"), "--limit", "3")
    assert result.exit_code == 2
    assert "Error: --limit applies to --dry-run only; pass --dry-run to preview the first records" in result.output
