#!/usr/bin/env python
"""Scale-out benchmark on the shared ShareGPT shards (GPT-2, L=2048, bestfit); writes BENCHMARKS-scale.md.

Measured in one run, on this machine:
  (a) the raw tokenizer limit: encode_batch of the same message texts, all threads, in this process;
  (b) `packsft pack --workers 1` and `--workers 2` end to end (fresh processes, 8 shards);
  (c) peak memory for 2 vs 8 shards: the largest single process (getrusage of reaped descendants)
      and the whole process tree (summed PSS, sampled every 0.1 s);
  (d) `packsft merge` on the 8-shard output (in-process, and the CLI with its imports);
  (e) a projection for 1B tokens on one 64-core node and on 16 such nodes, from the measured CPU
      seconds per token (independent of other load on a shared machine) and from wall time;
  (f) `packsft ray submit` on a two-node Ray cluster on this machine (.ci/ray-up.sh, half the cores
      per node) against `packsft pack --workers <cores>`: units/s and Ray's overhead per unit, at
      --unit-mib 1 and 8 (skipped, and said so, where Ray is not installed).

Usage: python scripts/bench_scale.py [--out BENCHMARKS-scale.md]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packsft, as the `python -m packsft` runs below use
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data" / "sharegpt"
GPT2 = SHARED / "tokenizers" / "gpt2"
PR_SET_CHILD_SUBREAPER = 36
RAY_UNIT_MIB = (1, 8)  # 24 and 8 units of the 8 shards: the difference shows the cost per unit
TARGET_TOKENS = 1e9
NODE_CORES, NODES = 64, 16


def set_child_subreaper(on: bool) -> None:
    """Orphaned descendants (the fork server) become this process's children, so their CPU time counts."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


def shard_dir(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(DATA.glob("*.parquet"))[:count]:
        (folder / path.name).symlink_to(path)
    return folder


def raw_tokenizer(data_dir: Path) -> dict:
    import pyarrow.parquet as pq

    from packsft import load_tokenizer

    batches = []
    for path in sorted(data_dir.glob("*.parquet")):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=["messages"]):
            batches.append([m["content"] for ms in batch.column("messages").to_pylist() if ms for m in ms])
    tokenizer = load_tokenizer(str(GPT2))
    tokenizer.encode_batch(batches[0][:64])  # start the thread pool outside the timing
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    tokens = sum(len(ids) for batch in batches for ids in tokenizer.encode_batch(batch))
    wall, cpu1 = time.perf_counter() - wall0, resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"tokens": tokens, "wall_s": wall, "cpu_s": cpu}


def _tree_memory_kib(root: int) -> tuple[int, int]:
    """(sum of PSS, largest RSS) in KiB over `root` and its descendants.

    PSS splits pages shared by the fork server and its workers among them, so the sum is the memory
    the tree really holds (a sum of RSS would count the shared tokenizer code once per process).
    """
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    total, largest, stack = 0, 0, [root]
    while stack:
        pid = stack.pop()
        stack += parents.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    largest = max(largest, int(line.split()[1]))
                elif line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total, largest


