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
from packsft.run.outdir import EVAL_DIR
from packsft.run.pipeline import PackResult, run_pack
from packsft.run.plan import PLAN_JSON, read_plan
from packsft.write.layout import DATASET_JSON


def run_repack(out_dir: str | Path, new_out: str | Path, changes: dict[str, Any], *, overwrite: bool = False,
               quiet: bool = False, workers: int = 1) -> PackResult:
    """Re-pack OUT_DIR's renderings into NEW_OUT with the packing settings in `changes` (config keys of
    config.PACKING_KEYS; the others stay as OUT_DIR was packed).

    Raises OutputError where OUT_DIR is not a complete packsft output or kept no renderings, and where an input
    file changed since (its unit is not in the store): `packsft pack` then packs it.
    """
    out_dir, new_out = Path(out_dir), Path(new_out)
    unknown = sorted(set(changes) - PACKING_KEYS)
    if unknown:
        raise ConfigError(f"repack changes only how rows are built ({', '.join(sorted(PACKING_KEYS))}); "
                          f"{', '.join(unknown)} change the rendering: pack again with packsft pack")
    if not (out_dir / PLAN_JSON).exists():
        raise OutputError(f"{out_dir}: not a packsft output (no {PLAN_JSON}); pass the OUT_DIR of a packsft pack")
    if new_out.resolve() == out_dir.resolve():
        raise OutputError(f"{new_out}: NEW_OUT must differ from OUT_DIR (repack writes a second output beside it)")
    plan = read_plan(out_dir)
    if not (out_dir / DATASET_JSON).exists():
        raise OutputError(f"{out_dir}: incomplete (no {DATASET_JSON}); finish it first (rerun its pack, or "
                          f"packsft merge {out_dir})")
    if not plan.store or not Path(plan.store).is_dir():
        where = f"its store {plan.store} is gone" if plan.store else "it was packed with --no-store or by an older packsft"
        raise OutputError(f"{out_dir}: keeps no rendered tokens ({where}); pack the new layout with packsft pack")
    if "strategy" in changes and "long" not in changes:
        changes = {**changes, "long": None}  # the new strategy's own default, as a fresh pack would take it
    config = replace(plan.pack_config(), **changes)
    result = run_pack(plan.data_inputs, new_out, config, overwrite=overwrite, quiet=quiet, workers=workers,
                      unit_bytes=plan.unit_bytes, skip_bad_files=bool(plan.skipped_files), store=plan.store,
                      earlier=plan)
    if (out_dir / EVAL_DIR / PLAN_JSON).exists():
        result.eval = run_repack(out_dir / EVAL_DIR, new_out / EVAL_DIR, changes, quiet=quiet, workers=workers)
    return result
