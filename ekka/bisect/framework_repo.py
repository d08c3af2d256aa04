"""Local git histories of the framework's Python sources, for the main job, the bench and tests.

`make_base_repo` puts the installed release's Python sources (no compiled `.so` files: those
come from the installed release at probe time, see `ekka.containers.local`) into a fresh
repository, one commit, where the framework's own repository keeps them (`vllm/` at the top,
SGLang's under `python/`). `make_bug_history` clones it and adds harmless commits, the commit that
applies a bug patch, and more harmless commits, each with a squash-style message carrying a
pull-request number, as on vLLM's main branch.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ekka.errors import UsageError
from ekka.frameworks import framework
from ekka.repo import git

# Per framework, files a harmless commit may touch (when present; relative to the folder that
# holds the package), besides the bug patch's own files.
COMMON_FILES = {
    "vllm": (
        "vllm/model_executor/models/llama.py",
        "vllm/model_executor/models/qwen2.py",
        "vllm/model_executor/layers/layernorm.py",
        "vllm/model_executor/layers/activation.py",
        "vllm/v1/attention/backends/cpu_attn.py",
        "vllm/v1/worker/gpu_model_runner.py",
        "vllm/sampling_params.py",
        "vllm/utils/__init__.py",
    ),
    "sglang": (
        "sglang/srt/models/llama.py",
        "sglang/srt/models/qwen2.py",
        "sglang/srt/layers/layernorm.py",
        "sglang/srt/layers/activation.py",
        "sglang/srt/layers/attention/torch_native_backend.py",
        "sglang/srt/model_executor/model_runner.py",
        "sglang/srt/sampling/sampling_params.py",
        "sglang/srt/utils/common.py",
    ),
}


@dataclass(frozen=True)
class BugHistory:
    """A repository whose first-parent history is: release, harmless..., bug, harmless..."""

    repo: Path
    good: str  # the release commit
    bad: str  # the head
    bug: str  # the commit that applied the patch
    bug_pr: int
    commits: tuple[str, ...]  # oldest first, after good


def make_base_repo(
    dest: str | Path,
    package_dir: str | Path,
    *,
    message: str | None = None,
    framework_name: str = "vllm",
) -> Path:
    """A repository holding `<package>/` (under the framework's source root) with the
    package's Python sources, one commit."""
    dest, package_dir = Path(dest), Path(package_dir)
    if dest.exists():
        shutil.rmtree(dest)
    sources = framework(framework_name).sources(dest)
    sources.mkdir(parents=True)
    shutil.copytree(
        package_dir,
        sources / package_dir.name,
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"),
    )
    (dest / ".gitignore").write_text("*.so\n__pycache__/\n")
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", message or f"{package_dir.name} release sources")
    return dest


def clone(base: Path, dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", str(base), str(dest)], check=True, capture_output=True)
    return dest


def harmless_commit(repo: Path, path: str, index: int, pr: int) -> str:
    """Append a comment to `path` (numerically harmless) and commit it, squash style."""
    file = repo / path
    with open(file, "a") as fh:
        fh.write(f"\n# maintenance note {index}: no behaviour change\n")
    git(repo, "add", path)
    git(repo, "commit", "-q", "-m", f"[Misc] Tidy {Path(path).name} ({index}) (#{pr})")
    return git(repo, "rev-parse", "HEAD")


def apply_patch(patch: Path, root: Path) -> None:
    """`git apply -p1` (checked first) in `root`, which holds the package folder.

    Run as outside any repository that merely contains `root`: inside one, `git apply` takes
    paths relative to that repository's top level and silently skips what lies outside.
    """
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(Path(root).resolve().parent))
    for args in (["--check"], []):
        proc = subprocess.run(
            ["git", "apply", "-p1", *args, str(patch.resolve())],
            cwd=root,
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0:
            raise UsageError(
                f"{patch} does not apply to the framework's sources: {proc.stderr.strip()}"
            )


def apply_patch_commit(
    repo: Path, patch: Path, summary: str, pr: int, sources: Path | None = None
) -> str:
    """Apply `patch` in `sources` (the folder of `repo` that holds the package: `repo` itself
    by default) and commit."""
    apply_patch(patch, sources or repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"{summary} (#{pr})")
    return git(repo, "rev-parse", "HEAD")


def _applies(sources: Path, patch: Path) -> bool:
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(Path(sources).resolve().parent))
    proc = subprocess.run(
        ["git", "apply", "-p1", "--check", str(patch.resolve())],
        cwd=sources,
        capture_output=True,
        env=env,
    )
    return proc.returncode == 0


def patch_files(patch: Path) -> list[str]:
    return [
        line[6:].strip() for line in patch.read_text().splitlines() if line.startswith("+++ b/")
    ]


def make_bug_history(
    base: Path,
    dest: Path,
    patch: Path,
    summary: str,
    *,
    before: int = 5,
    after: int = 5,
    seed: int = 0,
    first_pr: int = 9001,
    extra_files: Sequence[str] | None = None,
    framework_name: str = "vllm",
) -> BugHistory:
    """Clone `base` and add `before` harmless commits, the patch, `after` harmless commits.

    Some harmless commits touch the patch's own files (harmlessly), as real neighbours do.
    Paths (the patch's, `extra_files`) are relative to the folder that holds the package.
    """
    repo = clone(base, dest)
    fw = framework(framework_name)
    sources = fw.sources(repo)
    good = git(repo, "rev-parse", "HEAD")
    rng = random.Random(seed)
    prefix = f"{fw.source_root}/" if fw.source_root else ""
    touched = [prefix + f for f in patch_files(patch)]
    if extra_files is None:
        extra_files = COMMON_FILES[framework_name]
    extra = [prefix + f for f in extra_files]
    candidates = [f for f in extra + touched if (repo / f).is_file()]
    commits: list[str] = []
    pr = first_pr
    others = [f for f in candidates if f not in touched] or candidates
    for i in range(before):
        path = touched[0] if (i == before - 1 and touched) else rng.choice(candidates)
        sha = harmless_commit(repo, path, i, pr)
        if path in touched and not _applies(sources, patch):
            # the appended line sits in a hunk's end-of-file context: touch another file instead
            git(repo, "reset", "-q", "--hard", "HEAD~1")
            sha = harmless_commit(repo, rng.choice(others), i, pr)
        commits.append(sha)
        pr += 1
    bug_pr = pr
    bug = apply_patch_commit(repo, patch, summary, bug_pr, sources)
    commits.append(bug)
    pr += 1
    for i in range(after):
        path = touched[-1] if (i == 0 and touched) else rng.choice(candidates)
        commits.append(harmless_commit(repo, path, before + i, pr))
        pr += 1
    return BugHistory(
        repo=repo, good=good, bad=commits[-1], bug=bug, bug_pr=bug_pr, commits=tuple(commits)
    )
