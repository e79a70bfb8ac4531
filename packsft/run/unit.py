"""One unit in the process that packs it: the job's tokenizer, the unit packed in memory (`packsft.stages`) and its
shard written, or why it failed recorded. The workers of every executor run this."""

from __future__ import annotations

import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packsft.config import PackConfig
from packsft.errors import InputError, OutputError, PacksftError
from packsft.pack.rows import empty_chunks
from packsft.read.reader import InputFile
from packsft.read.records import RejectLedger
from packsft.render.chat.proof import with_chat_path_proven
from packsft.render.markers import kept_marker_spec
from packsft.render.tokenizer import PackTokenizer, load_tokenizer, read_chat_template, tokenizer_from_state
from packsft.run.outdir import OutDir
from packsft.run.plan import Unit
from packsft.stages import open_unit, pack_read, read_unit
from packsft.stats import RowCounts, UnitCounters
from packsft.store.rendered import RenderedStore, StoredUnit, rendering_key
from packsft.write.layout import REJECTS_JSONL

if TYPE_CHECKING:  # imported where a bar is shown (run/local.py)
    from tqdm import tqdm


@dataclass(frozen=True)
class UnitJob:
    """What a worker needs besides the unit (picklable).

    `tokenizer_state` (PackTokenizer.state()) is the parent's tokenizer, attached for local workers only:
    megabytes that a remote executor would ship with every task.
    """

    out: OutDir  # where the unit's shard goes
    config: PackConfig
    strict: bool
    tokenizer_fingerprint: str
    skip_bad_files: bool = False
    tokenizer_state: dict[str, Any] | None = None
    # The rendered-token store (store/rendered.py) units are looked up in and saved to; None: none.
    store: Path | None = None
    # Build rows only from the store (packsft repack): a unit it lacks is an error, never read and tokenized.
    store_only: bool = False


def load_job_tokenizer(job: UnitJob, threads: int, *, prove: bool) -> PackTokenizer:
    """The job's tokenizer, loaded in a worker; refused when it is not the one the plan fingerprinted.

    A local worker rebuilds the parent's own tokenizer from `job.tokenizer_state` (no transformers, no
    second proof); elsewhere it is loaded (from this machine's tokenizer cache where it is warm).

    Args:
        prove: compare the fast encoder with HF again, where the parent's proof does not carry over
            (a worker on another machine may have other library versions).
    """
    config = job.config
    if job.tokenizer_state is not None:
        tokenizer = tokenizer_from_state(job.tokenizer_state, config.tokenizer, encoder=config.encoder,
                                         trust_remote_code=config.trust_remote_code, threads=threads)
    else:
        chat_template = read_chat_template(config.chat_template) if config.chat_template else None
        tokenizer = load_tokenizer(config.tokenizer, config.template, chat_template=chat_template,
                                   trust_remote_code=config.trust_remote_code, encoder=config.encoder, prove=prove,
                                   threads=threads)
        if prove:
            tokenizer = with_chat_path_proven(tokenizer)
    if tokenizer.fingerprint != job.tokenizer_fingerprint:
        raise OutputError(f"tokenizer {config.tokenizer!r} changed while packing; rerun to resume")
    return tokenizer


def input_rows(manifest: dict[str, Any]) -> int:
    """Rows a written shard's inputs held (what a progress bar over records advances by)."""
    return sum(int(record.get("rows") or 0) for record in manifest.get("inputs", []))


