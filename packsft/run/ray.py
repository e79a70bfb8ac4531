"""RayExecutor: the plan's units as tasks on a Ray cluster; Ray schedules, packsft keeps the plan.

    packsft ray submit DATA OUT --address HEAD:6379          (the driver: any machine of the cluster)
      OUT/plan.json                 written by the driver first, as for `packsft pack`
      OUT/executor.json             the address, for `packsft status`
      one Ray task per missing unit, largest first  -> any node: OUT/shards/NNNNN/ (written by the task)
      a tqdm bar over units on the driver, then `merge` -> OUT/rejects.jsonl, OUT/dataset.json

A task packs one whole unit and writes its shard itself, so only the unit's row count travels back
through Ray's object store. Ray retries a task whose worker process or node dies (`max_retries`);
errors of the job itself (a bad file, --strict) are not retried, they stop the run as they do locally.
The retry first removes the half-written folder the lost attempt left. Resume is the same as for
local runs (run/outdir.py): a rerun after the driver died (Ray then ends its tasks) skips every unit
whose shard holds its fingerprint. Shards are the same bytes as a local `--workers` run or a SLURM
array, since a unit's bytes never depend on where or with how many threads it was packed.

Every node must see DATA and OUT at the same absolute paths (NFS, a shared volume) and have the same
packsft and tokenizer installed: the tasks read the inputs and write shards there directly.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from packsft.config import PackConfig
from packsft.errors import MissingDependencyError, OutputError, PacksftError
from packsft.read.inputs import is_url
from packsft.render.tokenizer import PackTokenizer
from packsft.run.executor import Executor, rerun_command
from packsft.run.malloc import keep_freed_memory
from packsft.run.outdir import OutDir
from packsft.run.plan import Plan, Unit
from packsft.run.unit import UnitJob, input_rows, load_job_tokenizer, write_unit
from packsft.version import __version__
from packsft.write.layout import shard_name

# packsft is not on PyPI: the extra installs from a checkout, or Ray alone next to an installed packsft.
INSTALL_HINT = "pip install -e '.[ray]' in the packsft checkout, or pip install ray"
# Ray's own retries of a task whose worker or node died (preemption, OOM kill); a unit is idempotent.
DEFAULT_MAX_RETRIES = 3
# The driver collects finished units in batches (at most every WAIT_S seconds), not one ray.wait per
# unit over all pending ones, which would cost O(units^2) for big plans.
WAIT_BATCH, WAIT_S = 256, 1.0
PROBE_TIMEOUT_S = 10  # a cluster's GCS port that does not accept a connection in this time is not there


@dataclass(frozen=True)
class RayOptions:
    """Where and how the units run on Ray.

    Args:
        address: the cluster (`HEAD:6379`, `ray://...`, or "auto"); None = $RAY_ADDRESS, else a
            cluster already running on this machine, else a new one on this machine only.
        num_cpus_per_task: CPUs Ray reserves per unit; the task's tokenizer uses as many threads.
        max_retries: times Ray reruns a unit whose worker process or node died.
    """

    address: str | None = None
    num_cpus_per_task: int = 1
    max_retries: int = DEFAULT_MAX_RETRIES


def import_ray() -> ModuleType:
    """Ray, or a MissingDependencyError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(
            f"Ray is not installed: {INSTALL_HINT} (on the driver and on every node of the cluster)"
        ) from None
    return ray


def _shared_output_path(out_dir: str | Path) -> Path:
    if is_url(out_dir):
        raise OutputError(
            f"{out_dir}: OUT_DIR must be a folder every Ray node mounts (NFS, a shared volume), not an object "
            "store: shards are written under a temporary name and renamed into place, which object stores "
            "cannot do atomically. Pack to shared storage, run `packsft verify`, then copy it to the bucket"
        )
    return Path(out_dir).resolve()


