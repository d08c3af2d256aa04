"""Localization: the earliest component whose error ratio rises and stays up.

Errors propagate downstream, so the root cause is not the component with the largest error but
the first one (in the target's call order, pass by pass) whose ratio crosses the threshold and
stays above it for most of what follows in its forward pass: the change point. Suspects are
ranked by that evidence: the jump at the component against what precedes it, and the
persistence after it.

When the first divergent comparison is a module's *input* (its output before still matched),
the code between the two modules is at fault: the parent module's forward, and the suspect
named is that parent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ekka.report.records import Comparison, Localization, Suspect

DEFAULT_THRESHOLD = 2.0
PERSISTENCE = 0.5  # "stays up": above the threshold for more than this share of what follows
MAX_SUSPECTS = 5
# A divergence confined to a few tokens is diluted in the pass's ratio; one token alone counts
# when its own ratio is this many times the threshold (a stricter bar: one token is noisier).
TOKEN_FACTOR = 4.0


def _above(c: Comparison, threshold: float) -> bool:
    return (
        c.nonfinite
        or not math.isfinite(c.ratio)
        or c.ratio > threshold
        or c.token_ratio > TOKEN_FACTOR * threshold
    )


def _component_of(c: Comparison) -> str:
    if c.kind == "input":
        return c.target.rsplit(".", 1)[0] if "." in c.target else c.target
    return c.target


def localize(
    comparisons: Iterable[Comparison], threshold: float = DEFAULT_THRESHOLD
) -> Localization:
    """Find the change point and rank up to five suspects."""
    comps = sorted(comparisons, key=lambda c: c.sequence)
    by_pass: dict[int, list[Comparison]] = {}
    for c in comps:
        by_pass.setdefault(c.pass_index, []).append(c)
    scored: list[
        tuple[float, Comparison, float, float]
    ] = []  # (score, comparison, jump, persistence)
    for pass_index in sorted(by_pass):
        seq = by_pass[pass_index]
        above = [_above(c, threshold) for c in seq]
        later = [0] * (len(seq) + 1)  # later[i]: how many of seq[i:] are above the threshold
        for i in range(len(seq) - 1, -1, -1):
            later[i] = later[i + 1] + above[i]
        for i, c in enumerate(seq):
            if not above[i]:
                continue
            after = len(seq) - i - 1
            persistence = 1.0 if not after else later[i + 1] / after
            before = [b.ratio for b in seq[max(0, i - 8) : i] if math.isfinite(b.ratio)]
            base = max([1.0] + before)
            jump = c.ratio / base if math.isfinite(c.ratio) else math.inf
            scored.append((0.0, c, jump, persistence))
    persistent = [(c, j, p) for _, c, j, p in scored if p > PERSISTENCE]
    if not persistent:
        return Localization(threshold)
    change = persistent[0][0]
    # Rank: the change point first; then the other persistent crossings of its pass and the
    # passes after it, by jump; each component once.
    ranked: list[tuple[Comparison, float, float]] = [persistent[0]]
    rest = [x for x in persistent[1:] if x[0].pass_index >= change.pass_index]
    rest.sort(key=lambda x: (-_log(x[1]) * x[2], x[0].sequence))
    ranked.extend(rest)
    seen: set[str] = set()
    suspects: list[Suspect] = []
    for c, jump, persistence in ranked:
        name = _component_of(c)
        if name in seen:
            continue
        seen.add(name)
        suspects.append(_suspect(len(suspects) + 1, c, jump, persistence, threshold))
        if len(suspects) == MAX_SUSPECTS:
            break
    return Localization(threshold, tuple(suspects), change)


def _log(x: float) -> float:
    return math.log(x) if math.isfinite(x) and x > 0 else 1e9


def _suspect(
    rank: int, c: Comparison, jump: float, persistence: float, threshold: float
) -> Suspect:
    where = f"pass {c.pass_index} (step {c.step}), worst at token position {c.worst_position}"
    if c.nonfinite:
        how = "non-finite values (NaN/inf) where the reference is finite"
    else:
        how = (
            f"error ratio {c.ratio:.3g} (relative error {c.error:.2e} against noise {c.noise:.1e})"
        )
        if c.ratio <= threshold:
            how += f", confined to few tokens: {c.token_ratio:.3g} at token position {c.worst_position}"
    if c.kind == "input":
        evidence = (
            f"the input of {c.target} diverges ({how}) while the outputs before it match: "
            f"the glue code in {_component_of(c)}.forward is the suspect; {where}"
        )
    else:
        evidence = (
            f"{how}, {jump:.3g}x the ratio of the components before it; above the threshold "
            f"{threshold:g} for {persistence:.0%} of what follows in its pass; {where}"
        )
    return Suspect(
        rank=rank,
        component=_component_of(c),
        module_class=c.module_class,
        source_file=c.source_file,
        source_line=c.source_line,
        ratio=c.ratio,
        jump=jump,
        persistence=persistence,
        pass_index=c.pass_index,
        step=c.step,
        position=c.worst_position,
        evidence=evidence,
    )
