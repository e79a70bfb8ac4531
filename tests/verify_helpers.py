"""Helpers for tests that check or corrupt packed outputs: `assert_output_verifies`, `rewrite_array`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from packsft.layout import sha256_file
from packsft.verify.checks import verify_output


def assert_output_verifies(out_dir: str | Path, deep: bool = False) -> None:
    """Fail with every problem `packsft verify` finds in out_dir."""
    problems = verify_output(out_dir, deep=deep)
    assert not problems, "packsft verify found:\n" + "\n".join(str(p) for p in problems)


def rewrite_array(out_dir: Path, shard: int, name: str, array: np.ndarray) -> None:
    """Replace a shard's array and fix up its metadata in manifest.json and dataset.json (both agree),
    so that only the semantic checks of verify can notice what changed."""
    folder = out_dir / "shards" / f"{shard:05d}"
    np.save(folder / name, array, allow_pickle=array.dtype == object)
    meta = {"shape": list(array.shape), "dtype": str(array.dtype), "bytes": (folder / name).stat().st_size,
            "sha256": sha256_file(folder / name)}
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = meta
    (folder / "manifest.json").write_text(json.dumps(manifest))
    dataset = json.loads((out_dir / "dataset.json").read_text())
    dataset["shards"][shard]["files"][name] = meta
    (out_dir / "dataset.json").write_text(json.dumps(dataset))


def load_array(out_dir: Path, shard: int, name: str) -> np.ndarray:
    return np.load(out_dir / "shards" / f"{shard:05d}" / name, allow_pickle=False)
