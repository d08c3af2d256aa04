"""Error metrics: plain `compute_<metric>` functions, and the one implementation of the ratio.

The robust error ratio of a component is `r = ||X_T - Y_R|| / ||X_R - Y_R||`: the target's
distance from the float32 reference, against the distance the serving dtype alone explains
(the reference in the serving dtype). The denominator is floored at the dtype's own rounding
noise (`NOISE_FLOOR * ||Y_R||`), so in float32, where X_R is Y_R, r is the relative error in
units of float32 noise. A correct component stays near 1; a NaN or inf on the target side where
the reference is finite is an infinite ratio.

Every figure comes from per-row (per-token) norms: `segment_figures` works them out for many
comparisons at once (segments of rows back to back, one NumPy operation per step), which is
what the analysis does for a whole trace; `compute_figures` is one segment of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Relative noise floors: ~32 float32 ulps; half a bfloat16 ulp.
NOISE_FLOOR = {"float32": 4e-6, "bfloat16": 2.0**-9, "float16": 2.0**-11}


def noise_floor(dtype: str) -> float:
    return NOISE_FLOOR.get(dtype, NOISE_FLOOR["float32"])


@dataclass(frozen=True)
class Figures:
    """One comparison's figures: its ratio, the target's relative error, the noise the dtype
    explains, the row whose own ratio is the largest and that ratio, and every row's ratio."""

    ratio: float
    error: float
    noise: float
    worst_row: int
    token_ratio: float
    token_ratios: tuple[float, ...]


def row_norms(t: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each row (token), accumulated in float32 without a float64 copy."""
    rows = t.shape[0] if t.dim() > 1 else 1
    # torch's stubs leave torch.linalg's functions untyped (Any)
    norms: torch.Tensor = torch.linalg.vector_norm(t.float().reshape(rows, -1), dim=-1)
    return norms


def segment_figures(
    y: np.ndarray,
    t: np.ndarray,
    n: np.ndarray,
    lengths: Sequence[int],
    floor: float,
    groups: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The figures of many comparisons at once.

    `y`, `t` and `n` hold, row by row and comparison after comparison (`lengths` rows each),
    the norms of the float32 reference, of the target's difference from it and of the
    serving-dtype reference's difference from it (-1 where there is none: the reference is its
    own float32 run; a norm is never negative). Returns per comparison the ratio, the error,
    the noise, the worst row (within its segment) and that row's ratio, and per row its ratio.

    A row's ratio divides its error by its noise, but never by less than the median row's
    noise of its comparison (a token whose reference happens to round exactly would otherwise
    look like an outlier) nor less than the dtype's floor.

    `groups` (one id per comparison: the same component in every pass and step) pools the
    noise: a comparison's noise, and each of its rows', is never taken below its component's
    relative noise over the whole run (`sqrt(sum n^2 / sum y^2)` over all its rows). A decode
    step is one row, and one row's serving-dtype noise is one draw: on trained weights, whose
    rounding error sits in a few very large channels, a row that happens to round well had half
    the noise its component shows over the prompt (Gemma 3 270M in bfloat16: 0.0020 against
    0.0051), and a correct component read as 4-5x its noise. The noise the dtype explains is the
    component's; the prompt's rows measure it far better than one row does.
    """
    sizes = np.asarray(lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    segment = np.repeat(np.arange(len(sizes)), sizes)
    with np.errstate(all="ignore"):
        y_total = np.sqrt(np.add.reduceat(y * y, starts))
        y_total[y_total == 0] = 1e-30
        t_total = np.sqrt(np.add.reduceat(t * t, starts))
        error = np.where(np.isfinite(t_total), t_total / y_total, np.inf)
        quiet = n < 0  # no noise beyond the floor
        noise_rows = np.where(quiet, 0.0, n)
        noise = np.where(
            quiet[starts], 0.0, np.sqrt(np.add.reduceat(noise_rows**2, starts)) / y_total
        )
        pooled = np.full(len(sizes), float(floor))
        if groups is not None:
            pooled = np.maximum(pooled, _pooled_noise(y, noise_rows, starts, groups))
            pooled = np.where(quiet[starts], floor, pooled)
        noise = np.where(np.isfinite(noise), np.maximum(noise, pooled), noise)
        ratio = np.where(noise > 0, error / noise, np.inf)
        scaled = pooled[segment] * y
        token_noise = np.where(quiet, scaled, np.where(scaled > n, scaled, n))
        # the lower median of each segment's token noise
        ranked = token_noise[np.lexsort((token_noise, segment))]
        median = ranked[starts + (sizes - 1) // 2][segment]
        denominator = np.where(median > token_noise, median, token_noise)
        denominator = np.where(1e-30 > denominator, 1e-30, denominator)
        tokens = t / denominator
        tokens[np.isnan(tokens)] = np.inf
    top = np.maximum.reduceat(tokens, starts)
    rows = np.arange(len(tokens))
    first = np.minimum.reduceat(np.where(tokens == top[segment], rows, len(tokens)), starts)
    return ratio, error, noise, first - starts, tokens[first], tokens


def _pooled_noise(
    y: np.ndarray, noise_rows: np.ndarray, starts: np.ndarray, groups: Sequence[int]
) -> np.ndarray:
    """Per segment, its group's relative noise over all the group's rows (0 where not finite)."""
    ids = np.asarray(groups, dtype=np.int64)
    n2 = np.add.reduceat(noise_rows * noise_rows, starts)
    y2 = np.add.reduceat(y * y, starts)
    group_n2 = np.bincount(ids, weights=np.where(np.isfinite(n2), n2, 0.0))
    group_y2 = np.bincount(ids, weights=np.where(np.isfinite(y2), y2, 0.0))
    pooled = np.sqrt(group_n2 / np.where(group_y2 > 0, group_y2, np.inf))
    return np.where(np.isfinite(pooled), pooled, 0.0)[ids]


def compute_figures(
    x_target: torch.Tensor, x_reference: torch.Tensor, y_reference: torch.Tensor, dtype: str
) -> Figures:
    """The figures of one aligned component (`x_reference is y_reference`: a float32 run)."""
    y = row_norms(y_reference).double().numpy()
    t = row_norms(x_target.float() - y_reference.float()).double().numpy()
    if x_reference is y_reference:
        n = np.full_like(y, -1.0)
    else:
        n = row_norms(x_reference.float() - y_reference.float()).double().numpy()
    ratio, error, noise, worst, top, tokens = segment_figures(y, t, n, [len(y)], noise_floor(dtype))
    return Figures(
        float(ratio[0]),
        float(error[0]),
        float(noise[0]),
        int(worst[0]),
        float(top[0]),
        tuple(tokens.tolist()),
    )


def compute_error_ratio(
    x_target: torch.Tensor, x_reference: torch.Tensor, y_reference: torch.Tensor, dtype: str
) -> float:
    """The robust error ratio of one aligned component."""
    return compute_figures(x_target, x_reference, y_reference, dtype).ratio


def compute_relative_error(x: torch.Tensor, y: torch.Tensor) -> float:
    """||x - y|| / ||y||: inf where x holds a NaN or an inf."""
    denominator = float(torch.linalg.vector_norm(row_norms(y).double()))
    difference = float(torch.linalg.vector_norm(row_norms(x.float() - y.float()).double()))
    if not math.isfinite(difference):
        return math.inf
    return difference / denominator if denominator > 0 else difference
