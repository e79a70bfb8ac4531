#!/usr/bin/env python
"""Pack 1B tokens on this machine and verify them; writes the section "1B tokens on one machine" of
BENCHMARKS-scale.md.

The data is the 8 shared ShareGPT shards, symlinked COPIES times into copy-NN/ folders (each copy is its own file,
so its own units and shards; 34 copies of 29.7M GPT-2 tokens are 1.01B). `packsft pack` runs as a whole process with
its defaults (GPT-2, role tokens, L=2048, bestfit, one worker per CPU, the rendered-token store kept); the RSS of its
process tree is sampled every second, so the peak of the workers can be compared between the first and the last
tenth of the run (flat RSS: no growth across units). Then `packsft verify OUT` runs as a whole process.

Usage: python scripts/scale_1b.py [--copies 34] [--work /tmp/scale-1b] [--out BENCHMARKS-scale.md] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import tree_rss  # (largest process, sum) RSS of a process tree, from /proc

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data" / "sharegpt"
GPT2 = SHARED / "tokenizers" / "gpt2"
HEADING = "## 1B tokens on one machine"
SAMPLE_SECONDS = 1.0


def run_sampled(cmd: list[str]) -> tuple[float, list[tuple[float, int, int]]]:
    """(wall seconds, samples of (seconds since start, largest process RSS, tree RSS)) of a command."""
    started = time.perf_counter()
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    samples = []
    while process.poll() is None:
        largest, total = tree_rss(process.pid)
        if largest:
            samples.append((time.perf_counter() - started, largest, total))
        time.sleep(SAMPLE_SECONDS)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, cmd)
    return time.perf_counter() - started, samples


def make_data(work: Path, copies: int) -> Path:
    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    for copy in range(copies):
        folder = data / f"copy-{copy:02d}"
        folder.mkdir(parents=True)
        for shard in sorted(DATA.glob("*.parquet")):
            (folder / shard.name).symlink_to(shard)
    return data


def tenth_peaks(samples: list[tuple[float, int, int]], seconds: float) -> tuple[int, int]:
    """Peak largest-process RSS in the first and in the last tenth of the run (the start-up excluded: planning)."""
    first = [s[1] for s in samples if 0.1 * seconds <= s[0] < 0.2 * seconds]
    last = [s[1] for s in samples if s[0] >= 0.9 * seconds]
    return max(first, default=0), max(last, default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=34, help="copies of the 8 shards (34: 1.01B GPT-2 tokens)")
    parser.add_argument("--work", default="/tmp/scale-1b", help="folder for the data links and the output")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS-scale.md"), help="the Markdown file to update")
    parser.add_argument("--keep", action="store_true", help="keep the output (several GB) after the run")
    args = parser.parse_args()
    if not DATA.exists() or not GPT2.exists():
        sys.exit(f"needs {DATA} and {GPT2} (the shared assets of the developer checkout)")
    work = Path(args.work)
    data, out = make_data(work, args.copies), work / "out"
    shutil.rmtree(out, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"packing {args.copies} x 8 shards ...", flush=True)
    pack_seconds, samples = run_sampled([sys.executable, "-m", "packsft", "pack", str(data), str(out), "--tokenizer",
                                         str(GPT2), "-q"])
    print("verifying ...", flush=True)
    verify_seconds, verify_samples = run_sampled([sys.executable, "-m", "packsft", "verify", str(out)])
    dataset = json.loads((out / "dataset.json").read_text())
    stats = dataset["stats"]
    shards = sum(path.stat().st_size for path in (out / "shards").rglob("*") if path.is_file())
    store = sum(path.stat().st_size for path in (out / "rendered").rglob("*") if path.is_file())
    first, last = tenth_peaks(samples, pack_seconds)
    peak, tree = max(s[1] for s in samples), max(s[2] for s in samples)
    units = len(list((out / "shards").iterdir()))
    mib = 2**20
    lines = [
        "", HEADING, "",
        f"Measured by `python scripts/scale_1b.py --copies {args.copies}` on {time.strftime('%Y-%m-%d')} "
        f"({os.cpu_count()} cores; load average {load:.1f} before the run): the 8 ShareGPT shards symlinked "
        f"{args.copies} times, GPT-2, role tokens, L=2048, bestfit, the CLI's defaults (a worker per CPU, the "
        "rendered-token store kept).",
        "",
        "| what | value |",
        "| --- | ---: |",
        f"| rendered tokens | {stats['tokens_rendered']:,} |",
        f"| conversations packed | {stats['conversations_packed']:,} in {units:,} units |",
        f"| chunks | {stats['chunks']:,} (fill {100 * stats['fill']:.1f}%) |",
        f"| pack wall time | {pack_seconds / 60:.1f} min ({stats['tokens_rendered'] / pack_seconds / 1e6:.2f}M tokens/s) |",
        f"| peak RSS, largest process | {peak / mib:,.0f} MiB |",
        f"| peak RSS, process tree | {tree / mib:,.0f} MiB |",
        f"| largest process in the 2nd / last tenth of the run | {first / mib:,.0f} / {last / mib:,.0f} MiB |",
        f"| `packsft verify` wall time | {verify_seconds / 60:.1f} min (peak RSS {max(s[1] for s in verify_samples) / mib:,.0f} MiB) |",
        f"| shards on disk | {shards / 2**30:.2f} GiB ({shards / stats['tokens_rendered']:.2f} bytes/token) |",
        f"| rendered-token store on disk | {store / 2**30:.2f} GiB ({store / stats['tokens_rendered']:.2f} bytes/token) |",
        "",
        "RSS is sampled every second over the pack's process tree (parent, fork server, workers); each worker packs "
        "one unit at a time, so a flat largest-process RSS from the 2nd to the last tenth means nothing grows across "
        "units.",
    ]
    document = Path(args.out).read_text() if Path(args.out).exists() else "# Scale-out benchmark\n"
    start = document.find(HEADING)
    end = document.find("\n## ", start + len(HEADING)) if start >= 0 else -1
    before, after = (document[:start], document[end:] if end >= 0 else "") if start >= 0 else (document, "")
    document = before.rstrip("\n") + "\n" + "\n".join(lines) + "\n" + after
    Path(args.out).write_text(document)
    print("\n".join(lines))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
