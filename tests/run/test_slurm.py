"""Real SLURM: a single-node cluster on localhost (.ci/slurm-up.sh), `packsft slurm submit` of a
4-task array + merge job over ShareGPT shards, compared byte for byte with a local --workers 2 run.

Needs root (munged, slurmd) and Debian's slurm-wlm + munge (the script installs them with apt-get);
skips with the reason otherwise. CI runs as root, so CI runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from packsft import PackConfig
from packsft.run import run_pack
from packsft.run.slurm import SlurmOptions, resolve_tasks, write_scripts

pytestmark = pytest.mark.slow  # a real SLURM cluster

ROOT = Path(__file__).resolve().parents[2]
SHARDS = 2  # ShareGPT shards: 2 x 3 row groups at --unit-mib 1 = 6 units for 4 array tasks
UNIT_MIB = 1
JOB_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("SLURM needs root to start munged and slurmd (CI runs as root)")
    state = tmp_path_factory.mktemp("slurm")
    up = subprocess.run([str(ROOT / ".ci" / "slurm-up.sh"), str(state)], capture_output=True, text=True, timeout=900)
    if up.returncode == 2:
        pytest.skip(f"SLURM cannot be started here: {up.stderr.strip().splitlines()[-1]}")
    assert up.returncode == 0, up.stderr
    env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}
    yield env
    subprocess.run([str(ROOT / ".ci" / "slurm-down.sh"), str(state)], check=True, timeout=60)


def test_the_array_script_runs_this_python_on_its_task_units(tmp_path):
    pack, merge = write_scripts(Path("/data"), tmp_path / "out", ["--seq-length", "512"],
                                SlurmOptions(array_size=4, partition="cpu", time="01:00:00", cpus_per_task=2, throttle=2))
    lines = pack.read_text().splitlines()
    assert lines[0] == "#!/bin/bash"
    assert [line for line in lines if line.startswith("#SBATCH")] == [
        "#SBATCH --array=0-3%2", "#SBATCH --job-name=packsft-pack", "#SBATCH --cpus-per-task=2",
        f"#SBATCH --output={tmp_path}/out/slurm/logs/pack-%A_%a.log", "#SBATCH --open-mode=append",
        "#SBATCH --requeue", "#SBATCH --partition=cpu", "#SBATCH --time=01:00:00",
    ]
    assert lines[-1] == (
        f"exec {sys.executable} -m packsft pack /data {tmp_path}/out --seq-length 512 --num-tasks 4 "
        '--workers 1 --quiet --task-index "$SLURM_ARRAY_TASK_ID"'
    )
    assert f"export PYTHONPATH={ROOT}${{PYTHONPATH:+:$PYTHONPATH}}" in lines
    assert merge.read_text().splitlines()[-1] == f"exec {sys.executable} -m packsft merge {tmp_path}/out"
    assert os.access(pack, os.X_OK) and os.access(merge, os.X_OK)


def test_tasks_come_from_the_array_task_only_when_asked(monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.delenv("SLURM_ARRAY_TASK_MIN", raising=False)
    assert resolve_tasks(None, None) == (1, 0)  # an array over several datasets packs each one whole
    assert resolve_tasks("from-env", None) == (4, 2)
    assert resolve_tasks(8, 5) == (8, 5)  # flags win


def wait_for(jobs: list[str], env: dict[str, str]) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h", "-j", ",".join(jobs), "-o", "%i %T"], env=env,
                               capture_output=True, text=True)
        if queue.returncode == 0 and not queue.stdout.strip():
            return
        time.sleep(2)
    pytest.fail(f"jobs {jobs} still queued after {JOB_TIMEOUT_S} s")


def test_slurm_array_and_merge_match_a_local_run(slurm_env, tmp_path, sharegpt_dir, gpt2_dir):
    data = tmp_path / "data"
    data.mkdir()
    for path in sorted(sharegpt_dir.glob("*.parquet"))[:SHARDS]:
        (data / path.name).symlink_to(path)
    out = tmp_path / "slurm-out"
    submit = subprocess.run(
        [sys.executable, "-m", "packsft", "slurm", "submit", str(data), str(out), "--tokenizer", str(gpt2_dir),
         "--array-size", "4", "--cpus-per-task", "1", "--unit-mib", str(UNIT_MIB)],
        cwd=ROOT, env=slurm_env, capture_output=True, text=True, timeout=300,
    )
    assert submit.returncode == 0, submit.stderr
    first = submit.stdout.splitlines()[0].split()
    pack_job, merge_job = first[3], first[8]
    assert first[:3] == ["submitted", "pack", "array"] and first[9] == "(afterok)", submit.stdout
    assert "#SBATCH --array=0-3" in (out / "slurm" / "pack.sbatch").read_text()

    local = tmp_path / "local-out"
    run_pack(data, local, PackConfig(tokenizer=str(gpt2_dir)), quiet=True, workers=2, unit_bytes=UNIT_MIB << 20)
    wait_for([pack_job, merge_job], slurm_env)

    logs = "\n".join(p.read_text() for p in sorted((out / "slurm" / "logs").glob("*.log")))
    assert (out / "dataset.json").exists(), f"the merge job wrote no dataset.json; logs:\n{logs}"
    merged, expected = (json.loads((d / "dataset.json").read_text()) for d in (out, local))
    assert len(merged["shards"]) == 6
    assert merged["shards"] == expected["shards"]  # names, rows, inputs, and shape/bytes/sha256 per array
    assert {k: v for k, v in merged.items() if k != "data_dir"} == {k: v for k, v in expected.items() if k != "data_dir"}
    for shard in merged["shards"]:
        for name in shard["files"]:
            assert (out / "shards" / shard["name"] / name).read_bytes() == (local / "shards" / shard["name"] / name).read_bytes()
    assert (out / "rejects.jsonl").read_bytes() == (local / "rejects.jsonl").read_bytes()
    status = subprocess.run([sys.executable, "-m", "packsft", "status", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert status.stdout.splitlines()[-1] == "complete: dataset.json written"
