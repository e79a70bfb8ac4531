"""Refuse to finish an output a training run should not start on: no chunks, or mostly rejects.

Checked at merge, the one place every way of running a plan (one process, workers, a SLURM array
and its merge job) passes before dataset.json is written; so an array task never decides alone.
The shards stay (a rerun with other settings or input resumes from them) and `rejects.jsonl` is
written, so the reasons can be read; dataset.json is not, so nothing looks complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from packsft.errors import UnusableOutputError
from packsft.write.layout import DATASET_JSON, REJECTS_JSONL

LISTED_REASONS = 3  # reasons named in the error, most frequent first


def records_validated(stats: dict[str, Any]) -> int:
    """Records that reached validation: valid conversations read plus those rejected before rendering.

    A conversation read and then rejected by the chat template or for having no trained token counts once,
    not twice.
    """
    return (stats["conversations_read"] + stats["records_rejected"] - stats["conversations_dropped_no_trained"]
            - stats.get("conversations_rejected_rendering", 0))


def check_outcome(out_dir: Path, dataset: dict[str, Any], max_reject_fraction: float) -> None:
    """Raise UnusableOutputError when the output packed nothing or rejected more than `max_reject_fraction` of the
    records it read (OutDir.write_dataset then removes a dataset.json an earlier merge wrote)."""
    stats = dataset["stats"]
    read, rejected = records_validated(stats), stats["records_rejected"]
    if stats["chunks"] and (not read or rejected / read <= max_reject_fraction):
        return
    where = f"no {DATASET_JSON} was written; the rejected records are listed in {out_dir / REJECTS_JSONL}"
    if not stats["chunks"]:
        raise UnusableOutputError(
            f"{out_dir}: nothing packed (0 chunks): {_counts(stats, read)}; {where}. "
            "Check that the input holds conversations in a shape packsft reads (--input-format, --role-map), "
            "and --source-filter"
        )
    raise UnusableOutputError(
        f"{out_dir}: {rejected:,} of {read:,} records rejected ({rejected / read:.1%}, more than "
        f"--max-reject-fraction {max_reject_fraction:g}): {_reasons(stats)}; {where}. Fix the input "
        f"(--input-format, --role-map), or accept it with --max-reject-fraction {_above(rejected / read)} "
        "(a rerun keeps the packed units)"
    )


def _counts(stats: dict[str, Any], read: int) -> str:
    parts = [f"{read:,} records read", f"{stats['records_rejected']:,} rejected"]
    if stats["records_rejected"]:
        parts[-1] += f" ({_reasons(stats)})"
    if stats["records_filtered"]:
        parts.append(f"{stats['records_filtered']:,} filtered out by --source-filter")
    if stats["conversations_dropped"] - stats["conversations_dropped_no_trained"]:
        parts.append(f"{stats['conversations_dropped'] - stats['conversations_dropped_no_trained']:,} "
                     "dropped (--long drop, --unprompted drop)")
    return ", ".join(parts)


def _reasons(stats: dict[str, Any]) -> str:
    ranked = sorted(stats["rejected_by_reason"].items(), key=lambda item: (-item[1], item[0]))
    named = ", ".join(f"{reason}: {count:,}" for reason, count in ranked[:LISTED_REASONS])
    return named + (f" and {len(ranked) - LISTED_REASONS} more reasons" if len(ranked) > LISTED_REASONS else "")


def _above(fraction: float) -> str:
    """A round threshold that accepts `fraction` (two decimals, rounded up)."""
    return f"{min(1.0, -(-fraction * 100 // 1) / 100):g}"
