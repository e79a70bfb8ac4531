"""The fork server local workers start from, and starting it as `packsft pack` begins.

    packsft pack --> fork server: imports the workers' modules once  --> worker 1, worker 2, ... (forked: milliseconds)
         |            (packsft, numpy, pyarrow, gigatoken; for a chat template
         |             jinja's sandbox: 0.3-0.45 s on 2 cores), then builds the
         |             tokenizer's gigatoken for them (run/prebuild.py)
         `--> the parent imports packsft and plans (0.25-0.3 s), meanwhile

Started where the pool is made, the fork server's imports came after the parent's, one core idle, and every worker
then imported gigatoken itself on its first encode (workers import no awkward at all: render/flat_ids.py).
`start_early` starts it from the CLI before the parent imports packsft, where the pack will likely run a pool; and
`start_for_arguments` from the raw arguments even before the CLI is imported (packsft/__main__.py: 0.05-0.06 s into
the process, where the CLI's parse reached it at 0.11-0.14 s). It is a guess made from the command line alone (the
input's size on disk, the template or the tokenizer folder's chat template); a wrong guess costs time, never changes
an output: a pack that runs in one process leaves the server idle, and a worker imports what the server did not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from multiprocessing import forkserver, get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import TYPE_CHECKING

from packsft.run import parent_death

if TYPE_CHECKING:
    from packsft.config import PackConfig

# Imported once by the fork server, so that each worker starts in well under a second (parent_death first: the
# fork server then dies with its parent). Workers rebuild the parent's tokenizer from its state (tokenizers only).
PRELOAD = ("packsft.run.parent_death", "packsft.run.local", "tokenizers", "tiktoken", "tiktoken.core", "gigatoken",
           "numpy.ma", "packsft.run.prebuild")  # numpy.ma: np.unique's first call imports it (12 ms a worker)
# For chat templates, jinja's sandbox too (packsft renders templates in an environment of its own: transformers, 0.5-0.9 s
# to import, is only needed where a chat path is proven).
PRELOAD_CHAT = ("jinja2.sandbox", "jinja2.ext")

# --workers 0 (auto) starts a process per CPU only for inputs this big: below it, starting the pool
# costs more than it saves.
AUTO_WORKERS_MIN_BYTES = 4 << 20

# The --tokenizer of the pack, in the fork server's environment: it builds that tokenizer's gigatoken (run/prebuild.py).
FORK_SERVER_TOKENIZER = "PACKSFT_FORK_SERVER_TOKENIZER"


def worker_context(*, chat: bool) -> BaseContext:
    """Workers fork from a clean server process that imported their code once (fast starts, and no inherited
    tokenizer thread pool); spawned where there is no fork server. `chat`: the workers render a chat template (a
    repack renders nothing). A server already running (`start_early`) is the one used, whatever it preloaded."""
    if "forkserver" not in get_all_start_methods():
        return get_context("spawn")
    _start(chat=chat)
    return get_context("forkserver")


@dataclass(frozen=True)
class Settings:
    """The settings of a pack that the guess reads, as the raw command line gives them (a PackConfig has them too)."""

    tokenizer: str
    template: str = "auto"
    chat_template: str | None = None
    encoder: str = "auto"


# The options of `packsft pack` whose values start_for_arguments reads, and those whose values are no data.
READ_OPTIONS = {"--tokenizer": "tokenizer", "--template": "template", "--chat-template": "chat_template",
                "--encoder": "encoder", "--workers": "workers"}
PATH_OPTIONS = ("--store",)


def start_for_arguments(args: list[str]) -> None:
    """`start_early` from the raw arguments of `packsft ARGS`, before the CLI is imported to parse them (click and
    packsft's configuration: 50-70 ms, which the server's imports then overlap too; `packsft/__main__.py`). Only for
    a `pack` that names its --tokenizer and no --config (a file this does not read), neither a dry run nor help.
    Its data are the arguments that are no option and no value of one it reads, the last of them OUT_DIR; an
    option it does not read is taken for a flag, so its value may count as data: a guess, whose errors cost only
    time. The pack calls start_early again with what the CLI parsed, a no-op where this one started the server."""
    if not args or args[0] != "pack" or "--tokenizer" not in {arg.partition("=")[0] for arg in args}:
        return
    if any(arg.partition("=")[0] in ("--config", "--dry-run", "-h", "--help") for arg in args):
        return
    values: dict[str, str] = {}
    positional: list[str] = []
    rest = iter(args[1:])
    for arg in rest:
        name, given, value = arg.partition("=")
        if name in READ_OPTIONS or name in PATH_OPTIONS:
            value = value if given else next(rest, "")
            if name in READ_OPTIONS:
                values[READ_OPTIONS[name]] = value
        elif not arg.startswith("-"):
            positional.append(arg)
    workers = values.pop("workers", "0")
    if not workers.isdigit():
        return  # the CLI refuses it
    start_early(positional[:-1], Settings(**values), int(workers))


def start_early(data: list[str], config: Settings | PackConfig, workers: int) -> None:
    """Start the fork server now, where a pack of `data` with `workers` (0: auto) will likely use a pool of local
    workers; its imports then overlap the parent's. Where the guess is wrong, only time is lost."""
    if workers == 1 or "forkserver" not in get_all_start_methods():
        return
    if workers == 0 and (available_cpus() < 2 or not _at_least(data, AUTO_WORKERS_MIN_BYTES)):
        return  # auto packs in one process here: on one CPU the server's imports would only slow the parent's
    _start(chat=_likely_chat(config), tokenizer=config.tokenizer if config.encoder != "hf" else None)


def available_cpus() -> int:
    """CPUs this process may use: SLURM's allocation when inside a job, else the affinity mask."""
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def _start(*, chat: bool, tokenizer: str | None = None) -> None:
    """Start this process's fork server (a no-op where it runs), dying with this process; `tokenizer`: the --tokenizer
    whose gigatoken it builds for its workers (run/prebuild.py)."""
    forkserver.set_forkserver_preload(list(PRELOAD + (PRELOAD_CHAT if chat else ())))
    if tokenizer is not None:
        os.environ[FORK_SERVER_TOKENIZER] = tokenizer  # the server's environment is this process's as it starts
    try:
        with parent_death.fork_server_parent():
            forkserver.ensure_running()  # started here, not by the pool's first worker: it learns whom to die with
    finally:
        os.environ.pop(FORK_SERVER_TOKENIZER, None)


def _at_least(data: list[str], size: int) -> bool:
    """Whether the local files and folders of DATA hold `size` bytes or more (URLs and globs count nothing)."""
    total = 0
    for spec in data:
        path = Path(spec)
        if "://" in spec or not path.exists():
            continue
        files = [path] if path.is_file() else (Path(root) / name for root, _, names in os.walk(path) for name in names)
        for file in files:
            try:
                total += file.stat().st_size
            except OSError:
                continue
            if total >= size:
                return True
    return False


def _likely_chat(config: Settings | PackConfig) -> bool:
    """Whether the pack will render a chat template: asked for, or `auto` with a local tokenizer folder that has
    one (or a chat template file given)."""
    if config.template != "auto":
        return config.template == "chat"
    if config.chat_template:
        return True
    folder = Path(config.tokenizer)
    if not folder.is_dir():
        return False
    if any(folder.glob("chat_template*")):
        return True
    try:
        return '"chat_template"' in (folder / "tokenizer_config.json").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
