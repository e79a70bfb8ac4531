"""Run one unit: pack it in memory (`packsft.stages`) and write its shard, or record why it failed."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from packsft.config import PackConfig
from packsft.errors import InputError, PacksftError
from packsft.pack.rows import empty_chunks
from packsft.read.reader import InputFile
from packsft.read.records import RejectLedger
from packsft.render.tokenizer import PackTokenizer
from packsft.run.outdir import failed_path
from packsft.run.plan import Unit
from packsft.stages import open_unit, pack_unit
from packsft.stats import RowCounts, UnitCounters
from packsft.write.layout import REJECTS_JSONL
from packsft.write.writer import write_shard


def records_read(manifest: dict[str, Any]) -> int:
    """Rows a written shard's inputs held (what a progress bar over records advances by)."""
    return sum(int(record.get("rows") or 0) for record in manifest.get("inputs", []))


def _manifest_input(part: Unit, source: InputFile) -> dict[str, Any]:
    """A shard manifest's record of one input file: where, which rows, and how it was read."""
    rows = source.num_rows if source.num_rows is not None else source.rows_read
    return {**part.manifest_input(), "rows": part.rows if part.row_groups is not None else rows, **source.describe()}


def write_unit(
    unit: Unit,
    fingerprint: str,
    out_dir: Path,
    config: PackConfig,
    tokenizer: PackTokenizer,
    *,
    strict: bool = False,
    skip_bad_files: bool = False,
    progress: tqdm | None = None,
) -> dict[str, Any]:
    """Pack one unit and write its shard (with its rejects.jsonl); returns the shard manifest.

    A failure is recorded in shards/.failed-NNNNN for `packsft status`, then raised. Under
    --skip-bad-files a file that breaks while being read (truncated, a bad JSON line) becomes an empty
    shard whose manifest says why; merge lists it in dataset.json `skipped_files`.
    """
    failed = failed_path(out_dir, unit.index)
    try:
        rejects = RejectLedger(strict=strict)
        sources = open_unit(unit.parts, config)
        skipped = None
        try:
            chunks, counters = pack_unit(unit.parts, sources, config, tokenizer, rejects, progress)
        except InputError as exc:
            if not skip_bad_files:
                raise
            skipped = {"path": unit.label, "error": str(exc)}
            if progress is not None:
                progress.write(f"packsft: skipping bad file: {exc}", file=sys.stderr)
            rejects = RejectLedger(strict=strict)
            chunks = empty_chunks(config.seq_length)
            counters = UnitCounters(rows=RowCounts(bos_starts=0))
        manifest = {
            "unit": unit.index,
            "inputs": [_manifest_input(part, source) for part, source in zip(unit.parts, sources)],
            "tokenizer_fingerprint": tokenizer.fingerprint,
            "fingerprint": fingerprint,
            "config": config.to_dict(),
            "counters": counters.to_dict(),
            **({"skipped": skipped} if skipped else {}),
        }
        written = write_shard(out_dir, unit.index, chunks, vocab_size=tokenizer.vocab_size,
                              output_format=config.output_format, manifest=manifest,
                              extra_files={REJECTS_JSONL: rejects.to_jsonl().encode()})
    except Exception as exc:
        kind = "error" if isinstance(exc, PacksftError) else f"bug ({type(exc).__name__})"
        with contextlib.suppress(OSError):  # a full disk may refuse even this note; the error still goes up
            failed.write_text(f"{kind}: {exc}\n")
        raise
    failed.unlink(missing_ok=True)
    return written
