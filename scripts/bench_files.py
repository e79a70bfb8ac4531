"""Plan and pack time against the number of input files: many small files must scale linearly.

    python scripts/bench_files.py [--files 1000 10000] [--workers 1] [--keep]

Writes N small JSON Lines files (5 conversations each) into a temporary folder, then times
`plan_inputs` (listing + opening every file) and `run_pack` end to end (one unit and one shard per
file, merge, dataset.json) with the demo tokenizer and L=64. Prints a markdown table with the time
per file; a linear pipeline shows about the same per-file time at every N. The lead copies the
table into BENCHMARKS-scale.md from a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

from packsft.config import PackConfig
from packsft.demo import build_demo_tokenizer
from packsft.run.pipeline import run_pack
from packsft.run.plan import plan_inputs

CONVERSATIONS_PER_FILE = 5
SEQ_LENGTH = 64


def write_files(folder: Path, count: int) -> None:
    """`count` JSON Lines files in 100 sub-folders, each holding a few short conversations."""
    for index in range(count):
        path = folder / f"part-{index % 100:03d}" / f"file-{index:06d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"messages": [{"role": "user", "content": f"Question {index}.{k}?"},
                                          {"role": "assistant", "content": f"Answer {index}.{k}. " * (1 + k)}]})
                 for k in range(CONVERSATIONS_PER_FILE)]
        path.write_text("\n".join(lines) + "\n")


def measure(root: Path, tokenizer: Path, count: int, workers: int) -> dict[str, float]:
    data, out = root / f"data-{count}", root / f"out-{count}"
    write_files(data, count)
    config = PackConfig(tokenizer=str(tokenizer), seq_length=SEQ_LENGTH)
    started = time.perf_counter()
    units, _ = plan_inputs(data, config)
    plan_s = time.perf_counter() - started
    started = time.perf_counter()
    result = run_pack(data, out, config, quiet=True, workers=workers)
    pack_s = time.perf_counter() - started
    assert len(units) == count and result.dataset is not None and len(result.dataset["shards"]) == count
    return {"files": count, "plan_s": plan_s, "pack_s": pack_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="Keep the generated files and outputs.")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="packsft-bench-files-"))
    try:
        tokenizer = build_demo_tokenizer(root / "tokenizer")
        rows = [measure(root, tokenizer, count, args.workers) for count in args.files]
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{platform.node()}, {platform.processor() or platform.machine()}, --workers {args.workers}, "
          f"{CONVERSATIONS_PER_FILE} conversations per file, L={SEQ_LENGTH}\n")
    print("| files | plan s | plan ms/file | pack s (plan + pack + merge) | pack ms/file |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['files']:,} | {row['plan_s']:.1f} | {1e3 * row['plan_s'] / row['files']:.2f} | "
              f"{row['pack_s']:.1f} | {1e3 * row['pack_s'] / row['files']:.2f} |")


if __name__ == "__main__":
    main()
