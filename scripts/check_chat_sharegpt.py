"""Pack all ShareGPT shards with qwen3's chat template in every strategy and check the outputs.

Run from the repository root (takes minutes; prints timings, which belong here, not in unit tests):

    python scripts/check_chat_sharegpt.py --data ../shared/data/sharegpt --tokenizer ../shared/tokenizers/qwen3

Checks per strategy: the pack completes, tokens are stored as uint32 and hold ids > 65535, every
trainable token is kept (`--long split`), no trained label is a header token (`<|im_start|>`), and
no label at a segment start is trained (aligned/bestfit).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from packsft import (
    PackConfig,  # noqa: E402
    PackedOutput,  # noqa: E402
    load_tokenizer,  # noqa: E402
)
from packsft.run import run_pack  # noqa: E402


def check(out: Path, strategy: str, header_id: int) -> list[str]:
    problems = []
    output = PackedOutput(out)
    for shard in range(len(output.shards)):
        tokens, mask = output.array(shard, "tokens"), output.array(shard, "loss_mask")
        if tokens.dtype != np.uint32:
            problems.append(f"shard {shard}: tokens are {tokens.dtype}")
        if int(tokens.max()) <= 65535:
            problems.append(f"shard {shard}: no id above 65535")
        if int((tokens[:, 1:][mask == 1] == header_id).sum()):
            problems.append(f"shard {shard}: a header token is trained")
        if strategy != "linear":
            lengths, offsets = output.array(shard, "segment_lengths"), output.array(shard, "row_segments")
            rows = np.repeat(np.arange(len(tokens)), np.diff(offsets))
            starts = np.cumsum(lengths) - lengths
            starts -= np.repeat(starts[offsets[:-1]], np.diff(offsets))
            inner = starts > 0
            if mask[rows[inner], starts[inner] - 1].any():
                problems.append(f"shard {shard}: a label at a segment start is trained")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/sharegpt")
    parser.add_argument("--tokenizer", default="../shared/tokenizers/qwen3")
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--strategies", default="bestfit,aligned,linear")
    args = parser.parse_args()
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in args.strategies.split(","):
            config = PackConfig(tokenizer=args.tokenizer, template="chat", strategy=strategy,
                                seq_length=args.seq_length, long="split")
            started = time.perf_counter()
            result = run_pack(args.data, Path(tmp) / strategy, config, quiet=True)
            seconds = time.perf_counter() - started
            s = result.dataset["stats"]
            header_id = load_tokenizer(args.tokenizer, "chat").hf.convert_tokens_to_ids("<|im_start|>")
            problems = check(result.out_dir, strategy, header_id)
            if s["trained_retention"] != 1.0:
                problems.append(f"trained retention {s['trained_retention']}")
            failed |= bool(problems)
            print(f"{strategy:8} {s['conversations_read']:>6} convs read, {s['records_rejected']} rejected, "
                  f"{s['chunks']:>6} chunks, fill {s['fill']:.4f}, retention {s['trained_retention']}, "
                  f"{s['tokens_rendered'] / seconds / 1e3:,.0f}k tok/s ({seconds:.0f}s) "
                  f"{'OK' if not problems else 'FAIL: ' + '; '.join(problems)}")
            print(f"         rejected by reason: {s['rejected_by_reason']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
