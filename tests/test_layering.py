"""The package's layers, read from the source (`ast`, nothing imported), every import counted:
at the top, inside functions, under TYPE_CHECKING, relative, and `importlib.import_module`.

Each part of `ekka` (a subpackage or a top-level module) names the parts it may import; any
other import fails. Neither the modules nor the parts import each other in a cycle. The side of
the tracer that runs inside the framework's process imports nothing of the side that drives it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ekka"

# What each part may import, lowest first (a part may always import its own modules).
LAYERS: dict[str, frozenset[str]] = {
    # errors: the one error hierarchy; imports nothing of Ekka
    "errors": frozenset(),
    # data: the findings' standalone reproductions (ekka/data/reproduce: torch and the two
    # frameworks only, run where Ekka is not installed): nothing of Ekka
    "data": frozenset(),
    # codec: the one JSON codec of the typed records (a leaf: the tracer's inside uses it too)
    "codec": frozenset({"errors"}),
    # toml_reader: typed reads of a TOML table with one-line errors
    "toml_reader": frozenset({"errors"}),
    # frameworks: the frameworks Ekka targets as data (package, adapter, interpreter)
    "frameworks": frozenset({"errors"}),
    # repo: git in a repository
    "repo": frozenset({"errors"}),
    # report: a diagnosis's typed records and their renderers
    "report": frozenset({"errors"}),
    # storage: opens every database; the sweeps' results (written by sweep, shown by bot)
    "storage": frozenset({"errors"}),
    # forge: GitHub (the one client, comments, a commit's pull request)
    "forge": frozenset({"errors"}),
    # zoo: tiny random-weight models
    "zoo": frozenset({"errors"}),
    # tracer: capture, alignment, localization of one request or scenario
    "tracer": frozenset({"errors", "report"}),
    # scenario: scenario files, read into the tracer's records
    "scenario": frozenset({"errors", "tracer"}),
    # bisect: commit ranges, the search, the oracle (the tracer's end-to-end check), the cache
    "bisect": frozenset({"errors", "repo", "storage", "tracer"}),
    # containers: the executors (local worktree, docker, ray) that run the bisection's probes
    "containers": frozenset({"errors", "toml_reader", "repo", "bisect", "tracer"}),
    # request: one request (model, prompt, dtype, engine, scenario, framework), job parameters
    "request": frozenset({"errors", "scenario", "tracer", "containers"}),
    # modes: which options go with which mode of a command (localize/full, nightly/architectures)
    "modes": frozenset({"errors", "containers"}),
    # reduce: a diverging scenario reduced to the requests it needs, by oracle probes
    "reduce": frozenset({"errors", "report", "scenario", "tracer", "bisect"}),
    # full: the full diagnosis (bisect, then localize at the first bad commit, attribute)
    "full": frozenset(
        {"errors", "repo", "report", "forge", "tracer", "scenario", "bisect", "containers"}
        | {"reduce"}
    ),
    # compose: the diagnosis's and the full diagnosis's configurations from a request and an
    # executor spec (the one place they are built)
    "compose": frozenset({"errors", "repo", "tracer", "containers", "request", "full"}),
    # bot: the webhook server, its queue and worker, one job = one full diagnosis
    "bot": frozenset(
        {"errors", "repo", "report", "storage", "forge", "tracer", "scenario", "bisect"}
        | {"containers", "full", "toml_reader", "request", "compose"}
    ),
    # sweep: the nightly and architecture sweeps (the bot's configuration: see SWEEP_USES_OF_BOT)
    "sweep": frozenset(
        {"errors", "repo", "report", "storage", "forge", "zoo", "tracer", "scenario", "bisect"}
        | {"containers", "full", "bot", "request", "compose"}
    ),
    # bench: the benchmark's cases run through the diagnosis
    "bench": frozenset(
        {"errors", "repo", "report", "zoo", "tracer", "scenario", "bisect", "reduce", "full"}
        | {"containers", "request", "compose"}
    ),
    # cli: the `ekka` command, above every part
    "cli": frozenset(
        {"errors", "repo", "report", "storage", "forge", "zoo", "tracer", "scenario", "bisect"}
        | {"containers", "reduce", "full", "bot", "sweep", "bench", "toml_reader", "request"}
        | {"modes", "compose"}
    ),
}
# every part above the leaves may use the codec, as it may raise Ekka's errors, and the
# frameworks' data
LEAVES = ("errors", "codec", "frameworks")
LAYERS = {p: a if p in LEAVES else a | {"codec", "frameworks"} for p, a in LAYERS.items()}

# sweep -> bot only for the configuration file both read, never the bot's queue, jobs or server
SWEEP_USES_OF_BOT = frozenset({"ekka.bot.config"})

# The inside: what runs in the framework's process (hooks, the trace writer, the adapters'
# in-process parts, the messages); it imports nothing but itself and the errors.
INSIDE = frozenset(
    {
        "ekka",
        "ekka.codec",
        "ekka.errors",
        "ekka.tracer",
        "ekka.tracer.adapters",
        "ekka.tracer.adapters.loop",
        "ekka.tracer.adapters.sglang",
        "ekka.tracer.adapters.sglang_hooks",
        "ekka.tracer.adapters.vllm",
        "ekka.tracer.adapters.vllm_replay",
        "ekka.tracer.adapters.vllm_requests",
        "ekka.tracer.hooks",
        "ekka.tracer.metadata",
        "ekka.tracer.model_config",
        "ekka.tracer.protocol",
        "ekka.tracer.shards",
        "ekka.tracer.trace",
        "ekka.tracer.warm",
    }
)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its `__init__.py`)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_names(path: Path, name: str) -> set[str]:
    """Every dotted name module `name` (at `path`) imports, wherever the statement is, relative
    imports resolved, `importlib.import_module("...")` included; `from a import b` gives both
    `a` and `a.b`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
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


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a name resolved to the longest module it
    starts with: `ekka.report.Diagnosis` is `ekka.report`)."""
    known = modules(root)
    top = root.name
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set()
        for imported in imported_names(path, name):
            if imported != top and not imported.startswith(top + "."):
                continue
            while imported not in known:
                imported = imported.rpartition(".")[0]
            if imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def part(module: str) -> str:
    """The part a module belongs to: `ekka.bot.queue` -> `bot`, `ekka.full` -> `full`."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else ""


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def violations(root: Path = PACKAGE) -> list[str]:
    """Every import the rules do not allow, as `module imports module (part -> part)`."""
    out = []
    for module, targets in sorted(import_graph(root).items()):
        source = part(module)
        for target in sorted(targets):
            goes = part(target)
            if goes in ("", source):  # the package's root (`ekka`), or the part's own modules
                continue
            allowed = goes in LAYERS.get(source, frozenset())
            if source == "sweep" and goes == "bot":
                allowed = target in SWEEP_USES_OF_BOT
            if not allowed:
                out.append(f"{module} imports {target} ({source} -> {goes})")
    return out


