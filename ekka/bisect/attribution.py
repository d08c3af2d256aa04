"""Attribution: join the first bad commit's diff with the suspect components.

The diff (first parent) is parsed down to the classes and functions whose lines it changes
(Python's `ast` on the file before and after). A suspect carries its module class and source
file, and the trace knows the classes of the modules that own it (a decoder layer builds its
norms, an attention block calls its rotary). The root cause is the first suspect whose own
class, or an owner's, the commit changed; a change in the same file only is weaker evidence,
and when nothing intersects the report says so and lists both sides.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ekka.frameworks import framework
from ekka.repo import git

HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


@dataclass(frozen=True)
class Touched:
    """One class or function (qualified name) of a file whose lines the commit changed."""

    file: str
    qualname: str
    lines_added: int
    lines_removed: int

    @property
    def classname(self) -> str | None:
        first = self.qualname.split(".")[0]
        return first if first[:1].isupper() else None


@dataclass(frozen=True)
class Attribution:
    commit: str
    pr: int | None
    statement: str
    matched: bool
    level: str  # "class", "owner", "file", "machinery" or "none"
    component: str | None
    touched: tuple[Touched, ...]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["touched"] = [asdict(t) for t in self.touched]
        return data


def _symbols(source: str) -> list[tuple[int, int, str]]:
    """(first line, last line, qualified name) of every class and function, outermost first."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    out: list[tuple[int, int, str]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                out.append((start, child.end_lineno or child.lineno, name))
                walk(child, name + ".")

    walk(tree, "")
    return out


def _innermost(symbols: list[tuple[int, int, str]], line: int) -> str:
    best = "<module>"
    width = None
    for start, end, name in symbols:
        if start <= line <= end and (width is None or end - start < width):
            best, width = name, end - start
    return best


def touched_symbols(repo: str | Path, commit: str) -> list[Touched]:
    """Classes and functions whose lines `commit` changes against its first parent."""
    repo = Path(repo)
    diff = git(repo, "diff", "-U0", "--no-color", f"{commit}^1", commit)
    counts: dict[tuple[str, str], list[int]] = {}
    old_file = new_file = None
    old_syms: list[tuple[int, int, str]] = []
    new_syms: list[tuple[int, int, str]] = []
    for line in diff.splitlines():
        if line.startswith("--- "):
            old_file = None if line[4:] == "/dev/null" else line[6:]
        elif line.startswith("+++ "):
            new_file = None if line[4:] == "/dev/null" else line[6:]
            old_syms = (
                _symbols(git(repo, "show", f"{commit}^1:{old_file}", check=False, strip=False))
                if old_file and old_file.endswith(".py")
                else []
            )
            new_syms = (
                _symbols(git(repo, "show", f"{commit}:{new_file}", check=False, strip=False))
                if new_file and new_file.endswith(".py")
                else []
            )
        elif (m := HUNK.match(line)) and (new_file or old_file):
            a, b = int(m.group(1)), int(m.group(2) or 1)
            c, d = int(m.group(3)), int(m.group(4) or 1)
            for ln in range(c, c + d):
                key = (new_file or old_file or "", _innermost(new_syms, ln))
                counts.setdefault(key, [0, 0])[0] += 1
            for ln in range(a, a + b):
                key = (new_file or old_file or "", _innermost(old_syms, ln))
                counts.setdefault(key, [0, 0])[1] += 1
    return [Touched(f, q, added, removed) for (f, q), (added, removed) in counts.items()]


# Serving machinery that decides what a module computes without being part of it, by the
# module's class: attention reads the KV cache through metadata (sequence lengths, slot
# mapping, block tables) that the model runner, the scheduler's KV-cache manager and the
# backend's metadata builder prepare before the forward pass. Per framework, as data.
_VLLM_RUNNER = ("vllm/v1/worker/", "vllm/v1/core/", "vllm/forward_context.py")
# SGLang: the model runner and its forward batch, the scheduler's batches, the memory pools
# (request-to-token map, cache locations).
_SGLANG_RUNNER = (
    "sglang/srt/model_executor/",
    "sglang/srt/managers/",
    "sglang/srt/mem_cache/",
)
# Per class (a regex on its name): the serving machinery that prepares what it reads. The
# attention reads the attention metadata and the KV-cache blocks; the rotary embedding reads
# the positions; the embedding reads the input ids; the model runner and the scheduler
# prepare all of them.
MACHINERY: dict[str, dict[str, tuple[str, ...]]] = {
    "vllm": {
        r"Attention": _VLLM_RUNNER + ("vllm/v1/attention/", "vllm/attention/"),
        r".*(Rotary|RoPE|Rope).*": _VLLM_RUNNER,
        r".*Embedding": _VLLM_RUNNER,
    },
    "sglang": {
        r".*Attention": _SGLANG_RUNNER + ("sglang/srt/layers/attention/",),
        r".*(Rotary|RoPE|Rope).*": _SGLANG_RUNNER,
        r".*Embedding": _SGLANG_RUNNER,
    },
}


