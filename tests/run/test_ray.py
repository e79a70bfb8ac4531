"""Real Ray: a two-node cluster on 127.0.0.1 (.ci/ray-up.sh: a head and a worker node process),
`packsft ray submit` of 3 ShareGPT shards (9 units) with the worker node killed mid-run (Ray retries
its unit), compared byte for byte with a local --workers 2 run; and of the first shard alone with the
driver killed and the command rerun (it resumes from the complete units; a unit's shard does not
depend on the other files, so its 3 shards equal the local run's first 3).

Needs `pip install -e '.[ray]'` (CI installs it); the cluster tests skip with the reason where Ray
is not installed or cannot start.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from packsft.cli import main
from packsft.config import PackConfig
from packsft.demo import DATA_DIR as DEMO_DATA
from packsft.errors import OutputError
from packsft.run.executor import Executor
from packsft.run.finish import status
from packsft.run.outdir import OutDir
from packsft.run.pipeline import run_pack
from packsft.run.plan import plan_units
from packsft.run.ray import RayExecutor, pack_unit_task
from packsft.run.unit import UnitJob
from packsft.version import __version__
from packsft.write.layout import DATASET_JSON, REJECTS_JSONL, SHARDS_DIR

pytestmark = pytest.mark.slow  # a real two-node Ray cluster

ROOT = Path(__file__).resolve().parents[2]
SHARDS = 3  # ShareGPT shards: 3 x 3 row groups at --unit-mib 1 = 9 units
UNITS = 9
UNIT_MIB = 1
CLUSTER_START_TIMEOUT_S = 300
RUN_TIMEOUT_S = 600
POLL_S = 0.2


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """(address, {"head": session id, "worker": session id}) of the nodes .ci/ray-up.sh started."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]'; CI installs it)")
    state = tmp_path_factory.mktemp("ray")
    up = subprocess.run([str(ROOT / ".ci" / "ray-up.sh"), str(state)], capture_output=True, text=True,
                        env={**os.environ, "PYTHON": sys.executable}, timeout=CLUSTER_START_TIMEOUT_S)
    try:
        if up.returncode == 2:
            pytest.skip(f"Ray cannot be started here: {up.stderr.strip().splitlines()[-1]}")
        assert up.returncode == 0, up.stderr + "".join(p.read_text() for p in state.glob("*.log"))
        address = up.stdout.strip().splitlines()[-1].removeprefix("RAY_ADDRESS=")
        sessions = {node: int(sid) for node, sid in (line.split() for line in (state / "pids").read_text().splitlines())}
        yield address, sessions
    finally:
        subprocess.run([str(ROOT / ".ci" / "ray-down.sh"), str(state)], timeout=120)


@pytest.fixture(scope="module")
def ray_data(tmp_path_factory, sharegpt_dir):
    data = tmp_path_factory.mktemp("ray-data")
    for path in sorted(sharegpt_dir.glob("*.parquet"))[:SHARDS]:
        (data / path.name).symlink_to(path)
    return data


@pytest.fixture
def first_shard(tmp_path, ray_data):
    data = tmp_path / "data-first"
    data.mkdir()
    first = sorted(ray_data.iterdir())[0]
    (data / first.name).symlink_to(first.resolve())
    return data


@pytest.fixture(scope="module")
def local_output(tmp_path_factory, ray_data, gpt2_dir):
    """The same input packed by local worker processes: the bytes every Ray run must write."""
    out = tmp_path_factory.mktemp("ray-local") / "out"
    run_pack(ray_data, out, PackConfig(tokenizer=str(gpt2_dir)), quiet=True, workers=2, unit_bytes=UNIT_MIB << 20)
    return out


def submit_command(data: Path, out: Path, gpt2_dir: Path, address: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "packsft", "ray", "submit", str(data), str(out), "--tokenizer", str(gpt2_dir),
            "--unit-mib", str(UNIT_MIB), "--address", address, *flags]


def assert_same_shards(out: Path, expected: Path, units: int) -> None:
    """Shards 0..units-1: the same entries in dataset.json (sha256 per file) and the same bytes."""
    merged, local = (json.loads((d / DATASET_JSON).read_text()) for d in (out, expected))
    assert merged["shards"] == local["shards"][:units]
    for shard in merged["shards"]:
        for name in [*shard["files"], REJECTS_JSONL]:
            assert (out / SHARDS_DIR / shard["name"] / name).read_bytes() == (expected / SHARDS_DIR / shard["name"] / name).read_bytes()
    assert sorted(p.name for p in (out / SHARDS_DIR).iterdir()) == [f"{i:05d}" for i in range(units)]  # no leftovers


