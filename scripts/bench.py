#!/usr/bin/env python
"""Benchmark packsft on the shared ShareGPT shards with GPT-2 at L=2048, and write BENCHMARKS.md.

Measured in one run, on this machine:
  (a) the raw content-encoding limits on the same message texts: HF `encode_batch` (all threads) and
      the fast encoder (`--encoder fast`: gigatoken, all threads and one), in this process; and gigatoken alone
      as a whole process (parquet read, then `encode_batch` of every message content, all threads): the
      limit line each pack is compared with, for GPT-2 and for qwen3;
  (b) `packsft pack` end to end per strategy (a fresh process each, peak RSS from the OS), with
      `--encoder hf` and the default auto, and peak RSS per token of the largest unit (`--workers 1`);
  (c) an on-the-fly baseline in the seed's style: one `encode` call per message in a Python loop and a
      Python list buffer cut into chunks;
  (d) the packing stage alone (split + pack + chunk layout) as a share of pack time;
  (e) qwen3 with its chat template: `packsft pack --template chat` against the peer pipeline a user would
      run instead (`datasets` map(num_proc=2) with apply_chat_template(tokenize=True), then TRL
      `pack_dataset(..., strategy="bfd")`; needs `pip install datasets trl`, skipped without them);
  (f) qwen3 tool calling: the same two pipelines, as whole processes in one run, on a 5M-token OpenAI-style
      tool-calling corpus written by `scripts/tool_corpus.py` (the peer passes each row's `tools` and
      `chat_template_kwargs` to `apply_chat_template`, as TRL's SFTTrainer does).
  (g) re-packing to another L: `packsft repack` from the rendered-token store against a fresh `packsft pack` with
      the same settings, whole processes alternating in one run, for GPT-2 and qwen3 chat, bytes compared.

Usage: python scripts/bench.py [--shards N] [--out BENCHMARKS.md] [--only tools|repack]
`--only tools` (or `repack`) runs section (f) (or (g)) alone and replaces its section in --out in place.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from tool_corpus import write_corpus

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data" / "sharegpt"
GPT2 = SHARED / "tokenizers" / "gpt2"
QWEN3 = SHARED / "tokenizers" / "qwen3"
# The memory target: peak RSS <= this base + MEM_BYTES_PER_TOKEN per rendered token of the largest unit.
MEM_BASE_BYTES = 0.3 * 2**30
MEM_BYTES_PER_TOKEN = 40
SEQ = 2048
TOOL_CORPUS_TOKENS = 5_000_000
TOOLS_HEADING = "## qwen3 tool calling"
REPACK_HEADING = "## Re-packing from the rendered-token store"
REPACK_SEQ = 8192  # the new L of the re-pack measurement
REPACK_ROUNDS = 2  # fresh pack and repack alternate this many times; the best of each is reported
EXPORT_HEADING = "## Export to trainers' formats"

# Runs use the CLI's default --workers 0 (a process per CPU for inputs >= 4 MiB) unless they say otherwise,
# and a warm tokenizer cache (as every run after the first); `cold` runs with PACKSFT_CACHE=off, as a first run.
RUNS = [
    ("linear", "all", [], False),
    ("aligned", "assistant_only", [], False),
    ("bestfit", "assistant_only", ["--turn-cut", "64"], False),  # the old default: fills rows by beheading turns
    ("bestfit", "assistant_only", ["--workers", "1"], False),
    ("bestfit", "assistant_only", ["--encoder", "hf"], False),
    ("bestfit", "assistant_only", [], True),
    ("bestfit", "assistant_only", [], False),
    ("bestfit", "assistant_only", ["--unprompted", "mask"], False),
]
# How often the process tree's memory is sampled (its workers are grandchildren, under multiprocessing's
# fork server, which packsft does not wait for: RUSAGE_CHILDREN does not see them).
RSS_SAMPLE_SECONDS = 0.05
# Runs a command and writes the peak RSS (KiB) of its largest waited-for descendant to the file named first:
# exact for the command's own process (sampling can miss a short peak). A fresh parent per run, because
# RUSAGE_CHILDREN's peak in this process would carry over from earlier runs.
PEAK_RSS = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(done.returncode)"
)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Python {platform.python_version()}"


def load_texts(data_dir: Path) -> list[list[str]]:
    """Message texts per record batch (1024 records), as the pipeline reads them."""
    import pyarrow.parquet as pq

    batches = []
    for path in sorted(data_dir.glob("*.parquet")):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=["messages"]):
            batches.append([m["content"] for ms in batch.column("messages").to_pylist() if ms for m in ms])
    return batches


def bench_encoder(batches: list[list[str]], encoder: str, threads: int | None = None) -> tuple[int, float]:
    """Content tokens and seconds to encode every batch: HF `encode_batch`, or the fast encoder."""
    from packsft import load_tokenizer

    tokenizer = load_tokenizer(str(GPT2), encoder=encoder, threads=threads)
    encode = tokenizer.encode_batch if encoder == "hf" else tokenizer.encode_texts
    encode(batches[0][:64])  # start thread pools outside the timing
    started = time.perf_counter()
    tokens = sum(len(ids) for batch in batches for ids in encode(batch))
    return tokens, time.perf_counter() - started


GIGATOKEN_ALONE = """
import json, sys
if sys.argv[1] == "flat":  # as packsft's own processes run gigatoken: no awkward imported (render/flat_ids.py)
    from packsft.render.flat_ids import stand_in_for_awkward
    stand_in_for_awkward()
import gigatoken
import pyarrow.compute as pc
import pyarrow.parquet as pq
from packsft.render.flat_ids import flat_ids

