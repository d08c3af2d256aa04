"""The package's layers, read from the source (`ast`, nothing imported): the tracer knows nothing
of the bisection or the executors, the bisection nothing of the executors (it receives one
through `ekka.bisect.executor.Executor`), and the composition (`ekka.full`, the bench, the
command) sits above them all."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ekka"
ABOVE = ("ekka.full", "ekka.bench", "ekka.cli")  # the composition: no layer below imports it
RULES = {
    "tracer": ("ekka.bisect", "ekka.containers", *ABOVE),
    "bisect": ("ekka.containers", *ABOVE),
}


def imported_modules(path: Path, root: Path = PACKAGE) -> set[str]:
    """Every module a file of package `root` imports, wherever the statement is (functions,
    TYPE_CHECKING blocks), relative imports resolved, `importlib.import_module("...")` included;
    `from a import b` counts as importing both `a` and `a.b`."""
    package = ".".join(path.relative_to(root.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (
                    isinstance(node.func, ast.Name)
                    and node.func.id in ("import_module", "__import__")
                )
            )
        ):
            found.add(node.args[0].value)
    return found


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(layer: str, forbidden: tuple[str, ...], root: Path = PACKAGE) -> list[str]:
    files = sorted((root / layer).rglob("*.py"))
    assert files, f"no Python files under {root / layer}"
    return [
        f"{path.relative_to(root.parent)} imports {module}"
        for path in files
        for module in sorted(imported_modules(path, root))
        if any(_within(module, prefix) for prefix in forbidden)
    ]


@pytest.mark.parametrize("layer", sorted(RULES))
def test_layer_imports_nothing_above_it(layer):
    assert violations(layer, RULES[layer]) == []


def test_repo_helpers_are_a_leaf():
    ekka = {m for m in imported_modules(PACKAGE / "repo.py") if _within(m, "ekka")}
    assert ekka <= {"ekka.errors", "ekka.errors.UsageError"}


def test_the_reader_sees_every_kind_of_import(tmp_path):
    """The check itself: absolute, relative, local and dynamic imports are all found."""
    root = tmp_path / "ekka"
    (root / "bisect").mkdir(parents=True)
    (root / "bisect" / "probe.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import importlib\n"
        "if TYPE_CHECKING:\n"
        "    from ekka.containers.local import LocalExecutor\n"
        "def f():\n"
        "    from ..containers import docker\n"
        "    from . import search\n"
        "    import ekka.full\n"
        "    return importlib.import_module('ekka.containers.ray')\n"
    )
    found = violations("bisect", RULES["bisect"], root)
    for module in ("containers.local", "containers.docker", "full", "containers.ray"):
        assert f"ekka/bisect/probe.py imports ekka.{module}" in found
    assert not any("search" in line or "typing" in line for line in found)
