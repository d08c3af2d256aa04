"""The commands' modes and the options each takes, checked in one place.

`ekka diagnose`:

Localize mode (no --repo/--good/--bad): the installed target (or --target-path) against the
reference. Full mode (all three): reproduce at bad, bisect, attribute, each commit probed by
an executor. A mix, or an option of the other mode, is a UsageError saying what to drop.

`ekka sweep`: the nightly sweep (--config) or the architecture sweep (--architectures).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ekka.containers.spec import check_cli_kind
from ekka.errors import UsageError

COMPARE = ("traced", "all")


@dataclass(frozen=True)
class Range:
    """Full mode's repository and commits."""

    repo: str
    good: str
    bad: str


def check_modes(
    *,
    repo: str | None,
    good: str | None,
    bad: str | None,
    executor: str,
    target_path: Sequence[object] = (),
    compare: str = "traced",
    scenario: object | None = None,
    threshold: float | None = None,
) -> Range | None:
    """The full mode's range (None: localize mode), after checking that the options given
    belong to the mode they select."""
    if compare not in COMPARE:
        raise UsageError(f"--compare {compare!r}: use traced or all.")
    if compare == "all" and scenario is None:
        raise UsageError("--compare all is for a --scenario (every request of it in turn).")
    if threshold is not None and threshold <= 0:
        raise UsageError("--threshold must be positive (default: the dtype's calibrated one).")
    given = [x is not None for x in (repo, good, bad)]
    if any(given) and not all(given):
        raise UsageError(
            "full mode needs all of --repo, --good and --bad (or none of them for localize mode)."
        )
    full = all(given)
    check_cli_kind(executor)
    if executor != "local" and not full:
        raise UsageError("--executor is for full mode (--repo, --good and --bad).")
    if full and target_path:
        raise UsageError(
            "--target-path is for localize mode; full mode runs the target from the repository's commits."
        )
    if full and compare == "all":
        raise UsageError("--compare all is for localize mode (no --repo/--good/--bad).")
    if not full:
        return None
    assert repo is not None and good is not None and bad is not None
    return Range(repo, good, bad)


def check_sweep_modes(
    *,
    config: object | None,
    architectures: str | None,
    repo: object | None,
    commit: str | None,
    framework: str = "vllm",
) -> None:
    """One sweep, with its own options: --repo, --commit and --framework are the architecture
    sweep's."""
    if (config is None) == (architectures is None):
        raise UsageError(
            "give --config ekka.toml (the nightly sweep) or --architectures all|NAME,... "
            "(the architecture sweep), one of them."
        )
    if config is not None and (repo is not None or commit is not None):
        raise UsageError(
            "--repo and --commit are the architecture sweep's; the nightly sweep takes its "
            "repository from the configuration's [[sweeps]] entry."
        )
    if config is not None and framework != "vllm":
        raise UsageError(
            "--framework is the architecture sweep's; the nightly sweep takes the framework "
            "from the configuration's [[repositories]] entry."
        )
    if (repo is None) != (commit is None):
        raise UsageError("--repo and --commit go together: the clone, and the commit to sweep.")
