"""Localization: the earliest component whose error ratio rises and stays up.

Errors propagate downstream, so the root cause is not the component with the largest error but
the first one (in the target's call order, pass by pass) whose ratio crosses the threshold and
stays above it for most of what follows in its forward pass: the change point. Suspects are
ranked by that evidence: the jump at the component against what precedes it, and the
persistence after it.

When the first divergent comparison is a module's *input* (the outputs before it still matched),
the code between the modules is at fault: the forward of the module that called it, found by
walking up while the callers' inputs diverge too (`_Glue`). When it is a serving metadata check
(positions, input ids, attention metadata that differ from what the request implies), the
suspect is the module that consumed the metadata first, with the check as its evidence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ekka.report.records import Comparison, Localization, Suspect

# The change point's threshold per serving dtype: a component "diverges" when its error ratio
# is above it. Set from measurements (benchmarks/noise_calibration.py; the figures in
# benchmarks/results/noise-*.json): pristine vLLM against transformers, every comparison, on the
# trained Gemma 3 270M at 64, 256, 600 and 1000 prompt tokens and on six zoo architectures at
# 64 and 256, 4 generated tokens; and the change points of the planted bugs (the public bench,
# the real-weight cases in bench/real).
# - float32: the largest pristine ratio is 1.88 (Gemma 3 270M, 256 tokens, a decode step's
#   post_feedforward_layernorm: trained weights put the float32 rounding in a few large
#   channels; random weights stay below 0.2), the smallest planted one 33.9 (exact GELU).
#   2, the threshold before real weights, stood 1.06x above that noise; 4 is twice it.
# - bfloat16: the largest pristine ratio is 3.54 (Gemma 3 270M, 64 tokens, a decode step's
#   o_proj: vLLM's decode attention kernel rounds otherwise than transformers' eager one; the
#   zoo stays below 1.2), the smallest planted one 11.7 (the sliding window applied to every
#   layer, at layer 5's attention: the 81 tokens past the window diverge, the first 512 match).
#   Twice the noise (7) would sit too near that bug: at 8 its change point is lost (the
#   layers after it fall below the threshold and logits_processor is named). 6 is about the
#   geometric middle of 3.54 and 11.7.
# Thresholds only place the line; the margin (smallest planted / largest pristine ratio) is the
# measure's, widened by pooling a component's noise over its passes (metrics.segment_figures):
# in bfloat16 the largest pristine ratio was 4.66 without it.
THRESHOLDS = {"float32": 4.0, "bfloat16": 6.0}
DEFAULT_THRESHOLD = THRESHOLDS["float32"]
PERSISTENCE = 0.5  # "stays up": above the threshold for more than this share of what follows
MAX_SUSPECTS = 5
# A divergence confined to a few tokens is diluted in the pass's ratio; one token alone counts
# when its own ratio is this many times the threshold (a stricter bar: one token is noisier).
TOKEN_FACTOR = 4.0


def threshold_for(dtype: str) -> float:
    """The calibrated threshold of a serving dtype (float16: bfloat16's, the nearer kind)."""
    return THRESHOLDS.get(
        dtype, THRESHOLDS["bfloat16"] if dtype == "float16" else DEFAULT_THRESHOLD
    )


def _above(c: Comparison, threshold: float) -> bool:
    return (
        c.nonfinite
        or not math.isfinite(c.ratio)
        or c.ratio > threshold
        or c.token_ratio > TOKEN_FACTOR * threshold
    )


def localize(
    comparisons: Iterable[Comparison],
    threshold: float = DEFAULT_THRESHOLD,
    modules: Mapping[str, Sequence[Any]] | None = None,
) -> Localization:
    """Find the change point and rank up to five suspects. `modules`: the target's modules by
    name, (class, source file, line) each (a trace manifest's "modules"), for the class and
    source of a glue suspect that no comparison names."""
    comps = sorted(comparisons, key=lambda c: c.sequence)
    above = [_above(c, threshold) for c in comps]
    later = [0] * (len(comps) + 1)  # later[i]: how many of comps[i:] are above the threshold
    for i in range(len(comps) - 1, -1, -1):
        later[i] = later[i + 1] + above[i]
    pass_end: dict[int, int] = {}  # pass -> the index after its last comparison
    for i, c in enumerate(comps):
        pass_end[c.pass_index] = i + 1
    scored: list[tuple[Comparison, float, float]] = []  # (comparison, jump, persistence)
    pass_start = 0
    for i, c in enumerate(comps):
        if i and comps[i - 1].pass_index != c.pass_index:
            pass_start = i
        if not above[i]:
            continue
        # "stays up": over the rest of the pass; for wrong metadata, over the rest of the run
        # (a wrong cache slot or block is read back in later passes)
        end = len(comps) if c.kind == "metadata" else pass_end[c.pass_index]
        after = end - i - 1
        persistence = 1.0 if not after else (later[i + 1] - later[end]) / after
        before = [b.ratio for b in comps[max(pass_start, i - 8) : i] if math.isfinite(b.ratio)]
        base = max([1.0] + before)
        jump = c.ratio / base if math.isfinite(c.ratio) else math.inf
        scored.append((c, jump, persistence))
    persistent = [(c, j, p) for c, j, p in scored if p > PERSISTENCE]
    if not persistent:
        return Localization(threshold)
    change = persistent[0][0]
    glue = _Glue(comps, threshold, modules or {})
    # Rank: the change point first; then the other persistent crossings of its pass and the
    # passes after it, by jump; each component once.
    ranked: list[tuple[Comparison, float, float]] = [persistent[0]]
    rest = [x for x in persistent[1:] if x[0].pass_index >= change.pass_index]
    rest.sort(key=lambda x: (-_log(x[1]) * x[2], x[0].sequence))
    ranked.extend(rest)
    seen: set[str] = set()
    suspects: list[Suspect] = []
    for c, jump, persistence in ranked:
        name = glue.component(c)
        if name in seen:
            continue
        seen.add(name)
        suspects.append(
            _suspect(
                len(suspects) + 1, c, name, jump, persistence, threshold, glue.source.get(name)
            )
        )
        if len(suspects) == MAX_SUSPECTS:
            break
    return Localization(threshold, tuple(suspects), change)


class _Glue:
    """Which module's forward holds the glue code that feeds a diverging input.

    A module whose input diverges while the outputs before it match received a wrong value
    from the code around it. Walk up its ancestors while their inputs (where compared: the
    decoder layers) diverge too; the caller of the highest one holds that code: a layer's
    forward when the layer's own input still matched, the backbone's when it did not.
    """

    def __init__(
        self,
        comps: Sequence[Comparison],
        threshold: float,
        modules: Mapping[str, Sequence[Any]],
    ) -> None:
        self.threshold = threshold
        self.source: dict[str, tuple[str, str | None, int | None]] = {
            name: (str(m[0]), m[1], m[2]) for name, m in modules.items() if len(m) == 3
        }
        for c in comps:
            if c.kind == "output":
                self.source.setdefault(c.target, (c.module_class, c.source_file, c.source_line))
        self.inputs: dict[tuple[int, str], Comparison] = {
            (c.pass_index, c.target): c for c in comps if c.kind == "input"
        }

    def component(self, c: Comparison) -> str:
        if c.kind != "input":
            return c.target
        name = c.target
        while True:
            parent = self._compared_ancestor(c.pass_index, name)
            if parent is None or not _above(self.inputs[(c.pass_index, parent)], self.threshold):
                break
            name = parent
        return self._caller(name)

    def _compared_ancestor(self, pass_index: int, name: str) -> str | None:
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:cut])
            if (pass_index, prefix) in self.inputs:
                return prefix
        return None

    @staticmethod
    def _caller(name: str) -> str:
        """The module whose forward calls `name`: its parent, past the list that holds a
        numbered layer (`model.layers.0` is called by `model`)."""
        parts = name.split(".")
        if len(parts) > 2 and parts[-1].isdigit():
            return ".".join(parts[:-2])
        return ".".join(parts[:-1]) or name


