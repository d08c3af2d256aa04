"""Mistral on SGLang: the attention ignores `config.sliding_window`; transformers honours it.
An SGLang bug.

SGLang 0.5.23 serves `MistralForCausalLM` as `LlamaForCausalLM` (sglang/srt/models/mistral.py:
`class MistralForCausalLM(LlamaForCausalLM): pass`), whose `RadixAttention` is built without a
sliding window (sglang/srt/models/llama.py, `LlamaAttention.__init__`): every position attends
to every key before it. transformers builds Mistral's mask with the window when the config sets
one (transformers/models/mistral/modeling_mistral.py: `create_sliding_window_causal_mask`
unless `sliding_window` is None), as Mistral 7B v0.1 was trained (window 4096). So for a
checkpoint that sets `sliding_window` (Mistral 7B v0.1 and its fine-tunes), every position
past the window is computed with keys the model never saw together in training.

This builds a tiny Mistral (random weights, window 8) with transformers, runs a 32-token
prompt through SGLang (CPU, float32, torch-native paths) and through transformers with the
window and without it, and compares the log-probabilities of the prompt's tokens: SGLang
agrees with transformers without a window, and with the window only inside the first window.
Needs only torch, SGLang and transformers (SGLang's environment); about a minute (the engine's
start). Run: SGLANG_USE_CPU_ENGINE=1 python reproduce.py
"""

from __future__ import annotations

import os
import tempfile

import torch
from transformers import MistralConfig, MistralForCausalLM

WINDOW = 8
PROMPT = [1] + [(7 * i + 11) % 500 + 3 for i in range(31)]


def config(window: int | None) -> MistralConfig:
    return MistralConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=64, vocab_size=512, max_position_embeddings=256,
        sliding_window=window, initializer_range=0.2, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip


def reference_logprobs(folder: str, window: int | None) -> torch.Tensor:
    """transformers' log-probability of each prompt token after the first."""
    model = MistralForCausalLM.from_pretrained(
        folder, config=config(window), dtype=torch.float32, attn_implementation="eager"
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
        MistralForCausalLM(config(WINDOW)).float().save_pretrained(folder)
        target = target_logprobs(folder)
        print(f"prompt of {len(PROMPT)} tokens, sliding_window {WINDOW}; largest difference of "
              "the prompt tokens' log-probabilities, SGLang against transformers:")  # fmt: skip
        inside = slice(0, WINDOW - 1)  # positions 1..W-1: every key is inside the window
        gaps = {}
        for window in (WINDOW, None):
            diff = (target - reference_logprobs(folder, window)).abs()
            gaps[window] = diff.max().item()
            print(f"  transformers sliding_window {window!s:>4}: positions < {WINDOW}: "
                  f"{diff[inside].max().item():.3g}; all: {diff.max().item():.3g}")  # fmt: skip
    if gaps[WINDOW] > 100 * max(gaps[None], 1e-6):
        print(f"DIFFERS: SGLang attends to every earlier key; the config's sliding_window "
              f"({WINDOW}) is ignored (transformers honours it: {gaps[WINDOW]:.3g} against "
              f"{gaps[None]:.3g} without a window)")  # fmt: skip
    else:
        print("SAME: SGLang honours the sliding window")


if __name__ == "__main__":
    main()
