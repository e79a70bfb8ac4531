"""Helpers shared by the test modules (fixtures live in conftest.py): records, parquet files, outputs.

    conv / write_conversations      records and a parquet file of them
    assert_output_verifies          fail with every problem `packsft verify` finds
    rewrite_array / load_array      damage a shard's array consistently, to test the semantic checks
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from packsft import verify_output
from packsft.cli import main
from packsft.read.records import ChatExtras, Conversation, validate_chat
from packsft.render.tokenizer import flatten_ids
from packsft.write.layout import ARRAY_FILES, sha256_file

# ChatML with generation blocks (newlines as expressions: transformers renders with trim_blocks) around what the assistant says (content + <|im_end|>).
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ m.content }}<|im_end|>{{ '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3's habit in a few lines: the last turn renders an empty think block, history does not; with
# enable_thinking false the empty block moves into the generation prompt (the rewritten-turns advice).
THINKING = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and loop.last %}<think>\n\n</think>\n\n{% endif %}{{ m.content }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def write_conversations(path: Path, records: list[dict], row_group_size: int | None = None) -> Path:
    """Write records (dicts with 'messages' and optionally 'source') to a parquet file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=row_group_size)
    return path


def conv(*turns: tuple[str, str], source: str | None = None) -> dict:
    record: dict = {"messages": [{"role": role, "content": content} for role, content in turns]}
    if source is not None:
        record["source"] = source
    return record


def assert_output_verifies(out_dir: str | Path, deep: bool = False) -> None:
    """Fail with every problem `packsft verify` finds in out_dir."""
    problems = verify_output(out_dir, deep=deep)
    assert not problems, "packsft verify found:\n" + "\n".join(str(p) for p in problems)


def rewrite_array(out_dir: Path, shard: int, name: str, array: np.ndarray) -> None:
    """Replace a shard's array and fix up its metadata in manifest.json and dataset.json (both agree),
    so that only the semantic checks of verify can notice what changed."""
    folder = out_dir / "shards" / f"{shard:05d}"
    np.save(folder / name, array, allow_pickle=array.dtype == object)
    meta = {"shape": list(array.shape), "dtype": str(array.dtype), "bytes": (folder / name).stat().st_size,
            "sha256": sha256_file(folder / name)}
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = meta
    (folder / "manifest.json").write_text(json.dumps(manifest))
    dataset = json.loads((out_dir / "dataset.json").read_text())
    dataset["shards"][shard]["files"][name] = meta
    (out_dir / "dataset.json").write_text(json.dumps(dataset))


def load_array(out_dir: Path, shard: int, name: str) -> np.ndarray:
    return np.load(out_dir / "shards" / f"{shard:05d}" / name, allow_pickle=False)


# Ids of the stand-in tokenizer below: pad, BOS, EOS and the three role tokens.
BOS, EOS, PAD, USR, ASST, SYS = 1, 2, 0, 3, 4, 5


class FakeTokenizer:
    """A stand-in tokenizer for rendering tests: content 'n:k' encodes to n tokens 10 + (k + i) % 1000 (never special)."""

    bos_id, eos_id, pad_id = BOS, EOS, PAD
    role_ids = {"user": USR, "assistant": ASST, "system": SYS}

    def encode_texts(self, texts):
        out = []
        for text in texts:
            n, k = map(int, text.split(":"))
            out.append([10 + (k + i) % 1000 for i in range(n)])
        return out

    def encode_texts_flat(self, texts):
        return flatten_ids(self.encode_texts(texts))


# -- agentic records (OpenAI tool calling), for the chat and model tests ------------------------------------------
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
SEARCH = {"type": "function", "function": {
    "name": "search", "description": "Search the web.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "top": {"type": "integer"}}}}}


def call(name: str, arguments, call_id: str = "call_0") -> dict:
    return {"type": "function", "id": call_id, "function": {"name": name, "arguments": arguments}}


def record(messages: list[dict], tools=None, kwargs=None) -> Conversation:
    """A Conversation as the reader builds it from an OpenAI-style record."""
    pairs, fields, train = validate_chat(messages)
    return Conversation(pairs, extras=ChatExtras(fields, train, tools, kwargs))


AGENT = [
    {"role": "system", "content": "You are a travel assistant."},
    {"role": "user", "content": "Is it warm in Paris and Rome today?"},
    {"role": "assistant", "content": "", "tool_calls": [call("get_weather", '{"city": "Paris"}', "a"),
                                                         call("get_weather", {"city": "Rome"}, "b")]},
    {"role": "tool", "tool_call_id": "a", "content": '{"temp": 21}'},
    {"role": "tool", "tool_call_id": "b", "content": '{"temp": 27}'},
    {"role": "assistant", "content": "Rome is warmer (27 °C) than Paris (21 °C)."},
    {"role": "user", "content": "Find me a museum in Rome."},
    {"role": "assistant", "content": "Searching.", "tool_calls": [call("search", '{"query": "museum Rome"}')]},
    {"role": "tool", "content": "Vatican Museums; Borghese Gallery"},
    {"role": "assistant", "content": "Try the Borghese Gallery.", "reasoning_content": "The user wants one."},
]


# Good conversations, and the CLI as the tests of bad runs, inputs, full disks and arrays drive it.
GOOD = [conv(("user", f"Question {i}?"), ("assistant", f"Answer number {i}. " * (i % 4 + 1))) for i in range(9)]


def cli_run(*args: str):
    return CliRunner().invoke(main, list(args))


def cli_pack(data, out: Path, tokenizer: Path, *extra: str):
    """`packsft pack DATA... OUT --tokenizer T --seq-length 32 -q EXTRA...` (data: a path or a list of them)."""
    inputs = [str(d) for d in data] if isinstance(data, list) else [str(data)]
    return cli_run("pack", *inputs, str(out), "--tokenizer", str(tokenizer), "--seq-length", "32", "-q", *extra)


def error_line(result) -> str:
    """The one-line error of a failed command (exit 1, no traceback)."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1, result.output
    return result.output.strip()


def output_arrays(out: Path) -> dict[str, bytes]:
    """Every array file of an output's shards, by shard/name."""
    return {f"{shard.name}/{name}": (shard / name).read_bytes()
            for shard in sorted((out / "shards").iterdir()) if not shard.name.startswith(".")
            for name in ARRAY_FILES}