def _log(x: float) -> float:
    return math.log(x) if math.isfinite(x) and x > 0 else 1e9


def _suspect(
    rank: int,
    c: Comparison,
    component: str,
    jump: float,
    persistence: float,
    threshold: float,
    where_from: tuple[str, str | None, int | None] | None = None,
) -> Suspect:
    """`component`: the module suspected (the glue's owner for an input, the consumer for
    metadata); `where_from`: its class and source, where they differ from `c`'s."""
    where = f"pass {c.pass_index} (step {c.step}), worst at token position {c.worst_position}"
    if c.nonfinite:
        how = "non-finite values (NaN/inf) where the reference is finite"
    else:
        how = (
            f"error ratio {c.ratio:.3g} (relative error {c.error:.2e} against noise {c.noise:.1e})"
        )
        if c.ratio <= threshold:
            how += f", confined to few tokens: {c.token_ratio:.3g} at token position {c.worst_position}"
    if c.kind == "metadata":
        evidence = (
            f"it consumed wrong serving metadata first: {c.detail}; what follows stays above "
            f"the threshold {threshold:g} for {persistence:.0%} of the run"
        )
    elif c.kind == "input":
        evidence = (
            f"the input of {c.target} diverges ({how}) while the outputs before it match: "
            f"the glue code in {component}.forward is the suspect; {where}"
        )
    else:
        evidence = (
            f"{how}, {jump:.3g}x the ratio of the components before it; above the threshold "
            f"{threshold:g} for {persistence:.0%} of what follows in its pass; {where}"
        )
    cls, file, line = where_from or (c.module_class, c.source_file, c.source_line)
    return Suspect(
        rank=rank,
        component=component,
        module_class=cls,
        source_file=file,
        source_line=line,
        ratio=c.ratio,
        jump=jump,
        persistence=persistence,
        pass_index=c.pass_index,
        step=c.step,
        position=c.worst_position,
        evidence=evidence,
        metadata=c.detail if c.kind == "metadata" else "",
    )
