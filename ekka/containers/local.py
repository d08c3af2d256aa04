"""The local executor (embedded default): a git worktree per commit, the framework's Python
sources from that commit overlaid on the installed release's compiled extensions, and the
probe in a subprocess with a time limit. This is what vLLM calls building with precompiled
binaries: only valid while the commit changes no compiled source, so a commit that does
(csrc/, CUDA/C++ files, CMake files, relative to the release) is skipped with that reason.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ekka.bisect.history import CommitInfo
from ekka.bisect.oracle import TracerOracle
from ekka.bisect.verdict import TRANSIENT, ProbeResult, Verdict
from ekka.bisect.worktree import worktree
from ekka.containers.overlay import compiled_changes, overlay_compiled
from ekka.errors import CaptureError
from ekka.frameworks import framework
from ekka.tracer.capture import capture

__all__ = ["LocalExecutor", "compiled_changes", "overlay_compiled"]


class LocalExecutor:
    """Probes commits of `repo` with the tracer's oracle, one worktree and subprocess each.

    An Executor (`ekka.bisect.executor`); thread-safe (each probe its own worktree and trace
    folder). `cancel()` makes later probes skip at once; a running probe ends with its target's
    process, at the latest after `timeout`.
    """

    def __init__(
        self,
        repo: str | Path,
        oracle: TracerOracle,
        *,
        package_dir: str | Path,
        base: str,
        workdir: str | Path,
        timeout: float = 600,
    ) -> None:
        self.repo = Path(repo)
        self.oracle = oracle
        self.package_dir = Path(package_dir)
        self.base = base
        self.workdir = Path(workdir)
        self.timeout = timeout
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    def probe(self, commit: CommitInfo) -> ProbeResult:
        if self._cancelled.is_set():
            return ProbeResult(Verdict.SKIP, "cancelled", 0.0, {TRANSIENT: True})
        start = time.perf_counter()
        changed = compiled_changes(self.repo, self.base, commit.sha)
        if changed:
            return ProbeResult(
                Verdict.SKIP,
                f"changes compiled sources ({', '.join(changed[:3])}); the local executor only "
                "overlays Python sources on the release's extensions (use the docker executor)",
                time.perf_counter() - start,
                {"compiled_changes": changed},
            )
        with worktree(self.repo, commit.sha) as tree:
            sources = framework(self.oracle.config.framework).sources(tree)
            overlay_compiled(sources, self.package_dir)
            out = self.workdir / f"probe-{commit.sha[:12]}"
            try:
                trace = capture(self.oracle.spec(out), pythonpath=[sources], timeout=self.timeout)
            except CaptureError as exc:
                # An import or start-up failure is an infrastructure problem for this commit:
                # skip, never bad.
                first = str(exc).splitlines()[0]
                return ProbeResult(
                    Verdict.SKIP,
                    f"the target did not run: {first}",
                    time.perf_counter() - start,
                    {},
                )
            seconds = time.perf_counter() - start
            result = self.oracle.judge(trace, seconds)
            timings = dict(trace.manifest.timings)
            result.details.update(timings=timings, trace=str(out))
            return result
