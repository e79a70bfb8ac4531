"""Where the records are: the DATA arguments of `pack` (folders, globs, files, URLs) -> sorted input files.

    packsft pack data/ OUT                      every *.parquet|*.jsonl[.gz]|*.json[.gz] under data/, recursively
    packsft pack 'data/**/train-*.parquet' OUT  a glob, expanded by packsft (quote it; ** recurses)
    packsft pack a.parquet b/ c.jsonl OUT       several arguments: one list, each file once
    packsft pack s3://bucket/prefix OUT         hf://, s3://, gs://, ... through fsspec and its backends

Each file gets a name: its path relative to the root, the one folder (or URL prefix) that holds every
argument (for a single folder, that folder, as it always was). Files are packed in the order of their
names, so the output does not depend on the order of the arguments; the plan records the root (as
`data_dir`) and the arguments, and names are what manifests, rejects and `verify --deep` refer to.

A folder or a glob never yields a dataset's metadata JSON (`dataset_info.json`, `tokenizer_config.json`,
packsft's own `dataset.json`, ...: METADATA_JSON); such a file is read only when named.

A remote file is carried as its URL string (a local one as a Path); `file_info` and `open_binary`
work on both. Listing costs one directory walk (or one remote `find`), O(files log files) to sort.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import pyarrow.parquet as pq

from packsft.errors import InputError

Location = Path | str  # a local file, or the URL of a remote one
PARQUET_SUFFIX = ".parquet"
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
JSON_SUFFIXES = (".json", ".json.gz")  # JSON Lines, or one array of records (ShareGPT, LLaMA-Factory)
# JSON files a dataset folder holds besides its records (Hugging Face, LLaMA-Factory, packsft's own outputs):
# skipped when a folder is walked or a glob expanded; name one explicitly to read it.
METADATA_JSON = frozenset({"dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json", "dataset.json",
                           "plan.json", "manifest.json", "config.json", "tokenizer.json", "tokenizer_config.json",
                           "special_tokens_map.json", "added_tokens.json", "chat_template.json",
                           "generation_config.json", "vocab.json"})
GLOB_CHARS = frozenset("*?[")
INPUT_KINDS = "*.parquet, *.jsonl[.gz] or *.json[.gz]"  # what errors say DATA may hold
# The package that gives fsspec each common scheme, for the error when it is missing.
SCHEME_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "hf": "huggingface_hub",
                   "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs", "http": "aiohttp", "https": "aiohttp"}
# fsspec's names for a remote file's modification time, by backend (memory, s3, gcs, local, ...).
_MTIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "created")


@dataclass(frozen=True)
class InputListing:
    """The input files of a run: (name, location) sorted by name, and the root the names are relative to."""

    root: str
    files: list[tuple[str, Location]]


def is_input_name(name: str) -> bool:
    return name.endswith(PARQUET_SUFFIX) or name.endswith(JSONL_SUFFIXES) or name.endswith(JSON_SUFFIXES)


def is_walked_input(name: str) -> bool:
    """An input file a folder walk or a glob picks up: any input name but a dataset's metadata JSON."""
    return is_input_name(name) and name.rsplit("/", 1)[-1] not in METADATA_JSON


def is_url(text: str | Path) -> bool:
    scheme, sep, _ = str(text).partition("://")
    return bool(sep) and scheme.isascii() and scheme.replace("+", "").isalnum() and len(scheme) > 1


def as_location(text: str | Path) -> Location:
    """A stored location back as a Path (local) or a URL string (remote)."""
    return str(text) if is_url(text) else Path(text)


def location_name(location: Location) -> str:
    return location.name if isinstance(location, Path) else location.rstrip("/").rsplit("/", 1)[-1]


def list_inputs(data: str | Path | Sequence[str | Path]) -> InputListing:
    """The input files of DATA (one argument or several), sorted by name; an argument that yields
    nothing is an error naming it."""
    specs = [str(spec) for spec in ([data] if isinstance(data, (str, Path)) else data)]
    if not specs:
        raise InputError(f"no input given. Pass a folder, a glob, files or URLs of {INPUT_KINDS}")
    remote = [is_url(spec) for spec in specs]
    if any(remote) and not all(remote):
        raise InputError(f"{', '.join(specs)}: mixes local paths and URLs; pack them in separate runs")
    found = [_remote_files(spec) if remote[0] else _local_files(spec) for spec in specs]
    if len(specs) == 1:
        root = found[0][0]
    elif remote[0]:
        root = _common_url(specs, [r for r, _ in found])
    else:
        root = os.path.commonpath([os.path.abspath(r) for r, _ in found])
    files: dict[str, Location] = {}
    for _, locations in found:
        for location in locations:
            files.setdefault(_relative(location, root, single=len(specs) == 1), location)
    return InputListing(root, sorted(files.items()))


def _relative(location: Location, root: str, *, single: bool) -> str:
    if isinstance(location, str):
        return location[len(root):].lstrip("/")
    if single:
        return location.relative_to(root).as_posix()
    return Path(os.path.abspath(location)).relative_to(root).as_posix()


