"""The files of a framework's environment that its runtime image needs, listed by the
framework's own interpreter: `python -m ekka.containers.environment SELECTION_JSON`.

Run with the interpreter of the framework's environment (vLLM's is Ekka's own, SGLang's is
`.venv-sglang`), so that the distributions, their versions and their files are that
environment's. Standard library and `packaging` only: it runs where Ekka is not installed.

The selection is either the requirements to follow (with their dependencies, markers evaluated
here, extras followed) or every distribution of the environment (`"requirements": null`: an
environment made for the framework alone). `"removed"` names distributions never taken.

The shared libraries of `nvidia-*` distributions are taken only where a library outside them
links them (ELF `DT_NEEDED`, followed transitively): the registry's CUDA torch links a few of
them at import, even without a GPU; the rest (cuDNN's engines, cuBLAS's extras, NVRTC's
builtins, ...) are opened only by a GPU's kernels, which a CPU probe never runs.
"""

from __future__ import annotations

import importlib.metadata
import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

LINKED_ONLY = "nvidia-"  # distributions whose shared libraries are taken only where linked
DT_NEEDED = 1
SHT_DYNAMIC = 6


@dataclass(frozen=True)
class Distribution:
    """One distribution to copy: its name, version and files as (absolute path, RECORD path)."""

    name: str
    version: str
    files: tuple[tuple[str, str], ...]

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "version": self.version, "files": [list(f) for f in self.files]}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Distribution:
        files = data["files"]
        assert isinstance(files, list)
        return cls(
            str(data["name"]), str(data["version"]), tuple((str(a), str(b)) for a, b in files)
        )


def selected(
    requirements: list[str] | None, removed: list[str]
) -> list[importlib.metadata.Distribution]:
    """The installed distributions `requirements` need (dependencies included), or every
    installed one when `requirements` is None; none of `removed`; sorted by name. A
    requirement that is not installed is left out, as it is where the local executor runs."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    never = {canonicalize_name(name) for name in removed} | {"ekka"}
    if requirements is None:
        every = {
            canonicalize_name(d.metadata["Name"]): d for d in importlib.metadata.distributions()
        }
        return [every[name] for name in sorted(every) if name not in never]
    found: dict[str, tuple[importlib.metadata.Distribution, frozenset[str]]] = {}
    stack = [Requirement(line) for line in requirements]
    while stack:
        requirement = stack.pop()
        name = canonicalize_name(requirement.name)
        if name in never:
            continue
        try:
            dist = importlib.metadata.distribution(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            continue
        wanted = frozenset(requirement.extras)
        if name in found and wanted <= found[name][1]:
            continue
        followed = wanted | (found[name][1] if name in found else frozenset())
        found[name] = (dist, followed)
        for line in dist.requires or []:
            dependency = Requirement(line)
            marker = dependency.marker
            if marker is None or any(marker.evaluate({"extra": x}) for x in ("", *followed)):
                stack.append(dependency)
    return [found[name][0] for name in sorted(found)]


def needed(path: Path) -> list[str]:
    """The library names an ELF64 little-endian file links (`DT_NEEDED`); [] for another file."""
    with path.open("rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:6] != b"\x7fELF\x02\x01":
            return []
        shoff = struct.unpack_from("<Q", header, 0x28)[0]
        shentsize, shnum = struct.unpack_from("<HH", header, 0x3A)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        sections = [struct.unpack_from("<IIQQQQIIQQ", table, i * shentsize) for i in range(shnum)]
        names: list[str] = []
        for section in sections:
            if section[1] != SHT_DYNAMIC:
                continue
            strtab = sections[section[6]]
            f.seek(strtab[4])
            strings = f.read(strtab[5])
            f.seek(section[4])
            dynamic = f.read(section[5])
            for tag, value in struct.iter_unpack("<qQ", dynamic[: len(dynamic) // 16 * 16]):
                if tag == DT_NEEDED:
                    names.append(strings[value : strings.index(b"\0", value)].decode())
        return names


def _is_library(path: Path) -> bool:
    return path.name.endswith(".so") or ".so." in path.name


def files(dists: list[importlib.metadata.Distribution]) -> list[Distribution]:
    """Each distribution's existing files, less the `nvidia-*` libraries nothing links."""
    listed: list[tuple[importlib.metadata.Distribution, list[tuple[Path, str]]]] = []
    for dist in dists:
        paths = [(Path(str(dist.locate_file(record))), str(record)) for record in dist.files or []]
        listed.append((dist, [(p, r) for p, r in paths if p.exists() or p.is_symlink()]))
    optional = {
        path.name: path
        for dist, paths in listed
        if dist.metadata["Name"].lower().startswith(LINKED_ONLY)
        for path, _ in paths
        if _is_library(path)
    }
    todo = [
        name
        for dist, paths in listed
        if not dist.metadata["Name"].lower().startswith(LINKED_ONLY)
        for path, _ in paths
        if _is_library(path) and path.is_file()
        for name in needed(path)
    ]
    linked: set[str] = set()
    while todo:
        name = todo.pop()
        if name in optional and name not in linked:
            linked.add(name)
            todo.extend(needed(optional[name]))
    out = []
    for dist, paths in listed:
        linked_only = dist.metadata["Name"].lower().startswith(LINKED_ONLY)
        kept = tuple(
            (str(path), record)
            for path, record in paths
            if not (linked_only and _is_library(path)) or path.name in linked
        )
        out.append(Distribution(dist.metadata["Name"], dist.version, kept))
    return out


def main(argv: list[str]) -> int:
    """Print this Python's minor version and the selection's distributions, as one JSON object."""
    selection = json.loads(argv[0])
    dists = files(selected(selection["requirements"], selection["removed"]))
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    print(json.dumps({"python": python, "distributions": [d.to_json() for d in dists]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
