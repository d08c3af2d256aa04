"""Where the installed framework is, and git run in a repository: small helpers shared by the
bisection, the executors, the bench and the tests.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ekka.errors import EkkaError, UsageError

# A fixed identity and date, so that the commits Ekka makes (bench and demo histories) are the
# same from run to run.
IDENTITY = {
    "GIT_AUTHOR_NAME": "Ekka Bench",
    "GIT_AUTHOR_EMAIL": "bench@ekka.invalid",
    "GIT_COMMITTER_NAME": "Ekka Bench",
    "GIT_COMMITTER_EMAIL": "bench@ekka.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00+00:00",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00+00:00",
}


def git(repo: str | Path, *args: str, check: bool = True, strip: bool = True) -> str:
    """`git ARGS` run in `repo` (never in a repository above it), with IDENTITY; its stdout.

    With `check`, a non-zero exit raises RuntimeError with git's message; `strip` strips the
    output's surrounding whitespace (off to read a file's exact text with `git show`).
    """
    env = dict(os.environ, **IDENTITY, GIT_CEILING_DIRECTORIES=str(Path(repo).resolve().parent))
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()}")
    return proc.stdout.strip() if strip else proc.stdout


def installed_framework_dir(framework: str = "vllm", python: str | None = None) -> Path:
    """The installed package's folder (e.g. .../site-packages/vllm), found without importing it,
    in this environment or in that of the interpreter `python` (SGLang's own, say)."""
    import importlib.util
    import sys

    # a virtual environment's interpreter is a link to its base's: compared unresolved
    if python is None or os.path.abspath(python) == os.path.abspath(sys.executable):
        spec = importlib.util.find_spec(framework)
        origin = spec.origin if spec is not None else None
    else:
        found = subprocess.run(
            [python, "-c", FIND_SPEC, framework], capture_output=True, text=True, check=False
        )
        origin = found.stdout.strip() if found.returncode == 0 else None
    if not origin or origin == "None":
        raise UsageError(
            f"{framework} is not installed in {python or 'this environment'}; run `make test` "
            "once to set it up."
        )
    return Path(origin).resolve().parent


FIND_SPEC = (
    "import importlib.util, sys; s = importlib.util.find_spec(sys.argv[1]);"
    " print(s.origin if s else None)"
)


def fetch(path: str) -> None:
    """`git fetch` every remote of the clone (none: nothing to fetch)."""
    remotes = subprocess.run(
        ["git", "-C", path, "remote"], capture_output=True, text=True, check=False
    )
    if remotes.returncode != 0:
        raise EkkaError(f"{path} is not a git clone: {remotes.stderr.strip()}")
    if remotes.stdout.strip():
        done = subprocess.run(
            ["git", "-C", path, "fetch", "--all", "--quiet"],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if done.returncode != 0:
            raise EkkaError(f"git fetch in {path} failed: {done.stderr.strip()[-500:]}")
