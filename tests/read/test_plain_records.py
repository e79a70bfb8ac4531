"""read/plain_records.py: plain {role, content} records of a parquet file are validated from their Arrow columns, and
read exactly as through a dict per message: the same conversations, the same rejects with the same reasons."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import packsft.read.reader as reader
from packsft.read.plain_records import plain_column
from packsft.read.reader import PlainRecord, open_input, read_conversations
from packsft.read.records import RejectLedger

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])


def message(role, content):
    return {"role": role, "content": content}


# Plain ones, and every way a record of this column type can fail to be plain (each read the slow way).
RECORDS = [
    [message("system", "Be brief."), message("user", "Hi"), message("assistant", "Hello!")],
    [message(" Human ", "Ça va ? 你好 🙂"), message("GPT", "Oui.")],  # aliases, any case and spaces; non-ASCII
    None,  # a null list
    [],  # an empty one
    [message(None, "no role"), message("assistant", "x")],
    [message("user", "q"), message("wizard", "unknown role")],
    [message("user", "q"), message("function_call", '{"name": "f", "arguments": {}}')],
    [message("user", None), message("assistant", "no content above")],
    [message("user", "q"), None],  # a null message
    [message("user", "the last plain one"), message("assistant", "yes")],
]


@pytest.fixture
def chats(tmp_path):
    path = tmp_path / "chats.parquet"
    table = pa.table({"messages": pa.array(RECORDS, pa.list_(MESSAGE)),
                      "source": pa.array([f"s{i % 3}" for i in range(len(RECORDS))])})
    pq.write_table(table, path, row_group_size=4)  # batches that start inside the list column's buffers
    return path


def _read(path, **options):
    rejects = RejectLedger()
    conversations = [c for batch, _ in read_conversations(open_input(path), "conversation", rejects, batch_size=3,
                                                          **options) for c in batch]
    return conversations, rejects.entries


def test_plain_records_read_as_through_dicts(chats, monkeypatch):
    fast = _read(chats)
    monkeypatch.setattr(reader, "_reads_plain", lambda source, parquet: False)
    assert fast == _read(chats)
    conversations, rejects = fast
    assert [c.row for c in conversations] == [0, 1, 9]
    assert conversations[1].messages == (("user", "Ça va ? 你好 🙂"), ("assistant", "Oui."))
    assert [c.source for c in conversations] == ["s0", "s1", "s0"]
    assert len(rejects) == 7


def test_only_plain_records_skip_the_dicts(chats):
    source = open_input(chats)
    values = [value for _, value, _ in reader._raw_records(source, "chats", 3, plain=True)]
    assert [i for i, value in enumerate(values) if isinstance(value, PlainRecord)] == [0, 1, 9]
    assert values[2] == {"messages": None} and values[8] == {"messages": [message("user", "q"), None]}


@pytest.mark.parametrize("kind, plain", [
    (pa.list_(MESSAGE), True),
    (pa.large_list(pa.struct([("content", pa.large_string()), ("role", pa.string())])), True),
    (pa.list_(pa.struct([("role", pa.string()), ("content", pa.string()), ("name", pa.string())])), False),
    (pa.list_(pa.struct([("role", pa.string()), ("content", pa.list_(pa.string()))])), False),
    (pa.string(), False),  # JSON text
])
def test_which_columns_are_read_plain(kind, plain):
    assert plain_column(kind) is plain
