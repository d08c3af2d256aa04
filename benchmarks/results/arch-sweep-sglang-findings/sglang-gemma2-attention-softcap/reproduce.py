"""Gemma 2 on SGLang's torch-native attention: the attention scores are not soft-capped;
transformers caps them with `config.attn_logit_softcapping`. An SGLang bug (of that backend).

SGLang 0.5.23's Gemma 2 passes the cap to its attention (sglang/srt/models/gemma2.py,
`RadixAttention(..., logit_cap=config.attn_logit_softcapping)`), but the torch-native backend
(sglang/srt/layers/attention/torch_native_backend.py, `forward_extend` / `forward_decode`, the
attention on a CPU without sgl_kernel) never reads `layer.logit_cap`: its scaled dot product
attention runs on the raw scores. transformers computes `tanh(scores / cap) * cap` before the
softmax (transformers/models/gemma2/modeling_gemma2.py, `eager_attention_forward` with
`softcap`), as Gemma 2 was trained (cap 50.0 in every released config).

This builds a tiny Gemma 2 (random weights) with transformers, runs a 32-token prompt through
SGLang (CPU, float32, torch-native paths) and through transformers with the cap and without it,
and compares the log-probabilities of the prompt's tokens: SGLang agrees with transformers
without the cap. Needs only torch, SGLang and transformers (SGLang's environment); about a
minute (the engine's start). Run: SGLANG_USE_CPU_ENGINE=1 python reproduce.py
"""

from __future__ import annotations

import os
import tempfile

import torch
from transformers import Gemma2Config, Gemma2ForCausalLM

CAP = 50.0
PROMPT = [1] + [(7 * i + 11) % 500 + 3 for i in range(31)]


def config(cap: float | None) -> Gemma2Config:
    made = Gemma2Config(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=64, vocab_size=512, max_position_embeddings=256,
        attn_logit_softcapping=cap, final_logit_softcapping=None, query_pre_attn_scalar=64,
        initializer_range=0.5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    # released config.json files carry hidden_act beside hidden_activation; SGLang reads it
    made.hidden_act = made.hidden_activation
    return made


def reference_logprobs(folder: str, cap: float | None) -> torch.Tensor:
    """transformers' log-probability of each prompt token after the first."""
    model = Gemma2ForCausalLM.from_pretrained(
        folder, config=config(cap), dtype=torch.float32, attn_implementation="eager"
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
        Gemma2ForCausalLM(config(CAP)).float().save_pretrained(folder)
        target = target_logprobs(folder)
        print(f"prompt of {len(PROMPT)} tokens, attn_logit_softcapping {CAP}; largest difference "
              "of the prompt tokens' log-probabilities, SGLang against transformers:")  # fmt: skip
        gaps = {}
        for cap in (CAP, None):
            gaps[cap] = (target - reference_logprobs(folder, cap)).abs().max().item()
            print(f"  transformers attn_logit_softcapping {cap!s:>4}: {gaps[cap]:.3g}")
    if gaps[CAP] > 100 * max(gaps[None], 1e-6):
        print(f"DIFFERS: SGLang's torch-native attention does not soft-cap the scores (transformers "
              f"caps them at {CAP}: {gaps[CAP]:.3g} against {gaps[None]:.3g} without the cap)")  # fmt: skip
    else:
        print("SAME: SGLang soft-caps the attention scores")


if __name__ == "__main__":
    main()
