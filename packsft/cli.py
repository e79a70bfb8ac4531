"""The `packsft` command line: thin wrappers over library functions the tests call too."""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

import click

from packsft.config import (
    CONTEXT_SHARE,
    DEFAULT_TURN_CUT,
    ENCODERS,
    FORMATS,
    INPUT_FORMATS,
    LONG_POLICIES,
    MASK_POLICIES,
    OUTPUT_FORMATS,
    PACKING_KEYS,
    STRATEGIES,
    TEMPLATES,
    TURNS,
    UNPROMPTED_POLICIES,
    Mask,
    Strategy,
    resolve_config,
)
from packsft.errors import PacksftError
from packsft.version import __version__

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a PacksftError into one line on stderr and exit status 1 (never a traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except PacksftError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("packsft: interrupted; nothing that looks complete was left behind. Rerun to finish.", err=True)
            sys.exit(130)

    return wrapper


def pack_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options that decide what `pack` writes (shared by pack and slurm submit)."""
    options = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file with the same keys as these flags; flags override it."),
        click.option("--tokenizer", help="Tokenizer folder or model-hub name. [default: gpt2]"),
        click.option("--format", "data_format", type=click.Choice(FORMATS), hidden=True, help="Old name of --input-format: --format text is --input-format text, --format conversation the default."),
        click.option("--input-format", type=click.Choice(INPUT_FORMATS), help="Record shape: smoltalk/openai 'messages', sharegpt 'conversations', TRL 'prompt'+'completion', alpaca 'instruction'+'output', 'text' documents (the old --format text, still accepted); auto detects per file. [default: auto]"),
        click.option("--role-map", help="Extra role names, e.g. 'bot=assistant,person=user' (added to the built-in aliases)."),
        click.option("--template", type=click.Choice(TEMPLATES), help="Render with the tokenizer's chat template (chat), the role-token format (roles: BOS, a role token per message, EOS), or auto: chat where the tokenizer has a chat template, else roles. [default: auto]"),
        click.option("--chat-template", type=click.Path(dir_okay=False), help="A .jinja file whose text replaces the tokenizer's chat template (recorded in dataset.json, part of the tokenizer fingerprint)."),
        click.option("--template-kwargs", help="""JSON object passed to the chat template for every record, e.g. '{"enable_thinking": false}'; a record's own chat_template_kwargs win."""),
        click.option("--turns", type=click.Choice(TURNS), help="Chat template: train the one rendering of each conversation (rendered), only its last assistant turn (last), or every assistant turn as the model produces it at inference, after the history as the template shows it then (inference). [default: rendered]"),
        click.option("--mask", type=click.Choice(MASK_POLICIES), help="Which tokens are trained. [default: assistant_only]"),
        click.option("--strategy", type=click.Choice(STRATEGIES), help="How conversations are packed into rows. [default: bestfit]"),
        click.option("--seq-length", type=int, help="Tokens per training sequence L (rows store L+1). [default: 2048]"),
        click.option("--long", type=click.Choice(LONG_POLICIES), help="Conversations longer than a row. [default: split for bestfit, truncate for aligned]"),
        click.option("--unprompted", type=click.Choice(UNPROMPTED_POLICIES), help="Assistant turns no user message prompts: train, keep as context, or drop. [default: keep]"),
        click.option("--turn-cut", type=int, help=f"With --long split: 0 never cuts a turn that fits in a row (no turn is trained without its start); N > 0 also cuts a trained turn mid-way when a cut between messages would leave N or more tokens of a row empty (higher fill, beheaded turns). [default: {DEFAULT_TURN_CUT}]"),
        click.option("--context-share", type=float, help=f"With --long split: the most of a row the repeated context (system message + question, or the text before a cut inside a turn) may take; a longer question is shortened, '[… N tokens omitted]' where tokens were left out. Higher keeps more questions whole, at the cost of more repeated tokens. [default: {CONTEXT_SHARE}]"),
        click.option("--cut-at-lines", is_flag=True, default=None, help="With --long split: cut a turn longer than a row after a line, else a sentence, within the last quarter of the room (by default where the room ends; never inside a tool call either way)."),
        click.option("--prompt-start-share", type=float, help="With --long split: a shortened question keeps this share of what fits from its start (the instruction it opens with) and the rest from its end (the question), the marker between them; 0 keeps the end only. 0.25 keeps both. [default: 0]"),
        click.option("--pad-multiple", type=click.IntRange(min=1), help="Pad every packed sequence (segment) to a multiple of N, untrained; its stored length includes the pads. Context parallelism needs N = 2*CP, lcm(2*CP, CP*TP) with sequence parallelism. L must be a multiple of N. [default: 1]"),
        click.option("--max-segments", type=click.IntRange(min=1), help="At most K segments a row, so cu_seqlens fit a fixed K+1 entries (CUDA graphs); dataset.json records K. [default: no limit]"),
        click.option("--source-filter", help="Keep only records whose 'source' column equals this."),
        click.option("--eval-fraction", type=float, help="Hold out this share of the records (e.g. 0.01), chosen by the sha256 of each record's content (stable across reruns, machines, workers and file order), packed as its own output in OUT_DIR/eval. [default: none]"),
        click.option("--eval-records", type=click.IntRange(min=1), help="Hold out the N records with the smallest content hashes (N exactly, or more where duplicates tie), packed in OUT_DIR/eval. [default: none]"),
        click.option("--mix", help="Mix sources by tokens: PATH=WEIGHT,... (each source's share of the output's tokens, summing to 1; e.g. data/a=0.7,data/b=0.3) or PATH=Nx (N epochs). A source is a file, folder or glob inside DATA; every input file must be in one. Sampled by record content (stable across reruns, workers and file order). [default: none]"),
        click.option("--output-format", type=click.Choice(OUTPUT_FORMATS), help="Write .npy arrays, a parquet file, or both. [default: npy]"),
        click.option("--trust-remote-code", is_flag=True, default=None, help="Allow the tokenizer to run code from its folder (off by default)."),
        click.option("--batch-size", type=int, help="Records tokenized per batch (memory vs speed; output unchanged). [default: 1024]"),
        click.option("--max-reject-fraction", type=float, help="Fail (exit 1, no dataset.json) when more than this share of the records read is rejected; a run that packs nothing always fails. [default: 0.1]"),
        click.option("--group-files", is_flag=True, default=None, help="Pack consecutive input files smaller than a unit together, up to --unit-mib: many small files then fill rows as one big file does (each file alone is otherwise its own unit). [default: off]"),
        click.option("--encoder", type=click.Choice(ENCODERS), help="Content encoder: gigatoken or tiktoken (proven equal to the HF tokenizer at load, else an error), fast (the first of them proven, else an error), hf, or auto (the first proven, else hf; output unchanged). [default: auto]"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _pack_params() -> list[click.Option]:
    """New click parameters of every pack option (pack_options applied to nothing)."""
    return pack_options(lambda: None).__click_params__  # type: ignore[attr-defined]


def packing_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The pack options that decide only how rendered conversations become rows (config.PACKING_KEYS): repack's. The
    others are there hidden, so that repack can say why it refuses them (`rendering_flags`)."""
    params = _pack_params()
    for param in params:
        param.hidden = param.name not in PACKING_KEYS
    command.__click_params__ = [*getattr(command, "__click_params__", []), *params]  # type: ignore[attr-defined]
    return command


def rendering_flags(flags: dict[str, Any]) -> list[str]:
    """The pack flags given (not None) that are not packing keys, as typed: what repack cannot change."""
    names = {param.name: param.opts[0] for param in _pack_params()}
    return [names.get(key, key) for key, value in flags.items() if value is not None and key not in PACKING_KEYS]


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="packsft")
def main() -> None:
    """Pack chat conversations into fixed-length, loss-masked token chunks, offline, once.

    Example:

    \b
        packsft pack data/ out/ --tokenizer path/to/tokenizer
        packsft inspect out/ --chunk 0
        packsft stats out/
    """
    # transformers logs advice as it is imported ("PyTorch was not found...", which tokenizers never need),
    # lazily, in the middle of a progress bar; workers inherit the setting. Its errors still show, packsft's own
    # messages are not logging, and a TRANSFORMERS_VERBOSITY the user set wins.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def run() -> NoReturn:
    """The `packsft` command as packsft/__main__.py runs it (`python -m packsft` too, after starting the fork server
    of a likely pool): `main`, then the process ends without tearing the interpreter down, once the exit handlers
    have run and the standard streams are flushed. Freeing every module and object one by one (numpy, pyarrow, the
    tokenizers, what a pack held) took 50-100 ms after a pack, on a 1.5 s pack of 4 ShareGPT shards; the OS frees
    the process at once. A process with a thread still running exits as Python does (its non-daemon threads joined
    first), and so does one a profiler or tracer watches. `main` itself is what tests and library users invoke."""
    try:
        main()
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    watched = sys.getprofile() is not None or sys.gettrace() is not None  # python -m cProfile: it writes at exit
    if watched or any(thread.is_alive() and not thread.daemon for thread in threading.enumerate()
                      if thread is not threading.main_thread()):
        sys.exit(code)
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)  # sys.exit("message"): the message, and status 1
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken pipe: nothing more can be written to it
            stream.flush()
    os._exit(code or 0)


def unit_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """--unit-mib: how input files are cut into units (part of the plan: it decides the output bytes)."""
    return click.option(
        "--unit-mib", type=click.FloatRange(min=0, min_open=True), default=8, show_default=True,
        help="Compressed parquet MiB per work unit; larger files are cut into row-group ranges of about this size.",
    )(command)


def task_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--num-tasks/--task-index: this run's share of the units (an array task), and their hidden old names."""
    options = [
        click.option("--num-tasks", help="Split the units among this many independent runs (array tasks); 'from-env' takes the count and this run's index from $SLURM_ARRAY_TASK_COUNT/_ID. [default: 1]"),
        click.option("--task-index", type=click.IntRange(min=0), help="Which of the --num-tasks runs this is. [default: 0]"),
        # Their names from before "shard" came to mean only an output folder (shards/NNNNN): old scripts still work.
        click.option("--num-shards", "old_num_tasks", hidden=True, help="The old name of --num-tasks."),
        click.option("--shard-index", "old_task_index", type=click.IntRange(min=0), hidden=True,
                     help="The old name of --task-index."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def either(new: Any, old: Any, name: str, old_name: str) -> Any:
    """The value of an option given under its name or under its hidden old name (not both)."""
    if new is not None and old is not None:
        raise click.UsageError(f"pass {name} or {old_name} (its old name), not both")
    return new if new is not None else old


@main.command()
@click.argument("data", nargs=-1, required=True)
@click.argument("out_dir", type=click.Path())
@pack_options
@unit_option
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="Processes packing units in parallel (the tokenizer's threads are divided among them); 0 = one per CPU for inputs of 4 MiB or more, else 1. Output bytes do not depend on it.")
@task_options
@click.option("--overwrite", is_flag=True, help="Replace an earlier packsft output in OUT_DIR (without it, a run with the same settings resumes).")
@click.option("--strict", is_flag=True, help="Stop at the first bad record instead of skipping and counting it.")
@click.option("--skip-bad-files", is_flag=True, help="Skip unreadable input files (listed in dataset.json) instead of stopping.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no summary.")
@click.option("--store", type=click.Path(file_okay=False), help="Where each unit's rendered tokens are kept, and looked up before rendering (several outputs may share one); `packsft repack` builds other row layouts from them. [default: OUT_DIR/rendered]")
@click.option("--no-store", is_flag=True, help="Keep no rendered tokens (saves about 5 bytes a token of disk; `packsft repack` then cannot re-pack OUT_DIR).")
@click.option("--dry-run", is_flag=True, help="Render the first --limit records and show them with their trained text marked, the counts and what would be rejected; write nothing (OUT_DIR is not created).")
@click.option("--limit", type=click.IntRange(min=1), help="With --dry-run: how many records to render. [default: 3]")
@user_errors
def pack(data: tuple[str, ...], out_dir: str, config_file: str | None, overwrite: bool, strict: bool, skip_bad_files: bool,
         quiet: bool, data_format: str | None, unit_mib: float, workers: int, num_tasks: str | None,
         task_index: int | None, old_num_tasks: str | None, old_task_index: int | None, dry_run: bool,
         limit: int | None, store: str | None, no_store: bool, **flags: Any) -> None:
    """Read conversations from DATA, render, pack and write chunks to OUT_DIR.

    DATA is one or more folders (read recursively), globs (quoted; ** recurses), *.parquet /
    *.jsonl[.gz] files, or hf:// / s3:// / gs:// URLs (through fsspec and its backend).

    Rerunning the same command resumes: complete units are kept, the rest are packed. With
    --num-tasks/--task-index (or --num-tasks from-env in a SLURM array) only that run's units are
    packed and `packsft merge` writes dataset.json once all are done.

    Example:


    \b
        packsft pack data/ out/ --tokenizer ./tok --strategy bestfit --mask assistant_only --workers 4
        packsft pack chats/ out/ --tokenizer ./qwen3 --template chat --input-format sharegpt
        packsft pack 'data/**/train-*.parquet' extra.jsonl out/ --tokenizer ./tok
        packsft pack data/ out/ --tokenizer ./qwen3 --dry-run --limit 5
    """
    config = resolve_config(config_file, format=data_format, **flags)
    if limit is not None and not dry_run:
        raise click.UsageError("--limit applies to --dry-run only; pass --dry-run to preview the first records")
    if not dry_run:
        from packsft.run.fork_server import start_early
        from packsft.run.malloc import keep_freed_memory

        start_early(list(data), config, workers)  # before the imports below, which it overlaps
        keep_freed_memory()  # for units packed in this process (--workers 1); workers set their own
        from packsft.render.flat_ids import stand_in_for_awkward

        stand_in_for_awkward()
    from packsft.run.pipeline import run_pack
    from packsft.run.slurm import array_note, resolve_tasks

    if dry_run:
        from packsft.run.preview import DEFAULT_LIMIT, format_preview, preview

        click.echo(format_preview(preview(list(data), config, limit or DEFAULT_LIMIT), color=sys.stdout.isatty()))
        return
    if store is not None and no_store:
        raise click.UsageError("pass --store DIR or --no-store, not both")
    num_tasks = either(num_tasks, old_num_tasks, "--num-tasks", "--num-shards")
    task_index = either(task_index, old_task_index, "--task-index", "--shard-index")
    if num_tasks is None and not quiet and (note := array_note()):
        click.echo(note, err=True)
    tasks, index = resolve_tasks(num_tasks, task_index)
    result = run_pack(list(data), out_dir, config, overwrite=overwrite, quiet=quiet, strict=strict, workers=workers,
                      num_tasks=tasks, task_index=index, unit_bytes=round(unit_mib * (1 << 20)),
                      skip_bad_files=skip_bad_files, store=store, no_store=no_store)
    if not quiet:
        echo_pack_result(result, out_dir)


def echo_pack_result(result: Any, out_dir: str) -> None:
    """The summary of a finished pack, or what is left to the other array tasks."""
    from packsft.stats import counted, format_summary

    if result.dataset is not None:
        click.echo(format_summary(result.dataset))
        if (store := _store_line(result.out_dir)) is not None:
            click.echo(store)
        click.echo(f"wrote {result.out_dir} in {result.seconds:.1f}s ({counted(result.packed, 'unit')} packed, "
                   f"{result.skipped} already done)")
        if result.eval is not None:
            click.echo("")
            echo_pack_result(result.eval, str(result.eval.out_dir))
    else:
        click.echo(f"packed {counted(result.packed, 'unit')} ({result.skipped} already done) in {result.seconds:.1f}s; "
                   f"{counted(result.missing, 'unit')} of other tasks remain. When all are done: packsft merge {out_dir}")


def _store_line(out_dir: Any) -> str | None:
    """Where the output's rendered tokens are kept, and what they are for (None: kept nowhere)."""
    from packsft.run.outdir import OutDir
    from packsft.store.rendered import RenderedStore

    store = OutDir(out_dir).read_plan().store
    if not store or not os.path.isdir(store):
        return None
    return (f"rendered tokens kept in {store} ({RenderedStore(store).size() / 2**20:,.0f} MiB): `packsft repack "
            f"{out_dir} NEW_OUT --seq-length N` builds other rows from them without tokenizing")


@main.command()
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("new_out", type=click.Path())
@packing_options
@click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True, help="Processes building rows in parallel (0 = one per CPU); building rows takes a fraction of what rendering did, so more pay off only for many big units. Output bytes do not depend on it.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier packsft output in NEW_OUT.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no summary.")
@user_errors
def repack(out_dir: str, new_out: str, workers: int, overwrite: bool, quiet: bool, **flags: Any) -> None:
    """Build OUT_DIR's rows again into NEW_OUT with another --seq-length, --strategy or row layout, from the
    rendered tokens its pack kept (OUT_DIR/rendered): no record is read or tokenized again.

    Everything not given stays as OUT_DIR was packed (a new --strategy also takes its own default --long, as
    `pack` would); NEW_OUT holds the bytes a fresh `packsft pack` with these settings writes, and shares
    OUT_DIR's store, so it can be re-packed in turn. A held-out split (OUT_DIR/eval) is re-packed too.

    Example:

    \b
        packsft pack data/ out-2k/ --tokenizer ./qwen3
        packsft repack out-2k/ out-32k/ --seq-length 32768 --pad-multiple 16
    """
    from packsft.run.malloc import keep_freed_memory
    from packsft.run.repack import run_repack

    if refused := rendering_flags(flags):
        raise click.UsageError(f"{', '.join(refused)} would change the rendering, which repack keeps as OUT_DIR's "
                               "pack made it: pack with the new setting (packsft pack)")
    changes = {key: value for key, value in flags.items() if value is not None}
    if not changes:
        raise click.UsageError("name what changes, e.g. --seq-length 8192 (the rest stays as OUT_DIR was packed)")
    keep_freed_memory()
    result = run_repack(out_dir, new_out, changes, overwrite=overwrite, quiet=quiet, workers=workers)
    if not quiet:
        echo_pack_result(result, new_out)


@main.command()
@click.argument("out_dir", type=click.Path())
@click.option("--max-reject-fraction", type=float, help="Override the pack's --max-reject-fraction (accept more rejects).")
@user_errors
def merge(out_dir: str, max_reject_fraction: float | None) -> None:
    """Check every planned unit of OUT_DIR is complete and write dataset.json (metadata only, no copying).

    Example:


    \b
        packsft merge out/
    """
    from packsft.run.finish import merge as merge_output
    from packsft.stats import format_summary

    click.echo(format_summary(merge_output(out_dir, max_reject_fraction)))


@main.command()
@click.argument("out_dir", type=click.Path())
@user_errors
def status(out_dir: str) -> None:
    """Units done, missing and failed in OUT_DIR, and the command that packs only the missing ones.

    Example:


    \b
        packsft status out/
    """
    from packsft.run.finish import status as output_status

    click.echo(output_status(out_dir).format())


@main.group(context_settings=CONTEXT_SETTINGS)
def slurm() -> None:
    """Pack on a SLURM cluster: a job array over the units plus a merge job.

    Example:


    \b
        packsft slurm submit data/ out/ --tokenizer ./tok --array-size 16 --partition cpu
    """


@slurm.command()
@click.argument("data", nargs=-1, required=True)
@click.argument("out_dir", type=click.Path())
@pack_options
@unit_option
@click.option("--array-size", type=click.IntRange(min=1), required=True, help="Array tasks (at most one per unit).")
@click.option("--partition", help="SLURM partition for both jobs.")
@click.option("--time", "time_limit", help="Time limit per task, e.g. 02:00:00.")
@click.option("--cpus-per-task", type=click.IntRange(min=1), default=1, show_default=True, help="CPUs per array task.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Processes per array task (each gets cpus-per-task / workers tokenizer threads).")
@click.option("--throttle", type=click.IntRange(min=1), help="At most this many array tasks run at once (sbatch --array=...%N).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier packsft output in OUT_DIR.")
@user_errors
def submit(data: tuple[str, ...], out_dir: str, config_file: str | None, data_format: str | None, unit_mib: float,
           array_size: int, partition: str | None, time_limit: str | None, cpus_per_task: int, workers: int,
           throttle: int | None, overwrite: bool, **flags: Any) -> None:
    """Write OUT_DIR/slurm/*.sbatch, submit the array tasks of the missing units and an afterok merge job.

    Example:


    \b
        packsft slurm submit data/ out/ --tokenizer ./tok --array-size 16 --cpus-per-task 8 --workers 2
    """
    from packsft.run.pipeline import run_pack
    from packsft.run.slurm import SlurmExecutor, SlurmOptions

    config = resolve_config(config_file, format=data_format, **flags)
    executor = SlurmExecutor(SlurmOptions(array_size, partition, time_limit, cpus_per_task, throttle, workers))
    result = run_pack(list(data), out_dir, config, executor=executor, overwrite=overwrite,
                      unit_bytes=round(unit_mib * (1 << 20)))
    job = executor.submission
    if job is None:
        echo_pack_result(result, out_dir)  # every unit was complete: nothing to submit
        return
    click.echo(f"submitted pack array {job.pack_job} ({job.pack_script}) and merge job {job.merge_job} (afterok)")
    click.echo(f"watch: squeue -j {job.pack_job},{job.merge_job}   |   packsft status {out_dir}")


@main.group(context_settings=CONTEXT_SETTINGS)
def ray() -> None:
    """Pack on a Ray cluster: one Ray task per unit, then the merge (needs Ray: `pip install -e '.[ray]'`).

    Example:


    \b
        packsft ray submit data/ out/ --tokenizer ./tok --address 10.0.0.1:6379
    """


@ray.command("submit")
@click.argument("data", nargs=-1, required=True)
@click.argument("out_dir", type=click.Path())
@pack_options
@unit_option
@click.option("--address", help="The Ray cluster, e.g. HEAD:6379 or auto. [default: $RAY_ADDRESS, else a cluster running on this machine, else a new one here]")
@click.option("--num-cpus-per-task", type=click.IntRange(min=1), default=1, show_default=True, help="CPUs Ray reserves per unit (the task's tokenizer threads).")
@click.option("--max-retries", type=click.IntRange(min=0), default=3, show_default=True, help="Times Ray reruns a unit whose worker or node died.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier packsft output in OUT_DIR (without it, a run with the same settings resumes).")
@click.option("--strict", is_flag=True, help="Stop at the first bad record instead of skipping and counting it.")
@click.option("--skip-bad-files", is_flag=True, help="Skip unreadable input files (listed in dataset.json) instead of stopping.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no summary.")
@user_errors
def ray_submit(data: tuple[str, ...], out_dir: str, config_file: str | None, data_format: str | None, unit_mib: float,
               address: str | None, num_cpus_per_task: int, max_retries: int, overwrite: bool, strict: bool,
               skip_bad_files: bool, quiet: bool, **flags: Any) -> None:
    """Pack DATA into OUT_DIR with one Ray task per unit, show progress over units, then merge.

    DATA is what `packsft pack` reads (folders, globs, files, URLs). This process is the Ray driver
    and waits for the result. Local DATA and OUT_DIR must be on storage every node mounts at the same
    path. Rerunning the same command resumes from the complete units.

    Example:


    \b
        packsft ray submit /nfs/chats /nfs/packed --tokenizer /nfs/tok --address 10.0.0.1:6379
    """
    from packsft.run.pipeline import run_pack
    from packsft.run.ray import RayExecutor, RayOptions

    config = resolve_config(config_file, format=data_format, **flags)
    executor = RayExecutor(RayOptions(address, num_cpus_per_task, max_retries))
    result = run_pack(list(data), out_dir, config, executor=executor, overwrite=overwrite, quiet=quiet, strict=strict,
                      unit_bytes=round(unit_mib * (1 << 20)), skip_bad_files=skip_bad_files)
    if not quiet:
        echo_pack_result(result, out_dir)


@main.command()
@click.argument("out_dir", type=click.Path())
@click.option("--chunk", "chunks", type=int, multiple=True, default=[0], show_default=True, help="Chunk (global row) to show; repeat for several.")
@click.option("--tokens", is_flag=True, help="Also list every position: input id, label id, train flag, text.")
@click.option("--tokenizer", help="Tokenizer to decode with, if it moved since packing (must be the same one).")
@click.option("--color/--no-color", default=None, help="Colour trained (green) and masked (dim) text. [default: on in a terminal]")
@user_errors
def inspect(out_dir: str, chunks: tuple[int, ...], tokens: bool, tokenizer: str | None, color: bool | None) -> None:
    """Show what a chunk holds: sections by role, what is trained, and the context check.

    A `▶` marks a section (or a reasoning, tool-call, tool-result part) holding trained labels; `│ segment k at p`
    marks where a conversation piece starts.

    Example:


    \b
        packsft inspect out/ --chunk 0 --chunk 5
    """
    from packsft.report.inspect import render_chunk, tokenizer_for
    from packsft.write.layout import PackedOutput

    if color is None:
        color = sys.stdout.isatty()
    output = PackedOutput(out_dir)
    tok = tokenizer_for(output, tokenizer)
    for index in chunks:
        click.echo(render_chunk(output, index, tok, tokens=tokens, color=color), color=color)
        click.echo()


@main.command()
@click.argument("out_dir", type=click.Path())
@click.option("-o", "--output", "html_path", type=click.Path(dir_okay=False), default="report.html", show_default=True,
              help="HTML file to write.")
@click.option("--chunks", "count", type=click.IntRange(min=0), help="Show the first N chunks. [default: 5]")
@click.option("--chunk", "chunks", type=int, multiple=True, help="Show this chunk (global row); repeat for several.")
@click.option("--tokenizer", help="Tokenizer to decode with, if it moved since packing (must be the same one).")
@user_errors
def report(out_dir: str, html_path: str, count: int | None, chunks: tuple[int, ...], tokenizer: str | None) -> None:
    """Write one self-contained HTML page: summary, charts, and chunks token by token.

    Trained, masked and pad tokens are coloured, role tokens and conversation boundaries marked;
    the page needs no network and opens from disk.

    Example:


    \b
        packsft report out/ -o report.html --chunk 0 --chunk 7
    """
    from packsft.report.html import DEFAULT_CHUNKS, write_report

    if count is not None and chunks:
        raise click.UsageError("pass --chunks N or --chunk I, not both")
    path = write_report(out_dir, html_path, chunks=list(chunks) or None,
                        count=DEFAULT_CHUNKS if count is None else count, tokenizer=tokenizer)
    click.echo(f"wrote {path}")


@main.command()
@click.argument("out_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the summary.")
@user_errors
def stats(out_dir: str, as_json: bool) -> None:
    """Summarise what was trained, kept, padded and lost in a packed output.

    Example:


    \b
        packsft stats out/ --json
    """
    from packsft.stats import format_summary
    from packsft.write.layout import read_dataset

    dataset = read_dataset(out_dir)
    if as_json:
        click.echo(json.dumps(dataset["stats"], indent=2, sort_keys=True))
    else:
        click.echo(format_summary(dataset))


@main.command()
@click.argument("out_dir", type=click.Path())
@click.option("--deep", is_flag=True, help="Also re-pack a sample of units from their input files and compare byte for byte.")
@click.option("--sample", type=click.IntRange(min=1), default=2, show_default=True, help="Units --deep re-packs (spread from first to last).")
@click.option("--allow-skip", is_flag=True, help="Accept units --deep cannot re-pack (inputs gone or changed, tokenizer changed): a note, not a failure.")
@user_errors
def verify(out_dir: str, deep: bool, sample: int, allow_skip: bool) -> None:
    """Check a packed output: hashes, shapes, dtypes, masks, pads, segments and counts.

    Prints each problem (file, and row where one is at fault) and exits 1; prints a one-line summary
    and exits 0 when the output is sound.

    Example:


    \b
        packsft verify out/ --deep
    """
    from packsft.verify.checks import check_output

    report = check_output(out_dir, deep=deep, sample=sample, allow_skip=allow_skip)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    if not report.ok:
        for problem in report.problems:
            click.echo(str(problem))
        click.echo(f"{len(report.problems)} problem(s) found in {out_dir}", err=True)
        sys.exit(1)
    click.echo(report.summary())


@main.command()
@click.argument("out_dir", type=click.Path())
@click.argument("dest", type=click.Path())
@click.option("--to", "target", type=click.Choice(["trl", "megatron", "olmo-core", "hf"]), required=True,
              help="The trainer's format: TRL SFTTrainer, Megatron (Bridge parquet + core .bin/.idx), OLMo-core numpy, HF datasets parquet.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier packsft export in DEST.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@user_errors
def export(out_dir: str, dest: str, target: str, overwrite: bool, quiet: bool) -> None:
    """Write OUT_DIR in a trainer's own format into DEST, from the stored arrays (no re-tokenizing).

    DEST/export.json names the source output's fingerprint, the library version matched and every file.

    Example:


    \b
        packsft export out/ out-trl/ --to trl
        packsft export out/ out-olmo/ --to olmo-core
    """
    from packsft.export import export_output
    from packsft.stats import counted

    result = export_output(out_dir, dest, target, overwrite=overwrite, quiet=quiet)
    click.echo(f"wrote {counted(result.files, 'file')} ({result.bytes / 2**20:.1f} MiB, {result.rows} rows) to {result.dest} "
               f"in {result.seconds:.1f}s; see {result.dest}/export.json")


@main.command()
@click.argument("tokenizer")
@click.option("--chat-template", type=click.Path(dir_okay=False), help="A .jinja file whose text replaces the tokenizer's chat template (as pack --chat-template).")
@click.option("--example", "example_file", type=click.Path(dir_okay=False), help="A JSON or JSON Lines file whose (first) record is shown too, in any shape pack reads.")
@click.option("--template-kwargs", help="""JSON object passed to the template for every record, as pack --template-kwargs, e.g. '{"enable_thinking": false}'.""")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the same facts) instead of the text.")
@click.option("--color/--no-color", default=None, help="Colour trained text green instead of marking it [[...]]. [default: on in a terminal]")
@user_errors
def template(tokenizer: str, chat_template: str | None, example_file: str | None, template_kwargs: str | None,
             as_json: bool, color: bool | None) -> None:
    """Show what TOKENIZER's chat template trains, before packing: one rendered example per record shape
    with its trained text marked, the generation prompt, the stop tokens trained, history rewrites, the
    fields and kwargs the template reads, and whether prefix renderings are stable.

    Example:


    \b
        packsft template ./qwen3
        packsft template ./tok --chat-template llama3.jinja --example my-record.json --json
    """
    from packsft.config import PackConfig
    from packsft.render.tokenizer import read_chat_template
    from packsft.report.template import (
        describe_template,
        format_template_report,
        load_template_tokenizer,
        read_example,
    )

    kwargs = PackConfig(template_kwargs=template_kwargs).template_kwargs_dict()
    tok = load_template_tokenizer(tokenizer, read_chat_template(chat_template) if chat_template else None)
    report = describe_template(tok, read_example(example_file) if example_file else None, kwargs)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        return
    color = sys.stdout.isatty() if color is None else color
    click.echo(format_template_report(report, color=color), color=color)


@main.command()
@click.argument("out_dir", type=click.Path(), default="demo-out")
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo output in OUT_DIR.")
@user_errors
def demo(out_dir: str, overwrite: bool) -> None:
    """Pack the bundled demo conversations three ways with a tokenizer built here, and inspect a chunk.

    Runs offline: the demo tokenizer is trained on the demo texts with the `tokenizers` library.

    Example:


    \b
        packsft demo demo-out
    """
    from pathlib import Path

    from packsft.config import PackConfig
    from packsft.demo import DATA_DIR, build_demo_tokenizer
    from packsft.report.inspect import render_chunk, tokenizer_for
    from packsft.run.pipeline import run_pack
    from packsft.stats import format_summary
    from packsft.write.layout import PackedOutput

    root = Path(out_dir)
    tokenizer_dir = build_demo_tokenizer(root / "tokenizer")
    click.echo(f"demo tokenizer written to {tokenizer_dir}")
    runs: list[tuple[Strategy, Mask]] = [("linear", "all"), ("aligned", "assistant_only"), ("bestfit", "assistant_only")]
    for strategy, mask in runs:
        config = PackConfig(tokenizer=str(tokenizer_dir), strategy=strategy, mask=mask, seq_length=512)
        result = run_pack(DATA_DIR, root / strategy, config, overwrite=overwrite, quiet=True)
        click.echo(f"\n=== {strategy} + {mask} -> {result.out_dir}")
        output = PackedOutput(result.out_dir)
        click.echo(format_summary(output.dataset))
        click.echo()
        click.echo(render_chunk(output, 0, tokenizer_for(output)))
    click.echo(f"\nnext:\n  packsft inspect {root / 'bestfit'} --chunk 1 --tokens\n  packsft stats {root / 'bestfit'} --json")


if __name__ == "__main__":  # pragma: no cover
    main()