def _local_files(spec: str) -> tuple[str, list[Path]]:
    """(root of the argument, its input files): a folder walked recursively, a glob, or one file."""
    path = Path(spec)
    if GLOB_CHARS & set(spec):
        prefix = Path(*_until_magic(path.parts))
        matches = sorted(glob.glob(spec, recursive=True))
        files = [file for m in map(Path, matches) for file in (_walk(m) if m.is_dir() else [m])
                 if _is_input(file) and is_walked_input(file.name)]
        if not files:
            raise InputError(f"{spec}: the pattern matches no {INPUT_KINDS} files")
        return str(prefix), files
    if not path.exists():
        raise InputError(f"{spec}: no such file or folder. Pass the folder (or the files) that hold your records: "
                         "*.parquet, *.jsonl[.gz] or *.json[.gz]")
    if path.is_file():
        if not is_input_name(path.name):
            raise InputError(f"{spec}: not a {INPUT_KINDS} file")
        return str(path.parent), [path]
    files = _walk(path)
    if not files:
        metadata = sorted({file.name for file in path.rglob("*") if _is_input(file)})
        skipped = f" (skipped as dataset metadata: {', '.join(metadata)}; name such a file to read it)" if metadata else ""
        raise InputError(f"{spec}: no {INPUT_KINDS} files under it{skipped}. Pass the folder that holds them")
    return spec, files


def _until_magic(parts: tuple[str, ...]) -> list[str]:
    """The leading parts of a glob without pattern characters (its fixed folder)."""
    fixed = []
    for part in parts[:-1]:
        if GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return fixed or ["."]


def _walk(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if _is_input(path) and is_walked_input(path.name)]


def _is_input(path: Path) -> bool:
    return is_input_name(path.name) and path.is_file()


def _filesystem(url: str) -> tuple[Any, str]:
    """fsspec's filesystem for a URL and the path in it; a missing backend is an error saying what to install."""
    scheme = url.partition("://")[0]
    package = SCHEME_PACKAGES.get(scheme, "the fsspec backend for it")
    try:
        import fsspec

        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise InputError(f"{url}: reading {scheme}:// URLs needs {package}, which is not installed ({exc}). "
                         f"pip install {package} (or copy the files to a local folder)") from None
    except ValueError as exc:
        raise InputError(f"{url}: no filesystem for {scheme}:// ({exc}). Pass a local folder, or install "
                         f"the fsspec backend for {scheme}://") from None


def _remote_files(spec: str) -> tuple[str, list[str]]:
    """(root URL of the argument, URLs of its input files); roots and files in fsspec's own URL form."""
    fs, path = _filesystem(spec)
    scheme = spec.partition("://")[0]
    try:
        if GLOB_CHARS & set(path):
            paths, root = fs.glob(path), "/".join(_until_magic(tuple(path.split("/"))))
        elif fs.isdir(path):
            paths, root = fs.find(path), path
        elif fs.isfile(path):
            paths, root = [path], path.rsplit("/", 1)[0]
        else:
            raise InputError(f"{spec}: no such file or folder")
    except OSError as exc:
        raise InputError(f"{spec}: cannot list ({exc})") from None
    urls = [_url(fs, scheme, p) for p in sorted(paths) if (is_input_name(p) if p == path else is_walked_input(p))]
    if not urls:
        raise InputError(f"{spec}: no {INPUT_KINDS} files there")
    return _url(fs, scheme, root.rstrip("/")), urls


def _url(fs: Any, scheme: str, path: str) -> str:
    url = fs.unstrip_protocol(path)
    return url if url.startswith(f"{scheme}://") else f"{scheme}://{path.lstrip('/')}"


def _common_url(specs: list[str], roots: list[str]) -> str:
    schemes = {spec.partition("://")[0] for spec in specs}
    if len(schemes) > 1:
        raise InputError(f"{', '.join(specs)}: URLs of several schemes; pack them in separate runs")
    common = os.path.commonprefix([root + "/" for root in roots])
    return common[: common.rfind("/")]


def file_info(location: Location) -> tuple[int, int]:
    """(size in bytes, modification time in ns; 0 where a remote store gives none) of an input file."""
    if isinstance(location, Path):
        stat = location.stat()
        return stat.st_size, stat.st_mtime_ns
    fs, path = _filesystem(location)
    info = fs.info(path)
    return int(info.get("size") or 0), _mtime_ns(info)


def _mtime_ns(info: dict[str, Any]) -> int:
    for key in _MTIME_KEYS:
        value = info.get(key)
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
        if isinstance(value, datetime):
            return int(value.timestamp() * 1e9)
        if isinstance(value, (int, float)):
            return int(value * 1e9)
    return 0


def open_binary(location: Location) -> IO[bytes]:
    if isinstance(location, Path):
        return open(location, "rb")
    fs, path = _filesystem(location)
    return fs.open(path, "rb")


DIGEST_CHUNK = 1 << 22


def content_sha256(path: Path, row_groups: tuple[int, int] | None = None) -> str:
    """sha256 of the bytes a unit reads from a local file: the whole file, or (for a row-group range of a parquet
    file) its schema and the column chunks of those row groups, so that changing one row group changes only
    the units that read it."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if row_groups is None:
            for block in iter(lambda: handle.read(DIGEST_CHUNK), b""):
                digest.update(block)
            return digest.hexdigest()
        metadata = pq.ParquetFile(handle).metadata
        digest.update(metadata.schema.to_arrow_schema().to_string().encode())
        for index in range(*row_groups):
            group = metadata.row_group(index)
            digest.update(str(group.num_rows).encode())
            for column in (group.column(c) for c in range(group.num_columns)):
                start = column.data_page_offset
                if column.has_dictionary_page and column.dictionary_page_offset:
                    start = min(start, column.dictionary_page_offset)
                handle.seek(start)
                digest.update(handle.read(column.total_compressed_size))
    return digest.hexdigest()
