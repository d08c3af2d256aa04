"""Bisection over a framework's commit history (commit ranges, the search, the verdict cache).

`commit_range` makes the range (first-parent chain, each commit with its PR), a probe says
good / bad / skip for one commit (`CommandOracle` runs a shell command in a worktree), and
`Bisector` finds the first bad commit, optionally with a `VerdictCache`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ekka.bisect.command import CommandOracle
from ekka.bisect.executor import Executor, Probe
from ekka.bisect.history import CommitInfo, CommitRange, commit_range, parse_pr_number
from ekka.bisect.search import (
    Bisector,
    BisectResult,
    BisectState,
    BisectStatus,
    BisectStep,
    NullObserver,
    Observer,
    PrintObserver,
)
from ekka.bisect.verdict import ProbeResult, Verdict, verdict_from_exit_code
from ekka.bisect.worktree import worktree

if TYPE_CHECKING:
    from ekka.bisect.cache import VerdictCache, config_hash, default_url

_CACHE_NAMES = ("VerdictCache", "config_hash", "default_url")

__all__ = [
    "Bisector",
    "BisectResult",
    "BisectState",
    "BisectStatus",
    "BisectStep",
    "CommandOracle",
    "CommitInfo",
    "CommitRange",
    "Executor",
    "NullObserver",
    "Observer",
    "PrintObserver",
    "Probe",
    "ProbeResult",
    "Verdict",
    "VerdictCache",
    "commit_range",
    "config_hash",
    "default_url",
    "parse_pr_number",
    "verdict_from_exit_code",
    "worktree",
]


def __getattr__(name: str) -> Any:
    """The cache's names, imported on first use: SQLAlchemy takes a while to import."""
    if name in _CACHE_NAMES:
        from ekka.bisect import cache

        return getattr(cache, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
