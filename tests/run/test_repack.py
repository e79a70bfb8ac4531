"""The rendered-token store and `packsft repack`: rows of another length, strategy or layout built from the renderings
a pack kept, without reading or tokenizing a record, byte for byte what a fresh pack with those settings writes.

Data: the demo conversations in small parquet files (one with a bad record, so rejects travel too), the demo
tokenizer, units of a few row groups.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import packsft.render.tokenizer
import packsft.run.unit
from packsft import PackConfig
from packsft.demo import DATA_DIR as DEMO_DATA
from packsft.errors import BadRecordError, ConfigError, OutputError
from packsft.render.markers import OMITTED_MARKER
from packsft.render.tokenizer import PackTokenizer
from packsft.run import run_pack
from packsft.run.outdir import read_plan
from packsft.run.repack import run_repack
from packsft.store.rendered import MARKERS_DIR, STORE_DIR
from packsft.write.layout import DATASET_JSON, REJECTS_JSONL
from tests.helpers import assert_output_verifies, cli_run, output_arrays

UNIT_BYTES = 4_000


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    table = pq.read_table(next(Path(DEMO_DATA).glob("*.parquet")), columns=["messages", "source"])
    folder = tmp_path_factory.mktemp("data")
    for index in range(4):
        part = table.slice(index * 20, 20)
        if index == 1:  # one bad record: its reject must come back from the store
            messages = part.column("messages").to_pylist()
            messages[3] = []
            part = part.set_column(0, "messages", pa.array(messages, part.schema.field("messages").type))
        pq.write_table(part, folder / f"part-{index}.parquet", row_group_size=5)
    return folder


@pytest.fixture(scope="module")
def config(demo_tokenizer_dir) -> PackConfig:
    return PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=256)


@pytest.fixture(scope="module")
def packed(tmp_path_factory, data_dir, config) -> Path:
    out = tmp_path_factory.mktemp("packed") / "out"
    run_pack(data_dir, out, config, quiet=True, unit_bytes=UNIT_BYTES)
    return out


def _no_reading(monkeypatch, *, backend: bool = False) -> list[str]:
    """Make reading a unit (and, unless `backend`, building the Rust tokenizer) an error, and record every text the
    tokenizer encodes: what a repack may encode."""
    encoded: list[str] = []

    def recorded(original):
        def encode(self, texts, *args, **kwargs):
            encoded.extend(texts)
            return original(self, texts, *args, **kwargs)
        return encode

    def read_unit(*args, **kwargs):
        raise AssertionError("a unit was read and rendered")

    monkeypatch.setattr(packsft.run.unit, "read_unit", read_unit)
    def built(self):
        raise AssertionError("the Rust tokenizer was built")

    if not backend:  # token texts for cuts come from the serialized vocabulary, markers from the store
        monkeypatch.setattr(PackTokenizer, "backend", property(built))
    monkeypatch.setattr(packsft.render.tokenizer, "_TOKEN_TEXTS", {})  # as in a new process: none read yet
    for name in ("encode_texts", "encode_texts_hf", "encode_texts_flat", "encode_batch"):
        monkeypatch.setattr(PackTokenizer, name, recorded(getattr(PackTokenizer, name)))
    return encoded


def _dataset(out: Path) -> dict:
    dataset = json.loads((out / DATASET_JSON).read_text())
    dataset.pop("created", None)
    return dataset


@pytest.mark.parametrize("changes", [
    {"seq_length": 64},
    {"seq_length": 512, "strategy": "aligned"},
    {"seq_length": 128, "pad_multiple": 8, "max_segments": 4},
    {"seq_length": 64, "context_share": 0.5, "cut_at_lines": True, "turn_cut": 16},
    {"strategy": "linear"},
])
def test_repack_writes_the_bytes_of_a_fresh_pack_without_reading_a_record(tmp_path, data_dir, config, packed,
                                                                         changes, monkeypatch):
    fresh = tmp_path / "fresh"
    strategy_default = {"long": None} if "strategy" in changes else {}
    run_pack(data_dir, fresh, replace(config, **changes, **strategy_default), quiet=True, unit_bytes=UNIT_BYTES,
             no_store=True)
    encoded = _no_reading(monkeypatch)
    result = run_repack(packed, tmp_path / "new", changes, quiet=True)
    assert result.dataset is not None and result.packed == len(read_plan(packed).units)
    assert output_arrays(tmp_path / "new") == output_arrays(fresh)
    assert _dataset(tmp_path / "new") == _dataset(fresh)
    assert (tmp_path / "new" / REJECTS_JSONL).read_bytes() == (fresh / REJECTS_JSONL).read_bytes() != b""
    # Nothing is tokenized: the '[… N tokens omitted]' markers of shortened pieces come from the store's marker encoder.
    assert encoded == []
    assert_output_verifies(tmp_path / "new")


def test_without_the_stores_marker_encoder_the_tokenizer_encodes_the_markers(tmp_path, data_dir, config, packed,
                                                                           monkeypatch):
    changes = {"seq_length": 64}
    fresh = tmp_path / "fresh"
    run_pack(data_dir, fresh, replace(config, **changes), quiet=True, unit_bytes=UNIT_BYTES, no_store=True)
    store = tmp_path / "store"
    shutil.copytree(packed / STORE_DIR, store)
    kept = next((store / MARKERS_DIR).glob("*.json"))
    damaged = json.loads(kept.read_text())
    kept.write_text(json.dumps({**damaged, "spec": damaged["spec"].replace('"[": ', '"[": 1')}))  # the hash fails
    plan = json.loads((packed / "plan.json").read_text())
    out = tmp_path / "out"
    shutil.copytree(packed, out, ignore=shutil.ignore_patterns(STORE_DIR))
    (out / "plan.json").write_text(json.dumps({**plan, "store": str(store)}))
    encoded = _no_reading(monkeypatch, backend=True)
    run_repack(out, tmp_path / "new", changes, quiet=True)
    assert output_arrays(tmp_path / "new") == output_arrays(fresh)
    assert encoded and all(text == OMITTED_MARKER.format(n=text.split()[1]) for text in encoded), encoded


def test_a_repacked_output_shares_the_store_and_repacks_in_turn(tmp_path, packed, monkeypatch):
    _no_reading(monkeypatch)
    run_repack(packed, tmp_path / "a", {"seq_length": 64}, quiet=True)
    assert read_plan(tmp_path / "a").store == str((packed / STORE_DIR).resolve())
    assert not (tmp_path / "a" / STORE_DIR).exists()
    run_repack(tmp_path / "a", tmp_path / "b", {"seq_length": 256}, quiet=True)
    assert output_arrays(tmp_path / "b") == output_arrays(packed)


def test_a_pack_that_finds_the_store_builds_its_rows_from_it(tmp_path, data_dir, config, monkeypatch):
    out = tmp_path / "out"
    run_pack(data_dir, out, config, quiet=True, unit_bytes=UNIT_BYTES)
    fresh = tmp_path / "fresh"
    run_pack(data_dir, fresh, replace(config, seq_length=128), quiet=True, unit_bytes=UNIT_BYTES, no_store=True)
    _no_reading(monkeypatch)
    # --overwrite replaces the rows and keeps the store; a second output names the first one's store.
    run_pack(data_dir, out, replace(config, seq_length=128), quiet=True, unit_bytes=UNIT_BYTES, overwrite=True)
    run_pack(data_dir, tmp_path / "other", replace(config, seq_length=128), quiet=True, unit_bytes=UNIT_BYTES,
             store=out / STORE_DIR)
    assert output_arrays(out) == output_arrays(tmp_path / "other") == output_arrays(fresh)


def test_renderings_are_keyed_by_what_decides_them(tmp_path, data_dir, config, packed):
    store = packed / STORE_DIR
    before = {path.name for path in store.glob("??/*")}
    assert len(before) == len(read_plan(packed).units)
    # Another mask renders other flags: new entries beside the old ones, none reused.
    run_pack(data_dir, tmp_path / "all", replace(config, mask="all"), quiet=True, unit_bytes=UNIT_BYTES, store=store)
    after = {path.name for path in store.glob("??/*")}
    assert before < after and len(after) == 2 * len(before)


def test_repack_refuses_what_it_cannot_do_and_says_what_to_run(tmp_path, data_dir, config, packed):
    with pytest.raises(ConfigError, match="mask change the rendering: pack again"):
        run_repack(packed, tmp_path / "new", {"mask": "all"})
    with pytest.raises(OutputError, match="NEW_OUT must differ"):
        run_repack(packed, packed, {"seq_length": 64})
    bare = tmp_path / "bare"
    run_pack(data_dir, bare, config, quiet=True, unit_bytes=UNIT_BYTES, no_store=True)
    with pytest.raises(OutputError, match="keeps no rendered tokens .*--no-store.*packsft pack"):
        run_repack(bare, tmp_path / "new", {"seq_length": 64})
    with pytest.raises(OutputError, match="not a packsft output"):
        run_repack(tmp_path, tmp_path / "new", {"seq_length": 64})


def test_an_input_changed_since_is_named_not_packed_from_stale_tokens(tmp_path, data_dir, config):
    data = tmp_path / "data"
    data.mkdir()
    for path in data_dir.iterdir():
        (data / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    run_pack(data, out, config, quiet=True, unit_bytes=UNIT_BYTES)
    table = pq.read_table(data / "part-2.parquet")
    pq.write_table(table.slice(0, 10), data / "part-2.parquet", row_group_size=5)
    with pytest.raises(OutputError, match=r"part-2.parquet.*not in the rendered-token store.*packsft pack"):
        run_repack(out, tmp_path / "new", {"seq_length": 64}, quiet=True)


def test_strict_refuses_the_rejects_a_stored_unit_holds(tmp_path, data_dir, config, packed):
    with pytest.raises(BadRecordError, match=r"part-1.parquet:3: empty message list"):
        run_pack(data_dir, tmp_path / "new", replace(config, seq_length=64), quiet=True, unit_bytes=UNIT_BYTES,
                 strict=True, store=packed / STORE_DIR)


def test_a_held_out_split_is_repacked_too(tmp_path, data_dir, config, monkeypatch):
    split = replace(config, eval_fraction=0.2)
    run_pack(data_dir, tmp_path / "out", split, quiet=True, unit_bytes=UNIT_BYTES)
    run_pack(data_dir, tmp_path / "fresh", replace(split, seq_length=64), quiet=True, unit_bytes=UNIT_BYTES,
             no_store=True)
    _no_reading(monkeypatch)
    result = run_repack(tmp_path / "out", tmp_path / "new", {"seq_length": 64}, quiet=True)
    assert result.eval is not None and result.eval.dataset is not None
    assert output_arrays(tmp_path / "new" / "eval") == output_arrays(tmp_path / "fresh" / "eval")
    assert output_arrays(tmp_path / "new") == output_arrays(tmp_path / "fresh")


def test_cli_repack(tmp_path, packed):
    result = cli_run("repack", str(packed), str(tmp_path / "new"), "--seq-length", "128")
    assert result.exit_code == 0, result.output
    assert "packsft output:" in result.output and "x 128 tokens" in result.output
    result = cli_run("repack", str(packed), str(tmp_path / "new2"))
    assert result.exit_code == 2 and "name what changes" in result.output
    result = cli_run("repack", str(packed), str(tmp_path / "new3"), "--mask", "all", "--tokenizer", "x")
    assert result.exit_code == 2 and "--mask, --tokenizer would change the rendering" in result.output
    assert "--mask" not in cli_run("repack", "--help").output


def test_a_damaged_entry_is_rendered_again_never_packed(tmp_path, data_dir, config):
    out = tmp_path / "out"
    run_pack(data_dir, out, config, quiet=True, unit_bytes=UNIT_BYTES)
    entry = sorted((out / STORE_DIR).glob("??/*"))[0]
    flags = entry / "flags.npy"
    damaged = bytearray(flags.read_bytes())
    damaged[-1] ^= 1  # one train flag flipped on disk
    flags.write_bytes(bytes(damaged))
    _assert_rendered_again(out, tmp_path, data_dir, config, "not in the rendered-token store .*damaged")


@pytest.mark.parametrize("torn", ["ids.npy", "flags.npy", "entry.json"])
def test_what_a_crash_leaves_of_an_unsynced_entry_is_rendered_again(tmp_path, data_dir, config, torn):
    """Store entries are not fsynced (a cache: load checks every file's sha256): a file a crash left empty or cut
    short, the entry.json included, makes the entry a miss, rendered again, never read."""
    out = tmp_path / "out"
    run_pack(data_dir, out, config, quiet=True, unit_bytes=UNIT_BYTES)
    for entry in sorted((out / STORE_DIR).glob("??/*")):
        path = entry / torn
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2] if torn == "ids.npy" else b"")
    _assert_rendered_again(out, tmp_path, data_dir, config, "not in the rendered-token store")


def _assert_rendered_again(out, tmp_path, data_dir, config, refusal: str) -> None:
    """OUT's store holds entries that do not load: a repack refuses (`refusal`), a pack into the same store renders
    them again and equals a fresh pack, and the repack then builds the same rows from what that pack wrote anew."""
    with pytest.raises(OutputError, match=refusal):
        run_repack(out, tmp_path / "new", {"seq_length": 64}, quiet=True)
    fresh = tmp_path / "fresh"
    run_pack(data_dir, fresh, replace(config, seq_length=64), quiet=True, unit_bytes=UNIT_BYTES, no_store=True)
    run_pack(data_dir, tmp_path / "again", replace(config, seq_length=64), quiet=True, unit_bytes=UNIT_BYTES,
             store=out / STORE_DIR)
    assert output_arrays(tmp_path / "again") == output_arrays(fresh)
    run_repack(out, tmp_path / "healed", {"seq_length": 64}, quiet=True)
    assert output_arrays(tmp_path / "healed") == output_arrays(fresh)


def test_a_store_that_cannot_be_written_costs_the_pack_nothing(tmp_path, data_dir, config, packed, monkeypatch):
    import errno

    import packsft.store.rendered

    def no_room(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(packsft.store.rendered, "save_npy", no_room)  # while the entry is being written
    out = tmp_path / "out"
    assert run_pack(data_dir, out, config, quiet=True, unit_bytes=UNIT_BYTES).dataset is not None
    assert output_arrays(out) == output_arrays(packed)
    assert not [path for path in (out / STORE_DIR).rglob("*") if path.is_file()]
    with pytest.raises(OutputError, match="not in the rendered-token store"):
        run_repack(out, tmp_path / "new", {"seq_length": 64}, quiet=True)