tokenizer_json, counts, files = sys.argv[2], sys.argv[3], sys.argv[4:]
tokenizer = gigatoken.Tokenizer.from_json(open(tokenizer_json, encoding="utf-8").read())
tokens = 0
for path in files:
    messages = pq.read_table(path, columns=["messages"]).column("messages")
    texts = pc.list_flatten(messages).combine_chunks().field("content").to_pylist()
    for start in range(0, len(texts), 8192):
        tokens += len(flat_ids(tokenizer.encode_batch([t or "" for t in texts[start:start + 8192]], parallel=True))[0])
json.dump({"tokens": tokens}, open(counts, "w"))
"""


def bench_gigatoken_alone(data_dir: Path, tokenizer_dir: Path, template: str, *, awkward: bool = True
                          ) -> tuple[float, int]:
    """Seconds and content tokens of gigatoken alone on the message contents of `data_dir`, as a whole process
    (GIGATOKEN_ALONE), with the tokenizer packsft resolves (special added tokens as content reads them: plain).
    `awkward`: as gigatoken's users run it (its results are awkward arrays); else without importing awkward, as
    packsft's own processes run it (0.15 s less)."""
    from packsft.render.encoder import GigatokenEncoder
    from packsft.render.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_dir), template, encoder="hf")
    with tempfile.TemporaryDirectory() as tmp:
        spec, counts = Path(tmp) / "tokenizer.json", Path(tmp) / "counts.json"
        spec.write_bytes(GigatokenEncoder(tokenizer.serialized).plain_json)
        files = [str(path) for path in sorted(data_dir.glob("*.parquet"))]
        seconds = run_timed([sys.executable, "-c", GIGATOKEN_ALONE, "awkward" if awkward else "flat", str(spec),
                             str(counts), *files])
        return seconds, json.loads(counts.read_text())["tokens"]


PEER = """
import glob, json, os, sys
import datasets
import pyarrow.compute as pc
from transformers import AutoTokenizer
from trl import pack_dataset

data_dir, tokenizer_dir, seq, stats_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

def tokenize(record):
    # As TRL's SFTTrainer does: a row's tools (a list, or JSON text) and chat_template_kwargs go to the template.
    tools = record.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    # A user skips records the template refuses (ShareGPT has some), as packsft rejects them.
    try:
        ids = tokenizer.apply_chat_template(record["messages"], tools=tools, tokenize=True,
                                            **(record.get("chat_template_kwargs") or {}))
    except Exception:
        return {"input_ids": []}
    return {"input_ids": list(ids["input_ids"] if hasattr(ids, "keys") else ids)}

def tokens(data):
    return pc.sum(pc.list_value_length(data.data.column("input_ids"))).as_py() or 0

files = sorted(glob.glob(os.path.join(data_dir, "*.parquet")))
builder = "parquet" if files else "json"
files = files or sorted(glob.glob(os.path.join(data_dir, "*.jsonl")))
data = datasets.load_dataset(builder, data_files=files, split="train")
records = len(data)
data = data.map(tokenize, remove_columns=data.column_names, num_proc=2)
data = data.filter(lambda record: len(record["input_ids"]) > 0, num_proc=2)
packed = pack_dataset(data, seq, strategy="bfd")
# Counted from the Arrow columns, which costs milliseconds: no Python list of every token id in the timing.
stats = {"records": records, "refused": records - len(data), "tokens": tokens(data), "rows": len(packed),
         "tokens_packed": tokens(packed)}
with open(stats_path, "w") as handle:
    json.dump(stats, handle)
"""


def tree_rss(root: int, skip_root: bool = False) -> tuple[int, int]:
    """(largest process, sum over processes) RSS in bytes of `root`'s descendants (and `root` itself unless
    `skip_root`), read from /proc: each process's children from its threads' `children` files, not a scan of every
    process's `stat` (which took a share of a core every RSS_SAMPLE_SECONDS on this 2-core machine, from the pack it
    measured)."""
    page = os.sysconf("SC_PAGE_SIZE")
    largest = total = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                todo.extend(int(child) for child in children.read_text().split())
        if skip_root and pid == root:
            continue
        try:
            rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
        largest, total = max(largest, rss), total + rss
    return largest, total