def test_every_part_has_its_rule():
    parts = {part(m) for m in modules()} - {""}
    assert parts == set(LAYERS), "name the new part's allowed imports in LAYERS"


def test_the_rules_are_layers():
    """The allowed directions themselves have no cycle, and name only known parts."""
    assert cycles(LAYERS) == []
    assert set().union(*LAYERS.values()) <= set(LAYERS)


def test_every_import_goes_down_an_allowed_direction():
    assert violations() == []


def test_no_cycle_between_modules():
    assert cycles(import_graph()) == []


def test_no_cycle_between_parts():
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        graph.setdefault(part(module), set()).update(part(t) for t in targets)
    for source, targets in graph.items():
        targets.discard(source)
    assert cycles(graph) == []


def test_the_inside_imports_nothing_of_the_driving_side():
    graph = import_graph()
    assert INSIDE <= set(graph), sorted(INSIDE - set(graph))
    outside = {m: sorted(graph[m] - INSIDE) for m in sorted(INSIDE) if graph[m] - INSIDE}
    assert outside == {}, "these run in the framework's process and import the parent's side"


def test_the_reader_sees_every_kind_of_import(tmp_path):
    """The check itself: absolute, relative, local and dynamic imports are all found."""
    root = tmp_path / "ekka"
    (root / "bisect").mkdir(parents=True)
    (root / "containers").mkdir()
    for name in ("__init__.py", "full.py", "bisect/__init__.py", "bisect/search.py"):
        (root / name).write_text("")
    for name in ("__init__.py", "local.py", "docker.py", "ray.py"):
        (root / "containers" / name).write_text("")
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
    graph = import_graph(root)
    assert graph["ekka.bisect.probe"] == {
        "ekka.bisect",  # `from . import search` runs the package's __init__ too
        "ekka.containers",
        "ekka.containers.local",
        "ekka.containers.docker",
        "ekka.containers.ray",
        "ekka.bisect.search",
        "ekka.full",
    }
    found = violations(root)
    assert "ekka.bisect.probe imports ekka.full (bisect -> full)" in found
    assert "ekka.bisect.probe imports ekka.containers.docker (bisect -> containers)" in found
    assert not any("search" in line for line in found)


def test_a_cycle_is_found(tmp_path):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize(("target", "allowed"), [("ekka.bot.config", True), ("ekka.bot.db", False)])
def test_the_sweeps_read_the_bots_configuration_only(tmp_path, target, allowed):
    root = tmp_path / "ekka"
    (root / "sweep").mkdir(parents=True)
    (root / "bot").mkdir()
    for name in ("__init__.py", "sweep/__init__.py", "bot/__init__.py", "bot/config.py"):
        (root / name).write_text("")
    (root / "bot" / "db.py").write_text("")
    (root / "sweep" / "nightly.py").write_text(f"import {target}\n")
    assert (violations(root) == []) is allowed
