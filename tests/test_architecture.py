"""The package's shape, read from its source: imports flow down the layers, never in a cycle, and only the
CLI's edge (cli, __main__) imports inside functions (so that `packsft --help` starts fast, and the fork server before
the CLI, without hiding a cycle).

    cli, __main__, packsft/__init__            the edges: CLI and public API
    run/ verify/ report/ loader/ export/       what surrounds the stages
    store/                                     a unit's rendering kept between its stages (repack)
    stages                                     the stages composed for one unit
    write/ > pack/ > render/ > config > read/  the stages, last first (config: the options)
    errors, stats, version, demo               leaves

A module may import from its own layer (the cycle check covers those) and from the layers below it.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "packsft"
LAYERS = [
    {"packsft.cli", "packsft.__main__", "packsft"},
    {"packsft.run", "packsft.verify", "packsft.report", "packsft.loader", "packsft.export"},
    {"packsft.store"},
    {"packsft.stages"},
    {"packsft.write"},
    {"packsft.pack"},
    {"packsft.render"},
    {"packsft.config"},
    {"packsft.read"},
    {"packsft.errors", "packsft.stats", "packsft.version", "packsft.demo"},
]
LAZY_IMPORTS_ALLOWED = {"packsft.cli", "packsft.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    """Index in LAYERS (0 = top) of a module, by itself or by its top-level subpackage."""
    top = ".".join(module.split(".")[:2])
    for index, layer in enumerate(LAYERS):
        if module in layer or top in layer:
            return index
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {Path(__file__).name}")


def packsft_imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported packsft module, line, inside a function) for every import in `module`."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    in_function = {id(node) for func in ast.walk(tree) if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for node in ast.walk(func) if node is not func}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for name in names:
            if name == "packsft" or name.startswith("packsft."):
                found.append((_known(name), node.lineno, id(node) in in_function))
    return found


def _known(name: str) -> str:
    """The longest prefix of a dotted name that is a packsft module."""
    while name not in MODULES:
        name = name.rsplit(".", 1)[0]
    return name


def import_graph() -> dict[str, set[str]]:
    return {module: {target for target, _, _ in packsft_imports(module) if target != module} for module in MODULES}


def test_imports_flow_down_the_layers():
    upward = []
    for module in MODULES:
        for target, line, _ in packsft_imports(module):
            if layer_of(target) < layer_of(module) and not target.startswith(module + "."):
                upward.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}: {module} imports {target}, "
                              "a layer above it")
    assert upward == []


def test_only_the_cli_imports_inside_functions():
    lazy = [f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}: imports {target} inside a function"
            for module in MODULES if module not in LAZY_IMPORTS_ALLOWED
            for target, line, inside in packsft_imports(module) if inside]
    assert lazy == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None. A package importing its own submodules is no cycle."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if target.startswith(module + "."):
                continue  # a package's __init__ re-exporting its submodules
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    assert find_cycle(import_graph()) is None


def test_the_cycle_check_finds_a_cycle():
    graph = {"packsft.a": {"packsft.b"}, "packsft.b": {"packsft.c"}, "packsft.c": {"packsft.a"}, "packsft.d": set()}
    assert find_cycle(graph) == ["packsft.a", "packsft.b", "packsft.c", "packsft.a"]
    assert find_cycle({"packsft.run": {"packsft.stages"}, "packsft.stages": set()}) is None


@pytest.mark.parametrize("package", sorted(m for m, p in MODULES.items() if p.name == "__init__.py"))
def test_every_public_name_imports(package):
    module = importlib.import_module(package)
    names = getattr(module, "__all__", [])
    assert [name for name in names if not hasattr(module, name)] == []


def test_test_modules_import_helpers_not_each_other():
    """Fixtures live in conftest.py, shared helpers in tests/helpers.py; a test module imports neither
    conftest nor another test module (pytest would collect its tests twice, or its fixtures silently)."""
    tests = Path(__file__).resolve().parent
    offences = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if module and (module.split(".")[-1].startswith("test_") or module.endswith("conftest")):
                offences.append(f"{path.relative_to(tests)}:{node.lineno}: imports {module}")
    assert offences == []


# Test folders that hold what crosses the stages: whole runs, fuzzing, safety, model checks.
CROSS_CUTTING_TESTS = {"e2e"}


def test_tests_mirror_the_source_tree():
    """tests/<package>/ holds the tests of packsft/<package>/; package-wide ones sit in tests/ itself."""
    tests = Path(__file__).resolve().parent
    folders = {path.name for path in tests.iterdir() if path.is_dir() and any(path.glob("test_*.py"))}
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert folders - packages - CROSS_CUTTING_TESTS == set()
