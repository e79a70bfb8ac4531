"""The pack configuration: one frozen dataclass, loaded from TOML, overridden by CLI flags.

The resolved configuration is stored in `dataset.json`, so an output always says how it was made.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from packsft.errors import ConfigError
from packsft.read.heldout import SIDES, Side
from packsft.read.mix import parse_mix
from packsft.read.records import parse_role_map

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

DEFAULT_SEQ_LENGTH = 2048
DEFAULT_TOKENIZER = "gpt2"
DEFAULT_MAX_REJECT_FRACTION = 0.1
# Copied context (system + prompting user message, or the text before a continuation) may take at most
# this share of a row; a longer prompt keeps its start and its end, a marker between them (pack/pieces.py).
CONTEXT_SHARE = 0.75
# Cut a trained turn mid-way to fill a row when a message-boundary cut would leave at least this many
# tokens empty; 0 (the default) never cuts a turn that fits in a row.
DEFAULT_TURN_CUT = 0

# Each option's values are written once, as a Literal type the type checker enforces; the tuples the
# CLI offers and __post_init__ checks are read from them.
Format = Literal["conversation", "text"]
InputFormat = Literal["auto", "smoltalk", "sharegpt", "openai", "prompt_completion", "alpaca", "text"]
# auto: the tokenizer's chat template where it has one (or --chat-template gives one), else role tokens;
# resolved when the tokenizer loads (run/plan.py), so a plan and dataset.json only ever hold roles or chat.
Template = Literal["auto", "roles", "chat"]
# Which assistant turns train, and as what (see render/chat/renderer.py): the one rendering of the conversation,
# only its last turn, or each turn as the model produces it at inference.
Turns = Literal["rendered", "last", "inference"]
Mask = Literal["all", "assistant_only"]
Strategy = Literal["linear", "aligned", "bestfit"]
LongPolicy = Literal["split", "truncate", "drop"]
Unprompted = Literal["keep", "mask", "drop"]
OutputFormat = Literal["npy", "parquet", "both"]
# Who encodes message content (see render/encoder.py): a fast backend where proven equal to HF, or HF. "fast" is
# the first backend proven (gigatoken, then tiktoken); a resolved config names the backend.
Encoder = Literal["auto", "fast", "gigatoken", "tiktoken", "hf"]

FORMATS: tuple[Format, ...] = get_args(Format)
INPUT_FORMATS: tuple[InputFormat, ...] = get_args(InputFormat)
TEMPLATES: tuple[Template, ...] = get_args(Template)
MASK_POLICIES: tuple[Mask, ...] = get_args(Mask)
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
LONG_POLICIES: tuple[LongPolicy, ...] = get_args(LongPolicy)
UNPROMPTED_POLICIES: tuple[Unprompted, ...] = get_args(Unprompted)
OUTPUT_FORMATS: tuple[OutputFormat, ...] = get_args(OutputFormat)
ENCODERS: tuple[Encoder, ...] = get_args(Encoder)
TURNS: tuple[Turns, ...] = get_args(Turns)

# Conversations longer than a row: bestfit splits them (nothing lost); aligned keeps the seed notebook's
# truncation so that its figures stay comparable with the seed notebook.
# Linear packing streams conversations across rows, so nothing is ever too long for it (None).
DEFAULT_LONG: dict[Strategy, LongPolicy | None] = {"bestfit": "split", "aligned": "truncate", "linear": None}


@dataclass(frozen=True)
class PackConfig:
    """Everything that decides the bytes of a packed output (and nothing that does not)."""

    tokenizer: str = DEFAULT_TOKENIZER
    format: Format = "conversation"
    # The record shape; `format` is the family it belongs to (see read/reader.py). `text` implies format text.
    input_format: InputFormat = "auto"
    role_map: str | None = None  # "from=to,..." added to read.records.ROLE_ALIASES
    template: Template = "auto"
    # A .jinja file whose text replaces the tokenizer's chat template (--chat-template). A path: what it holds
    # is identified by the tokenizer fingerprint, which covers the chat template in use.
    chat_template: str | None = None
    # JSON object passed to the chat template for every record (`enable_thinking`, ...); a record's own
    # `chat_template_kwargs` win.
    template_kwargs: str | None = None
    turns: Turns = "rendered"
    mask: Mask = "assistant_only"
    strategy: Strategy = "bestfit"
    seq_length: int = DEFAULT_SEQ_LENGTH
    long: LongPolicy | None = None
    unprompted: Unprompted = "keep"
    turn_cut: int = DEFAULT_TURN_CUT
    context_share: float = CONTEXT_SHARE
    # A message shortened to fit keeps this share of what fits from its start and the rest from its end, the marker
    # between them (pack/pieces.py); 0 keeps the end only (the question), as earlier outputs did.
    prompt_start_share: float = 0.0
    # A turn longer than a row is cut after a line or a sentence near the room's end (pack/cuts.py SafeCuts), not
    # where the room ends; a cut never falls inside a tool call either way.
    cut_at_lines: bool = False
    # Topology-aware rows (pack/bins.py): every segment padded to a multiple of pad_multiple (context parallelism
    # needs 2*CP, lcm(2*CP, CP*TP) with sequence parallelism), at most max_segments segments a row (CUDA graphs
    # need a fixed number of cu_seqlens entries: max_segments + 1).
    pad_multiple: int = 1
    max_segments: int | None = None
    source_filter: str | None = None
    # The held-out split (read/heldout.py): a share of the records, or a number of them, chosen by content, packed
    # into OUT_DIR/eval. `split` (the side an output holds) and `split_threshold` (the key below which a record is
    # an eval record) are resolved by run_pack, so a plan, dataset.json and verify --deep know them.
    eval_fraction: float | None = None
    eval_records: int | None = None
    split: Side | None = None
    split_threshold: int | None = None
    # Mixing by tokens (read/mix.py): the --mix sources, each {path, weight | epochs}; run_pack resolves them
    # (run/mix.py) to their paths inside DATA with their tokens and rate, so a plan, dataset.json and verify --deep
    # sample the same records. `--mix` text is read into this list.
    mix: list[dict[str, Any]] | None = None
    output_format: OutputFormat = "npy"
    trust_remote_code: bool = False
    # Records tokenized per batch: big enough to keep the Rust tokenizer busy, small enough to
    # bound memory. It does not change the output bytes.
    batch_size: int = field(default=1024, compare=False)
    # The most rejected records (of those read) a run may have and still write dataset.json. Real
    # data rejects a handful (ShareGPT: 0.9%, mostly empty conversations); a tenth or more means the
    # records are not in the shape packsft reads. It decides whether a run succeeds, not its bytes.
    max_reject_fraction: float = field(default=DEFAULT_MAX_REJECT_FRACTION, compare=False)
    # Who encodes message content: a fast backend (proven equal to HF at load) or HF. The ids are the
    # same either way, so it is not part of a unit's fingerprint. A run stores the encoder it used
    # ("gigatoken", "tiktoken" or "hf"; auto and fast resolved) in dataset.json.
    encoder: Encoder = field(default="auto", compare=False)
    # Pack consecutive whole input files smaller than a unit together (up to --unit-mib): many small files
    # then fill rows as one big file does. Not part of the config fingerprint: a grouped unit's
    # fingerprint names all its files, so the bytes of every other unit stay as they are.
    group_files: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        choices = {
            "format": FORMATS,
            "input_format": INPUT_FORMATS,
            "template": TEMPLATES,
            "mask": MASK_POLICIES,
            "strategy": STRATEGIES,
            "unprompted": UNPROMPTED_POLICIES,
            "output_format": OUTPUT_FORMATS,
            "encoder": ENCODERS,
            "turns": TURNS,
        }
        for key, allowed in choices.items():
            value = getattr(self, key)
            if value not in allowed:
                raise ConfigError(f"{key} = {value!r} is not one of {', '.join(allowed)}")
        if self.input_format == "text":
            object.__setattr__(self, "format", "text")
        elif self.input_format != "auto" and self.format == "text":
            raise ConfigError(
                f"input_format = {self.input_format!r} reads conversations, but format = 'text'; "
                "use --input-format text (or auto) for documents"
            )
        if self.role_map is not None:

            parse_role_map(self.role_map)
        if self.template_kwargs is not None:
            self.template_kwargs_dict()
        if self.template == "roles" and (given := self.chat_only_flags()):
            raise ConfigError(f"{_apply(given)} to chat templates only, but --template roles renders role tokens; "
                              f"pass --template chat (or auto), or drop {' and '.join(given)}")
        if self.long is not None and self.long not in LONG_POLICIES:
            raise ConfigError(f"long = {self.long!r} is not one of {', '.join(LONG_POLICIES)}")
        if self.long is not None and self.strategy == "linear":
            raise ConfigError("long does not apply to strategy linear (it streams conversations across rows); drop --long")
        if not isinstance(self.seq_length, int) or self.seq_length < 2:
            raise ConfigError(f"seq_length must be an integer >= 2, got {self.seq_length!r}")
        self._check_row_layout()
        if not isinstance(self.turn_cut, int) or self.turn_cut < 0:
            raise ConfigError(f"turn_cut must be an integer >= 0, got {self.turn_cut!r}")
        share = self.prompt_start_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 0.5:
            raise ConfigError(f"prompt_start_share must be a number from 0 to 0.5, got {share!r}")
        if isinstance(self.context_share, bool) or not isinstance(self.context_share, (int, float)) or not (
            0 < self.context_share < 1
        ):
            raise ConfigError(f"context_share must be a number between 0 and 1, got {self.context_share!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        self._check_split()
        if self.mix is not None:
            object.__setattr__(self, "mix", [source.to_dict() for source in parse_mix(self.mix)])
        fraction = self.max_reject_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise ConfigError(f"max_reject_fraction must be a number from 0 to 1, got {fraction!r}")

    def _check_row_layout(self) -> None:
        """pad_multiple and max_segments: positive integers, for the strategies that place whole pieces."""
        multiple, most = self.pad_multiple, self.max_segments
        if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
            raise ConfigError(f"pad_multiple must be an integer >= 1, got {multiple!r}")
        if most is not None and (isinstance(most, bool) or not isinstance(most, int) or most < 1):
            raise ConfigError(f"max_segments must be an integer >= 1, got {most!r}")
        given = [flag for flag, on in (("--pad-multiple", multiple > 1), ("--max-segments", most is not None)) if on]
        if given and self.strategy == "linear":
            raise ConfigError(f"{' and '.join(given)} do not apply to strategy linear (it streams conversations "
                              "across rows); use --strategy bestfit or aligned")
        if multiple > 1 and isinstance(self.seq_length, int) and self.seq_length % multiple:
            raise ConfigError(f"seq_length {self.seq_length} is not a multiple of pad_multiple {multiple}: the "
                              f"segments of a row (and its padding) must tile L; pass --seq-length "
                              f"{self.seq_length // multiple * multiple or multiple}")

    def _check_split(self) -> None:
        fraction, count = self.eval_fraction, self.eval_records
        if fraction is not None and count is not None:
            raise ConfigError("eval_fraction and eval_records choose the held-out split two ways; pass one of them")
        if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                     or not 0 < fraction < 1):
            raise ConfigError(f"eval_fraction must be a number between 0 and 1 (e.g. 0.01), got {fraction!r}")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ConfigError(f"eval_records must be an integer >= 1, got {count!r}")
        if self.split is not None and self.split not in SIDES:
            raise ConfigError(f"split = {self.split!r} is not one of {', '.join(SIDES)}")

    @property
    def held_out(self) -> bool:
        """Whether this run writes a held-out split (OUT_DIR/eval)."""
        return self.eval_fraction is not None or self.eval_records is not None

    def template_kwargs_dict(self) -> dict[str, Any]:
        """`template_kwargs` decoded (a TOML table may give it as a table, the CLI as JSON text)."""
        value: Any = self.template_kwargs
        if value is None:
            return {}
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"template_kwargs is not valid JSON ({exc.msg}); "
                                  """pass an object, e.g. '{"enable_thinking": false}'""") from None
        if not isinstance(value, dict):
            raise ConfigError(f"template_kwargs must be a JSON object, got {type(value).__name__}")
        return value

    def chat_only_flags(self) -> list[str]:
        """The flags given (at a value other than their default) that only a chat template reads."""
        given = {"--chat-template": self.chat_template is not None, "--turns": self.turns != "rendered",
                 "--template-kwargs": self.template_kwargs is not None}
        return [flag for flag, on in given.items() if on]

    def with_template(self, template: Template, tokenizer_name: str) -> PackConfig:
        """This config with `auto` resolved to the template the loaded tokenizer got (`roles` or `chat`)."""
        if self.template == "auto" and template == "roles" and (given := self.chat_only_flags()):
            raise ConfigError(f"{_apply(given)} to chat templates only, and tokenizer {tokenizer_name!r} has no chat "
                              f"template (--template auto renders role tokens); pass --chat-template FILE to give "
                              f"it one, or drop {' and '.join(given)}")
        return dataclasses.replace(self, template=template)

    @property
    def long_policy(self) -> LongPolicy | None:
        """The policy for conversations longer than a row, with the strategy's default filled in."""
        return self.long or DEFAULT_LONG[self.strategy]

    def to_dict(self) -> dict[str, Any]:
        resolved = dataclasses.asdict(self)
        resolved["long"] = self.long_policy
        return resolved