def assert_same_output(out: Path, expected: Path) -> None:
    """Same shards and rejects, and the same dataset.json but for where things are: `ray submit` makes paths
    absolute, through symlinks (../shared may be one), and paths are no part of an output's identity."""
    assert_same_shards(out, expected, UNITS)
    merged, local = (without_paths(json.loads((d / DATASET_JSON).read_text())) for d in (out, expected))
    assert merged == local
    assert (out / REJECTS_JSONL).read_bytes() == (expected / REJECTS_JSONL).read_bytes()


def without_paths(dataset: dict) -> dict:
    dataset = {k: v for k, v in dataset.items() if k != "data_dir"}
    dataset["config"] = {k: v for k, v in dataset["config"].items() if k != "tokenizer"}
    dataset["tokenizer"] = {k: v for k, v in dataset["tokenizer"].items() if k != "name"}
    return dataset


def wait_until(condition, what: str, process: subprocess.Popen, timeout: float = RUN_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the driver ended (exit {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout} s")
        time.sleep(POLL_S)


def summary(stdout: str) -> str:
    """The driver's last line, "wrote OUT in Ns (N units packed, N already done)": Ray may print the output of
    workers, this run's or a killed driver's, to the driver's stdout until it ends."""
    return next((line for line in reversed(stdout.splitlines()) if line.startswith("wrote ")), stdout)


def session_pids(session: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.getsid(int(entry)) == session:
                pids.append(int(entry))
        except ProcessLookupError:
            continue
    return pids


def packing_pids(*sessions: int) -> list[int]:
    """Ray workers of these nodes that are packing a unit (Ray titles them ray::pack_unit_task meanwhile); not a
    child a worker forks (before its exec it bears the same title, and stopping it would stop its parent too)."""
    found = []
    for pid in (pid for session in sessions for pid in session_pids(session)):
        try:
            parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
            if is_packing(pid) and not is_packing(int(parent)):
                found.append(pid)
        except (OSError, IndexError):
            continue
    return found


def is_packing(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::pack_unit_task")
    except OSError:
        return False


def test_the_task_body_writes_what_a_local_run_writes(tmp_path, demo_tokenizer_dir):
    """pack_unit_task as Ray would run it, here in this process: same bytes, and a lost attempt's leftovers go."""
    config = PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=512)
    run_pack(DEMO_DATA, tmp_path / "local", config, quiet=True, workers=1)
    out = tmp_path / "tasks"

    class InProcess(Executor):
        name = "in-process"

        def run(self, plan, units, job, tokenizer, quiet):
            for unit in units:
                (out / SHARDS_DIR / f".tmp-{unit.index:05d}-999999").mkdir(parents=True)  # a killed attempt's folder
                assert pack_unit_task(job, unit, plan.fingerprints[unit.index], __version__) == unit.rows

        @classmethod
        def resume_hint(cls, out, plan, settings, missing):
            return ""

    result = run_pack(DEMO_DATA, out, config, quiet=True, executor=InProcess())
    assert result.packed == len(plan_units(DEMO_DATA, config)) and result.dataset is not None
    assert_same_shards(out, tmp_path / "local", result.packed)


def test_a_task_refuses_another_packsft_or_an_output_it_cannot_see(tmp_path, demo_tokenizer_dir):
    config = PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=512)
    unit = plan_units(DEMO_DATA, config)[0]
    job = UnitJob(OutDir(tmp_path / "out"), config, False, "fingerprint")
    with pytest.raises(OutputError) as error:
        pack_unit_task(job, unit, "fingerprint", "0.0.1")
    assert str(error.value) == (f"node {os.uname().nodename} runs packsft {__version__} but the driver 0.0.1: "
                                "install the same packsft on every node of the cluster")
    with pytest.raises(OutputError) as error:
        pack_unit_task(job, unit, "fingerprint", __version__)
    assert str(error.value) == (f"node {os.uname().nodename} does not see {tmp_path}/out/plan.json: OUT_DIR must be "
                                "on storage every node mounts at the same path (NFS, a shared volume)")


def test_without_ray_the_command_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = CliRunner().invoke(main, ["ray", "submit", str(tmp_path), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output == ("Error: Ray is not installed: pip install -e '.[ray]' in the packsft checkout, or "
                             "pip install ray (on the driver and on every node of the cluster)\n")
    assert not (tmp_path / "out").exists()


def test_object_store_outputs_are_refused(tmp_path):
    with pytest.raises(OutputError) as error:
        run_pack(tmp_path, "s3://bucket/packed", PackConfig(), executor=RayExecutor())
    assert str(error.value) == (
        "s3://bucket/packed: OUT_DIR must be a folder every Ray node mounts (NFS, a shared volume), not an "
        "object store: shards are written under a temporary name and renamed into place, which object "
        "stores cannot do atomically. Pack to shared storage, run `packsft verify`, then copy it to the bucket"
    )


def test_an_unreachable_cluster_fails_before_anything_is_written(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]'; CI installs it)")
    result = CliRunner().invoke(main, ["ray", "submit", str(tmp_path), str(tmp_path / "out"), "--address", "127.0.0.1:9"])
    assert result.exit_code == 1
    assert result.output == (
        "Error: cannot reach the Ray cluster at 127.0.0.1:9 (Connection refused). Start it with `ray start "
        "--head` (and `ray start --address HEAD:PORT` on the other nodes), or pass --address HEAD:PORT\n"
    )
    assert not (tmp_path / "out").exists()


def test_a_rerun_after_the_driver_died_resumes(ray_cluster, first_shard, local_output, gpt2_dir, tmp_path):
    address, sessions = ray_cluster
    units = UNITS // SHARDS  # two run at once (a node each), the third waits
    out = tmp_path / "out"
    command = submit_command(first_shard, out, gpt2_dir, address)
    driver = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    held: set[int] = set()
    try:
        # Deterministic, not a race of a poll against the packers: the first packing worker runs, every other one
        # is stopped (SIGSTOP) as soon as it starts packing, so the driver dies with at least one unit held.
        allowed: int | None = None
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not ((out / "plan.json").exists() and len(status(out).done) >= 1):
            for pid in packing_pids(*sessions.values()):
                allowed = pid if allowed is None else allowed
                if pid != allowed and pid not in held:
                    os.kill(pid, signal.SIGSTOP)
                    held.add(pid)
            if driver.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no complete unit (driver exit {driver.returncode})")
            time.sleep(0.02)
        driver.send_signal(signal.SIGKILL)  # no clean stop: Ray ends the dead driver's tasks
        driver.wait(timeout=60)
    finally:
        driver.kill()
        for pid in held:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    done = len(status(out).done)
    assert 1 <= done < units and not (out / DATASET_JSON).exists()

    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert rerun.returncode == 0, rerun.stderr
    packed, skipped = map(int, re.search(r"\((\d+) units packed, (\d+) already done\)$", summary(rerun.stdout)).groups())
    assert packed + skipped == units and skipped >= done, summary(rerun.stdout)
    assert_same_shards(out, local_output, units)


def test_a_local_run_resumed_by_ray_submit_packs_nothing_again(ray_cluster, first_shard, gpt2_dir, tmp_path):
    """Units are identified by content, not by the paths each way of running spells (ray submit makes them
    absolute): a local run (relative tokenizer path) resumed by `ray submit` packs nothing."""
    address, _ = ray_cluster
    out = tmp_path / "out"
    relative = os.path.relpath(gpt2_dir, ROOT)
    run_pack(first_shard, out, PackConfig(tokenizer=relative), quiet=True, workers=1, unit_bytes=UNIT_MIB << 20)
    rerun = subprocess.run(submit_command(first_shard, out, gpt2_dir, address), cwd=ROOT, capture_output=True,
                           text=True, timeout=RUN_TIMEOUT_S)
    assert rerun.returncode == 0, rerun.stderr
    assert summary(rerun.stdout).endswith(f"(0 units packed, {UNITS // SHARDS} already done)"), rerun.stdout


def test_a_unit_whose_node_died_is_retried_by_ray(ray_cluster, ray_data, local_output, gpt2_dir, tmp_path):
    address, sessions = ray_cluster
    out = tmp_path / "out"
    driver = subprocess.Popen(submit_command(ray_data, out, gpt2_dir, address), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: packing_pids(sessions["worker"]), "unit running on the worker node", driver)
        for pid in session_pids(sessions["worker"]):  # the whole node: raylet, object store, workers
            os.kill(pid, signal.SIGKILL)
        stdout, stderr = driver.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        driver.kill()
    # The driver never resubmits a unit: finishing in this one run means Ray reran the lost one.
    assert driver.returncode == 0, stderr
    assert summary(stdout).endswith(f"({UNITS} units packed, 0 already done)"), stdout
    assert_same_output(out, local_output)


def test_without_retries_a_lost_unit_stops_the_run_and_says_how_to_resume(ray_cluster, ray_data, gpt2_dir, tmp_path):
    address, sessions = ray_cluster  # after the test above only the head is left; either node will do
    out = tmp_path / "out"
    driver = subprocess.Popen(submit_command(ray_data, out, gpt2_dir, address, "--max-retries", "0"), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: packing_pids(*sessions.values()), "unit running", driver)
        for pid in packing_pids(*sessions.values()):  # the worker process only (as the OOM killer does)
            os.kill(pid, signal.SIGKILL)
        _, stderr = driver.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        driver.kill()
    assert driver.returncode == 1
    error = stderr.splitlines()[-1]
    assert re.fullmatch(r"Error: unit 0000\d \(shard_0000[0-2]\.parquet\) was lost with its Ray worker or node, "
                        r"0 retries included \(\w+Error: .*\); completed units are kept\. Rerun the same command "
                        r"to resume \(with a smaller --unit-mib if workers ran out of memory\)", error), error
    assert not (out / DATASET_JSON).exists()
