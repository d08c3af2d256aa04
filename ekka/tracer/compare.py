"""Error metrics and the component-by-component comparison of a target trace with a reference.

The robust error ratio of a component is `r = ||X_T - Y_R|| / ||X_R - Y_R||`: the target's
distance from the float32 reference, against the distance the serving dtype alone explains
(the reference in the serving dtype). The denominator is floored at the dtype's own rounding
noise (`NOISE_FLOOR * ||Y_R||`), so in float32, where X_R is Y_R, r is the relative error in
units of float32 noise. A correct component stays near 1; a NaN or inf on the target side where
the reference is finite is an infinite ratio.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from ekka.tracer import transforms
from ekka.tracer.align import Aligner, ComponentMap, Plan, plan_components, positions_for
from ekka.tracer.trace import TraceReader

# Relative noise floors: ~32 float32 ulps; half a bfloat16 ulp.
NOISE_FLOOR = {"float32": 4e-6, "bfloat16": 2.0**-9, "float16": 2.0**-11}


def _row_norms(t: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each row (token), accumulated in float32 without a float64 copy."""
    return torch.linalg.vector_norm(t.float().reshape(t.shape[0] if t.dim() > 1 else 1, -1), dim=-1)


def _total(rows: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(rows.double()))


def compute_relative_error(x: torch.Tensor, y: torch.Tensor) -> float:
    """||x - y|| / ||y||: inf where x holds a NaN or an inf (the norm of the difference is then
    not finite, so no separate pass over the tensor is needed)."""
    denom = _total(_row_norms(y))
    diff = _total(_row_norms(x.float() - y.float()))
    if not math.isfinite(diff):
        return math.inf
    return diff / denom if denom > 0 else diff


def measure(
    x_target: torch.Tensor, x_reference: torch.Tensor, y_reference: torch.Tensor, dtype: str
) -> tuple[float, float, float, torch.Tensor]:
    """(ratio, target relative error, noise, ratio per token) of one aligned component.

    One pass over each difference: per-row norms, from which the totals follow. A NaN or inf
    on the target side makes the difference's norm non-finite: error and ratio are then inf.
    The per-token ratio divides each token's error by that token's noise, but never by less
    than the median token's noise (a token whose reference happens to round exactly would
    otherwise look like an outlier) nor less than the dtype's floor.
    """
    floor = NOISE_FLOOR.get(dtype, NOISE_FLOOR["float32"])
    y_rows = _row_norms(y_reference)
    y_total = _total(y_rows) or 1e-30
    t_rows = _row_norms(x_target - y_reference)
    t_total = _total(t_rows)
    error = t_total / y_total if math.isfinite(t_total) else math.inf
    if x_reference is y_reference:
        noise_rows = torch.zeros_like(y_rows)
        noise = 0.0
    else:
        noise_rows = _row_norms(x_reference - y_reference)
        noise = _total(noise_rows) / y_total
    noise = max(noise, floor) if math.isfinite(noise) else noise
    ratio = error / noise if noise > 0 else math.inf
    token_noise = torch.maximum(noise_rows, floor * y_rows)
    token_noise = torch.maximum(token_noise, token_noise.median()).clamp_min(1e-30)
    return ratio, error, noise, torch.nan_to_num(t_rows / token_noise, nan=math.inf)


def compute_error_ratio(
    x_target: torch.Tensor, x_reference: torch.Tensor, y_reference: torch.Tensor, dtype: str
) -> tuple[float, float, float]:
    """(ratio, target relative error, noise) of one aligned component."""
    return measure(x_target, x_reference, y_reference, dtype)[:3]


@dataclass(frozen=True)
class Comparison:
    """One aligned component in one target pass: the figures and how they were made."""

    sequence: int
    target: str
    module_class: str
    source_file: str | None
    source_line: int | None
    pass_index: int
    step: int
    call_index: int
    plan: str
    inferred: bool
    ratio: float
    error: float
    noise: float
    nonfinite: bool
    worst_position: int
    rows: int
    kind: str = "output"
    discounted_tokens: int = 0  # MoE: tokens at a near-tied router choice, left out of the ratio
    token_ratio: float = 0.0  # the largest per-token ratio (at worst_position)

    def passed(self, threshold: float) -> bool:
        return self.ratio <= threshold

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("ratio", "error", "noise", "token_ratio"):
            if not math.isfinite(data[key]):
                data[key] = str(data[key])
        return data


