"""Offline starts: a tokenizer that needs the hub fails fast, saying what to do."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import GOOD, write_conversations

ROOT = Path(__file__).resolve().parents[2]


OFFLINE_BOUND_S = 45  # not a benchmark: the hub client alone used to retry for ~60 s before failing


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "unreachable endpoint"])
def test_default_tokenizer_without_the_hub_fails_fast_with_what_to_do(tmp_path, how):
    write_conversations(tmp_path / "data" / "a.parquet", GOOD[:2])
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")}
    env["HF_HOME"] = str(tmp_path / "hf-home")  # an empty cache
    if how == "HF_HUB_OFFLINE":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "packsft", "pack", str(tmp_path / "data"), str(tmp_path / "out")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    why = ("HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set" if how == "HF_HUB_OFFLINE"
           else f"the hub ({env['HF_ENDPOINT']}) did not answer within 3 s")
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: cannot load tokenizer 'gpt2': it is a model-hub name, {why}, and it is not in the local Hugging "
        "Face cache. Pass a local tokenizer folder: --tokenizer path/to/folder (holding tokenizer.json, or "
        "vocab.json + merges.txt; on a machine that reaches the hub, AutoTokenizer.from_pretrained('gpt2')"
        ".save_pretrained('folder') writes one)"
    )
    assert elapsed < OFFLINE_BOUND_S, f"took {elapsed:.0f} s"
    assert not (tmp_path / "out" / "dataset.json").exists()
