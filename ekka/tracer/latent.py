"""Latent divergences: a component above the threshold whose error fades before the logits.

Localization names a change point only where the error persists downstream. A component whose
own output (or input) rises above the threshold and then fades is still a difference: on
another prompt it may not fade. Such a component is a latent finding when its replay on the
reference's inputs shows that what it computes differs:

- `MODULE`: replayed alone on the reference's input it reproduces the error: the module differs;
- `GLUE`: its input differs while the output just before it (same pass) matched, and alone it
  matches: the code that feeds it, in its caller's forward, differs;
- `UPSTREAM`: alone it matches and its input came in wrong: not a finding of its own;
- `LAYOUT`: alone it differs, but each row holds the reference's values in another order (a
  weight layout one side permutes on load: vLLM's fused Bloom qkv, Llama 4's q and k rows):
  not a finding;
- `UNREPLAYED`: no replay (attention, a block, a failed replay): a difference to name as an
  alignment gap or to examine, never a silent label.

`candidates` picks the modules to replay (pure, from the comparisons); `judge` gives each its
verdict from the replay ratios.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ekka.report.records import Comparison, Latent, LatentVerdict
from ekka.tracer.localize import _above, _Glue

MAX_CANDIDATES = 5


def candidates(comparisons: Sequence[Comparison], threshold: float) -> tuple[str, ...]:
    """The modules (in call order, each once, at most `MAX_CANDIDATES`) whose output or input
    is above the threshold somewhere; metadata checks are not modules' and are left out."""
    out: list[str] = []
    for c in sorted(comparisons, key=lambda c: c.sequence):
        if c.kind in ("output", "input") and _above(c, threshold) and c.target not in out:
            out.append(c.target)
    return tuple(out[:MAX_CANDIDATES])


def judge(
    comparisons: Sequence[Comparison],
    threshold: float,
    replay_ratios: Mapping[str, float],
    layout_ratios: Mapping[str, float] | None = None,
) -> tuple[Latent, ...]:
    """Each candidate with its verdict (`replay_ratios`: module -> its replay's ratio, for the
    modules the target replayed; `layout_ratios`: the same with each row's values sorted on
    both sides, where a replay that differs only in the order of its features agrees)."""
    comps = sorted(comparisons, key=lambda c: c.sequence)
    result = []
    for name in candidates(comps, threshold):
        mine = [c for c in comps if c.target == name]
        outputs = [c for c in mine if c.kind == "output" and _above(c, threshold)]
        inputs = [c for c in mine if c.kind == "input" and _above(c, threshold)]
        first = min(outputs + inputs, key=lambda c: c.sequence)
        ratio = max((_finite(c.ratio) for c in outputs), default=0.0)
        input_ratio = max((_finite(c.ratio) for c in inputs), default=0.0)
        replay = replay_ratios.get(name)
        owner = name
        if replay is None:
            verdict = LatentVerdict.UNREPLAYED
        elif replay > threshold and (layout_ratios or {}).get(name, replay) <= threshold:
            verdict = LatentVerdict.LAYOUT
        elif replay > threshold:
            verdict = LatentVerdict.MODULE
        elif inputs and _fed_after_match(comps, inputs[0], threshold):
            verdict, owner = LatentVerdict.GLUE, _Glue._caller(name)
        else:
            verdict = LatentVerdict.UPSTREAM
        result.append(
            Latent(
                component=name,
                module_class=first.module_class,
                source_file=first.source_file,
                source_line=first.source_line,
                owner=owner,
                verdict=verdict,
                ratio=ratio,
                input_ratio=input_ratio,
                pass_index=first.pass_index,
                replay_ratio=replay,
            )
        )
    return tuple(result)


def _fed_after_match(comps: Sequence[Comparison], given: Comparison, threshold: float) -> bool:
    """Whether the last module output compared before `given` (an input) in its pass matched:
    the value went wrong between that output and this input."""
    before = [
        c
        for c in comps
        if c.pass_index == given.pass_index and c.sequence < given.sequence and c.kind == "output"
    ]
    return bool(before) and not _above(before[-1], threshold)


def _finite(x: float) -> float:
    return x if math.isfinite(x) else math.inf


__all__ = ["MAX_CANDIDATES", "candidates", "judge"]
