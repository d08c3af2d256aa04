"""Verdicts: what one probe of one commit says (good, bad or skip) and why."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

# Keys of ProbeResult.details that the search reads (a probe sets them; all optional).
CANNOT_START = "cannot_start"  # True: the oracle itself could not start (program missing)
TRANSIENT = "transient"  # True: an infrastructure failure (timeout, no worktree); never cached


class Verdict(str, Enum):
    """A probe's answer, with `git bisect run` meaning."""

    GOOD = "good"
    BAD = "bad"
    SKIP = "skip"  # this commit cannot be tested (build or import failed, model unsupported)


@dataclass(frozen=True)
class ProbeResult:
    """One probe of one commit: the verdict, a one-line reason, its time and free-form details."""

    verdict: Verdict
    reason: str
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def cannot_start(self) -> bool:
        return bool(self.details.get(CANNOT_START))

    @property
    def transient(self) -> bool:
        return bool(self.details.get(TRANSIENT))

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "reason": self.reason,
            "seconds": self.seconds,
            "details": self.details,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProbeResult:
        return cls(
            verdict=Verdict(data["verdict"]),
            reason=data.get("reason", ""),
            seconds=float(data.get("seconds", 0.0)),
            details=dict(data.get("details") or {}),
        )


def verdict_from_exit_code(code: int) -> tuple[Verdict, str]:
    """`git bisect run` semantics: 0 good, 125 skip, 1-127 otherwise bad; anything else skip.

    A negative code (killed by a signal, as subprocess reports it) or one above 127 (a shell
    reporting a killed child, e.g. 137 after an out-of-memory kill) says nothing about the
    commit, so it is a skip, with the reason saying why.
    """
    if code == 0:
        return Verdict.GOOD, "exit 0"
    if code == 125:
        return Verdict.SKIP, "exit 125 (cannot test this commit)"
    if 1 <= code <= 127:
        return Verdict.BAD, f"exit {code}"
    if code < 0:
        return Verdict.SKIP, f"killed by signal {_signal_name(-code)}"
    if code > 128 and code - 128 < 65:
        return Verdict.SKIP, f"exit {code} (a child killed by signal {_signal_name(code - 128)}?)"
    return Verdict.SKIP, f"exit {code} (outside git bisect's 0-127)"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
