"""Start-up: the tokenizer cache (packsft/tokenizer_cache.py) and a `pack` that never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from packsft.errors import TokenizerError
from packsft.render import tokenizer as tokenizer_module
from packsft.render.tokenizer import load_tokenizer, tokenizer_from_state
from packsft.render.tokenizer_cache import cache_dir, cache_key
from tests.helpers import conv, write_conversations

# Runs `packsft pack` in a fresh interpreter and prints the heavy modules it imported.
PACK_AND_LIST_MODULES = textwrap.dedent(
    """
    import sys
    from packsft.cli import main
    try:
        main(sys.argv[1:], standalone_mode=False)
    finally:
        print(sorted(name for name in ("torch", "transformers", "jinja2") if name in sys.modules))
    """
)


def _entries(kind: str) -> list[Path]:
    folder = cache_dir()
    assert folder is not None
    return sorted((folder / kind).glob("*.json"))


def _copy_tokenizer(source: Path, folder: Path) -> Path:
    """A private copy of a tokenizer folder: a file naming the copy makes its cache key this test's own."""
    folder.mkdir()
    for path in source.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "COPY.txt").write_text(str(folder))
    return folder


def test_a_cached_tokenizer_is_the_same_tokenizer(tmp_path, demo_tokenizer_dir):
    folder = _copy_tokenizer(demo_tokenizer_dir, tmp_path / "tok")
    before = set(_entries("tokenizers"))
    cold = load_tokenizer(str(folder), "roles")
    assert len(set(_entries("tokenizers")) - before) == 1
    warm = load_tokenizer(str(folder), "roles")
    assert cold.objects.hf is not None and warm.objects.hf is None  # the warm one never touched transformers
    assert warm.identity() == cold.identity()
    texts = ["Hello there, how are you?", "<|user|> is plain text here", ""]
    assert warm.encode_texts_hf(texts) == cold.encode_texts_hf(texts)
    assert warm.hf.convert_tokens_to_ids("<|assistant|>") == cold.role_ids["assistant"]


def test_a_damaged_cache_entry_is_a_miss(tmp_path, demo_tokenizer_dir):
    folder = _copy_tokenizer(demo_tokenizer_dir, tmp_path / "tok")
    before = set(_entries("tokenizers"))
    expected = load_tokenizer(str(folder), "roles").identity()
    (entry,) = set(_entries("tokenizers")) - before
    state = json.loads(entry.read_text())
    entry.write_text(json.dumps({**state, "eos_id": state["eos_id"] + 1}))
    assert load_tokenizer(str(folder), "roles").identity() == expected
    entry.write_text("{not json")
    assert load_tokenizer(str(folder), "roles").identity() == expected
    assert json.loads(entry.read_text())["eos_id"] == state["eos_id"]  # rewritten by the cold load


def test_a_state_that_does_not_match_its_fingerprint_is_refused(demo_tokenizer_dir):
    state = load_tokenizer(str(demo_tokenizer_dir), "roles").state()
    with pytest.raises(TokenizerError) as refused:
        tokenizer_from_state({**state, "pad_id": 0}, "demo")
    assert str(refused.value) == "tokenizer 'demo': the saved tokenizer state does not match its fingerprint"


def test_the_transformers_tokenizer_is_checked_when_loaded_late(tmp_path, demo_tokenizer_dir):
    folder = _copy_tokenizer(demo_tokenizer_dir, tmp_path / "tok")
    load_tokenizer(str(folder), "roles")
    warm = load_tokenizer(str(folder), "roles")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|pad|>"}))
    with pytest.raises(TokenizerError) as changed:
        warm.hf  # noqa: B018 (the property loads it)
    assert str(changed.value) == f"tokenizer {str(folder)!r} changed since it was loaded (fingerprint differs); rerun"


