"""Fuzzing: generated conversations, valid and not, through read -> render -> pack -> write -> verify -> load.

Every record either packs (and the output verifies clean, --deep included) or is rejected with a reason
(counted in the stats and listed in rejects.jsonl); read + rejected = every record, and read = packed +
dropped. CI runs a bounded number of examples; maintainers run more with

    PACKSFT_FUZZ_EXAMPLES=5000 python -m pytest tests/e2e/test_fuzz.py
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packsft import PackConfig
from packsft.errors import InputError, UnusableOutputError
from packsft.read.records import ROLE_ALIASES
from packsft.run import run_pack
from packsft.verify import verify_output
from packsft.write.layout import ARRAY_FILES

EXAMPLES = int(os.environ.get("PACKSFT_FUZZ_EXAMPLES", "100"))
settings.register_profile(
    "packsft-fuzz", max_examples=EXAMPLES, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
FUZZ = settings.get_profile("packsft-fuzz")

TRICKY = [
    "😀👍🏽🇵🇹 family: 👨‍👩‍👧", "e\u0301 a\u0308\u0323 Z\u0351\u0352\u0357", "שלום עולם", "مرحبا بالعالم 123",
    "\u202eevil\u202c \u200f\u200e", "a\x00b\x00", "\x01\x07\x1b[31mred\x1b[0m\x7f", "\t\n\r\n", "\ufeff\u200b\u2028",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ﷽", "<|user|> <|assistant|> <|endoftext|> <|pad|>",
]
ROLES = ["user", "assistant", "system", "human", "gpt", " Model", "GPT ", "tool", "", "ユーザー", "USER\x00"]
STRATEGIES = ("linear", "aligned", "bestfit")

texts = st.one_of(
    st.text(max_size=30),
    st.sampled_from(TRICKY),
    st.just(""),
    st.builds(lambda unit, n: unit * n, st.sampled_from(["word ", "😀", "ab\u0301", "x"]), st.integers(200, 3000)),
)
roles = st.one_of(st.sampled_from(ROLES), st.text(max_size=8))


def maybe(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), inner)


def message_lists(message: st.SearchStrategy) -> st.SearchStrategy:
    """A `messages` value: null, or a list (maybe empty) of messages, some of them null."""
    return st.one_of(st.none(), st.lists(maybe(message), max_size=6))


# Each kind of file: the arrow type of its `messages` column and a strategy for one value of it.
STRUCT = pa.struct([("role", pa.string()), ("content", pa.string())])
KINDS: dict[str, tuple[pa.DataType, st.SearchStrategy]] = {
    "chat": (pa.list_(STRUCT), message_lists(st.fixed_dictionaries({"role": maybe(roles), "content": maybe(texts)}))),
    "chat-extra-fields": (
        pa.list_(pa.struct([("role", pa.string()), ("content", pa.string()), ("weight", pa.int64())])),
        message_lists(st.fixed_dictionaries({"role": roles, "content": texts, "weight": maybe(st.integers(0, 9))})),
    ),
    "no-role-field": (pa.list_(pa.struct([("content", pa.string())])), message_lists(st.fixed_dictionaries({"content": texts}))),
    "int-role": (pa.list_(pa.struct([("role", pa.int64()), ("content", pa.string())])),
                 message_lists(st.fixed_dictionaries({"role": st.integers(-5, 5), "content": texts}))),
    "int-content": (pa.list_(pa.struct([("role", pa.string()), ("content", pa.int64())])),
                    message_lists(st.fixed_dictionaries({"role": roles, "content": st.integers(0, 9)}))),
    "list-of-strings": (pa.list_(pa.string()), message_lists(texts)),
    "map-messages": (pa.list_(pa.map_(pa.string(), pa.string())),
                     message_lists(st.lists(st.tuples(st.sampled_from(["role", "content"]), texts), max_size=2))),
    "string": (pa.string(), maybe(texts)),
    "integer": (pa.int64(), maybe(st.integers(-(2**63), 2**63 - 1))),
}


def expected_valid(value: Any) -> bool:
    """An independent statement of which `messages` values are conversations (records.validate_messages).

    A string column holds JSON text: its value is the conversation it decodes to."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return False
    if not isinstance(value, list) or not value:
        return False
    for message in value:
        if not isinstance(message, Mapping):
            return False
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str) or role.strip().lower() not in ROLE_ALIASES:
            return False
        if message.get("weight") not in (None, 0, 1):  # OpenAI's per-message weight is 0 or 1
            return False
    return True


@st.composite
def input_files(draw) -> tuple[str, pa.Table]:
    kind = draw(st.sampled_from(sorted(KINDS)))
    arrow_type, values = KINDS[kind]
    rows = draw(st.lists(values, min_size=1, max_size=8))
    columns = {"messages": pa.array(rows, type=arrow_type)}
    if draw(st.booleans()):
        columns["source"] = pa.array(draw(st.lists(maybe(st.sampled_from(TRICKY + ["a", "b"])), min_size=len(rows), max_size=len(rows))), pa.string())
    return kind, pa.table(columns)


def _without_long_for_linear(options: dict) -> dict:
    # Linear packing streams conversations across rows: --long does not apply to it.
    return {**options, "long": None} if options["strategy"] == "linear" else options


