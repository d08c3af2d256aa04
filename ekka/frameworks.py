"""The serving frameworks Ekka targets, as data: what each is called, where its Python package
sits in its repository, which module runs it as the target and with which interpreter, and
where its sources list the architectures its model registry holds.

vLLM runs with Ekka's own interpreter. SGLang runs in an environment of its own (its torch
differs from vLLM's), made by `make venv` beside vLLM's (`.venv-sglang`), or the interpreter
that `EKKA_SGLANG_PYTHON` names. A framework's interpreter is the one seam between Ekka and
the framework's process: the local executor, a container and a Ray node all start the target
through it.
"""

from __future__ import annotations

import ast
import functools
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ekka.errors import UsageError

CHECKOUT = Path(__file__).resolve().parents[1]  # Ekka's checkout (editable install)


@dataclass(frozen=True)
class ModelList:
    """Where a framework's sources list the architectures its model registry holds, read as
    text (`ast`) so that neither framework is imported in Ekka's process: the files (a glob
    under its installed package) and the top-level name each assigns, either a dict keyed by
    architecture or the model classes (one, or a list) whose names are the architectures."""

    files: str
    name: str


@dataclass(frozen=True)
class Framework:
    name: str  # as users write it: --framework NAME, framework = "NAME"
    title: str  # as reports write it
    package: str  # the import name of its Python package
    source_root: str  # the folder of its repository that holds the package ("" top level)
    adapter: str  # the target's module (`serve`, `exit_at_once`, `preload`: ekka.tracer.warm)
    python_variable: str = ""  # the variable naming its interpreter ("": Ekka's own)
    venv: str = ""  # the environment `make venv` makes for it, in Ekka's checkout
    env: Mapping[str, str] = field(default_factory=dict)  # what its target's process adds
    # the module that lists its model registry, run as `python -m REGISTRY` with its
    # interpreter (one JSON object: version, registered, unimportable, notes); "": none (vLLM's
    # list in its sources, `models`, is all the sweep needs)
    registry: str = ""
    # the architectures its registry holds, as its sources list them (the zoo's derived
    # architectures are those of either framework's list that transformers has)
    models: ModelList = ModelList("", "")

    def sources(self, tree: str | Path) -> Path:
        """The folder of a checkout of the framework's repository to put first on the path."""
        return Path(tree) / self.source_root if self.source_root else Path(tree)


FRAMEWORKS: dict[str, Framework] = {
    "vllm": Framework(
        "vllm",
        "vLLM",
        "vllm",
        "",
        "ekka.tracer.adapters.vllm",
        # its decoder-only text generation (not the transformers backend's nor multimodal ones)
        models=ModelList("model_executor/models/registry.py", "_TEXT_GENERATION_MODELS"),
    ),
    "sglang": Framework(
        "sglang",
        "SGLang",
        "sglang",
        "python",
        "ekka.tracer.adapters.sglang",
        python_variable="EKKA_SGLANG_PYTHON",
        venv=".venv-sglang",
        # SGLang's CPU paths (without it, device="cpu" reaches for vLLM's CUDA ops)
        env={"SGLANG_USE_CPU_ENGINE": "1"},
        registry="ekka.tracer.adapters.sglang_registry",
        # each model module's EntryClass, as SGLang's registry reads them (importing each)
        models=ModelList("srt/models/*.py", "EntryClass"),
    ),
}


def listed_architectures(source: str, name: str) -> list[str]:
    """The architectures a module's source lists in its top-level `name = ...` (a
    `ModelList`'s name): a dict's string keys, or the names of the model classes it assigns
    (one, or a list or tuple of them); [] where it assigns no `name`."""
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        )):  # fmt: skip
            continue
        value = node.value
        if isinstance(value, ast.Dict):
            keys = [k.value if isinstance(k, ast.Constant) else None for k in value.keys]
            return [k for k in keys if isinstance(k, str)]
        items = value.elts if isinstance(value, ast.List | ast.Tuple) else [value]
        return [item.id for item in items if isinstance(item, ast.Name)]
    return []


def framework(name: str) -> Framework:
    """The framework called `name`, or a UsageError that lists the known ones."""
    if name not in FRAMEWORKS:
        raise UsageError(f"unknown framework {name!r}; use one of {', '.join(FRAMEWORKS)}.")
    return FRAMEWORKS[name]


def python_for(name: str) -> str:
    """The interpreter that runs `name`'s target process."""
    fw = framework(name)
    if not fw.python_variable:
        return sys.executable
    given = os.environ.get(fw.python_variable)
    python = Path(given) if given else CHECKOUT / fw.venv / "bin" / "python"
    if not os.access(python, os.X_OK):
        where = f"{fw.python_variable}={given}" if given else str(python)
        raise UsageError(
            f"{fw.title}'s environment is not installed ({where} is not an interpreter): run "
            f"`make venv` (scripts/install.sh) in {CHECKOUT} to create {fw.venv}, or set "
            f"{fw.python_variable} to the Python of an environment where {fw.package} imports."
        )
    return str(python)


def installed_package_dir(name: str) -> Path:
    """The installed release's package folder (e.g. .../site-packages/vllm) in the
    framework's environment, found without importing it."""
    fw = framework(name)
    python = python_for(name)
    origin = _origin(python, fw.package)
    if not origin:
        raise UsageError(
            f"{fw.title} is not installed in its environment ({python}); run `make venv` once "
            "to set it up."
        )
    return Path(origin).resolve().parent


@functools.cache
def _origin(python: str, package: str) -> str:
    """Where `package`'s `__init__.py` is for `python` ("" when it is not installed)."""
    # a virtual environment's interpreter is a link to its base's: compared unresolved
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        import importlib.util

        spec = importlib.util.find_spec(package)
        return spec.origin if spec is not None and spec.origin else ""
    found = subprocess.run(
        [
            python,
            "-c",
            "import importlib.util, sys; s = importlib.util.find_spec(sys.argv[1]); "
            "print(s.origin if s and s.origin else '')",
            package,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    return found.stdout.strip()