def test_cache_off_writes_nothing(tmp_path, demo_tokenizer_dir, monkeypatch):
    monkeypatch.setenv("PACKSFT_CACHE", "off")
    assert cache_dir() is None
    tokenizer = load_tokenizer(str(demo_tokenizer_dir), "roles", encoder="auto")
    assert tokenizer.objects.hf is not None


@pytest.mark.slow
def test_the_fast_encoder_proof_is_cached(demo_tokenizer_dir, monkeypatch):
    monkeypatch.setattr(tokenizer_module, "_PROVEN", set())  # forget this process's proofs
    fingerprint = load_tokenizer(str(demo_tokenizer_dir), "roles").fingerprint
    proof = cache_dir() / "proofs" / f"{cache_key('proof', {'fingerprint': fingerprint, 'backend': 'gigatoken'})}.json"
    proof.unlink(missing_ok=True)
    assert load_tokenizer(str(demo_tokenizer_dir), "roles", encoder="auto").encoder == "gigatoken"
    assert json.loads(proof.read_text()) == {"refused": None}
    # The verdict is read back, not recomputed: a (made-up) cached refusal is what auto follows, to the next backend.
    proof.write_text(json.dumps({"refused": "a cached refusal"}))
    monkeypatch.setattr(tokenizer_module, "_PROVEN", set())
    assert load_tokenizer(str(demo_tokenizer_dir), "roles", encoder="auto").encoder == "tiktoken"
    second = cache_dir() / "proofs" / f"{cache_key('proof', {'fingerprint': fingerprint, 'backend': 'tiktoken'})}.json"
    second.write_text(json.dumps({"refused": "another"}))
    monkeypatch.setattr(tokenizer_module, "_PROVEN", set())
    refused = load_tokenizer(str(demo_tokenizer_dir), "roles", encoder="auto")
    assert (refused.encoder, refused.encoder_note) == (
        "hf", "no fast encoder reproduces this tokenizer: gigatoken: a cached refusal; tiktoken: another")
    proof.unlink()
    second.unlink()


def test_gigatokens_input_is_kept_and_a_damaged_entry_is_derived_again(tmp_path, demo_tokenizer_dir, monkeypatch):
    pytest.importorskip("gigatoken")
    from packsft.render import encoder as encoder_module

    tokenizer = load_tokenizer(str(_copy_tokenizer(demo_tokenizer_dir, tmp_path / "tok")), "roles")
    derived = encoder_module.GigatokenSource.of(tokenizer.serialized)

    def source(serialized: str) -> tuple[encoder_module.GigatokenSource, bytes]:
        found = tokenizer_module.gigatoken_source(tokenizer.fingerprint, serialized)
        return found, found.plain_json

    assert source(tokenizer.serialized) == (derived, derived.plain_json)
    key = tokenizer_module.gigatoken_key(tokenizer.fingerprint)
    entry, plain = (cache_dir() / "gigatoken" / name for name in (f"{key}.json", f"{key}.plain.json"))
    # Read back, not derived: deriving would parse the serialized tokenizer, which is not JSON here (the demo
    # tokenizer has no rank file: its tokenizer.json is read at once).
    assert source("not json") == (derived, derived.plain_json)
    # Bytes that do not match the entry's hash are derived again (and the file rewritten).
    kept = plain.read_bytes()
    plain.write_bytes(kept + b" ")
    assert source(tokenizer.serialized) == (derived, derived.plain_json)
    assert plain.read_bytes() == kept and json.loads(entry.read_text())["plain"] == plain.name
    # A worker's encoder is built from the kept input, and encodes as one built from the tokenizer.
    fast = tokenizer_from_state(tokenizer.state(), "tok", encoder="gigatoken").fast
    assert fast.encode_texts(["Hello <|endoftext|> world"]) == encoder_module.GigatokenEncoder(
        tokenizer.serialized).encode_texts(["Hello <|endoftext|> world"])


