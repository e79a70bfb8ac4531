"""Mixing by tokens (`--mix`): how many copies of each record the output holds, chosen by its source's rate and
its content.

    --mix data/a=0.7,data/b=0.3     weights: each source's share of the output's tokens
    --mix data/a=2x,data/b=0.5x     epochs: each source's records N times over (a fraction samples them)

A source is a file, folder or glob inside DATA; every input file belongs to exactly one. A source's rate is
how many times over its tokens go into the output: `epochs` directly, or for weights
rate = weight x (tokens of all weighted sources) / (tokens of this source), so the weighted sources together
keep as many tokens as they hold and each takes its weight's share of them. Tokens are those of the renderings a
pack keeps (after rejects), counted once by a first pass (run/mix.py) and stored with the rate in the resolved
config. A record is put in floor(rate) times, plus once more where its mix key is below the fraction left
(rate - floor(rate)) x 2^64; a rate under 1 thus keeps a `rate` share of the records. The mix key is bytes 8..16
of the sha256 of the record's canonical JSON (read/heldout.py; bytes 0..8 are the held-out split's key, so the
two choices are independent): it depends on the record alone, so reruns, worker counts, array tasks and file
order sample the same records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from packsft.errors import ConfigError
from packsft.read.heldout import KEY_SPACE, record_digest

ENTRY_KEYS = ("path", "weight", "epochs")
RESOLVED_KEYS = ("tokens", "rate")  # added by run/mix.py: the source's tokens (weights only) and its rate
WEIGHT_SUM_TOLERANCE = 1e-6
EPOCHS_SUFFIX = "x"
SPEC_HELP = "each source is PATH=WEIGHT (a share of the tokens, e.g. data/a=0.7) or PATH=Nx (epochs, e.g. data/a=2x)"


def mix_key(record: Any) -> int:
    """The record's 64-bit mix key (see the module docstring)."""
    return int.from_bytes(record_digest(record)[8:16], "big")


def copies(rate: float, key: int) -> int:
    """How many times a record with mix `key` goes into the output of a source sampled at `rate`."""
    whole = math.floor(rate)
    return whole + (key < int((rate - whole) * KEY_SPACE))


@dataclass(frozen=True)
class MixSource:
    """One source of a mix: its path, its weight or epochs, and once resolved its tokens and rate."""

    path: str
    weight: float | None = None
    epochs: float | None = None
    tokens: int | None = None
    rate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in vars(self).items() if value is not None}


def parse_mix(value: str | Sequence[Mapping[str, Any]]) -> list[MixSource]:
    """The sources of `--mix` text ('data/a=0.7,data/b=0.3') or of a TOML list of tables ({path, weight|epochs}),
    checked: a weight >= 0, epochs > 0, one of the two per source, weights that sum to 1, each path once."""
    entries = _entries_of_text(value) if isinstance(value, str) else value
    if not isinstance(entries, Sequence) or not entries:
        raise ConfigError(f"mix must name at least one source; {SPEC_HELP}")
    sources = [_source(entry) for entry in entries]
    paths = [source.path for source in sources]
    if twice := sorted({path for path in paths if paths.count(path) > 1}):
        raise ConfigError(f"mix names {', '.join(twice)} more than once; give each source once")
    weighted = [source for source in sources if source.weight is not None]
    total = sum(source.weight or 0.0 for source in weighted)
    if weighted and abs(total - 1) > WEIGHT_SUM_TOLERANCE:
        given = ", ".join(f"{source.path}={source.weight:g}" for source in weighted)
        raise ConfigError(f"mix weights must sum to 1, got {total:g} ({given})")
    return sources


def _entries_of_text(text: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        path, sep, amount = item.rpartition("=")
        if not sep or not path.strip() or not amount.strip():
            raise ConfigError(f"--mix {item!r}: {SPEC_HELP}")
        amount = amount.strip()
        key = "epochs" if amount.endswith(EPOCHS_SUFFIX) else "weight"
        try:
            number = float(amount.removesuffix(EPOCHS_SUFFIX))
        except ValueError:
            raise ConfigError(f"--mix {item!r}: {amount!r} is not a number; {SPEC_HELP}") from None
        entries.append({"path": path.strip(), key: number})
    return entries


def _source(entry: Any) -> MixSource:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("path"), str) or not entry["path"]:
        raise ConfigError(f"mix source {entry!r} has no path; {SPEC_HELP}")
    path = entry["path"]
    unknown = sorted(set(entry) - set(ENTRY_KEYS) - set(RESOLVED_KEYS))
    if unknown:
        raise ConfigError(f"mix source {path}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(ENTRY_KEYS)}")
    weight, epochs = entry.get("weight"), entry.get("epochs")
    if weight is not None and epochs is not None:
        raise ConfigError(f"mix source {path} has both a weight and epochs; give one of them")
    if weight is None and epochs is None:
        raise ConfigError(f"mix source {path} has neither a weight nor epochs; {SPEC_HELP}")
    if weight is not None and not (_number(weight) and weight >= 0):
        raise ConfigError(f"mix weight of {path} must be a number >= 0, got {weight!r}")
    if epochs is not None and not (_number(epochs) and epochs > 0):
        raise ConfigError(f"mix epochs of {path} must be a number > 0, got {epochs!r}")
    rate = entry.get("rate")
    if rate is not None and not (_number(rate) and rate >= 0):
        raise ConfigError(f"mix rate of {path} must be a number >= 0, got {rate!r}")
    return MixSource(path, weight, epochs, entry.get("tokens"), rate)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def mix_rates(sources: Sequence[MixSource], tokens: Mapping[str, int]) -> list[MixSource]:
    """The sources with their rates: epochs as they are; weights from the tokens each source holds (by path)."""
    weighted_total = sum(tokens[source.path] for source in sources if source.weight is not None)
    resolved = []
    for source in sources:
        if source.epochs is not None:
            resolved.append(MixSource(source.path, epochs=source.epochs, rate=float(source.epochs)))
            continue
        held, weight = tokens[source.path], source.weight or 0.0
        if not held and weight:
            raise ConfigError(f"mix source {source.path} has no tokens to sample (every record rejected or empty); "
                              "drop it from --mix")
        rate = weight * weighted_total / held if held else 0.0
        resolved.append(MixSource(source.path, weight=source.weight, tokens=held, rate=rate))
    return resolved


@dataclass
class RecordMix:
    """The mix as the reader applies it to one input file: the copies of each record, and what it counted."""

    rate: float
    records_read: int = 0
    records_left_out: int = 0  # records with no copy (a rate under 1)

    def copies(self, record: Any) -> int:
        count = copies(self.rate, mix_key(record))
        self.records_read += 1
        self.records_left_out += count == 0
        return count