def _apply(flags: list[str]) -> str:
    return f"{' and '.join(flags)} {'applies' if len(flags) == 1 else 'apply'}"


CONFIG_KEYS = frozenset(f.name for f in dataclasses.fields(PackConfig))
# Keys that change speed, memory or whether a run is accepted, never the output bytes (compare=False):
# a resumed run may change them, so they are left out of fingerprints and of config comparisons.
BYTES_NEUTRAL_KEYS = frozenset(f.name for f in dataclasses.fields(PackConfig) if not f.compare)


# Keys added after outputs existed, with the value that reproduces those outputs: left out of a config's
# bytes while at that value, so units packed before the key existed keep their fingerprints.
LATER_KEYS: dict[str, Any] = {"eval_fraction": None, "eval_records": None, "split": None, "split_threshold": None,
                              "mix": None,
                              "template_kwargs": None, "turns": "rendered", "pad_multiple": 1, "max_segments": None,
                              "prompt_start_share": 0.0, "cut_at_lines": False}
# Bumped when the chat path's rows change for the same input (2: masks from the generation prompt, tools,
# reasoning, template kwargs), so chat units of an older packsft are packed again instead of resumed.
CHAT_RENDERING = 2


# Keys that name where something is, not what it is: the tokenizer is identified by its files' content (the
# tokenizer fingerprint), so the same folder reached by another path (a symlink, a relative path, another mount)
# packs the same bytes. The fingerprint covers the chat template in use, so --chat-template's file too.
PATH_KEYS = frozenset({"tokenizer", "chat_template"})


