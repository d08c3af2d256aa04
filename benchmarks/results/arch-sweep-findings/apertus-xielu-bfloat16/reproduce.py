"""Apertus in vLLM: a float32 model's XIELU activation runs with bfloat16 parameters.

vLLM's `XIELU` (vllm/model_executor/layers/activation.py) makes alpha_p, alpha_n, beta and eps
in `dtype=torch.bfloat16` by default, and `ApertusMLP` (vllm/model_executor/models/apertus.py)
builds `XIELU()` without the model's dtype: the checkpoint's float32 parameters are rounded to
bfloat16 on load. transformers builds `XIELUActivation(dtype=config.dtype)`.

This runs the activation of both frameworks on the same float32 parameters (as a checkpoint
holds them) and the same input, then vLLM's with `dtype=torch.float32` as the control.
Needs only torch, vLLM and transformers; a few seconds. Run: python reproduce.py
"""

from __future__ import annotations

import torch
from transformers.activations import XIELUActivation
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.model_executor.layers.activation import XIELU


def main() -> None:
    torch.manual_seed(0)
    reference = XIELUActivation(dtype=torch.float32)
    with torch.no_grad():  # parameters as a trained float32 checkpoint holds them
        for p in reference.parameters():
            p.copy_(p + 0.01 * torch.randn_like(p))
    x = torch.randn(32, 512) * 3
    expected = reference(x)
    with set_current_vllm_config(VllmConfig()):
        rows = []
        for label, target in (
            ("vLLM XIELU() (as apertus.py builds it)", XIELU()),
            ("vLLM XIELU(dtype=torch.float32) (control)", XIELU(dtype=torch.float32)),
        ):
            with torch.no_grad():  # the weight loader's copy: into the parameter's own dtype
                for name, p in target.named_parameters():
                    p.copy_(dict(reference.named_parameters())[name])
            dtypes = sorted({str(p.dtype) for p in target.parameters()})
            error = (target(x) - expected).abs().max().item()
            relative = error / expected.abs().max().item()
            rows.append((label, dtypes, error, relative))
    print(
        f"transformers XIELUActivation(dtype=torch.float32): parameters {reference.alpha_p.dtype}"
    )
    for label, dtypes, error, relative in rows:
        print(f"{label}: parameters {dtypes}; largest error {error:.3g} ({relative:.2g} relative)")
    bug, control = rows[0][2], rows[1][2]
    print("DIFFERS: vLLM rounds the parameters to bfloat16" if bug > 100 * max(control, 1e-7)
          else "agrees")  # fmt: skip


if __name__ == "__main__":
    main()