def write_unit(unit: Unit, fingerprint: str, job: UnitJob, tokenizer: PackTokenizer, *,
               progress: tqdm | None = None) -> dict[str, Any]:
    """Pack one unit and write its shard (with its rejects.jsonl); returns the shard manifest.

    A failure is recorded in OUT_DIR (shards/.failed-NNNNN) for `packsft status`, then raised. Under
    --skip-bad-files a file that breaks while being read (truncated, a bad JSON line) becomes an empty
    shard whose manifest says why; merge lists it in dataset.json `skipped_files`.
    """
    config = job.config
    try:
        sources = open_unit(unit.parts, config)
        skipped = None
        saving: Future[bool] | None = None
        # A thread of this unit's own: an executor kept across units would be inherited, without its thread, by a
        # process forked from this one (a library user's fork), whose saves would then wait forever.
        saver = ThreadPoolExecutor(1, thread_name_prefix="packsft-store")
        try:
            rendered, saving = rendered_unit(unit, sources, job, tokenizer, saver, progress)
            rejects, inputs = rendered.rejects, rendered.inputs
            marker = RenderedStore(job.store).marker(tokenizer.fingerprint) if job.store is not None else None
            chunks, counters = pack_read(rendered.read, config, tokenizer, rejects, marker)
            del rendered
        except InputError as exc:
            if not job.skip_bad_files:
                raise
            skipped = {"path": unit.label, "error": str(exc)}
            if progress is not None:
                progress.write(f"packsft: skipping bad file: {exc}", file=sys.stderr)
            rejects, inputs = RejectLedger(strict=job.strict), [_reading(source) for source in sources]
            chunks = empty_chunks(config.seq_length)
            counters = UnitCounters(rows=RowCounts(bos_starts=0))
        finally:
            saved = saving is not None and saving.result()  # written (or found unwritable) before the unit is done
            saver.shutdown()
        if saved and job.store is not None:
            keep_marker(RenderedStore(job.store), tokenizer)
        manifest = {
            "unit": unit.index,
            "inputs": [_manifest_input(part, reading) for part, reading in zip(unit.parts, inputs)],
            "tokenizer_fingerprint": tokenizer.fingerprint,
            "fingerprint": fingerprint,
            "config": config.to_dict(),
            "counters": counters.to_dict(),
            **({"skipped": skipped} if skipped else {}),
        }
        written = job.out.write_shard(unit.index, chunks, vocab_size=tokenizer.vocab_size,
                                      output_format=config.output_format, manifest=manifest,
                                      extra_files={REJECTS_JSONL: rejects.to_jsonl().encode()})
    except Exception as exc:
        kind = "error" if isinstance(exc, PacksftError) else f"bug ({type(exc).__name__})"
        job.out.record_failure(unit.index, f"{kind}: {exc}")
        raise
    job.out.clear_failure(unit.index)
    return written


def rendered_unit(unit: Unit, sources: list[InputFile], job: UnitJob, tokenizer: PackTokenizer,
                  saver: ThreadPoolExecutor, progress: tqdm | None = None) -> tuple[StoredUnit, Future[bool] | None]:
    """The unit read and rendered: from the job's rendered-token store where it holds the unit, else read from its
    files, opened as `sources`, and saved in the store on `saver`'s thread; with the save's future (True: saved; the
    caller then keeps the marker encoder, `keep_marker`), None where nothing is saved.

    Saving is writing and hashing the unit's arrays, which releases the GIL: in a thread it overlaps the packing
    of the same unit, which only reads them (GPT-2 on ShareGPT: 5% of a unit's time).
    """
    store = RenderedStore(job.store) if job.store is not None else None
    key = rendering_key(job.config, tokenizer.fingerprint, [part.identity() for part in unit.parts])
    if store is not None and (stored := store.load(key, strict=job.strict)) is not None:
        if progress is not None:
            progress.update(input_rows({"inputs": stored.inputs}))
        return stored, None
    if job.store_only:
        raise OutputError(f"{unit.label}: not in the rendered-token store {job.store} (its input changed since that "
                          "output was packed, or the store was cleared or damaged); pack it with packsft pack instead")
    rejects = RejectLedger(strict=job.strict)
    read = read_unit(unit.parts, sources, job.config, tokenizer, rejects, progress)
    stored = StoredUnit(read, rejects, [_reading(source) for source in sources])
    return stored, saver.submit(store.save, key, stored, tokenizer.vocab_size) if store is not None else None


def keep_marker(store: RenderedStore, tokenizer: PackTokenizer) -> None:
    """Keep the tokenizer's omission-marker encoder in the store (with its first entry: a re-pack encodes with it)."""
    store.keep_marker(tokenizer.fingerprint,
                      lambda: kept_marker_spec(tokenizer.fingerprint, tokenizer.serialized, tokenizer.encode_few))


def _reading(source: InputFile) -> dict[str, Any]:
    """How an input file was read: its rows (known for JSON Lines once read) and its format (InputFile.describe())."""
    return {"rows": source.num_rows if source.num_rows is not None else source.rows_read, **source.describe()}


def _manifest_input(part: Unit, reading: dict[str, Any]) -> dict[str, Any]:
    """A shard manifest's record of one input file: where, which rows, and how it was read."""
    rows = part.rows if part.row_groups is not None else reading["rows"]
    return {**part.manifest_input(), "rows": rows, **{k: v for k, v in reading.items() if k != "rows"}}