def iter_comparisons(
    target: TraceReader,
    reference: TraceReader,
    reference32: TraceReader | None = None,
    *,
    mapping: ComponentMap | None = None,
    step: int | None = None,
) -> Iterator[Comparison]:
    """Stream the aligned comparisons, in the target's call order, one record at a time."""
    mapping = mapping or plan_components(target, reference)
    aligner = Aligner(target, reference, reference32)
    passes = {p.index: p for p in target.passes}
    high = reference32 or reference
    dtype = target.dtype
    routing = RoutingTolerance(target.manifest.get("model_config") or {}, dtype)
    sequence = 0
    for record in target.records:
        if step is not None and record.step != step:
            continue
        plan = mapping.plans.get(record.name)
        info = passes.get(record.pass_index)
        if plan is None or info is None:
            continue
        routing.begin(record.pass_index)
        if record.inputs and _input_comparable(plan):
            comparison = _compare_input(aligner, record, plan, info, reference, high, dtype, sequence)
            if comparison is not None:
                sequence += 1
                yield comparison
        comparison = _compare(aligner, record, plan, info, reference, high, dtype, sequence, routing)
        if comparison is not None:
            sequence += 1
            yield comparison


class RoutingTolerance:
    """MoE routers at near-tied logits may pick other experts for a token or two in bfloat16.

    At each router (a component whose aligned output is `[tokens, num_experts]`), tokens whose
    target top-k expert set differs from the float32 reference's *and* whose reference margin
    between the k-th and (k+1)-th router logit is within the dtype's noise are discounted: left
    out of the ratio of that router and of every later component of the same pass. A router
    that is really wrong flips tokens with clear margins, which are not discounted.
    """

    def __init__(self, config: dict[str, Any], dtype: str) -> None:
        text = config.get("text_config") or config
        self.experts = int(text.get("num_local_experts") or text.get("num_experts") or 0)
        self.top_k = int(text.get("num_experts_per_tok") or 0)
        self.floor = NOISE_FLOOR.get(dtype, NOISE_FLOOR["float32"])
        self.pass_index = -1
        self.rows: set[int] = set()

    def begin(self, pass_index: int) -> None:
        if pass_index != self.pass_index:
            self.pass_index = pass_index
            self.rows = set()

    def observe(self, x: torch.Tensor, x_r: torch.Tensor, y_r: torch.Tensor) -> None:
        if not self.experts or not self.top_k or x.dim() != 2 or x.shape[-1] != self.experts:
            return
        k = min(self.top_k, self.experts - 1)
        target_sets = x.topk(k, dim=-1).indices.sort(dim=-1).values
        reference_sets = y_r.topk(k, dim=-1).indices.sort(dim=-1).values
        ranked = y_r.sort(dim=-1, descending=True).values
        margin = ranked[:, k - 1] - ranked[:, k]
        noise = (x_r - y_r).abs().max(dim=-1).values + (x - y_r).abs().median(dim=-1).values
        scale = y_r.abs().max(dim=-1).values * self.floor
        near_tie = margin <= 4 * torch.maximum(noise, scale)
        flipped = (target_sets != reference_sets).any(dim=-1)
        self.rows |= {int(i) for i in torch.nonzero(flipped & near_tie).flatten()}

    def keep(self, rows: int) -> list[int] | None:
        if not self.rows:
            return None
        return [i for i in range(rows) if i not in self.rows]


def _input_comparable(plan: Plan) -> bool:
    """Modules whose input is the reference module's input: same-name or fused projections."""
    return plan.slot == "out" and plan.target_op == "first" and plan.reference_op in (None, "concat")


def _compare_input(
    aligner: Aligner, record: Any, plan: Plan, info: Any, reference: TraceReader,
    high: TraceReader, dtype: str, sequence: int,
) -> Comparison | None:
    """Compare what the target module received with what the reference module received.

    A fused add-norm receives `(x, residual)` where the reference receives their sum: both
    readings are tried and the closer one is kept.
    """
    inputs = aligner.target.inputs(record)
    first_in = inputs.get("0")
    if first_in is None or not first_in.is_floating_point():
        return None
    candidates = [first_in]
    second = inputs.get("1")
    if second is not None and second.shape == first_in.shape and second.is_floating_point():
        candidates.append(first_in + second)
    in_plan = Plan(plan.target, "first", plan.reference[:1], None, slot="in", rule="input")
    rows = len(info.positions)
    try:
        xs = [transforms.to_rows(c, rows).float() for c in candidates]
    except RuntimeError:
        return None
    positions = positions_for(xs[0].shape[0], info)
    x_r = aligner.reference_tensor(reference, in_plan, positions)
    y_r = x_r if high is reference else aligner.reference_tensor(high, in_plan, positions)
    if x_r is None or y_r is None:
        return None
    xs = [x for x in xs if x.shape == x_r.shape]
    if not xs:
        return None
    x = min(xs, key=lambda t: compute_relative_error(t, y_r))
    return _comparison(record, in_plan, x, x_r, y_r, dtype, positions, sequence, kind="input")


