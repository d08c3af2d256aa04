"""Gemma3n in vLLM: the per-layer projection is never scaled by hidden_size**-0.5.

transformers' `Gemma3nTextModel.project_per_layer_inputs`
(transformers/models/gemma3n/modeling_gemma3n.py) multiplies the per-layer projection by
`per_layer_projection_scale = hidden_size**-0.5` before `per_layer_projection_norm`. vLLM's
`Gemma3nSelfDecoder.get_per_layer_inputs` (vllm/model_executor/models/gemma3n.py) never applies
it; its buffer `per_layer_projection_scale` is registered as `hidden_size**0.5` (the wrong
exponent) and never used. RMSNorm cancels a scale except through eps, so vLLM's norm runs with
an effective eps of eps * hidden_size: its output differs, more where the projection is small.

This builds a tiny Gemma3n text model with transformers (random weights), then runs the
per-layer projection of both frameworks on the same weights and input: vLLM's method on the
transformers model's own projection, its norm as vLLM's RMSNorm with the same weight.
Needs only torch, vLLM and transformers; a few seconds. Run: python reproduce.py
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers import Gemma3nTextConfig
from transformers.models.gemma3n.modeling_gemma3n import Gemma3nTextModel
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.models.gemma3n import Gemma3nSelfDecoder


def main() -> None:
    torch.manual_seed(0)
    config = Gemma3nTextConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=64, vocab_size=512, vocab_size_per_layer_input=512,
        hidden_size_per_layer_input=64, num_kv_shared_layers=0,
        activation_sparsity_pattern=[0.0, 0.0], layer_types=["sliding_attention", "full_attention"],
    )  # fmt: skip
    model = Gemma3nTextModel(config).float().eval()
    # a small-norm hidden state, as the embeddings of a real checkpoint are at this point
    hidden = 0.02 * torch.randn(1, 16, config.hidden_size)
    ids = torch.randint(0, config.vocab_size, (1, 16))
    with torch.no_grad():
        per_layer = model.get_per_layer_inputs(ids)
        reference = model.project_per_layer_inputs(hidden, per_layer)
        with set_current_vllm_config(VllmConfig()):
            norm = RMSNorm(config.hidden_size_per_layer_input, eps=config.rms_norm_eps)
            norm.weight.copy_(model.per_layer_projection_norm.weight)
            vllm_self = SimpleNamespace(
                config=config,
                per_layer_model_projection=model.per_layer_model_projection,
                per_layer_projection_norm=norm,
                per_layer_input_scale=torch.rsqrt(torch.tensor(2.0)),
            )
            target = Gemma3nSelfDecoder.get_per_layer_inputs(vllm_self, hidden[0], per_layer[0])
            # the control: vLLM's code on a projection scaled as transformers scales it
            scaled = SimpleNamespace(**vars(vllm_self))
            scaled.per_layer_model_projection = lambda x: (
                model.per_layer_model_projection(x) * (config.hidden_size**-0.5)
            )
            control = Gemma3nSelfDecoder.get_per_layer_inputs(scaled, hidden[0], per_layer[0])
    expected = reference[0]
    error = (target - expected).abs().max().item()
    fixed = (control - expected).abs().max().item()
    print(
        f"transformers scales the projection by hidden_size**-0.5 = {config.hidden_size**-0.5:.4g}"
    )
    print(f"vLLM per-layer inputs vs transformers: largest error {error:.3g} "
          f"({error / expected.abs().max().item():.2g} relative)")  # fmt: skip
    print(f"vLLM with the scale applied (control): largest error {fixed:.3g}")
    print("DIFFERS: vLLM skips per_layer_projection_scale" if error > 100 * max(fixed, 1e-7)
          else "agrees")  # fmt: skip


if __name__ == "__main__":
    main()
