"""The local workers' fork server started as `packsft pack` begins (run/fork_server.py): a guess from the command line;
and the gigatoken it builds for them (run/prebuild.py)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap

import pytest

from packsft.config import PackConfig
from packsft.render import encoder
from packsft.render.encoder import prebuild_ranks, rank_tokenizer
from packsft.run.fork_server import AUTO_WORKERS_MIN_BYTES, _at_least, _likely_chat

# In a fresh interpreter: start_early for DATA with --workers 0, then whether a fork server runs and what the
# process had imported by then.
START_EARLY = textwrap.dedent(
    """
    import json, sys
    from multiprocessing import forkserver
    from packsft.config import PackConfig
    from packsft.run.fork_server import start_early
    start_early(sys.argv[1:], PackConfig(), 0)
    print(json.dumps({"server": forkserver._forkserver._forkserver_pid is not None,
                      "imported": sorted(m for m in ("numpy", "pyarrow", "packsft.run.pipeline") if m in sys.modules)}))
    """
)


def test_the_input_size_is_counted_from_local_files_and_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.parquet").write_bytes(b"0" * 1000)
    (tmp_path / "y.jsonl").write_bytes(b"0" * 500)
    assert _at_least([str(tmp_path)], 1500)
    assert not _at_least([str(tmp_path)], 1501)
    assert _at_least([str(tmp_path / "a"), str(tmp_path / "y.jsonl")], 1500)
    assert not _at_least(["s3://bucket/data", str(tmp_path / "missing"), str(tmp_path / "*.jsonl")], 1)


def test_a_chat_template_is_guessed_from_the_flags_or_the_tokenizer_folder(tmp_path):
    assert _likely_chat(PackConfig(template="chat"))
    assert not _likely_chat(PackConfig(template="roles", tokenizer=str(tmp_path)))
    assert not _likely_chat(PackConfig(template="auto", tokenizer="gpt2"))  # a hub name: not read
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    assert not _likely_chat(PackConfig(template="auto", tokenizer=str(tmp_path)))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert _likely_chat(PackConfig(template="auto", tokenizer=str(tmp_path)))


def _start_early(*data: str, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", START_EARLY, *data], capture_output=True, text=True, check=True,
                          env={**os.environ, **(env or {})})
    return json.loads(done.stdout)


def test_a_big_input_starts_the_server_before_the_stages_are_imported(tmp_path):
    (tmp_path / "big.parquet").write_bytes(b"0" * AUTO_WORKERS_MIN_BYTES)
    assert _start_early(str(tmp_path)) == {"server": True, "imported": []}


# In a fresh interpreter: start_for_arguments for `packsft ARGS`, then whether a fork server runs, whether it preloads
# jinja (a chat template guessed), and what the process had imported by then.
FROM_ARGUMENTS = textwrap.dedent(
    """
    import json, sys
    from multiprocessing import forkserver
    from packsft.run.fork_server import start_for_arguments
    start_for_arguments(sys.argv[1:])
    print(json.dumps({"server": forkserver._forkserver._forkserver_pid is not None,
                      "chat": "jinja2.sandbox" in (forkserver._forkserver._preload_modules or []),
                      "imported": sorted(m for m in ("click", "numpy", "packsft.config", "packsft.cli")
                                         if m in sys.modules)}))
    """
)


def _from_arguments(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", FROM_ARGUMENTS, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_the_command_line_starts_the_server_before_the_cli_is_imported(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big.parquet").write_bytes(b"0" * AUTO_WORKERS_MIN_BYTES)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    data, out, tok = str(tmp_path / "data"), str(tmp_path / "out"), str(tmp_path / "tok")
    started = {"server": True, "chat": True, "imported": []}
    # Options before, between and after the paths, with their values given apart or after '='.
    assert _from_arguments("pack", "--seq-length", "64", data, out, "--tokenizer", tok) == started
    assert _from_arguments("pack", f"--tokenizer={tok}", "--workers", "2", data, out, "-q") == started
    assert _from_arguments("pack", data, out, "--tokenizer", tok, "--template", "roles") == {**started, "chat": False}
    # The data is what stays when OUT_DIR and the values of the options read (--store among them) are left out.
    assert _from_arguments("pack", str(tmp_path / "nothing"), data, "--tokenizer", tok)["server"] is False
    assert _from_arguments("pack", str(tmp_path / "nothing"), out, "--store", data, "--tokenizer", tok)["server"] is False
    none = {"server": False, "chat": False, "imported": []}
    for args in (["pack", data, out, "--tokenizer", tok, "--workers", "1"],  # one process: no pool
                 ["pack", data, out],  # the default tokenizer: left to the CLI (start_early)
                 ["pack", data, out, "--tokenizer", tok, "--config", "x.toml"],  # a file this does not read
                 ["pack", data, out, "--tokenizer", tok, "--dry-run"], ["pack", "--help"],
                 ["inspect", data, "--tokenizer", tok], ["pack", data, out, "--tokenizer", tok, "--workers", "x"]):
        assert _from_arguments(*args) == none, args


def test_one_cpu_starts_none(tmp_path):
    """Auto workers pack in one process on one CPU (a SLURM task with one CPU): a server would only compete."""
    (tmp_path / "big.parquet").write_bytes(b"0" * AUTO_WORKERS_MIN_BYTES)
    assert _start_early(str(tmp_path), env={"SLURM_CPUS_PER_TASK": "1"}) == {"server": False, "imported": []}


def test_a_small_input_starts_none(tmp_path):
    (tmp_path / "small.parquet").write_bytes(b"0" * 1000)
    assert _start_early(str(tmp_path)) == {"server": False, "imported": []}


# In a fresh interpreter, as the fork server starts: the tokenizer noted by the last pack (remember_fast) is built
# by run/prebuild.py; then a forked worker's tokenizer takes it and encodes, on two threads, what HF encodes.
PREBUILD = textwrap.dedent(
    """
    import json, os, sys
    from packsft.run.fork_server import FORK_SERVER_TOKENIZER
    os.environ[FORK_SERVER_TOKENIZER] = sys.argv[1]
    import gigatoken, packsft.run.local  # the server's other preloads (numpy's and pyarrow's threads among them)
    threads = len(os.listdir("/proc/self/task"))
    import packsft.run.prebuild
    from packsft.render import encoder
    from packsft.render.tokenizer import load_tokenizer, tokenizer_from_state
    server = {"prebuilt": len(encoder._PREBUILT), "threads_started": len(os.listdir("/proc/self/task")) - threads,
              "env_left": FORK_SERVER_TOKENIZER in os.environ}
    state = load_tokenizer(sys.argv[1], "roles", encoder="gigatoken", prove=False).state()
    read, write = os.pipe()
    if os.fork() == 0:
        tokenizer = tokenizer_from_state(state, sys.argv[1], encoder="gigatoken", threads=2)
        texts = ["Hello, world! It's 2026.", "naive cafe <|endoftext|> " * 50] * 300
        worker = {"same_ids": tokenizer.encode_texts(texts) == tokenizer.encode_texts_hf(texts),
                  "built_from": tokenizer.fast.built_from, "prebuilt_left": len(encoder._PREBUILT)}
        os.write(write, json.dumps(worker).encode())
        os._exit(0)
    os.close(write)
    worker = json.loads(os.read(read, 1 << 16))
    print(json.dumps({**server, **worker}))
    """
)


def test_the_fork_server_builds_the_noted_gigatoken_and_a_forked_worker_takes_it(gpt2_dir, tmp_path):
    pytest.importorskip("gigatoken", reason="gigatoken is not installed (a runtime dependency: pip install -e .)")
    env = {**os.environ, "PACKSFT_CACHE": str(tmp_path / "cache")}

    def server() -> dict:
        done = subprocess.run([sys.executable, "-c", PREBUILD, str(gpt2_dir)], capture_output=True, text=True,
                              env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    unnoted = server()  # no pack has noted this tokenizer yet: nothing built, the worker builds its own
    assert unnoted == {"prebuilt": 0, "threads_started": 0, "env_left": False, "same_ids": True, "built_from": "ranks",
                       "prebuilt_left": 0}
    subprocess.run([sys.executable, "-c", NOTE, str(gpt2_dir)], check=True, env=env, timeout=120)
    # Built before the fork without starting a thread (a thread pool started in the server would hang its workers).
    assert server() == {"prebuilt": 1, "threads_started": 0, "env_left": False, "same_ids": True, "built_from": "ranks",
                        "prebuilt_left": 0}


NOTE = textwrap.dedent(
    """
    import sys
    from packsft.render.tokenizer import load_tokenizer, remember_fast
    remember_fast(sys.argv[1], load_tokenizer(sys.argv[1], "roles", encoder="gigatoken", prove=False))
    """
)


def test_a_prebuilt_rank_tokenizer_is_taken_once_and_only_for_the_same_file(tmp_path):
    pytest.importorskip("gigatoken", reason="gigatoken is not installed (a runtime dependency: pip install -e .)")
    ranks = tmp_path / "tiny.tiktoken"
    ranks.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)))
    prebuild_ranks(ranks, "gpt2", {})
    prebuilt = next(iter(encoder._PREBUILT.values()))
    assert rank_tokenizer(ranks, "gpt2", {}) is prebuilt
    assert not encoder._PREBUILT
    assert rank_tokenizer(ranks, "gpt2", {}) is not prebuilt  # a rebuild (GIGATOKEN_REBUILD_CHARS) builds anew
    prebuild_ranks(ranks, "gpt2", {})
    assert rank_tokenizer(ranks, "gpt2", {"<|x|>": 256}) is not next(iter(encoder._PREBUILT.values()))
    # The same bytes, written again as the cache writes (a new file renamed over it): not the file built from.
    (tmp_path / "new").write_bytes(ranks.read_bytes())
    os.replace(tmp_path / "new", ranks)
    assert list(rank_tokenizer(ranks, "gpt2", {}).encode("ab")) == [97, 98]
    assert len(encoder._PREBUILT) == 1  # not taken
    encoder._PREBUILT.clear()