def _compare(
    aligner: Aligner, record: Any, plan: Plan, info: Any, reference: TraceReader,
    high: TraceReader, dtype: str, sequence: int, routing: RoutingTolerance | None = None,
) -> Comparison | None:
    try:
        x = aligner.target_tensor(record, plan, len(info.positions))
    except (RuntimeError, AssertionError, IndexError):
        return None
    positions = positions_for(x.shape[0], info)
    x_r = aligner.reference_tensor(reference, plan, positions)
    y_r = x_r if high is reference else aligner.reference_tensor(high, plan, positions)
    if x_r is None or y_r is None:
        return None
    if x.shape != x_r.shape:
        x = _fit_partial(x, x_r, _qk_heads(aligner.target.manifest.get("model_config") or {}))
        if x is None:
            return None
    discounted = 0
    if routing is not None:
        routing.observe(x, x_r, y_r)
        keep = routing.keep(x.shape[0])
        if keep is not None and len(keep) < x.shape[0] and keep:
            discounted = x.shape[0] - len(keep)
            x, x_r, y_r = x[keep], x_r[keep], y_r[keep]
            positions = [positions[i] for i in keep]
    comparison = _comparison(record, plan, x, x_r, y_r, dtype, positions, sequence)
    return replace(comparison, discounted_tokens=discounted) if discounted else comparison


def _comparison(
    record: Any, plan: Plan, x: torch.Tensor, x_r: torch.Tensor, y_r: torch.Tensor, dtype: str,
    positions: list[int], sequence: int, kind: str = "output",
) -> Comparison:
    ratio, error, noise, tokens = measure(x, x_r, y_r, dtype)
    worst = int(tokens.argmax()) if tokens.numel() else 0
    token_ratio = float(tokens[worst]) if tokens.numel() else ratio
    return Comparison(
        sequence=sequence,
        target=record.name,
        module_class=record.module_class,
        source_file=record.source_file,
        source_line=record.source_line,
        pass_index=record.pass_index,
        step=record.step,
        call_index=record.call_index,
        plan=plan.describe(),
        inferred=plan.inferred,
        ratio=ratio,
        error=error,
        noise=noise,
        nonfinite=not math.isfinite(error),
        worst_position=positions[worst] if positions else 0,
        rows=x.shape[0],
        kind=kind,
        token_ratio=token_ratio,
    )


def _fit_partial(x: torch.Tensor, y: torch.Tensor, heads: int | None = None) -> torch.Tensor | None:
    """Partial rotary: the target's q|k hold every head dim, the reference only the rotated ones.

    `heads` (query + key heads, from the model's config) says how to cut the target's rows;
    without it, head counts that divide both widths are tried.
    """
    if x.shape[0] != y.shape[0] or x.shape[-1] <= y.shape[-1]:
        return None
    options = [heads] if heads else list(range(1, 257))
    for h in options:
        if h and x.shape[-1] % h == 0 and y.shape[-1] % h == 0:
            d, rot = x.shape[-1] // h, y.shape[-1] // h
            if rot < d:
                return x.reshape(x.shape[0], h, d)[..., :rot].reshape(x.shape[0], -1)
    return None


def _qk_heads(config: dict[str, Any]) -> int | None:
    text = config.get("text_config") or config
    q = text.get("num_attention_heads")
    kv = text.get("num_key_value_heads") or q
    return int(q) + int(kv) if q else None


def compare_traces(
    target: TraceReader, reference: TraceReader, reference32: TraceReader | None = None, *, step: int | None = None
) -> list[Comparison]:
    return list(iter_comparisons(target, reference, reference32, step=step))


def print_comparison(rows: list[Comparison], console: Any, *, title: str | None = None) -> None:
    from rich.table import Table

    table = Table(title=title or "target vs reference, component by component")
    for col in ("step", "pass", "component", "class", "rel. error", "ratio", "pairing"):
        table.add_column(col, overflow="fold")
    for c in rows:
        style = "red" if c.ratio > 2 else None
        table.add_row(
            str(c.step), str(c.pass_index), c.target, c.module_class, f"{c.error:.2e}",
            f"{c.ratio:.3g}", c.plan, style=style,
        )
    console.print(table)