def _connect(ray: ModuleType, address: str | None) -> None:
    where = address or os.environ.get("RAY_ADDRESS") or ""
    how = ("Start it with `ray start --head` (and `ray start --address HEAD:PORT` on the other nodes), "
           "or pass --address HEAD:PORT")
    host, _, port = where.rpartition(":")
    if host and port.isdigit() and not is_url(where):
        # ray.init retries an address nobody listens on for many minutes; a refused port fails here.
        try:
            socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
        except OSError as exc:
            raise OutputError(f"cannot reach the Ray cluster at {where} ({exc.strerror or exc}). {how}") from None
    try:
        ray.init(address=address, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OutputError(f"cannot connect to the Ray cluster at {where or 'this machine'}: {reason}. {how}") from None


@dataclass(frozen=True)
class RayExecutor(Executor):
    """One Ray task per missing unit, largest first; a tqdm bar over units. Connects to the cluster before
    anything is written, and makes local paths absolute: Ray workers do not start in this process's folder."""

    options: RayOptions = RayOptions()
    name = "ray"

    def prepare(self, data: list[str], out_dir: str | Path,
                config: PackConfig) -> tuple[list[str], OutDir, PackConfig]:
        out = OutDir(_shared_output_path(out_dir))
        import_ray()
        if config.tokenizer and Path(config.tokenizer).exists():
            config = dataclasses.replace(config, tokenizer=str(Path(config.tokenizer).resolve()))
        return [spec if is_url(spec) else str(Path(spec).resolve()) for spec in data], out, config

    @contextmanager
    def session(self) -> Iterator[None]:
        ray = import_ray()
        connected_here = not ray.is_initialized()
        if connected_here:
            _connect(ray, self.options.address)
        try:
            yield
        finally:
            if connected_here:
                ray.shutdown()

    def run(self, plan: Plan, units: list[Unit], job: UnitJob, tokenizer: PackTokenizer, quiet: bool) -> None:
        if not units:
            return
        ray = import_ray()
        threads = self.options.num_cpus_per_task
        task = ray.remote(pack_unit_task).options(
            num_cpus=threads, max_retries=self.options.max_retries, retry_exceptions=False,
            # Set before the worker starts, so the tokenizer's Rust pool has the task's CPUs only.
            runtime_env={"env_vars": {"RAYON_NUM_THREADS": str(threads),
                                      "TOKENIZERS_PARALLELISM": "true" if threads > 1 else "false"}},
        )
        order = sorted(range(len(units)), key=lambda i: (-units[i].bytes, units[i].index))
        pending = {task.remote(job, units[i], plan.fingerprints[units[i].index], __version__, threads): units[i]
                   for i in order}
        from tqdm import tqdm  # here: a local pack's parent imports this module, and shows no bar of it

        try:
            with tqdm(total=len(units), unit="unit", desc="packing on ray", disable=quiet, dynamic_ncols=True) as bar:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=min(len(pending), WAIT_BATCH), timeout=WAIT_S)
                    for ref in ready:
                        self._check(ray, ref, pending.pop(ref))
                        bar.update(1)
        finally:
            for ref in pending:  # a failed unit or Ctrl-C: stop the others (completed shards are kept)
                ray.cancel(ref, force=True)

    def _check(self, ray: ModuleType, ref: Any, unit: Unit) -> None:
        """Raise a unit's failure: the job's own error as itself, a lost worker as an OutputError."""
        try:
            ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, PacksftError):
                raise exc.cause from None
            raise  # a bug: its remote traceback is in the message
        except ray.exceptions.RayError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OutputError(
                f"unit {shard_name(unit.index)} ({unit.label}) was lost with its Ray worker or node, "
                f"{self.options.max_retries} retries included ({type(exc).__name__}: {reason}); completed units "
                "are kept. Rerun the same command to resume (with a smaller --unit-mib if workers ran out of memory)"
            ) from None

    def settings(self, out: OutDir, plan: Plan) -> dict[str, Any]:
        return {"address": self.options.address}

    @classmethod
    def resume_hint(cls, out: OutDir, plan: Plan, settings: dict[str, Any], missing: list[int]) -> str:
        address = ["--address", settings["address"]] if settings.get("address") else []
        return rerun_command(["packsft", "ray", "submit"], out, plan, address)


# The tokenizers a Ray worker process loaded, by (name, template, encoder, fingerprint): a worker packs many units.
_node_tokenizers: dict[tuple[str, str, str, str], PackTokenizer] = {}


def pack_unit_task(job: UnitJob, unit: Unit, fingerprint: str, driver_version: str, threads: int = 1) -> int:
    """Runs in a Ray worker on any node: pack one unit and write its shard; returns its rows.

    The fast encoder is proven again in each worker (once): the driver's proof was made with the
    driver's libraries, which another node need not share.
    """
    host = socket.gethostname()
    if driver_version != __version__:
        raise OutputError(f"node {host} runs packsft {__version__} but the driver {driver_version}: "
                          "install the same packsft on every node of the cluster")
    if not job.out.has_plan():
        raise OutputError(f"node {host} does not see {job.out.plan_json}: OUT_DIR must be on storage every "
                          "node mounts at the same path (NFS, a shared volume)")
    key = (job.config.tokenizer, job.config.template, job.config.encoder, job.tokenizer_fingerprint)
    if key not in _node_tokenizers:
        keep_freed_memory()  # a Ray worker process packs unit after unit
        _node_tokenizers[key] = load_job_tokenizer(job, threads, prove=True)
    job.out.remove_temporaries([unit.index])  # what an attempt lost with its worker left behind
    written = write_unit(unit, fingerprint, job, _node_tokenizers[key])
    return input_rows(written)
