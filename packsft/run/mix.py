"""`--mix` resolved for a plan: the source of every input file, the tokens each source holds, and each source's rate.

    resolve_mix(listing, units, config, tokenizer, counted)
      sources_of_files   each source expanded as DATA is (read/inputs.py) and named by its path inside DATA; every
                         input file must be in exactly one source
      count_tokens       weights only: per file, the tokens of the renderings a pack keeps (stages.read_unit without
                         the mix), from `counted` (OUT_DIR/plan.json's), the packsft cache, or rendered once
      mix_rates          each source's rate (read/mix.py), stored with its tokens in the resolved config

The counts are keyed by what decides them (the config without the mix, the tokenizer, the file's content and row
groups: run/identity.py), so a resumed run, an array task or a rerun with other weights counts nothing again, and
a changed file is counted anew. A source is named by its path inside DATA (a folder `a`, a file `a/x.jsonl`, a
glob `*/train-*.parquet`), never where DATA is, so a moved DATA folder resumes as other outputs do.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from packsft.config import PackConfig
from packsft.errors import ConfigError, InputError
from packsft.read.inputs import InputListing, Location, is_url, list_inputs
from packsft.read.mix import mix_rates, parse_mix
from packsft.read.records import RejectLedger
from packsft.render.tokenizer import PackTokenizer
from packsft.render.tokenizer_cache import cache_key, read_entry, write_entry
from packsft.run.identity import fingerprint
from packsft.stages import open_unit, read_unit

CACHE_KIND = "mix-tokens"
LISTED_FILES = 5  # input files an error names one by one


def resolve_mix(listing: InputListing, units: list[Any], config: PackConfig, tokenizer: PackTokenizer,
                counted: dict[str, int], *, skip_bad_files: bool = False, quiet: bool = True
                ) -> tuple[PackConfig, list[Any]]:
    """`config` with its mix resolved (sources named inside DATA, their tokens and rates) and `units` (run/plan.py
    Units, which plan with this module: hence Any) with the source of each file; `counted` (tokens by count key) is
    read and filled."""
    sources = parse_mix(config.mix or [])
    resolved = all(source.rate is not None for source in sources)
    # A resolved mix (a plan's, dataset.json's) names its sources inside DATA; a given one as typed.
    given = [_inside(listing.root, source.path) if resolved else source.path for source in sources]
    names = [source.path if resolved else _name_inside(listing.root, path) for source, path in zip(sources, given)]
    of_file = sources_of_files(listing, given, names)
    units = [replace(unit, mix_source=of_file[unit.name],
                     more=tuple(replace(part, mix_source=of_file[part.name]) for part in unit.more))
             for unit in units]
    if resolved:
        return config, units
    named = [replace(source, path=name) for source, name in zip(sources, names)]
    tokens: dict[str, int] = dict.fromkeys(names, 0)
    if any(source.weight is not None for source in named):
        for part, count in count_tokens(units, replace(config, mix=None), tokenizer, counted,
                                        skip_bad_files=skip_bad_files, quiet=quiet).items():
            tokens[of_file[part]] += count
    return replace(config, mix=[source.to_dict() for source in mix_rates(named, tokens)]), units


def sources_of_files(listing: InputListing, given: list[str], names: list[str]) -> dict[str, str]:
    """The source (by its name inside DATA) of each input file of `listing`, by file name; an error names the
    sources that match no file, and the files in no source or in two."""
    files = {_key(location): name for name, location in listing.files}
    of_file: dict[str, str] = {}
    for path, name in zip(given, names):
        try:
            matched = list_inputs(path).files
        except InputError as exc:
            raise ConfigError(f"mix source {path}: {exc}") from None
        mine = [files[key] for _, location in matched if (key := _key(location)) in files]
        if not mine:
            raise ConfigError(f"mix source {path}: none of its files is in DATA ({listing.root}); a source is a file, "
                              "folder or glob inside DATA")
        for file in mine:
            if file in of_file:
                raise ConfigError(f"input file {file} is in two mix sources ({of_file[file]} and {name}); give each "
                                  "file one source")
            of_file[file] = name
    missing = [name for name, _ in listing.files if name not in of_file]
    if missing:
        shown = ", ".join(missing[:LISTED_FILES]) + (f" and {len(missing) - LISTED_FILES} more"
                                                     if len(missing) > LISTED_FILES else "")
        raise ConfigError(f"{len(missing)} input file{'s' * (len(missing) != 1)} of DATA {'are' if len(missing) != 1 else 'is'} "
                          f"in no mix source: {shown}; add a source for them to --mix or leave them out of DATA")
    return of_file


def count_tokens(units: list[Any], config: PackConfig, tokenizer: PackTokenizer, counted: dict[str, int], *,
                 skip_bad_files: bool = False, quiet: bool = True) -> dict[str, int]:
    """The tokens of each file (by name) of `units` that a pack with `config` keeps: its renderings after rejects,
    as `tokens_rendered` counts them. Rendered once per file and kept in `counted` and the packsft cache."""
    parts = [part for unit in units for part in unit.parts]
    keys = [fingerprint(config, tokenizer.fingerprint, [part.identity()]) for part in parts]
    for key in keys:
        if key not in counted and (entry := read_entry(CACHE_KIND, cache_key(CACHE_KIND, {"unit": key}))) is not None:
            counted[key] = int(entry["tokens"])
    todo = [(part, key) for part, key in zip(parts, keys) if key not in counted]
    if todo and not quiet:
        print(f"packsft: --mix counts the tokens of {len(todo)} input file{'s' * (len(todo) != 1)} first "
              "(once; reruns reuse the counts)", file=sys.stderr)
    from tqdm import tqdm  # here: a pack without --mix never imports it (25 ms)

    for part, key in tqdm(todo, desc="counting", unit="file", disable=quiet, dynamic_ncols=True):
        one = replace(part, more=())
        try:
            read = read_unit([one], open_unit([one], config), config, tokenizer, RejectLedger())
            counted[key] = len(read.batch.ids)
        except InputError:
            if not skip_bad_files:
                raise
            counted[key] = 0  # the pack skips it too
        write_entry(CACHE_KIND, cache_key(CACHE_KIND, {"unit": key}), {"tokens": counted[key]})
    return {part.name: counted[key] for part, key in zip(parts, keys)}


def _name_inside(root: str, path: str) -> str:
    """A source's path as named inside DATA's root ('.' for the root itself); an error when it is outside."""
    if is_url(root) or is_url(path):
        name = path[len(root):].strip("/") if path.startswith(root) else None
    else:
        relative = os.path.relpath(os.path.abspath(path), root)
        name = None if relative == ".." or relative.startswith(".." + os.sep) else Path(relative).as_posix()
    if name is None:
        raise ConfigError(f"mix source {path} is not inside DATA ({root}); a source is a file, folder or glob "
                          "inside DATA")
    return name or "."


def _inside(root: str, name: str) -> str:
    """The path of a source named inside DATA's root."""
    if name == ".":
        return root
    return f"{root.rstrip('/')}/{name}" if is_url(root) else os.path.join(root, name)


def _key(location: Location) -> str:
    return location if isinstance(location, str) else os.path.abspath(location)