def measure(command: list[str]) -> dict:
    """Wall time, CPU seconds and peak RSS of a command and all its descendants."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_tree = peak_process = 0
    while process.poll() is None:
        tree, largest = _tree_memory_kib(process.pid)
        peak_tree, peak_process = max(peak_tree, tree), max(peak_process, largest)
        time.sleep(0.1)
    wall = time.perf_counter() - started
    while True:  # reap orphaned descendants (the fork server) so their usage is counted
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {process.stderr.read().decode()[-2000:]}")
    return {
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "max_process_rss_mib": peak_process / 1024,
        "peak_tree_pss_mib": peak_tree / 1024,
        "maxrss_so_far_mib": after.ru_maxrss / 1024,  # getrusage: the largest descendant of any run so far
        "load_before": load,
    }


def pack(data_dir: Path, out: Path, workers: int, *flags: str, command: tuple[str, ...] = ("pack",)) -> dict:
    result = measure([sys.executable, "-m", "packsft", *command, str(data_dir), str(out), "--tokenizer", str(GPT2),
                      "--seq-length", "2048", "--strategy", "bestfit", *flags, "-q", "--overwrite",
                      *(["--workers", str(workers)] if command == ("pack",) else [])])
    dataset = json.loads((out / "dataset.json").read_text())
    result.update(tokens_rendered=dataset["counters"]["tokens_rendered"], rows=dataset["rows"],
                  units=len(dataset["shards"]), shards=dataset["shards"])
    return result


@contextlib.contextmanager
def ray_cluster(state: Path, cpus_per_node: int):
    """(address, session ids) of a head + worker node on this machine, stopped on exit."""
    env = {**os.environ, "PYTHON": sys.executable, "RAY_NODE_CPUS": str(cpus_per_node)}
    # The nodes outlive ray-up.sh: they must not become this process's children, or measure() would
    # wait for them when it reaps a run's orphans.
    set_child_subreaper(False)
    up = subprocess.run([str(ROOT / ".ci" / "ray-up.sh"), str(state)], capture_output=True, text=True, env=env)
    set_child_subreaper(True)
    try:
        if up.returncode != 0:
            raise SystemExit(f".ci/ray-up.sh failed: {up.stderr.strip()}")
        sessions = [int(line.split()[1]) for line in (state / "pids").read_text().splitlines()]
        yield up.stdout.strip().splitlines()[-1].removeprefix("RAY_ADDRESS="), sessions
    finally:
        subprocess.run([str(ROOT / ".ci" / "ray-down.sh"), str(state)], check=False)


class SessionsCpu:
    """CPU seconds the processes of some sessions (the Ray nodes: daemons and workers) use while open.

    Sampled every 0.2 s per process, because a raylet does not collect its exited workers' times (no
    cutime to read at the end); a worker's last fraction of a sample interval is lost.
    """

    def __init__(self, sessions: list[int]) -> None:
        self.sessions, self.seen, self.first = set(sessions), {}, {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.cpu_s = 0.0

    def _sample(self) -> dict[tuple[int, str], int]:
        ticks = {}
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and os.getsid(int(entry)) in self.sessions:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                    ticks[(int(entry), fields[19])] = int(fields[11]) + int(fields[12])  # key: pid, start time
            except (OSError, ProcessLookupError):
                continue
        return ticks

    def _run(self) -> None:
        while not self.done.wait(0.2):
            self.seen.update(self._sample())

    def __enter__(self) -> SessionsCpu:
        self.first = self._sample()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        self.seen.update(self._sample())
        used = sum(ticks - self.first.get(key, 0) for key, ticks in self.seen.items())
        self.cpu_s = used / os.sysconf("SC_CLK_TCK")


def bench_ray(data_dir: Path, tmp: Path) -> dict | None:
    """Local `--workers <cores>` vs `ray submit` on a 2-node cluster with as many task slots, per unit size."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return None
    cores = os.cpu_count() or 2
    results = {}
    for unit_mib in RAY_UNIT_MIB:
        flags = ("--unit-mib", str(unit_mib))
        local = pack(data_dir, tmp / f"local-{unit_mib}", cores, *flags)
        with ray_cluster(tmp / f"ray-state-{unit_mib}", max(1, cores // 2)) as (address, sessions):
            with SessionsCpu(sessions) as cluster:
                remote = pack(data_dir, tmp / f"ray-{unit_mib}", cores, *flags, "--address", address,
                              command=("ray", "submit"))
            remote["cpu_s"] += cluster.cpu_s
        results[unit_mib] = {"local": local, "ray": remote, "same": local["shards"] == remote["shards"],
                             "slots": 2 * max(1, cores // 2)}
        print("ray", unit_mib, {k: v["wall_s"] for k, v in results[unit_mib].items() if isinstance(v, dict)}, flush=True)
    return results


def bench_merge(out: Path) -> dict:
    from packsft.run import merge

    times = []
    for _ in range(3):
        started = time.perf_counter()
        merge(out)
        times.append(time.perf_counter() - started)
    cli = measure([sys.executable, "-m", "packsft", "merge", str(out)])
    return {"merge_s": min(times), "cli_wall_s": cli["wall_s"], "units": len(json.loads((out / "dataset.json").read_text())["shards"])}


def projection(raw: dict, runs: dict, merge: dict) -> list[str]:
    w2 = runs[(8, 2)]
    tokens = w2["tokens_rendered"]
    cpu_per_token = w2["cpu_s"] / tokens  # includes start-up, reading, rendering, packing, writing
    node_rate_cpu = NODE_CORES / cpu_per_token  # every core busy packing, as measured per CPU second
    node_rate_wall = tokens / w2["wall_s"] * NODE_CORES / (os.cpu_count() or 1)
    merge_per_unit = merge["merge_s"] / merge["units"]
    units_node, units_16 = NODE_CORES * 4, NODES * NODE_CORES
    one_node, sixteen = TARGET_TOKENS / node_rate_cpu, TARGET_TOKENS / node_rate_cpu / NODES
    return [
        f"- Measured: {cpu_per_token * 1e6:.2f} CPU-µs per rendered token end to end with 2 workers "
        f"(raw tokenizer: {raw['cpu_s'] / raw['tokens'] * 1e6:.2f} CPU-µs per content token).",
        f"- **One 64-core node** (`--workers 64`, ~{units_node} units): **{one_node:.0f} s** on the CPU-time basis "
        f"({node_rate_cpu / 1e6:.1f}M tok/s); {TARGET_TOKENS / node_rate_wall:.0f} s scaling this machine's "
        f"wall-clock rate by {NODE_CORES}/{os.cpu_count()} cores.",
        f"- **16 such nodes** (`packsft slurm submit --array-size 16 --cpus-per-task 64 --workers 64`, ~{units_16} units): "
        f"**{sixteen:.0f} s** of packing per task, plus merge ({merge_per_unit * units_16:.1f} s at the measured "
        f"{merge_per_unit * 1e3:.1f} ms per unit), plus per-task start-up (Python, imports, tokenizer: a few "
        "seconds) and the queue wait, which at this size dominate: 16 nodes pay off from tens of billions of tokens.",
        "- Assumptions: cores as fast as this (shared, 2-core) machine's; units independent (nothing shared "
        "but the file system), so throughput scales with cores until I/O binds: 1B tokens is ~1 GB of "
        "ShareGPT-like parquet in and ~3 GB of uint16 tokens + uint8 masks out, small against the compute; "
        "`--unit-mib` set so that every worker gets units (1B tokens at the default 8 MiB is ~120 units: "
        "use ~4 MiB on one node, ~1 MiB across 16 nodes; smaller units give best-fit fewer conversations "
        "to choose from); memory per worker ~0.1 GiB + ~50 bytes per token of its unit (BENCHMARKS.md: "
        "327 MiB at the 3.7 MB units above, under 1 GiB at 8 MiB), so 64 workers need 20-60 GiB.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS-scale.md"), help="Markdown file to write.")
    args = parser.parse_args()
    if not DATA.exists() or not GPT2.exists():
        raise SystemExit(f"needs {DATA} and {GPT2}")
    set_child_subreaper(True)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tmp = Path(tmp)
        data = {n: shard_dir(tmp / f"data{n}", n) for n in (2, 8)}
        raw = raw_tokenizer(data[8])
        print("raw", raw, flush=True)
        runs = {}
        for shards, workers in ((2, 1), (2, 2), (8, 1), (8, 2)):
            runs[(shards, workers)] = pack(data[shards], tmp / f"out{shards}-{workers}", workers)
            print(shards, workers, runs[(shards, workers)], flush=True)
        same = all((tmp / "out8-1" / "shards" / s / f).read_bytes() == (tmp / "out8-2" / "shards" / s / f).read_bytes()
                   for s in os.listdir(tmp / "out8-1" / "shards") if s.isdigit()
                   for f in ("tokens.npy", "loss_mask.npy", "segment_lengths.npy", "row_segments.npy"))
        merge = bench_merge(tmp / "out8-2")
        print("merge", merge, flush=True)
        ray_runs = bench_ray(data[8], tmp)
    write_report(Path(args.out), raw, runs, merge, same, ray_runs)


def ray_section(ray_runs: dict | None) -> list[str]:
    """Units/s and Ray's overhead per unit: the extra task-slot seconds per unit against local workers."""
    if ray_runs is None:
        return ["Not measured: Ray is not installed (`pip install -e '.[ray]'`)."]
    lines = [
        "| --unit-mib | units | run | wall s | units/s | CPU s | overhead per unit: slot-s (wall) | CPU-s | outputs identical |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for unit_mib, r in ray_runs.items():
        local, remote, slots = r["local"], r["ray"], r["slots"]
        overhead = (remote["wall_s"] - local["wall_s"]) * slots / remote["units"]
        overhead_cpu = (remote["cpu_s"] - local["cpu_s"]) / remote["units"]
        lines += [
            f"| {unit_mib} | {local['units']} | `pack --workers {slots}` | {local['wall_s']:.1f} | "
            f"{local['units'] / local['wall_s']:.2f} | {local['cpu_s']:.1f} | | | |",
            f"| {unit_mib} | {remote['units']} | `ray submit`, 2 nodes x {slots // 2} CPU | {remote['wall_s']:.1f} | "
            f"{remote['units'] / remote['wall_s']:.2f} | {remote['cpu_s']:.1f} | {overhead:.2f} | {overhead_cpu:.2f} | "
            f"{'yes' if r['same'] else 'NO'} |",
        ]
    return lines + [
        "",
        "Both on this machine, the Ray cluster started by `.ci/ray-up.sh` before the run (not timed): its "
        "wall time includes connecting the driver, starting one Ray worker per task slot (Python, imports, "
        "tokenizer) and the merge. Overhead per unit = (Ray - local) x task slots / units in wall seconds, "
        "and (Ray - local) / units in CPU seconds, which other load on the machine does not inflate; CPU s "
        "for Ray adds the nodes' processes (raylets, GCS, agents, workers) to the driver's.",
    ]


def write_report(path: Path, raw: dict, runs: dict, merge: dict, same: bool, ray_runs: dict | None = None) -> None:
    raw_rate = raw["tokens"] / raw["wall_s"]
    lines = [
        "# Scale-out benchmark (`python scripts/bench_scale.py`)",
        "",
        f"ShareGPT shards from `../shared/` (8 = 17.7k conversations), GPT-2 tokenizer, L=2048, bestfit, "
        f"default `--unit-mib 8` (one unit per 3.7 MB shard); {os.cpu_count()} cores. The machine was shared with "
        "other jobs: the load average before each run is listed, and wall-clock rates are only comparable "
        "at similar load; CPU seconds are not affected.",
        "",
        "## Throughput (8 shards)",
        "",
        "| run | wall s | tokens | tok/s (wall) | vs raw (wall) | CPU s | vs raw (CPU s) | load before |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| raw `encode_batch`, all threads (limit) | {raw['wall_s']:.1f} | {raw['tokens']:,} content | "
        f"{raw_rate / 1e3:,.0f}k | 1.00x | {raw['cpu_s']:.1f} | 1.00x | |",
    ]
    for workers in (1, 2):
        r = runs[(8, workers)]
        lines.append(
            f"| `packsft pack --workers {workers}` (whole process) | {r['wall_s']:.1f} | {r['tokens_rendered']:,} rendered | "
            f"{r['tokens_rendered'] / r['wall_s'] / 1e3:,.0f}k | {raw['wall_s'] / r['wall_s']:.2f}x | {r['cpu_s']:.1f} | "
            f"{raw['cpu_s'] / r['cpu_s']:.2f}x | {r['load_before']:.1f} |"
        )
    lines += [
        "",
        "\"vs raw\" = raw tokenizer time / end-to-end time for the same conversations (rendered tokens add "
        "role, BOS and EOS tokens to the content tokens); the CPU column compares CPU seconds, which other "
        "jobs on the machine do not inflate, and counts everything the pack does besides tokenizing "
        "(start-up, parquet decoding, rendering, packing, writing). Outputs of --workers 1 and 2 byte-identical: "
        f"{'yes' if same else 'NO'}.",
        "",
        "## Memory: 2 vs 8 shards",
        "",
        "| shards | workers | units | largest process RSS MiB | process tree peak PSS MiB | getrusage maxrss so far MiB | wall s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (shards, workers), r in runs.items():
        lines.append(f"| {shards} | {workers} | {r['units']} | {r['max_process_rss_mib']:.0f} | "
                     f"{r['peak_tree_pss_mib']:.0f} | {r['maxrss_so_far_mib']:.0f} | {r['wall_s']:.1f} |")
    lines += [
        "",
        "Sampled every 0.1 s over the run's process tree (parent, fork server, workers): the largest "
        "single RSS, and the sum of PSS (shared pages split among the processes sharing them). getrusage: ru_maxrss of all reaped descendants, cumulative over the runs in "
        "the order listed (the 2-shard runs come first, so their figure is their own).",
        "",
        "## Merge",
        "",
        f"`packsft merge` of the 8-unit output: {merge['merge_s'] * 1e3:.0f} ms in-process "
        f"({merge['merge_s'] / merge['units'] * 1e3:.1f} ms per unit: reads manifests, concatenates the "
        f"per-unit rejects, writes dataset.json; no array byte copied); {merge['cli_wall_s']:.1f} s as a CLI "
        "command including Python start-up and imports.",
        "",
        "## Ray vs local workers (8 shards)",
        "",
        *ray_section(ray_runs),
        "",
        "## Projection: 1B tokens",
        "",
        *projection(raw, runs, merge),
        "",
    ]
    path.write_text("\n".join(lines))
    print(path.read_text())


if __name__ == "__main__":
    main()