# Keys that decide only how rendered conversations become rows: a change to them keeps every unit's rendering, so
# `packsft repack` builds the new rows from the rendered-token store (store/rendered.py) without tokenizing.
PACKING_KEYS = frozenset({"strategy", "seq_length", "long", "turn_cut", "context_share", "prompt_start_share",
                          "cut_at_lines", "pad_multiple", "max_segments", "output_format"})


def bytes_config(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config (PackConfig.to_dict()) without the keys that never change the output bytes (nor paths)."""
    kept = {key: value for key, value in config.items()
            if key not in BYTES_NEUTRAL_KEYS and key not in PATH_KEYS
            and not (key in LATER_KEYS and value == LATER_KEYS[key])}
    if kept.get("template") == "chat":
        kept["chat_rendering"] = CHAT_RENDERING
    return kept


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a dict of PackConfig keys (dashes and underscores both accepted)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    values = {key.replace("-", "_"): value for key, value in raw.items()}
    unknown = sorted(set(values) - CONFIG_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(CONFIG_KEYS))}"
        )
    for key in PATH_KEYS & values.keys():
        values[key] = _relative_to(path.parent, values[key], hub_name=key == "tokenizer")
    if values.get("mix") is not None:
        values["mix"] = [{**source.to_dict(), "path": _relative_to(path.parent, source.path, hub_name=False)}
                         for source in parse_mix(values["mix"])]
    return values


def _relative_to(folder: Path, value: Any, *, hub_name: bool) -> Any:
    """A path written in a config file, read from the file's folder (so the file works from any directory).

    A tokenizer may also be a model-hub name ('gpt2', 'Qwen/Qwen3-8B'): a relative value that names nothing next
    to the file stays as written.
    """
    if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
        return value
    candidate = folder / value
    if hub_name and not candidate.exists():
        return value
    return str(candidate)


def resolve_config(config_file: str | Path | None = None, **overrides: Any) -> PackConfig:
    """Build the config from an optional TOML file, then flags (None means 'not given')."""
    values: dict[str, Any] = read_config_file(config_file) if config_file else {}
    values.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return PackConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
