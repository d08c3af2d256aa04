"""Gemma on SGLang: the MLP's activation is the exact GELU; Gemma's is the tanh approximation.
An SGLang bug.

SGLang 0.5.23's Gemma MLP builds `GeluAndMul("none")` whatever the config says
(sglang/srt/models/gemma.py, `GemmaMLP.__init__`): the exact, erf-based GELU. transformers
builds `ACT2FN[config.hidden_act]`, `gelu_pytorch_tanh` by default, and rewrites the legacy
`hidden_act="gelu"` of the official releases' config.json to `gelu_pytorch_tanh` because "it
is meant to target the tanh approximation" (transformers/models/gemma/configuration_gemma.py).
Gemma was trained with the tanh approximation. The two differ by up to about 5e-4 per
activation: below bfloat16's noise, visible in float32.

This builds a tiny Gemma (random weights) with transformers, runs a 32-token prompt through
SGLang (CPU, float32, torch-native paths) and through transformers with its activation
(`gelu_pytorch_tanh`) and with the exact GELU (`gelu`), and compares the log-probabilities of
the prompt's tokens: SGLang agrees with transformers only with the exact GELU.
Needs only torch, SGLang and transformers (SGLang's environment); about a minute (the engine's
start). Run: SGLANG_USE_CPU_ENGINE=1 python reproduce.py
"""

from __future__ import annotations

import os
import tempfile

import torch
from transformers import GemmaConfig, GemmaForCausalLM

ACT = "gelu_pytorch_tanh"  # transformers' Gemma default (and what "gelu" is rewritten to)
PROMPT = [1] + [(7 * i + 11) % 500 + 3 for i in range(31)]


def config(act: str) -> GemmaConfig:
    made = GemmaConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=64, vocab_size=512, max_position_embeddings=256,
        hidden_act=ACT, initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    made.hidden_act = act  # set after __init__: "gelu" there is rewritten to the tanh one
    return made


def reference_logprobs(folder: str, act: str) -> torch.Tensor:
    """transformers' log-probability of each prompt token after the first."""
    model = GemmaForCausalLM.from_pretrained(
        folder, config=config(act), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        logits = model(torch.tensor([PROMPT])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return logprobs[:-1].gather(1, torch.tensor(PROMPT[1:])[:, None])[:, 0]


def target_logprobs(folder: str) -> torch.Tensor:
    """SGLang's log-probability of each prompt token after the first (CPU, torch-native)."""
    os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
    import sglang

    engine = sglang.Engine(
        model_path=folder, device="cpu", attention_backend="torch_native", dtype="float32",
        disable_cuda_graph=True, disable_overlap_schedule=True, disable_radix_cache=True,
        mem_fraction_static=0.5, max_total_tokens=2048, skip_tokenizer_init=True,
        random_seed=0, log_level="error",
    )  # fmt: skip
    try:
        out = engine.generate(
            input_ids=PROMPT,
            sampling_params={"temperature": 0, "max_new_tokens": 1},
            return_logprob=True,
            logprob_start_len=0,
        )
    finally:
        engine.shutdown()
    found = out["meta_info"]["input_token_logprobs"]  # (logprob, token id, text); the first None
    return torch.tensor([lp for lp, _, _ in found[1:]], dtype=torch.float32)


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        GemmaForCausalLM(config(ACT)).float().save_pretrained(folder)
        target = target_logprobs(folder)
        print(f"prompt of {len(PROMPT)} tokens, float32; largest difference of the prompt "
              "tokens' log-probabilities, SGLang against transformers:")  # fmt: skip
        gaps = {}
        for act in (ACT, "gelu"):
            gaps[act] = (target - reference_logprobs(folder, act)).abs().max().item()
            print(f"  transformers hidden_act {act:17s}: {gaps[act]:.3g}")
    if gaps[ACT] > 100 * max(gaps["gelu"], 1e-6):
        print(f"DIFFERS: SGLang's Gemma MLP computes the exact GELU, not Gemma's tanh "
              f"approximation ({gaps[ACT]:.3g} against transformers' {ACT}, {gaps['gelu']:.3g} "
              "against the exact GELU)")  # fmt: skip
    else:
        print("SAME: SGLang's Gemma activation is transformers'")


if __name__ == "__main__":
    main()
