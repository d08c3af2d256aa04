"""Small named transforms that make a target tensor and a reference tensor comparable.

Each takes the recorded tensors and returns a 2-D float tensor `[rows, features]`, one row per
token. A reader can check them one by one; the plan printed in a report names them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

Tensor = torch.Tensor


def to_rows(t: Tensor, rows: int | None = None) -> Tensor:
    """Drop a leading batch dimension of 1 and flatten to `[tokens, -1]`.

    A 4-D `[1, heads, tokens, d]` tensor (attention layout) is transposed to put tokens first
    when `rows` says which axis holds the tokens. With one row (a decode step), a leading 1 is
    that token, not a batch: `[1, heads, d]` (a per-head norm's output) is one row, not `heads`.
    """
    if t.dim() >= 3 and t.shape[0] == 1 and rows != 1:
        t = t[0]
    if t.dim() == 3 and rows is not None and t.shape[0] != rows and t.shape[1] == rows:
        t = t.transpose(0, 1)
    if t.dim() == 1:
        return t.reshape(1, -1)
    return t.reshape(t.shape[0], -1)


# --- target-side ops: list of flattened outputs -> [rows, features] -----------------------


def first(outputs: Sequence[Tensor | None], rows: int | None) -> Tensor:
    """The first output (a linear layer's `(out, bias)`, a fused norm's `(normed, residual)`)."""
    assert outputs[0] is not None
    return to_rows(outputs[0], rows)


def sum_pair(outputs: Sequence[Tensor | None], rows: int | None) -> Tensor:
    """vLLM's decoder layer returns `(hidden, residual)`: the layer's output is their sum."""
    if len(outputs) < 2 or outputs[1] is None:
        return first(outputs, rows)
    assert outputs[0] is not None
    return to_rows(outputs[0] + outputs[1], rows)


def cat_outputs(outputs: Sequence[Tensor | None], rows: int | None) -> Tensor:
    """All outputs side by side on the feature axis (rotary's `(q, k)`)."""
    return torch.cat([to_rows(t, rows) for t in outputs if t is not None], dim=-1)


def scale_sqrt_hidden(outputs: Sequence[Tensor | None], rows: int | None) -> Tensor:
    """Gemma: transformers scales inside the embedding by sqrt(hidden), vLLM after it."""
    t = first(outputs, rows)
    normalizer = torch.tensor(math.sqrt(t.shape[-1]), dtype=t.dtype)
    return t * normalizer


def routing_matrix(weights: Tensor, experts: Tensor, logits: Tensor) -> Tensor:
    """A top-k router's choice as `[tokens, num_experts]`: each token's weight at each expert it
    chose, 0 elsewhere (blind to the order the k choices come in)."""
    weights, experts, logits = to_rows(weights), to_rows(experts), to_rows(logits)
    dense = torch.zeros(logits.shape, dtype=torch.float32)
    return dense.scatter_(-1, experts.long(), weights.float())


def target_routing(outputs: Sequence[Tensor | None], rows: int | None) -> Tensor:
    """SGLang's `TopK` returns `(weights, expert ids, router logits)`: its routing matrix."""
    weights, experts, logits = outputs[:3]
    assert weights is not None and experts is not None and logits is not None
    return routing_matrix(weights, experts, logits)


TARGET_OPS: dict[str, Callable[[Sequence[Tensor | None], int | None], Tensor]] = {
    "first": first,
    "sum_pair": sum_pair,
    "cat_outputs": cat_outputs,
    "scale_sqrt_hidden": scale_sqrt_hidden,
    "dense_routing": target_routing,
}


# --- reference-side ops: list of tensors (one per reference component) -> [rows, features] --


def concat(tensors: Sequence[Tensor], rows: int | None) -> Tensor:
    """Separate projections side by side: `q_proj, k_proj, v_proj` against a fused `qkv_proj`."""
    return torch.cat([to_rows(t, rows) for t in tensors], dim=-1)


def heads_concat(tensors: Sequence[Tensor], rows: int | None) -> Tensor:
    """`[1, heads, tokens, d]` tensors (post-rotary q and k) -> `[tokens, heads*d]`, side by side."""
    parts = []
    for t in tensors:
        if t.dim() == 4:
            t = t[0].transpose(0, 1)
        parts.append(t.reshape(t.shape[0], -1))
    return torch.cat(parts, dim=-1)


def gated_sum(tensors: Sequence[Tensor], rows: int | None) -> Tensor:
    """Qwen2-MoE: `experts + sigmoid(shared_expert_gate) * shared_expert` (or without experts)."""
    if len(tensors) == 2:
        shared, gate = tensors
        return to_rows(torch.sigmoid(gate) * shared, rows)
    experts, shared, gate = tensors
    return to_rows(experts, rows) + to_rows(torch.sigmoid(gate) * shared, rows)


def plain_sum(tensors: Sequence[Tensor], rows: int | None) -> Tensor:
    """Routed plus shared experts (`experts + shared_experts`), as rows."""
    out = to_rows(tensors[0], rows)
    for t in tensors[1:]:
        out = out + to_rows(t, rows)
    return out


def reference_routing(tensors: Sequence[Tensor], rows: int | None) -> Tensor:
    """transformers' top-k routers (GraniteMoe's) return `(expert ids, weights, router
    logits)`: their routing matrix."""
    experts, weights, logits = tensors[:3]
    return routing_matrix(weights, experts, logits)


def router_logits(tensors: Sequence[Tensor], rows: int | None) -> Tensor:
    """transformers' top-k routers (GraniteMoe's) return `(expert ids, weights, router logits)`:
    the logits, a gate's output."""
    return to_rows(tensors[2], rows)


REFERENCE_OPS: dict[str, Callable[[Sequence[Tensor], int | None], Tensor]] = {
    "concat": concat,
    "heads_concat": heads_concat,
    "gated_sum": gated_sum,
    "sum": plain_sum,
    "dense_routing": reference_routing,
    "router_logits": router_logits,
}
