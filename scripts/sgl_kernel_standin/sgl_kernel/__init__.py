"""A stand-in for SGLang's `sgl_kernel` on a CPU where no build of it exists.

SGLang's CPU mode imports a few names from `sgl_kernel` at module level. This package gives
them: `assign_req_to_token_pool_cpu` in plain torch, and, for every other name, a function that
raises (so a path that would need a real kernel fails loudly instead of computing something
else). It registers no `torch.ops.sgl_kernel` operator, so SGLang concludes that its AMX kernels
are absent and takes its torch-native paths (RMSNorm, rotary, activations, attention).
Never install it where a real `sgl_kernel` imports.
"""

from __future__ import annotations

from typing import Any

import torch

__version__ = "0.4.10"
STANDIN = True


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """Write each request's new cache locations into its row of the request-to-token map."""
    del pool_len
    taken = 0
    for row, start, end in zip(
        req_pool_indices.tolist(), start_offset.tolist(), end_offset.tolist(), strict=True
    ):
        length = end - start
        req_to_token[row, start:end] = out_cache_loc[taken : taken + length]
        taken += length


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)

    def missing(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"sgl_kernel.{name}: not in Ekka's CPU stand-in for sgl_kernel (no CPU build of "
            "sgl_kernel exists); this SGLang path needs the real kernel"
        )

    missing.__name__ = name
    return missing
