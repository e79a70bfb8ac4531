"""The local workers' fork server started as `packsft pack` begins (run/fork_server.py): a guess from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from packsft.config import PackConfig
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


def test_one_cpu_starts_none(tmp_path):
    """Auto workers pack in one process on one CPU (a SLURM task with one CPU): a server would only compete."""
    (tmp_path / "big.parquet").write_bytes(b"0" * AUTO_WORKERS_MIN_BYTES)
    assert _start_early(str(tmp_path), env={"SLURM_CPUS_PER_TASK": "1"}) == {"server": False, "imported": []}


def test_a_small_input_starts_none(tmp_path):
    (tmp_path / "small.parquet").write_bytes(b"0" * 1000)
    assert _start_early(str(tmp_path)) == {"server": False, "imported": []}