def run_timed(cmd: list[str]) -> float:
    """Wall seconds of a command as a whole process, nothing else measured: no RSS sampler beside it and no wrapper
    interpreter (run_measured's cost 0.05-0.1 s of a 1.5 s pack on this 2-core machine, little of gigatoken alone's,
    which leaves a core partly idle)."""
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def run_measured(cmd: list[str], env: dict[str, str] | None = None,
                 stderr: IO[str] | None = None) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MiB of the largest process, peak RSS MiB summed over the process tree) of a command.

    The tree (the command, its workers, multiprocessing's fork server) is sampled every RSS_SAMPLE_SECONDS;
    shared pages count once per process, so the sum is an upper bound of what the run holds. The command's
    stderr goes to `stderr` when given.
    """
    with tempfile.NamedTemporaryFile("r") as peak:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-c", PEAK_RSS, peak.name, *cmd], env=env, stderr=stderr)
        largest = total = 0
        while process.poll() is None:
            sample = tree_rss(process.pid, skip_root=True)
            largest, total = max(largest, sample[0]), max(total, sample[1])
            time.sleep(RSS_SAMPLE_SECONDS)
        seconds = time.perf_counter() - started
        if process.returncode:
            raise subprocess.CalledProcessError(process.returncode, cmd)
        largest = max(largest, int(peak.read() or 0) * 1024)
    return seconds, largest / 2**20, max(total, largest) / 2**20


def peer_installed() -> bool:
    try:
        import datasets  # noqa: F401
        import trl  # noqa: F401
    except ImportError:
        print("  (skipped: pip install datasets trl)", flush=True)
        return False
    return True


def warm_pack(data_dir: Path, tokenizer: Path, *flags: str, stderr: Any = None) -> None:
    """One input file of `data_dir` packed and thrown away, as a whole process: every cache a pack fills (the
    tokenizer, the fast encoder's proof and its input, the chat path's proof, the omission-marker encoder, the chat
    path's kept skeleton layouts) is then warm, as for any run after the first; the timed runs pack into fresh
    outputs."""
    first = min(path for path in data_dir.iterdir() if path.suffix in (".parquet", ".jsonl"))
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "packsft", "pack", str(first), str(Path(tmp) / "out"), "--tokenizer",
                        str(tokenizer), "--workers", "1", "-q", *flags], check=True, stderr=stderr)


def run_packsft_chat(data_dir: Path, out: Path, warm: bool = True) -> dict:
    """`packsft pack --template chat` with qwen3 as a whole process: its measure, encoder and stats, or `error`
    (the exit status and the last lines of its stderr). `warm`: `warm_pack` first."""
    with tempfile.TemporaryFile("w+") as errors:
        try:
            if warm:
                warm_pack(data_dir, QWEN3, "--template", "chat", "--seq-length", str(SEQ), stderr=errors)
            measure = run_measured([sys.executable, "-m", "packsft", "pack", str(data_dir), str(out), "--tokenizer",
                                    str(QWEN3), "--template", "chat", "--seq-length", str(SEQ), "-q"], stderr=errors)
        except subprocess.CalledProcessError as exc:
            errors.seek(0)
            return {"error": f"exit {exc.returncode}: " + " / ".join(errors.read().strip().splitlines()[-3:])}
    dataset = json.loads((out / "dataset.json").read_text())
    return {"measure": measure, "encoder": dataset["config"]["encoder"], "stats": dataset["stats"]}


def run_peer(data_dir: Path, tmp: Path) -> tuple[tuple[float, float, float], dict]:
    """The peer pipeline (PEER) as a whole process: its measure and its counts (records, refused, tokens, rows,
    tokens_packed)."""
    # A fresh datasets cache each run: a warm one hands back the mapped (tokenized) rows of an earlier run.
    env = {**os.environ, "HF_DATASETS_CACHE": tempfile.mkdtemp(dir=tmp, prefix="cache"), "HF_HUB_OFFLINE": "1"}
    counts = tmp / "peer.json"
    measure = run_measured([sys.executable, "-c", PEER, str(data_dir), str(QWEN3), str(SEQ), str(counts)], env)
    return measure, json.loads(counts.read_text())


def bench_chat(data_dir: Path) -> dict | None:
    """qwen3 chat: packsft (default encoder) vs the peer pipeline, wall time and peak RSS, same data."""
    if not peer_installed():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        ours = run_packsft_chat(data_dir, Path(tmp) / "out")
        if "error" in ours:
            raise RuntimeError(f"packsft pack --template chat failed on ShareGPT: {ours['error']}")
        peer, _ = run_peer(data_dir, Path(tmp))
    return {"packsft": ours["measure"], "peer": peer, "encoder": ours["encoder"], "stats": ours["stats"]}


TOOLS_ROUNDS = 3  # packsft and the peer alternate this many times (one run of each moved their ratio by 3.3-5.2x)


def bench_tools() -> dict | None:
    """qwen3 tool calling: the generated corpus, then packsft and the peer pipeline on it, alternating TOOLS_ROUNDS
    times in one run.

    A packsft failure is reported, not raised, so that the peer is measured whatever packsft's state.
    """
    if not peer_installed():
        return None
    ours: dict = {}
    runs: list[tuple[float, float, float]] = []
    peers: list[tuple[float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        started = time.perf_counter()
        counts = write_corpus(corpus, TOOL_CORPUS_TOKENS)
        counts["seconds"] = time.perf_counter() - started
        print(f"  corpus: {counts['records']:,} records, {counts['tokens']:,} tokens", flush=True)
        for round_ in range(TOOLS_ROUNDS):
            print(f"  round {round_ + 1}: packsft, peer ...", flush=True)
            out = Path(tmp) / f"out{round_}"
            ours = run_packsft_chat(corpus, out, warm=round_ == 0)
            if "error" in ours:
                break
            runs.append(ours["measure"])
            shutil.rmtree(out)
            peer, peer_counts = run_peer(corpus, Path(tmp))
            peers.append(peer)
    if "error" in ours:
        peer, peer_counts = run_peer(corpus, Path(tmp)) if not peers else (peers[0], peer_counts)
        peers = peers or [peer]
    return {"corpus": counts, "packsft": {**ours, "runs": runs}, "peer": peers, "peer_counts": peer_counts}


def largest_unit_tokens(out: Path) -> int:
    manifests = (out / "shards").glob("*/manifest.json")
    return max(json.loads(m.read_text())["counters"]["tokens_rendered"] for m in manifests)


def bench_baseline(data_dir: Path, conversations: int = 600) -> tuple[int, float]:
    """The seed's on-the-fly path: encode per message in Python, pack with a Python buffer."""
    import pyarrow.parquet as pq

    from packsft import load_tokenizer

    tokenizer = load_tokenizer(str(GPT2))
    hf = tokenizer.hf
    records = [ms for ms in pq.read_table(sorted(data_dir.glob("*.parquet"))[0], columns=["messages"])
               .column("messages").to_pylist()[:conversations] if ms]
    roles = tokenizer.role_ids
    started = time.perf_counter()
    buffer: list[int] = []
    masks: list[int] = []
    chunks = tokens = 0
    for messages in records:
        ids, mask = [tokenizer.bos_id], [0]
        for message in messages:
            content = hf.encode(message["content"], add_special_tokens=False)
            ids.append(roles[message["role"]])
            ids.extend(content)
            mask.extend([1] * (len(content) + 1))
        ids.append(tokenizer.eos_id)
        mask.append(1)
        tokens += len(ids)
        buffer.extend(ids)
        masks.extend(mask)
        while len(buffer) >= SEQ + 1:
            chunk, buffer = buffer[: SEQ + 1], buffer[SEQ + 1 :]
            chunk_mask, masks = masks[: SEQ + 1], masks[SEQ + 1 :]
            _ = (chunk[:-1], chunk[1:], chunk_mask[1:])
            chunks += 1
    return tokens, time.perf_counter() - started


def bench_pack(data_dir: Path, strategy: str, mask: str, extra: list[str], cold: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "packsft", "pack", str(data_dir), str(out), "--tokenizer", str(GPT2),
               "--strategy", strategy, "--mask", mask, "--seq-length", str(SEQ), "-q", *extra]
        env = {**os.environ, "PACKSFT_CACHE": "off"} if cold else None
        seconds, peak_mib, tree_mib = run_measured(cmd, env)
        dataset = json.loads((out / "dataset.json").read_text())
        disk = sum(p.stat().st_size for p in (out / "shards").rglob("*.npy"))
        unit_tokens = largest_unit_tokens(out)
    stats = dataset["stats"]
    return {
        "strategy": strategy, "mask": mask, "extra": " ".join(extra + ["(cold: no tokenizer cache)"] * cold),
        "seconds": seconds, "tokens": stats["tokens_rendered"], "peak_rss_mib": peak_mib, "tree_rss_mib": tree_mib,
        "bytes_per_token": disk / max(stats["tokens_rendered"], 1), "stats": stats, "unit_tokens": unit_tokens,
        "encoder": dataset["config"].get("encoder", "hf"),
    }


FRONTIER_ROUNDS = 5  # gigatoken alone and the pack alternate this many times (issue 29's ratios)


def bench_frontier(data_dir: Path) -> list[dict]:
    """The default GPT-2 pack and the qwen3 chat pack against gigatoken alone on the same contents, as whole processes
    alternating FRONTIER_ROUNDS times (warm caches): one run of each, minutes apart, moved their ratio by 10-20% on
    this shared machine; alternating runs share its moods."""
    results = []
    for name, tokenizer, template, flags in (("GPT-2, role tokens", GPT2, "roles", []),
                                             ("qwen3, `--template chat`", QWEN3, "chat", ["--template", "chat"])):
        warm_pack(data_dir, tokenizer, *flags)
        alone, flat, packs = [], [], []
        for _ in range(FRONTIER_ROUNDS):
            alone.append(bench_gigatoken_alone(data_dir, tokenizer, template)[0])
            flat.append(bench_gigatoken_alone(data_dir, tokenizer, template, awkward=False)[0])
            with tempfile.TemporaryDirectory() as tmp:
                packs.append(run_timed([sys.executable, "-m", "packsft", "pack", str(data_dir), str(Path(tmp) / "out"),
                                        "--tokenizer", str(tokenizer), "--seq-length", str(SEQ), "-q", *flags]))
        results.append({"name": name, "alone": alone, "flat": flat, "packs": packs})
    return results


ISSUE_SHARDS = 4  # issue 29 states its ratios on ShareGPT shards 0-3


def bench_frontiers(data_dir: Path, shards: int) -> list[tuple[int, list[dict]]]:
    """bench_frontier on all the shards of `data_dir`, and on its first ISSUE_SHARDS where it has more."""
    runs = [(shards, bench_frontier(data_dir))]
    if shards > ISSUE_SHARDS:
        with tempfile.TemporaryDirectory() as first:
            for path in sorted(data_dir.glob("*.parquet"))[:ISSUE_SHARDS]:
                (Path(first) / path.name).symlink_to(path.resolve())
            runs.append((ISSUE_SHARDS, bench_frontier(Path(first))))
    return runs


def frontier_lines(runs: list[tuple[int, list[dict]]]) -> list[str]:
    """The section of the packs against gigatoken alone, a table per (shards, bench_frontier results)."""
    targets = {"GPT-2, role tokens": 0.65, "qwen3, `--template chat`": 0.5}
    lines = ["", "## Against gigatoken alone (issue 29)", "",
             f"The default pack (L={SEQ}) and gigatoken alone encoding the same message contents (start-up, parquet "
             f"read, `encode_batch` on all threads), as whole processes timed alone (wall clock, no RSS sampler), "
             f"alternating {FRONTIER_ROUNDS} times, on all "
             f"the shards and on shards 0-{ISSUE_SHARDS - 1} (the issue's figures). gigatoken alone runs as its users "
             "run it, and again without importing awkward (its results' library, 0.15 s), as packsft's own processes "
             "run it (render/flat_ids.py): the ratio to that one is the stricter."]
    for shards, results in runs:
        lines += ["", f"{shards} shards:", "",
                  "| pack | gigatoken alone, s | without awkward, s | packsft pack, s | best / best | median / median "
                  "| same, without awkward | target |",
                  "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
        for r in results:
            packs = sorted(r["packs"])
            ratios = []
            for series in (r["alone"], r["flat"]):
                alone = sorted(series)
                ratios.append((alone[0] / packs[0], alone[len(alone) // 2] / packs[len(packs) // 2]))
            (best, median), (flat_best, flat_median) = ratios
            lines.append(f"| {r['name']} | {', '.join(f'{x:.2f}' for x in r['alone'])} | "
                         f"{', '.join(f'{x:.2f}' for x in r['flat'])} | {', '.join(f'{x:.2f}' for x in r['packs'])} | "
                         f"**{best:.2f}x** | {median:.2f}x | {flat_best:.2f}x / {flat_median:.2f}x | "
                         f">= {targets[r['name']]} |")
    return lines


def bench_packing_stage(data_dir: Path) -> tuple[float, float]:
    """Seconds in split + bestfit + chunk layout vs the whole unit, summed over units (in process)."""
    from packsft import PackConfig, load_tokenizer
    from packsft.pack.bins import pack_bestfit
    from packsft.pack.rows import build_chunks
    from packsft.pack.split import split_long
    from packsft.read.reader import open_input, read_conversations
    from packsft.read.records import RejectLedger
    from packsft.render.batch import RenderedBatch
    from packsft.render.renderers import make_renderer
    from packsft.run.plan import plan_units

    config = PackConfig(tokenizer=str(GPT2))
    tokenizer = load_tokenizer(str(GPT2))
    renderer = make_renderer(tokenizer, config)
    total = packing = 0.0
    for unit in plan_units(data_dir):
        started = time.perf_counter()
        source = open_input(unit.path, "conversation")
        batches = [renderer.render(convs)
                   for convs, _ in read_conversations(source, "conversation", RejectLedger())]
        batch = RenderedBatch.concat(batches)
        batch = batch.select(batch.trainable_per_conversation() > 0)
        stage = time.perf_counter()
        pieces, _ = split_long(batch, SEQ, "split")
        build_chunks(pieces, pack_bestfit(pieces.lengths, SEQ + 1), SEQ, tokenizer.pad_id)
        packing += time.perf_counter() - stage
        total += time.perf_counter() - started
    return packing, total


def chat_lines(chat: dict | None, shards: int) -> list[str]:
    if chat is None:
        return ["", "qwen3 chat vs the peer pipeline: skipped (pip install datasets trl)."]
    (ours, _, our_rss), (peer, _, peer_rss) = chat["packsft"], chat["peer"]
    return [
        "",
        f"qwen3 with `--template chat` ({shards} shards, L={SEQ}, encoder {chat['encoder']}): packsft **{ours:.1f}s**, "
        f"{our_rss:,.0f} MiB peak RSS (process tree); the peer pipeline (`datasets` map(num_proc=2) + apply_chat_template, "
        f"TRL `pack_dataset(strategy='bfd')`) **{peer:.1f}s**, {peer_rss:,.0f} MiB: packsft is **{peer / ours:.2f}x** "
        "as fast (target >= 1.5x). The peer computes no assistant masks and truncates; packsft splits.",
        f"gigatoken alone encodes the same message contents with qwen3 in {chat['gigatoken_seconds']:.1f}s (a whole "
        f"process, {chat['gigatoken_tokens']:,} content tokens): packsft's chat pack is "
        f"**{chat['gigatoken_seconds'] / ours:.2f}x** that rate (issue 29 target >= 0.5).",
        f"packsft's output: {chat['stats']['chunks']:,} chunks, fill {pct(chat['stats']['fill'])}, retention "
        f"{pct(chat['stats']['trained_retention'])}, context completeness {pct(chat['stats']['context_completeness'])}, "
        f"turn prefix completeness {pct(chat['stats'].get('turn_prefix_completeness'))}.",
    ]


def tools_lines(tools: dict | None, command: str) -> list[str]:
    lines = ["", TOOLS_HEADING, ""]
    if tools is None:
        return [*lines, "Skipped (pip install datasets trl)."]
    corpus, ours, peers, counts = tools["corpus"], tools["packsft"], tools["peer"], tools["peer_counts"]
    peer_times = sorted(seconds for seconds, _, _ in peers)
    peer_peak, peer_tree = max(peak for _, peak, _ in peers), max(tree for _, _, tree in peers)
    lines += [
        f"Measured by `{command}` on {time.strftime('%Y-%m-%d')} ({machine()}).",
        f"Corpus: `scripts/tool_corpus.py` (seed 0, written in {corpus['seconds']:.0f}s, not timed below): "
        f"{corpus['records']:,} OpenAI-style records in {corpus['files']} JSON Lines files ({corpus['bytes'] / 2**20:,.1f} MiB), "
        f"**{corpus['tokens']:,} qwen3 template tokens**, {corpus['messages']:,} messages, {corpus['tool_calls']:,} tool calls. "
        "1-6 tools per record from a pool of 30, 0-6 tool rounds of 1-3 calls per request, follow-ups on 30%, "
        "`enable_thinking: false` on 20% of rows, `reasoning_content` on 15% of final answers; the text is ShareGPT's.",
        "",
        f"Both pipelines alternate {len(peers)} times; wall seconds of each run in order, peak RSS the largest.",
        "",
        "| pipeline (whole process, L=2048) | wall s | peak RSS MiB | tree RSS MiB | tokens | rows |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    if "error" in ours:
        lines.append(f"| packsft `pack --template chat` | **failed** ({ours['error']}) | | | | |")
    else:
        runs = ours["runs"]
        seconds = ", ".join(f"{run[0]:.1f}" for run in runs)
        peak, tree = max(run[1] for run in runs), max(run[2] for run in runs)
        lines.append(f"| packsft `pack --template chat` (encoder {ours['encoder']}) | {seconds} | {peak:,.0f} | "
                     f"{tree:,.0f} | {ours['stats']['tokens_rendered']:,} | {ours['stats']['chunks']:,} |")
    lines += [
        f"| peer: `datasets` map(num_proc=2) + apply_chat_template(tools, kwargs), TRL `pack_dataset(strategy='bfd')` | "
        f"{', '.join(f'{run[0]:.1f}' for run in peers)} | {peer_peak:,.0f} | {peer_tree:,.0f} | {counts['tokens']:,} | "
        f"{counts['rows']:,} |",
        "",
    ]
    if "error" not in ours:
        ours_times = sorted(run[0] for run in ours["runs"])
        s = ours["stats"]
        rejected = ", ".join(f"{n:,} {why}" for why, n in s.get("rejected_by_reason", {}).items()) or "none"
        lines += [
            f"packsft is **{peer_times[0] / min(ours_times):.2f}x** as fast as the peer, best against best, and "
            f"{statistics.median(peer_times) / statistics.median(ours_times):.2f}x median against median (target >= 4x).",
            f"packsft's output: fill {pct(s['fill'])}, retention {pct(s['trained_retention'])}, trained fraction "
            f"{pct(s['trained_fraction'])}, context completeness {pct(s['context_completeness'])}, turn prefix "
            f"completeness {pct(s.get('turn_prefix_completeness'))}; conversations read {s['conversations_read']:,}, "
            f"packed {s['conversations_packed']:,}, split {s['conversations_split']:,}; records rejected: {rejected}.",
        ]
    lines.append(
        f"The peer refused {counts['refused']:,} of {counts['records']:,} records, computes no assistant masks and "
        f"truncates: its rows hold {counts['tokens_packed']:,} of its {counts['tokens']:,} tokens "
        f"({pct(counts['tokens_packed'] / max(counts['tokens'], 1))}).")
    return lines


def bench_repack(data_dir: Path) -> list[dict]:
    """Per tokenizer (GPT-2 role tokens, qwen3 chat): pack at L=SEQ (keeping the store, not timed), then a fresh pack
    at REPACK_SEQ and `packsft repack` to REPACK_SEQ, alternating, as whole processes; their times and whether their
    arrays are identical."""
    results = []
    for name, tokenizer in (("GPT-2 (role tokens)", GPT2), ("qwen3 (chat template)", QWEN3)):
        with tempfile.TemporaryDirectory() as tmp:
            first, fresh, again = Path(tmp) / "first", Path(tmp) / "fresh", Path(tmp) / "again"
            pack = [sys.executable, "-m", "packsft", "pack", str(data_dir)]
            run_measured([*pack, str(first), "--tokenizer", str(tokenizer), "--seq-length", str(SEQ), "-q"])
            times: dict[str, list[float]] = {"fresh": [], "repack": []}
            for _ in range(REPACK_ROUNDS):
                times["fresh"].append(run_measured([*pack, str(fresh), "--tokenizer", str(tokenizer), "--seq-length",
                                                    str(REPACK_SEQ), "--no-store", "-q", "--overwrite"])[0])
                times["repack"].append(run_measured([sys.executable, "-m", "packsft", "repack", str(first), str(again),
                                                     "--seq-length", str(REPACK_SEQ), "-q", "--overwrite"])[0])
            identical = all((fresh / "shards" / shard.name / array.name).read_bytes() == array.read_bytes()
                            for shard in (again / "shards").iterdir() for array in shard.glob("*.npy"))
            store = sum(path.stat().st_size for path in (first / "rendered").rglob("*") if path.is_file())
            tokens = json.loads((first / "dataset.json").read_text())["stats"]["tokens_rendered"]
        results.append({"name": name, "fresh": min(times["fresh"]), "repack": min(times["repack"]), "times": times,
                        "identical": identical, "store_bytes": store, "tokens": tokens})
    return results


def repack_lines(results: list[dict], command: str, shards: int) -> list[str]:
    lines = [
        "", REPACK_HEADING, "",
        f"Measured by `{command}` on {time.strftime('%Y-%m-%d')} ({machine()}); {shards} ShareGPT shards packed at "
        f"L={SEQ} first (not timed), then to L={REPACK_SEQ}: a fresh `packsft pack --seq-length {REPACK_SEQ}` against "
        f"`packsft repack OUT NEW --seq-length {REPACK_SEQ}`, whole processes, alternating {REPACK_ROUNDS} times (best "
        "of each; all times listed).",
        "",
        "| tokenizer | fresh pack s | repack s | repack speed-up | arrays identical | store bytes/token | all times s |",
        "| --- | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for r in results:
        every = "fresh " + ", ".join(f"{t:.1f}" for t in r["times"]["fresh"]) + "; repack " + \
            ", ".join(f"{t:.2f}" for t in r["times"]["repack"])
        lines.append(f"| {r['name']} | {r['fresh']:.1f} | {r['repack']:.2f} | **{r['fresh'] / r['repack']:.1f}x** | "
                     f"{'yes' if r['identical'] else '**no**'} | {r['store_bytes'] / max(r['tokens'], 1):.2f} | {every} |")
    lines += [
        "",
        "The repack reads each unit's rendering from `OUT/rendered` and builds the new rows; it reads no record and "
        "encodes only the '[… N tokens omitted]' markers of shortened questions (issue 30 target: >= 10x).",
    ]
    return lines


def splice_section(document: str, section: list[str]) -> str:
    """`document` with the section under `section`'s heading replaced by `section`, or, where it has none,
    with `section` added before the export section (or at the end)."""
    lines, new = document.splitlines(), section[1:] + [""]  # sections open with a blank line, then the heading
    heading = new[0]
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("## ", "See also"))), len(lines))
        lines[start:end] = new
    elif EXPORT_HEADING in lines:
        at = lines.index(EXPORT_HEADING)
        lines[at:at] = new
    else:
        lines += ["", *new]
    return "\n".join(lines) + "\n"


EXPORT_TARGETS = ("trl", "megatron", "olmo-core", "hf")


def bench_export(data_dir: Path) -> list[str]:
    """`packsft export` of the default bestfit output to each target: a fresh process each, wall seconds."""
    lines = ["", EXPORT_HEADING, "", "| target | wall s | files | MiB written |", "| --- | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        subprocess.run([sys.executable, "-m", "packsft", "pack", str(data_dir), str(out), "--tokenizer", str(GPT2),
                        "--seq-length", str(SEQ), "-q"], check=True)
        for target in EXPORT_TARGETS:
            dest = Path(tmp) / target
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "packsft", "export", str(out), str(dest), "--to", target, "-q"],
                           check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - started
            files = json.loads((dest / "export.json").read_text())["files"]
            lines.append(f"| {target} | {seconds:.1f} | {len(files)} | {sum(f['bytes'] for f in files) / 2**20:,.0f} |")
    lines.append("\nWall time is the whole `packsft export` process (start-up, reading the arrays, writing, sha256 of every file).")
    return lines


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=8, help="how many ShareGPT shards to use (default all 8)")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="the Markdown file to write")
    parser.add_argument("--only", choices=["tools", "repack", "frontier"],
                        help="run only this section and replace it in --out in place (tools: qwen3 tool calling; "
                        "repack: re-packing from the rendered-token store; frontier: against gigatoken alone)")
    args = parser.parse_args()
    # packsft's bytecode, compiled as installing a package does: where PYTHONDONTWRITEBYTECODE is set (this machine),
    # every packsft process would otherwise compile its modules again (~0.4 s a pack), which the peers, installed
    # packages with their bytecode, never pay.
    compileall.compile_dir(str(ROOT / "packsft"), quiet=1)
    # A private tokenizer cache, warmed by the encoder limits below: runs measure a warm start unless cold.
    os.environ["PACKSFT_CACHE"] = tempfile.mkdtemp(prefix="packsft-bench-cache-")
    if not DATA.exists() or not GPT2.exists() or not QWEN3.exists():
        sys.exit(f"needs {DATA}, {GPT2} and {QWEN3} (the shared assets of the developer checkout)")
    if args.only == "tools":
        print("qwen3 tool calling: packsft vs datasets + TRL ...", flush=True)
        lines = tools_lines(bench_tools(), "python scripts/bench.py --only tools")
        out = Path(args.out)
        out.write_text(splice_section(out.read_text() if out.exists() else "# Benchmarks\n", lines))
        print("\n".join(lines))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        for path in sorted(DATA.glob("*.parquet"))[: args.shards]:
            (data_dir / path.name).symlink_to(path)
        if args.only == "frontier":
            print("against gigatoken alone, alternating ...", flush=True)
            lines = frontier_lines(bench_frontiers(data_dir, args.shards))
            out = Path(args.out)
            out.write_text(splice_section(out.read_text() if out.exists() else "# Benchmarks\n", lines))
            print("\n".join(lines))
            return
        if args.only == "repack":
            print("repack vs a fresh pack ...", flush=True)
            lines = repack_lines(bench_repack(data_dir), f"python scripts/bench.py --shards {args.shards} --only repack",
                                 args.shards)
            out = Path(args.out)
            out.write_text(splice_section(out.read_text() if out.exists() else "# Benchmarks\n", lines))
            print("\n".join(lines))
            return
        print("encoder limits ...", flush=True)
        texts = load_texts(data_dir)
        raw_tokens, raw_seconds = bench_encoder(texts, "hf")
        fast_tokens, fast_seconds = bench_encoder(texts, "fast")
        fast1_tokens, fast1_seconds = bench_encoder(texts, "fast", threads=1)
        print("gigatoken alone (whole processes) ...", flush=True)
        giga_seconds, giga_tokens = bench_gigatoken_alone(data_dir, GPT2, "roles")
        giga_qwen3_seconds, giga_qwen3_tokens = bench_gigatoken_alone(data_dir, QWEN3, "chat")
        print("on-the-fly baseline ...", flush=True)
        base_tokens, base_seconds = bench_baseline(data_dir)
        print("packing stage ...", flush=True)
        stage_seconds, unit_seconds = bench_packing_stage(data_dir)
        results = []
        warm_pack(data_dir, GPT2)
        for strategy, mask, extra, cold in RUNS:
            print(f"pack {strategy} {mask} {' '.join(extra)}{' cold' * cold} ...", flush=True)
            results.append(bench_pack(data_dir, strategy, mask, extra, cold))
        print("against gigatoken alone, alternating ...", flush=True)
        frontier = bench_frontiers(data_dir, args.shards)
        print("qwen3 chat: packsft vs datasets + TRL ...", flush=True)
        chat = bench_chat(data_dir)
        if chat is not None:
            chat["gigatoken_seconds"], chat["gigatoken_tokens"] = giga_qwen3_seconds, giga_qwen3_tokens
        print("qwen3 tool calling: packsft vs datasets + TRL ...", flush=True)
        tools = bench_tools()
        print("repack vs a fresh pack ...", flush=True)
        repacked = bench_repack(data_dir)
        print("export ...", flush=True)
        export_lines = bench_export(data_dir)

    limit = raw_tokens / raw_seconds
    baseline = base_tokens / base_seconds
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `python scripts/bench.py --shards {args.shards}` on {time.strftime('%Y-%m-%d')}.",
        f"Machine: {machine()}. No GPU.",
        f"Data: {args.shards} ShareGPT shard(s) from `../shared/data/sharegpt` ({sum(r['stats']['conversations_read'] for r in results[:1]):,} conversations), "
        f"tokenizer `../shared/tokenizers/gpt2`, L={SEQ}.",
        "",
        "## Throughput",
        "",
        f"- Tokenizer limit (raw HF `encode_batch` of the same message texts, 1024 records per call, all threads): "
        f"**{limit / 1e3:,.0f}k tokens/s** ({raw_tokens:,} content tokens in {raw_seconds:.1f}s).",
        f"- Fast-encoder limit (`encode_texts` with `--encoder fast`, gigatoken, same texts): "
        f"**{fast_tokens / fast_seconds / 1e3:,.0f}k tokens/s** on all threads, {fast1_tokens / fast1_seconds / 1e3:,.0f}k on one.",
        f"- gigatoken alone, as a whole process (start-up, parquet read, `encode_batch` of the same message texts, all "
        f"threads): **{giga_seconds:.1f}s** ({giga_tokens:,} content tokens). `pack / gigatoken` below is this time over "
        "the pack's (the same contents; issue 29 targets >= 0.65 for the default GPT-2 pack).",
        f"- On-the-fly baseline (the seed's style: `encode` per message in a Python loop, Python list buffer; "
        f"first 600 conversations): **{baseline / 1e3:,.0f}k tokens/s**.",
        f"- Packing stage (split + best-fit + chunk layout, in process): {stage_seconds:.2f}s of {unit_seconds:.1f}s "
        f"per-unit time = **{100 * stage_seconds / unit_seconds:.1f}%** (target < 5%).",
        "",
        "| run | encoder | wall s | tokens/s | pack / HF limit | pack / fast limit | pack / gigatoken | pack / baseline | "
        "peak RSS MiB | tree RSS MiB | RSS over 0.3 GiB per unit token | disk bytes/token |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    fast_limit = fast_tokens / fast_seconds
    for r in results:
        rate = r["tokens"] / r["seconds"]
        name = f"{r['strategy']} + {r['mask']} {r['extra']}".strip()
        over = (r["peak_rss_mib"] * 2**20 - MEM_BASE_BYTES) / r["unit_tokens"]
        lines.append(
            f"| {name} | {r['encoder']} | {r['seconds']:.1f} | {rate / 1e3:,.0f}k | {rate / limit:.2f} | "
            f"{rate / fast_limit:.2f} | {giga_seconds / r['seconds']:.2f} | {rate / baseline:.1f}x | {r['peak_rss_mib']:,.0f} | {r['tree_rss_mib']:,.0f} | {over:.0f} B | "
            f"{r['bytes_per_token']:.2f} |"
        )
    lines += chat_lines(chat, args.shards)
    lines += frontier_lines(frontier)
    lines += [
        "",
        "Wall time is the whole `packsft pack` process (Python start-up, tokenizer load, reading, rendering,",
        "packing, writing, hashing), with packsft's bytecode compiled (as an installed package's is) and",
        "the tokenizer cache warm (every run after a folder's first) except",
        "the cold run, which resolves the tokenizer through transformers (importing torch) and proves the",
        "fast encoder, as a first run does. Peak RSS is the largest process of the run's tree (sampled every 50 ms from /proc),",
        "tree RSS the peak of its sum over the tree (workers and fork server included; shared pages counted per",
        "process). tokens/s counts rendered tokens (content plus BOS, role tokens and EOS).",
        "Runs without `--workers` use the default (0 = a process per CPU here: 2 workers with one tokenizer",
        "thread each); the limits use one encoder with its own threads on all cores. Encoder auto is the",
        "default; targets: pack / HF limit >= 1.5, pack / fast limit >= 0.8 (stretch). The RSS column is",
        "(peak RSS - 0.3 GiB) / rendered tokens of the largest unit (target <= 40 B).",
        "",
        "## What each strategy keeps",
        "",
        "| run | chunks | fill | trained fraction | retention | context completeness | turn prefix completeness | "
        "rows per M trained labels | BOS + user before label | starts at BOS | split / truncated | turns cut |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        s = r["stats"]
        name = f"{r['strategy']} + {r['mask']} {r['extra']}".strip()
        lines.append(
            f"| {name} | {s['chunks']:,} | {pct(s['fill'])} | {pct(s['trained_fraction'])} | {pct(s['trained_retention'])} | "
            f"{pct(s['context_completeness'])} | {pct(s.get('turn_prefix_completeness'))} | "
            f"{1e6 * s['chunks'] / max(s['trained_tokens_kept'], 1):,.1f} | "
            f"{pct(s['labels_with_bos_and_user'])} | {pct(s['bos_start_fraction'])} | "
            f"{s['conversations_split']:,} / {s['conversations_truncated']:,} | {s['exchanges_split']:,} |"
        )
    lines += [
        "",
        "- fill = non-pad positions / all stored positions; retention = trained labels kept / trainable tokens",
        "  rendered; context completeness = trained labels whose prompting user message is entirely in the",
        "  same row and piece (among labels that have one); turn prefix completeness = trained labels whose own",
        "  message is in the same piece from its first token (no answer trained without its start); BOS + user",
        "  = trained labels with a BOS and a user",
        "  role token before them in their piece (the shared README's 'context' column).",
        "- `--unprompted mask` counts only prompted turns as trainable, so its retention is that of prompted tokens.",
        "- Context completeness below 100% under `split` is the answers to questions longer than 3/4 of a row,",
        "  which are kept by their end (`prompts_shortened`); 359 user messages in this data exceed a whole row.",
        *tools_lines(tools, f"python scripts/bench.py --shards {args.shards}"),
        *repack_lines(repacked, f"python scripts/bench.py --shards {args.shards}", args.shards),
        *export_lines,
        "",
        "See also `BENCHMARKS-loader.md` (`scripts/bench_loader.py`) and `BENCHMARKS-scale.md` (`scripts/bench_scale.py`).",
        "",
    ]
    out = Path(args.out)
    out.write_text(kept_sections(out.read_text() if out.exists() else "", "\n".join(lines)))
    print("\n".join(lines))


def kept_sections(old: str, new: str) -> str:
    """`new` with the sections of `old` that this script does not write (measured by hand, e.g. long context) added
    back at its end: regenerating the page must not drop them."""
    written = {line for line in new.splitlines() if line.startswith("## ")}
    kept, keeping = [], False
    for line in old.splitlines():
        if line.startswith("## "):
            keeping = line not in written
        elif line.startswith("See also"):
            keeping = False
        if keeping:
            kept.append(line)
    return new.rstrip("\n") + ("\n\n" + "\n".join(kept).rstrip("\n") if kept else "") + "\n"


if __name__ == "__main__":
    main()
