#!/usr/bin/env python
"""Compare the fast encoder with HF, id for id, on every message of the ShareGPT shards.

GPT-2 (roles) and qwen3 (chat) content, all 8 shards by default; prints one line per tokenizer and
shard and exits 1 on any difference. The tests cover one shard; this is the whole-data check.

Usage: python scripts/check_encoder.py [--shards N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyarrow.parquet as pq

from packsft import load_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOKENIZERS = [("gpt2", "roles"), ("qwen3", "chat")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=8)
    args = parser.parse_args()
    shards = sorted((SHARED / "data" / "sharegpt").glob("*.parquet"))[: args.shards]
    failed = False
    for name, template in TOKENIZERS:
        tokenizer = load_tokenizer(str(SHARED / "tokenizers" / name), template, encoder="fast")
        for shard in shards:
            column = pq.read_table(shard, columns=["messages"]).column(0).to_pylist()
            texts = [m["content"] for record in column if record for m in record]
            fast, hf = tokenizer.encode_texts(texts), tokenizer.encode_texts_hf(texts)
            differ = sum(a != b for a, b in zip(fast, hf))
            failed |= differ > 0
            print(f"{name} {shard.name}: {len(texts):,} messages, {sum(map(len, hf)):,} tokens, {differ} differ")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
