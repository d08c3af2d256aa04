"""A probe that runs a shell command in a worktree of the commit (`git bisect run` style)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

from ekka.bisect.history import CommitInfo
from ekka.bisect.verdict import (
    CANNOT_START,
    TRANSIENT,
    ProbeResult,
    Verdict,
    verdict_from_exit_code,
)
from ekka.bisect.worktree import clean_git_env, worktree
from ekka.errors import OracleStartError, UsageError, WorktreeError

# Never handed to code under test.
SECRET_VARIABLES = ("GITHUB_TOKEN", "GH_TOKEN", "GITHUB_APP_PRIVATE_KEY", "EKKA_GITHUB_TOKEN")
# What a shell prints when the program it was asked to run does not exist or cannot be run.
START_FAILURES = ("command not found", "No such file or directory", "Permission denied")
TAIL_BYTES = 64 * 1024
TAIL_LINES = 20


class CommandOracle:
    """An Executor (`ekka.bisect.executor`): `probe(commit)` runs `cmd` with `bash -c` in a fresh
    worktree of the commit; the oracle is also a plain function of the commit (`oracle(commit)`).

    The command runs with the worktree as its folder and EKKA_COMMIT (the sha) and EKKA_REPO
    (the repository) set, in its own process group (killed whole on timeout or interruption).
    Exit codes map as in `git bisect run`; a timeout or a failed checkout is a skip. Thread-safe.
    """

    def __init__(self, repo_path: str | Path, cmd: str, timeout: float | None = None) -> None:
        if not cmd.strip():
            raise UsageError("the oracle command is empty; give a shell command with --cmd.")
        if timeout is not None and timeout <= 0:
            raise UsageError(f"the timeout must be positive (got {timeout}).")
        shell = shutil.which("bash")
        if shell is None:
            raise OracleStartError("the oracle command could not start: bash is not on PATH.")
        self.repo_path = Path(repo_path).resolve()
        self.cmd = cmd
        self.timeout = timeout
        self.shell = shell
        self._running: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self._cancelled = threading.Event()

    def __call__(self, commit: CommitInfo) -> ProbeResult:
        return self.probe(commit)

    def probe(self, commit: CommitInfo) -> ProbeResult:
        start = time.monotonic()
        if self._cancelled.is_set():
            return ProbeResult(Verdict.SKIP, "cancelled", 0.0, {TRANSIENT: True})
        try:
            with worktree(self.repo_path, commit.sha) as path:
                code, tail, timed_out = self._run(path, commit.sha)
        except WorktreeError as exc:
            return ProbeResult(Verdict.SKIP, str(exc), time.monotonic() - start, {TRANSIENT: True})
        seconds = time.monotonic() - start
        details = {"exit_code": code, "output_tail": tail}
        last = _last_lines(tail, 3)
        if timed_out:
            return ProbeResult(
                Verdict.SKIP, f"timed out after {self.timeout:g} s" + (f": {last}" if last else ""),
                seconds, {**details, TRANSIENT: True},
            )  # fmt: skip
        verdict, reason = verdict_from_exit_code(code)
        if code in (126, 127) and any(marker in tail for marker in START_FAILURES):
            details[CANNOT_START] = True
        return ProbeResult(verdict, reason + (f": {last}" if last else ""), seconds, details)

    def _run(self, cwd: Path, sha: str) -> tuple[int, str, bool]:
        """Run the command; (exit code, output tail, timed out)."""
        env = {k: v for k, v in clean_git_env().items() if k not in SECRET_VARIABLES}
        env.update(EKKA_COMMIT=sha, EKKA_REPO=str(self.repo_path))
        with tempfile.TemporaryFile() as log:
            try:
                process = subprocess.Popen(
                    [self.shell, "-c", self.cmd], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            except OSError as exc:
                raise OracleStartError(f"the oracle command could not start: {exc}") from exc
            with self._lock:  # a cancel() before this point finds the event set, after it
                self._running.add(process)  # the process in the running set: never missed
                cancelled = self._cancelled.is_set()
            if cancelled:
                _kill_group(process)
            timed_out = False
            try:
                process.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(process)  # on timeout, interruption, and leftovers in the background
                process.wait()
                with self._lock:
                    self._running.discard(process)
            return process.returncode, _tail(log), timed_out

    def cancel(self) -> None:
        """Stop every running command (the search was interrupted); later calls skip at once."""
        self._cancelled.set()
        with self._lock:
            running = list(self._running)
        for process in running:
            _kill_group(process)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(log: IO[bytes]) -> str:
    size = log.seek(0, os.SEEK_END)
    log.seek(max(0, size - TAIL_BYTES))
    text = log.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-TAIL_LINES:])


def _last_lines(text: str, count: int) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    joined = " | ".join(lines[-count:])
    return joined if len(joined) <= 300 else "…" + joined[-299:]
