"""Conversations stored as JSON text (a string column or key) pack like structs."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from packsft.cli import main
from tests.helpers import GOOD, write_conversations
from tests.helpers import cli_pack as pack
from tests.helpers import output_arrays as arrays

ROLES = {"user": "human", "assistant": "gpt"}


def _as_sharegpt(record: dict) -> dict:
    return {"conversations": [{"from": ROLES[m["role"]], "value": m["content"]} for m in record["messages"]]}


@pytest.mark.parametrize("shape", ["messages", "conversations"])
@pytest.mark.parametrize("container", ["parquet", "jsonl"])
def test_json_text_conversations_pack_like_structs(tmp_path, demo_tokenizer_dir, shape, container):
    records = GOOD if shape == "messages" else [_as_sharegpt(r) for r in GOOD]
    as_text = [{shape: json.dumps(r[shape])} for r in records] + [{shape: '[{"role": "user"'}]
    structs, text = tmp_path / "structs", tmp_path / "text"
    write_conversations(structs / "a.parquet", records)
    if container == "parquet":
        write_conversations(text / "a.parquet", as_text)
    else:
        (text).mkdir()
        (text / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in as_text))
    assert pack(structs, tmp_path / "out-structs", demo_tokenizer_dir).exit_code == 0
    result = CliRunner().invoke(main, ["pack", str(text), str(tmp_path / "out-text"), "--tokenizer",
                                       str(demo_tokenizer_dir), "--seq-length", "32", "--max-reject-fraction", "0.2"])
    assert result.exit_code == 0, result.output
    shape_name = {"messages": "smoltalk" if container == "parquet" else "openai", "conversations": "sharegpt"}[shape]
    kind = "column" if container == "parquet" else "key"
    assert f"packsft: input format {shape_name} (auto, from the '{shape}' {kind} of JSON text) for 1 file" in result.output
    assert arrays(tmp_path / "out-text") == arrays(tmp_path / "out-structs")
    stats = json.loads((tmp_path / "out-text" / "dataset.json").read_text())["stats"]
    assert stats["rejected_by_reason"] == {f"{shape} is not valid JSON": 1}
    reject = json.loads((tmp_path / "out-text" / "rejects.jsonl").read_text())
    assert reject["row"] == len(GOOD) and reject["reason"].startswith(f"{shape} is not valid JSON (got ")


def test_json_text_is_named_when_the_input_format_is_given(tmp_path, demo_tokenizer_dir):
    write_conversations(tmp_path / "data" / "a.parquet", [{"messages": json.dumps(r["messages"])} for r in GOOD])
    result = CliRunner().invoke(main, ["pack", str(tmp_path / "data"), str(tmp_path / "out"), "--tokenizer",
                                       str(demo_tokenizer_dir), "--seq-length", "32", "--input-format", "smoltalk"])
    assert result.exit_code == 0, result.output
    assert "packsft: input format smoltalk, conversations as JSON text (decoded per record) in 1 file" in result.output