def test_the_marker_encoder_is_made_once_per_tokenizer(tmp_path, demo_tokenizer_dir):
    from packsft.render.markers import kept_marker_spec, marker_spec

    tokenizer = load_tokenizer(str(_copy_tokenizer(demo_tokenizer_dir, tmp_path / "tok")), "roles")
    made = kept_marker_spec(tokenizer.fingerprint, tokenizer.serialized, tokenizer.encode_few)
    assert made is not None and made == marker_spec(tokenizer.serialized, tokenizer.encode_few)

    def never(texts: list[str]) -> list[list[int]]:
        raise AssertionError("the kept marker encoder was made again")

    assert kept_marker_spec(tokenizer.fingerprint, tokenizer.serialized, never) == made


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_pack_with_role_tokens_imports_neither_torch_nor_transformers(tmp_path, demo_tokenizer_dir, workers):
    data = write_conversations(tmp_path / "data" / "a.parquet", [conv(("user", "Hi"), ("assistant", "Hello there"))])
    write_conversations(tmp_path / "data" / "b.parquet", [conv(("user", "Yo"), ("assistant", "OK then"))])
    load_tokenizer(str(demo_tokenizer_dir), "auto", encoder="auto")  # a warm cache, as after a first (default) run
    args = ["pack", str(data.parent), str(tmp_path / "out"), "--tokenizer", str(demo_tokenizer_dir), "--quiet",
            "--workers", workers]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", PACK_AND_LIST_MODULES, *args], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["rows"] == 2  # one row per file (unit)


@pytest.mark.slow
def test_the_chat_path_runs_with_only_the_declared_dependencies(tmp_path, chatml_dir):
    """A fresh virtual environment with `pip install packsft` alone (no test extras, which happen to bring
    jinja2): `pack --template chat` works (issue 21: every record was rejected for want of jinja2)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(Path(__file__).resolve().parents[2])],
                             capture_output=True, text=True, timeout=900)
    if install.returncode != 0:
        pytest.skip(f"packsft cannot be installed into a fresh environment here (no package index?): "
                    f"{install.stderr.strip().splitlines()[-1] if install.stderr.strip() else install.returncode}")
    data = tmp_path / "data"
    write_conversations(data / "a.parquet", [conv(("user", "Hi"), ("assistant", "Hello!"))] * 3)
    run = subprocess.run([str(venv / "bin" / "packsft"), "pack", str(data), str(tmp_path / "out"), "--tokenizer",
                          str(chatml_dir), "--template", "chat", "--seq-length", "64", "-q"],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PACKSFT_CACHE": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr
    stats = json.loads((tmp_path / "out" / "dataset.json").read_text())["stats"]
    assert stats["records_rejected"] == 0 and stats["conversations_packed"] == 3


def test_library_versions_read_from_dist_info_folders_are_importlib_metadatas(tmp_path, monkeypatch):
    """The versions in every cache key come from the dist-info folders' names (1 ms where importlib.metadata took
    20): the same versions metadata reads, so keys are what they were; a library with no such folder is asked of
    importlib.metadata ("absent" where it is not installed at all)."""
    from importlib import metadata

    from packsft.render import tokenizer_cache

    for name in tokenizer_cache.LIBRARIES:
        try:
            expected = metadata.version(name)
        except metadata.PackageNotFoundError:
            expected = "absent"
        assert tokenizer_cache.library_versions()[name] == expected
    # An egg-info install: no dist-info folder names it.
    (tmp_path / "oldlib-1.2.egg-info").mkdir()
    (tmp_path / "oldlib-1.2.egg-info" / "PKG-INFO").write_text("Metadata-Version: 1.1\nName: oldlib\nVersion: 1.2\n")
    (tmp_path / "Some_Lib-2.0.dist-info").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    assert tokenizer_cache._dist_info_versions()["some-lib"] == "2.0"
    assert "oldlib" not in tokenizer_cache._dist_info_versions()
    assert tokenizer_cache._metadata_version("oldlib") == "1.2"
    assert tokenizer_cache._metadata_version("no-such-library-here") == "absent"
