#!/usr/bin/env python
"""Check packed rows on a GPU: the loader's pinned non-blocking CUDA path and FlashAttention varlen.

On rows of a real bestfit output (ShareGPT shard 0, GPT-2 roles; or any OUT_DIR you pass):
  1. CPU: a tiny random Llama (SDPA) fed a packed batch with the loader's position_ids, no attention_mask
     and use_cache=False gives every piece the logits of that piece fed alone (max abs diff <= 1e-4);
  2. CUDA: PackedLoader(device="cuda") pins its host buffers and copies non_blocking, and its batches
     (input_ids, labels, shift_labels, position_ids, cu_seqlens) equal the CPU loader's, step by step;
  3. CUDA: the same model equality on the GPU (fp32, TF32 off);
  4. CUDA: FlashAttention varlen over the loader's cu_seqlens (flash_attn.flash_attn_varlen_func when
     installed, else torch.nn.attention.varlen.varlen_attn) equals causal attention per piece alone.
Without CUDA it runs step 1, says what it skipped, and exits 0.

Usage: python scripts/gpu_check.py [OUT_DIR] [--seq-length 512]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import torch

from packsft import PackConfig
from packsft.loader import PackedLoader
from packsft.run import run_pack

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODEL_TOLERANCE = 1e-4
FLASH_TOLERANCE = 2e-2  # bf16 kernels against an fp32 reference
BATCH = 4


def pack_sample(folder: Path, seq_length: int) -> Path:
    table = pq.read_table(SHARED / "data" / "sharegpt" / "shard_00000.parquet").slice(0, 200)
    (folder / "data").mkdir(parents=True)
    pq.write_table(table, folder / "data" / "sample.parquet")
    config = PackConfig(tokenizer=str(SHARED / "tokenizers" / "gpt2"), seq_length=seq_length)
    return run_pack(folder / "data", folder / "out", config, quiet=True, workers=1).out_dir


def segments(batch: dict, seq_length: int) -> list[tuple[int, int, int]]:
    cu = batch["cu_seqlens"].tolist()
    return [(start // seq_length, start % seq_length, start % seq_length + end - start) for start, end in zip(cu, cu[1:])]


def mixed_batch(loader: PackedLoader) -> dict:
    """The first unshuffled batch in which every row holds at least two segments (pieces + padding)."""
    for batch in loader:
        rows = [row for row, _, _ in segments(batch, loader.dataset.seq_length)]
        if min(rows.count(row) for row in range(BATCH)) >= 2:
            return batch
    raise SystemExit("FAIL: no batch with two segments in every row; pass an OUT_DIR packed with bestfit")


def tiny_llama(vocab_size: int, seq_length: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=seq_length,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config).eval()


@torch.no_grad()
def model_equality(model, batch: dict, seq_length: int) -> float:
    """Largest |packed - alone| over every piece's logits."""
    device = next(model.parameters()).device
    inputs = batch["input_ids"].to(device)
    packed = model(input_ids=inputs, position_ids=batch["position_ids"].to(device), use_cache=False).logits
    worst = 0.0
    for row, start, end in segments(batch, seq_length):
        alone = model(input_ids=inputs[row : row + 1, start:end], use_cache=False).logits[0]
        worst = max(worst, float((alone - packed[row, start:end]).abs().max()))
    return worst


def loader_matches_cpu(out_dir: Path, steps: int = 5) -> dict:
    """The CUDA loader (pinned, non_blocking) hands out the CPU loader's batches, step by step."""
    cpu = PackedLoader(out_dir, batch_size=BATCH, seed=1, segments=True)
    cuda = PackedLoader(out_dir, batch_size=BATCH, seed=1, segments=True, device="cuda")
    compared = 0
    for step, (host, device) in enumerate(zip(cpu, cuda)):
        for name, value in host.items():
            other = device[name]
            same = value == other if isinstance(value, int) else torch.equal(value, other.cpu())
            if not same:
                raise SystemExit(f"FAIL: CUDA loader differs from the CPU loader in {name} at step {step}")
        assert device["input_ids"].device.type == "cuda"
        compared += 1
        if compared == steps:
            break
    return {"pinned": cuda.pin_memory, "steps_compared": compared}


def varlen_kernel():
    try:
        from flash_attn import flash_attn_varlen_func

        return "flash_attn.flash_attn_varlen_func", lambda q, k, v, cu, m: flash_attn_varlen_func(
            q, k, v, cu, cu, m, m, causal=True)
    except ImportError:
        from torch.nn.attention.varlen import varlen_attn

        return "torch.nn.attention.varlen.varlen_attn", lambda q, k, v, cu, m: varlen_attn(
            q, k, v, cu, cu, m, m, window_size=(-1, 0))


@torch.no_grad()
def flash_varlen_equality(batch: dict, heads: int = 4, dim: int = 64) -> dict:
    """Varlen attention over the flattened batch equals causal SDPA over each piece alone."""
    name, attend = varlen_kernel()
    cu = batch["cu_seqlens"].to("cuda", torch.int32)
    total = int(cu[-1])
    generator = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(total, heads, dim, device="cuda", dtype=torch.bfloat16, generator=generator) for _ in range(3))
    out = attend(q, k, v, cu, int(batch["max_seqlen"]))
    worst, bounds = 0.0, cu.tolist()
    for start, end in zip(bounds, bounds[1:]):
        piece = [t[start:end].transpose(0, 1).float() for t in (q, k, v)]
        reference = torch.nn.functional.scaled_dot_product_attention(*piece, is_causal=True).transpose(0, 1)
        worst = max(worst, float((out[start:end].float() - reference).abs().max()))
    return {"kernel": name, "segments": len(bounds) - 1, "max_abs_diff": worst, "ok": worst <= FLASH_TOLERANCE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", help="a packed output (default: pack 200 ShareGPT records here)")
    parser.add_argument("--seq-length", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="packsft-gpu-") as tmp:
        out_dir = Path(args.out_dir) if args.out_dir else pack_sample(Path(tmp), args.seq_length)
        loader = PackedLoader(out_dir, batch_size=BATCH, shuffle=False, segments=True)
        seq_length, batch = loader.dataset.seq_length, mixed_batch(loader)
        model = tiny_llama(loader.dataset.vocab_size, seq_length)
        report = {"segments": len(segments(batch, seq_length)), "cpu_model_max_abs_diff": model_equality(model, batch, seq_length)}
        failed = report["cpu_model_max_abs_diff"] > MODEL_TOLERANCE
        if not torch.cuda.is_available():
            report["cuda"] = "not available: skipped the pinned loader, the GPU model and FlashAttention varlen checks"
        else:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            report["device"] = torch.cuda.get_device_name()
            report["loader"] = loader_matches_cpu(out_dir)
            report["cuda_model_max_abs_diff"] = model_equality(model.cuda(), batch, seq_length)
            report["flash_varlen"] = flash_varlen_equality(batch)
            failed |= report["cuda_model_max_abs_diff"] > MODEL_TOLERANCE or not report["flash_varlen"]["ok"]
            failed |= not report["loader"]["pinned"]
    print(json.dumps(report, indent=2))
    print("FAIL" if failed else "OK")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
