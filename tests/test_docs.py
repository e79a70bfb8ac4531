"""Docstrings and comments name modules that exist, so a rename cannot leave them pointing nowhere.

    x.py          a file in the folder of the module that names it
    a/b.py        a path under packsft/, or under the repo root when it starts with packsft/, scripts/, tests/, .ci/
    packsft.x.y   a module, or a name a module defines (`packsft.run.ray.RayExecutor`)

Every docstring and comment in packsft/ is read; the Markdown files at the repo root are read for paths
(`packsft/write/layout.py`, `scripts/bench.py`) and dotted names. A third-party file a docstring cites
goes in THIRD_PARTY, with the library it belongs to.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "packsft"
ROOT_FOLDERS = {"packsft", "scripts", "tests", ".ci"}  # a path starting with one of these is from the repo root
PY_FILE = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w-]+\.py)\b")
DOTTED = re.compile(r"(?<![\w.])packsft(?:\.\w+)+")
# (file under packsft/, the name it cites): whose file it is. Paths in other projects cannot resolve here.
THIRD_PARTY = {
    ("export/megatron.py", "data/datasets/packed_parquet.py"): "megatron-bridge: the packed SFT dataset matched",
    ("export/megatron.py", "sft.py"): "megatron-bridge: the SFT dataset module next to packed_parquet.py",
    ("export/megatron.py", "datasets/indexed_dataset.py"): "megatron-core: the IndexedDataset matched",
    ("export/trl.py", "trl/trainer/sft_trainer.py"): "TRL: the SFTTrainer collator matched",
}


def doc_texts(path: Path) -> Iterator[tuple[int, str]]:
    """(first line, source text) of every comment and docstring of a Python file."""
    source = path.read_text(encoding="utf-8")
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                # The source text, not the value: its lines are the file's lines, escapes and all.
                yield first.lineno, ast.get_source_segment(source, first) or ""


def module_file(dotted: str) -> Path | None:
    """The file of a module `packsft.x.y` (a .py file or a package's __init__.py), if it exists."""
    base = ROOT.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def top_level_names(path: Path) -> set[str]:
    """The names a module defines or imports at its top level."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def dotted_exists(dotted: str) -> bool:
    """`packsft.x.y` is a module, or the longest module prefix of it defines the next name."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        found = module_file(".".join(parts[:end]))
        if found is not None:
            return end == len(parts) or parts[end] in top_level_names(found)
    return False


def path_exists(name: str, folder: Path) -> bool:
    """A bare `x.py` is in `folder`; `a/b.py` is under the repo root (ROOT_FOLDERS) or under packsft/."""
    if "/" not in name:
        return (folder / name).is_file()
    return ((ROOT if name.split("/")[0] in ROOT_FOLDERS else PACKAGE) / name).is_file()


def dangling(text: str, folder: Path, bare_names: bool = True) -> Iterator[tuple[int, str]]:
    """(line offset within text, name) of every module `text` names that does not exist."""
    for offset, line in enumerate(text.splitlines()):
        for match in PY_FILE.finditer(line):
            name = match.group(1)
            if (bare_names or "/" in name) and not path_exists(name, folder):
                yield offset, name
        for match in DOTTED.finditer(line):
            if not dotted_exists(match.group(0)):
                yield offset, match.group(0)


def source_mentions() -> list[tuple[str, int, str]]:
    """(file under packsft/, line, name) of every dangling module name in packsft's docstrings and comments."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE).as_posix()
        for first, text in doc_texts(path):
            found += [(where, first + offset, name) for offset, name in dangling(text, path.parent)]
    return found


def test_docstrings_and_comments_name_modules_that_exist():
    missing = [f"packsft/{where}:{line}: {name}" for where, line, name in source_mentions()
               if (where, name) not in THIRD_PARTY]
    assert not missing, "no such module (rename it in the text, or list a third-party file in THIRD_PARTY):\n" + \
        "\n".join(missing)


def test_every_third_party_entry_is_still_cited():
    cited = {(where, name) for where, _, name in source_mentions()}
    assert set(THIRD_PARTY) <= cited, f"not cited any more, drop from THIRD_PARTY: {set(THIRD_PARTY) - cited}"


def test_markdown_names_modules_that_exist():
    # Bare names in prose have no folder to resolve against; paths and dotted names do.
    missing = [f"{path.name}:{offset + 1}: {name}" for path in sorted(ROOT.glob("*.md"))
               for offset, name in dangling(path.read_text(encoding="utf-8"), ROOT, bare_names=False)]
    assert not missing, "no such module:\n" + "\n".join(missing)