def machinery_of(cls: str, framework_name: str = "vllm") -> tuple[str, ...]:
    """The source folders of the serving machinery that prepares what class `cls` reads."""
    rules = MACHINERY.get(framework_name, {})
    return next((p for pattern, p in rules.items() if re.fullmatch(pattern, cls)), ())


@dataclass(frozen=True)
class Location:
    """Code that computes a component: the module itself, an object it delegates to, an owner."""

    role: str  # "module", "delegate", "owner" or "model"
    name: str
    cls: str
    file: str | None


def locations(trace: Any, component: str) -> list[Location]:
    """The component's module, its delegates, then the modules that own it, innermost first."""
    by_name: dict[str, tuple[str, str | None]] = {}
    for r in trace.records:
        by_name.setdefault(r.name, (r.module_class, r.source_file))
    manifest = getattr(trace, "manifest", None)  # a TraceManifest
    delegates = {} if manifest is None else manifest.delegates
    parts = component.split(".")
    out: list[Location] = []
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        registered = _registered_name(name, delegates)
        if name in by_name:
            cls, file = by_name[name]
            out.append(Location("module" if i == len(parts) else "owner", name, cls, file))
        for cls, file, _line in delegates.get(registered, []):
            out.append(Location("delegate", name, cls, file))
    if manifest is not None and manifest.model_class:
        source = manifest.model_source[0]
        out.append(Location("model", "the model", manifest.model_class, source))
    return out


def _registered_name(name: str, delegates: Mapping[str, Any]) -> str:
    """Trace names attribute shared modules to the calling layer; delegates use registered names."""
    if name in delegates:
        return name
    return re.sub(r"layers\.\d+\.", "layers.0.", name, count=1)


def attribute(
    repo: str | Path,
    commit: str,
    pr: int | None,
    suspects: Sequence[Any],
    trace: Any,
    framework_name: str = "vllm",
) -> Attribution:
    """State the root cause: which changed class or function is (or owns) which suspect.

    Files are compared as the trace names them, from the package's folder down (a repository
    that keeps the package under a folder, SGLang's `python/`, has that folder taken off), and
    named as the repository does (`python/sglang/...`), where its reader finds them."""
    root = framework(framework_name).source_root
    touched = touched_symbols(repo, commit)

    def in_package(t: Touched) -> str:
        return t.file.removeprefix(f"{root}/") if root else t.file

    short = commit[:10]
    pr_text = f" (PR #{pr})" if pr else ""

    def found(level: str, suspect: Any, text: str) -> Attribution:
        which = (
            "the first component that diverges" if suspect.rank == 1 else f"suspect #{suspect.rank}"
        )
        metadata = getattr(suspect, "metadata", "")
        evidence = (
            f", which consumed wrong serving metadata first ({metadata})"
            if metadata
            else f" (ratio {suspect.ratio:.3g})"
        )
        return Attribution(
            commit,
            pr,
            f"commit {short}{pr_text} {text} {which}: {suspect.component}{evidence}",
            True,
            level,
            suspect.component,
            tuple(touched),
        )

    chains = [(s, locations(trace, s.component)) for s in suspects]
    for level in ("class", "owner", "file", "machinery"):
        for suspect, chain in chains:
            for loc in chain:
                for t in touched:
                    same_file = loc.file is not None and in_package(t) == loc.file
                    what = f"changed {t.qualname} in {t.file}"
                    if (
                        level == "class"
                        and loc.role in ("module", "delegate")
                        and same_file
                        and t.classname == loc.cls
                    ):
                        role = (
                            "which is"
                            if loc.role == "module"
                            else f"the {loc.cls} that {loc.name} delegates to, for"
                        )
                        return found(level, suspect, f"{what}, {role}")
                    if (
                        level == "owner"
                        and loc.role in ("owner", "model")
                        and same_file
                        and t.classname == loc.cls
                    ):
                        return found(
                            level, suspect, f"{what}; {loc.cls} ({loc.name}) builds and owns"
                        )
                    if level == "file" and same_file:
                        return found(
                            level,
                            suspect,
                            f"{what}, the file of {loc.cls} ({loc.role} of {suspect.component}), for",
                        )
                    if level == "machinery" and loc.role == "module":
                        prefixes = machinery_of(loc.cls, framework_name)
                        if any(in_package(t).startswith(p) for p in prefixes):
                            return found(
                                level,
                                suspect,
                                f"{what}, serving machinery that prepares what {loc.cls} reads "
                                "(positions, input ids, attention metadata, KV-cache blocks), for",
                            )
    changed = ", ".join(f"{t.qualname} in {t.file}" for t in touched[:6]) or "no Python code"
    listed = (
        ", ".join(f"{s.component} ({s.module_class}, {s.source_file})" for s in suspects[:5])
        or "none"
    )
    return Attribution(
        commit,
        pr,
        f"commit {short}{pr_text} changed {changed}; no suspect component's class, owner or file is among them. "
        f"Suspects: {listed}",
        False,
        "none",
        None,
        tuple(touched),
    )
