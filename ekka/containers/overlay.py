"""The overlay: a commit's Python sources laid over the installed release's compiled extensions.

Shared by the local executor (a worktree on the host) and the docker executor's overlay images
(`python -m ekka.containers.overlay /src vllm` in the image's build), and kept light (git and
the standard library only) because it runs inside images that hold no more than the probe needs.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from pathlib import Path

from ekka.errors import UsageError
from ekka.repo import git

COMPILED_PATTERNS = (
    "csrc/*",
    "*.cu",
    "*.cuh",
    "*.cpp",
    "*.cc",
    "*.c",
    "*.h",
    "*.hpp",
    "CMakeLists.txt",
    "*.cmake",
)


def compiled_changes(repo: Path, base: str, commit: str) -> list[str]:
    """Files matching COMPILED_PATTERNS that differ between `base` and `commit`."""
    names = git(repo, "diff", "--name-only", base, commit).splitlines()
    return [n for n in names if any(fnmatch.fnmatch(n, p) for p in COMPILED_PATTERNS)]


def overlay_compiled(tree: Path, package_dir: Path) -> int:
    """Link the installed release's compiled extensions into the worktree's package folder."""
    target_root = tree / package_dir.name
    if not target_root.is_dir():
        raise UsageError(
            f"the repository has no {package_dir.name}/ folder at its top level: it is not the "
            f"{package_dir.name} repository (or not its Python sources)."
        )
    count = 0
    for so in package_dir.rglob("*.so"):
        dest = target_root / so.relative_to(package_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            os.symlink(so, dest)
            count += 1
    return count


def main(argv: list[str]) -> int:
    """`python -m ekka.containers.overlay TREE PACKAGE`: link PACKAGE's installed extensions."""
    from ekka.frameworks import installed_package_dir

    tree, package = argv
    count = overlay_compiled(Path(tree), installed_package_dir(package))
    print(f"{count} compiled files of the installed {package} linked into {tree}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
