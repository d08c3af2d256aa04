"""Cohere2 (and Cohere2Moe) on SGLang: the sliding layers attend to sliding_window + 1 keys,
transformers' to sliding_window. A convention difference, not an SGLang bug (vLLM does the
same).

SGLang's `RadixAttention(sliding_window_size=S)` keeps the keys `[pos - S, pos]`, S + 1 of them
(the torch-native backend's mask: `k_pos >= q_pos - sliding_window_size`,
sglang/srt/layers/attention/torch_native_backend.py). Gemma 2/3 pass `sliding_window - 1` to
get transformers' W keys (sglang/srt/models/gemma3_causal.py, `get_attention_sliding_window_size`);
Cohere2 passes `config.sliding_window` itself (sglang/srt/models/commandr.py), so its sliding
layers see W + 1 keys: the training convention of Cohere's stack (an inclusive look-back,
`[pos - W, pos]`, as vLLM's own test of Cohere's window semantics states:
tests/cohere/cpu/test_cohere_swa_window.py in vLLM's repository). transformers' sliding mask
(transformers/masking_utils.py, `kv_idx > q_idx - sliding_window`) keeps W keys; its
flash-attention path kept W + 1 until transformers#40163. transformers differs from the
training convention here, not SGLang.

This builds a tiny Cohere2 (random weights, window 8, a sliding and a full layer) with
transformers, runs a 32-token prompt through SGLang (CPU, float32, torch-native paths) and
through transformers with its window W and with W + 1, and compares the log-probabilities of
the prompt's tokens: SGLang agrees with transformers at W + 1, and with W only inside the
first window. Needs only torch, SGLang and transformers (SGLang's environment); about a minute
(the engine's start). Run: SGLANG_USE_CPU_ENGINE=1 python reproduce.py
"""

from __future__ import annotations

import os
import tempfile

import torch
from transformers import Cohere2Config, Cohere2ForCausalLM

WINDOW = 8
PROMPT = [1] + [(7 * i + 11) % 500 + 3 for i in range(31)]


def config(window: int) -> Cohere2Config:
    return Cohere2Config(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=64, vocab_size=512, max_position_embeddings=256,
        sliding_window=window, layer_types=["sliding_attention", "full_attention"],
        initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip


def reference_logprobs(folder: str, window: int) -> torch.Tensor:
    """transformers' log-probability of each prompt token after the first."""
    model = Cohere2ForCausalLM.from_pretrained(
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
        Cohere2ForCausalLM(config(WINDOW)).float().save_pretrained(folder)
        target = target_logprobs(folder)
        print(f"prompt of {len(PROMPT)} tokens, sliding_window {WINDOW}; largest difference of "
              "the prompt tokens' log-probabilities, SGLang against transformers:")  # fmt: skip
        inside = slice(0, WINDOW - 1)  # positions 1..W-1: every key is inside any window
        gaps = {}
        for window in (WINDOW, WINDOW + 1):
            diff = (target - reference_logprobs(folder, window)).abs()
            gaps[window] = diff.max().item()
            print(f"  transformers window {window:2d}: positions < {WINDOW}: "
                  f"{diff[inside].max().item():.3g}; all: {diff.max().item():.3g}")  # fmt: skip
    if gaps[WINDOW] > 100 * max(gaps[WINDOW + 1], 1e-6):
        print(f"DIFFERS: SGLang attends to sliding_window + 1 = {WINDOW + 1} keys, transformers "
              f"to {WINDOW} ({gaps[WINDOW]:.3g} against {gaps[WINDOW + 1]:.3g} at W + 1): "
              "Cohere's training convention against transformers' mask")  # fmt: skip
    else:
        print("SAME: SGLang and transformers use the same window")


if __name__ == "__main__":
    main()