pack_configs = st.builds(
    dict,
    strategy=st.sampled_from(STRATEGIES),
    seq_length=st.sampled_from([2, 3, 5, 8, 16, 64]),
    long=st.sampled_from([None, "split", "truncate", "drop"]),
    mask=st.sampled_from(["assistant_only", "all"]),
    unprompted=st.sampled_from(["keep", "mask", "drop"]),
    turn_cut=st.sampled_from([0, 1, 64]),
    # chat: the ChatML demo tokenizer, rendered by the fast chat path; verify --deep re-packs with HF.
    template=st.sampled_from(["roles", "chat"]),
).map(_without_long_for_linear)


def check_pack(data: Path, out: Path, tokenizers: dict[str, Path], options: dict, total: int, valid: int | None) -> None:
    """Pack, verify (deep), load; and account for every record. `tokenizers` by template (roles, chat)."""
    tokenizer = tokenizers[options["template"]]
    try:  # rejects are what this test is about: any share of them is accepted
        result = run_pack(data, out, PackConfig(tokenizer=str(tokenizer), max_reject_fraction=1.0, **options),
                          quiet=True)
    except UnusableOutputError as refused:  # nothing packed: refused, and nothing looks complete
        assert "nothing packed (0 chunks)" in str(refused) and not (out / "dataset.json").exists()
        return
    problems = verify_output(out, deep=True)
    assert problems == [], [str(p) for p in problems]
    stats = result.dataset["stats"]
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text(encoding="utf-8").split("\n")[:-1]]
    # A valid record with no trained token is read, dropped, and listed as a reject too (its reason says why).
    assert stats["conversations_read"] + stats["records_rejected"] - stats["conversations_dropped_no_trained"] == total
    assert stats["conversations_read"] == stats["conversations_packed"] + stats["conversations_dropped"]
    assert len(rejects) == stats["records_rejected"] == sum(stats["rejected_by_reason"].values())
    assert all(entry["reason"] and isinstance(entry["row"], int) for entry in rejects)
    assert len({(entry["file"], entry["row"]) for entry in rejects}) == len(rejects)
    if valid is not None:
        assert stats["conversations_read"] == valid
    for shard in result.dataset["shards"]:
        arrays = {name: np.load(out / "shards" / shard["name"] / name, mmap_mode="r", allow_pickle=False)
                  for name in ARRAY_FILES}
        assert arrays["tokens.npy"].shape == (shard["rows"], options["seq_length"] + 1)
        assert int(arrays["loss_mask.npy"].sum()) <= shard["rows"] * options["seq_length"]
    if stats["chunks"]:
        assert stats["trained_tokens_kept"] > 0  # conversations without a trained token are dropped


@pytest.mark.slow
@FUZZ
@given(files=st.lists(input_files(), min_size=1, max_size=3), options=pack_configs)
def test_every_parquet_record_packs_and_verifies_or_is_rejected_with_a_reason(demo_tokenizer_dir, chatml_dir, files,
                                                                             options):
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        for index, (_, table) in enumerate(files):
            pq.write_table(table, data / f"part-{index}.parquet")
        valid = sum(expected_valid(value) for _, table in files for value in table.column("messages").to_pylist())
        total = sum(table.num_rows for _, table in files)
        check_pack(data, Path(tmp) / "out", {"roles": demo_tokenizer_dir, "chat": chatml_dir}, options, total, valid)


# --- JSON Lines: lone surrogates and shapes parquet cannot hold ---------------------------------------------


surrogates = st.characters(categories=["Cs"])
json_text = st.one_of(texts, st.builds(lambda a, s, b: a + s + b, st.text(max_size=5), surrogates, st.text(max_size=5)))
json_message = st.one_of(
    st.fixed_dictionaries({"role": roles, "content": json_text}),
    st.fixed_dictionaries({"role": st.one_of(st.none(), st.integers(), st.lists(st.integers(), max_size=2)),
                           "content": st.one_of(st.none(), json_text, st.integers(), st.floats(allow_nan=False))}),
    st.fixed_dictionaries({"content": json_text}),
    st.one_of(st.none(), json_text, st.integers(), st.lists(st.integers(), max_size=2)),
)
json_records = st.one_of(
    st.fixed_dictionaries({"messages": st.lists(json_message, max_size=5)}),
    st.fixed_dictionaries({"messages": st.one_of(st.none(), json_text, st.integers(), st.booleans(),
                                                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))}),
    st.fixed_dictionaries({"text": json_text}),
    st.one_of(st.lists(st.integers(), max_size=2), st.integers(), json_text),  # a line that is not an object
)


@pytest.mark.slow
@FUZZ
@given(records=st.lists(json_records, min_size=1, max_size=8), options=pack_configs)
def test_every_jsonl_record_packs_and_verifies_or_is_rejected_with_a_reason(demo_tokenizer_dir, chatml_dir, records,
                                                                           options):
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        # ensure_ascii writes lone surrogates as \\udXXX escapes: valid JSON text, invalid Unicode once decoded.
        (data / "records.jsonl").write_text("".join(json.dumps(r, ensure_ascii=True) + "\n" for r in records))
        first = records[0]
        if not (isinstance(first, dict) and ("messages" in first or "conversations" in first)):
            # The format of a file is detected from its first record: a file that does not open with a
            # conversation is a bad file, refused with an error naming it (never a crash, never partial output).
            with pytest.raises(InputError, match=r"records\.jsonl: "):
                tokenizer = chatml_dir if options["template"] == "chat" else demo_tokenizer_dir
                run_pack(data, Path(tmp) / "out", PackConfig(tokenizer=str(tokenizer), **options), quiet=True)
            assert not (Path(tmp) / "out" / "dataset.json").exists()
            return
        check_pack(data, Path(tmp) / "out", {"roles": demo_tokenizer_dir, "chat": chatml_dir}, options, len(records), None)
