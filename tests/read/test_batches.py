"""Read batches end at --batch-size records or at reader.BATCH_CHARS characters of content, whichever comes first;
where they end never changes a row."""

from __future__ import annotations

import pytest

import packsft.read.reader
from packsft import PackConfig
from packsft.read.reader import open_input, read_conversations
from packsft.read.records import RejectLedger
from packsft.run import run_pack
from tests.helpers import conv, output_arrays, write_conversations


@pytest.fixture
def long_records(tmp_path):
    records = [conv(("user", f"Question {i}? " * (i + 1)), ("assistant", "Answer. " * (50 * (i % 5 + 1))))
               for i in range(40)]
    return write_conversations(tmp_path / "data" / "long.parquet", records)


def test_a_batch_ends_at_the_character_bound(long_records, monkeypatch):
    monkeypatch.setattr(packsft.read.reader, "BATCH_CHARS", 3_000)
    batches = [batch for batch, _ in read_conversations(open_input(long_records), "conversation", RejectLedger(),
                                                          batch_size=1024)]
    assert len(batches) > 5 and sum(len(batch) for batch in batches) == 40
    for batch in batches:
        chars = [sum(len(content) for _, content in c.messages) for c in batch]
        assert sum(chars[:-1]) < 3_000 <= sum(chars) or batch is batches[-1]


def test_where_batches_end_changes_no_row(tmp_path, long_records, demo_tokenizer_dir, monkeypatch):
    config = PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=256)
    run_pack(long_records.parent, tmp_path / "one", config, quiet=True, no_store=True)
    monkeypatch.setattr(packsft.read.reader, "BATCH_CHARS", 1_000)
    run_pack(long_records.parent, tmp_path / "many", config, quiet=True, no_store=True)
    assert output_arrays(tmp_path / "one") == output_arrays(tmp_path / "many")
