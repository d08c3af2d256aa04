"""The end-to-end check: does the target's output diverge from the reference's?

Whatever the components say, a diagnosis whose target output diverges is a divergence. Per
step (each pass that computes logits, at the pass's last position):

- the robust error ratio of the logits (as for any component): above the threshold diverges;
- the greedy token: a different token where the float32 reference is decisive (its top-1 /
  top-2 margin is more than `MARGIN_FACTOR` times the dtype's noise in the logits) diverges;
  a different token at a near tie is no evidence.

`judge_step` is the one judgement, shared by the bisection's oracle (a free-running reference)
and the diagnosis (`check_output`: references teacher-forced on the target's tokens, so every
step is comparable, also after the tokens part).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ekka.report.records import OutputCheck
from ekka.tracer.metrics import compute_error_ratio
from ekka.tracer.trace import TraceReader

MARGIN_FACTOR = 4.0


def judge_step(
    step: int,
    x: torch.Tensor,
    x_r: torch.Tensor,
    y_r: torch.Tensor,
    token: int | None,
    reference_token: int | None,
    dtype: str,
    threshold: float,
    margin_factor: float = MARGIN_FACTOR,
) -> tuple[float, str | None, bool]:
    """(the logits' error ratio, why the step diverges or None, whether the tokens differ at a
    near tie). `x`: the target's logits; `x_r`, `y_r`: the reference's in the serving dtype and
    in float32 (the same tensor in float32); `token`, `reference_token`: the greedy tokens of
    the step (None where there is none to compare)."""
    ratio = compute_error_ratio(x, x_r, y_r, dtype)
    if ratio > threshold or not math.isfinite(ratio):
        return ratio, f"the logits of step {step} diverge: error ratio {ratio:.3g}", False
    if token is None or reference_token is None or token == reference_token:
        return ratio, None, False
    top2 = y_r.topk(2).values
    margin = float(top2[0] - top2[1])
    noise = float((x_r - y_r).abs().max()) if dtype != "float32" else 1e-5 * float(y_r.abs().max())
    if margin > margin_factor * noise:
        return (
            ratio,
            f"the greedy token of step {step} is {token}, the reference's {reference_token} "
            f"(reference margin {margin:.3g} against noise {noise:.2g})",
            False,
        )
    return ratio, None, True


def check_output(
    target: TraceReader,
    reference: TraceReader,
    reference32: TraceReader | None,
    dtype: str,
    threshold: float,
) -> OutputCheck:
    """The target's logits and tokens, step by step, against teacher-forced references."""
    logits = _logits_by_position(reference)
    logits32 = _logits_by_position(reference32) if reference32 is not None else logits
    prompt_len = len(target.prompt_ids)
    tokens = target.generated_ids
    passes = {p.index: p for p in target.passes}
    ratios: list[float] = []
    for record in target.records:
        info = passes.get(record.pass_index)
        if record.kind != "logits" or info is None or not info.positions:
            continue
        position = info.positions[-1]
        x_r, y_r = logits.get(position), logits32.get(position)
        out = target.outputs(record)[0]
        if x_r is None or y_r is None or out is None:
            continue
        x = (out[-1] if out.dim() > 1 else out).float()
        produced = position - prompt_len + 1  # the generated token this position's logits chose
        token = tokens[produced] if 0 <= produced < len(tokens) else None
        reference_token = int(y_r.argmax()) if token is not None else None
        ratio, reason, _ = judge_step(
            info.step, x, x_r, y_r, token, reference_token, dtype, threshold
        )
        ratios.append(ratio)
        if reason is not None:
            return OutputCheck(True, info.step, reason, max(ratios))
    worst = max(ratios, default=0.0)
    if not ratios:
        return OutputCheck(False, None, "no logits to compare", worst)
    return OutputCheck(False, None, f"the logits match (largest error ratio {worst:.3g})", worst)


def _logits_by_position(trace: TraceReader) -> dict[int, torch.Tensor]:
    """A reference's logits, one row per token position."""
    found: dict[int, torch.Tensor] = {}
    passes = {p.index: p for p in trace.passes}
    for record in trace.records:
        info = passes.get(record.pass_index)
        if record.kind != "logits" or info is None:
            continue
        out = trace.outputs(record)[0]
        if out is None:
            continue
        rows: Sequence[int] = info.positions
        table = out.reshape(-1, out.shape[-1]).float()
        if table.shape[0] != len(rows):
            rows = rows[-table.shape[0] :]
        for row, position in zip(table, rows):
            found[position] = row
    return found
