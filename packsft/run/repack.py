"""`packsft repack OUT NEW_OUT --seq-length 8192`: the rows of another length, strategy or layout, built from the
renderings OUT's pack kept in its rendered-token store (store/rendered.py), without reading a record or tokenizing.

    OUT/plan.json        the inputs, the config and the tokenizer OUT was packed with
    OUT/rendered/        every unit's rendering (or the store `pack --store` named)
        |  the packing keys changed (config.PACKING_KEYS), nothing else
        v
    run_pack(inputs, NEW_OUT, config, earlier=plan)  ->  NEW_OUT: the bytes a fresh `pack` with these settings writes

A held-out split (OUT/eval) is re-packed alongside, into NEW_OUT/eval.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from packsft.config import PACKING_KEYS
from packsft.errors import ConfigError, OutputError
from packsft.run.outdir import PLAN_JSON, OutDir
from packsft.run.pipeline import PackResult, run_pack
from packsft.write.layout import DATASET_JSON


def run_repack(out_dir: str | Path, new_out: str | Path, changes: dict[str, Any], *, overwrite: bool = False,
               quiet: bool = False, workers: int = 1) -> PackResult:
    """Re-pack OUT_DIR's renderings into NEW_OUT with the packing settings in `changes` (config keys of
    config.PACKING_KEYS; the others stay as OUT_DIR was packed).

    Raises OutputError where OUT_DIR is not a complete packsft output or kept no renderings, and where an input
    file changed since (its unit is not in the store): `packsft pack` then packs it.
    """
    unknown = sorted(set(changes) - PACKING_KEYS)
    if unknown:
        raise ConfigError(f"repack changes only how rows are built ({', '.join(sorted(PACKING_KEYS))}); "
                          f"{', '.join(unknown)} change the rendering: pack again with packsft pack")
    return _repack(OutDir(Path(out_dir)), OutDir(Path(new_out)), changes, overwrite=overwrite, quiet=quiet,
                   workers=workers)


def _repack(out: OutDir, new: OutDir, changes: dict[str, Any], *, overwrite: bool, quiet: bool,
            workers: int) -> PackResult:
    if not out.has_plan():
        raise OutputError(f"{out.path}: not a packsft output (no {PLAN_JSON}); pass the OUT_DIR of a packsft pack")
    if new.path.resolve() == out.path.resolve():
        raise OutputError(f"{new.path}: NEW_OUT must differ from OUT_DIR (repack writes a second output beside it)")
    plan = out.read_plan()
    if not out.has_dataset():
        raise OutputError(f"{out.path}: incomplete (no {DATASET_JSON}); finish it first (rerun its pack, or "
                          f"packsft merge {out.path})")
    if not plan.store or not Path(plan.store).is_dir():
        where = f"its store {plan.store} is gone" if plan.store else "it was packed with --no-store or by an older packsft"
        raise OutputError(f"{out.path}: keeps no rendered tokens ({where}); pack the new layout with packsft pack")
    if "strategy" in changes and "long" not in changes:
        changes = {**changes, "long": None}  # the new strategy's own default, as a fresh pack would take it
    config = replace(plan.pack_config(), **changes)
    result = run_pack(plan.data_inputs, new.path, config, overwrite=overwrite, quiet=quiet, workers=workers,
                      unit_bytes=plan.unit_bytes, skip_bad_files=bool(plan.skipped_files), store=plan.store,
                      earlier=plan)
    if out.eval.has_plan():
        result.eval = _repack(out.eval, new.eval, changes, quiet=quiet, overwrite=False, workers=workers)
    return result
