"""Cohere2 (and Cohere2Moe): vLLM's sliding layers attend to sliding_window + 1 keys,
transformers' to sliding_window. A convention difference, not a vLLM bug.

vLLM (vllm/model_executor/models/commandr.py, cohere2_moe.py) passes `sliding_window + 1` to
its attention, whose window counts the query's own key: a query at `pos` sees keys
`[pos - W, pos]`, W + 1 of them. That is the training convention of Cohere's stack (Fax, an
inclusive look-back), as vLLM's own test of Cohere's window semantics states
(tests/cohere/cpu/test_cohere_swa_window.py in vLLM's repository). transformers' sliding mask
(transformers/masking_utils.py, `kv_idx > q_idx - sliding_window`) keeps W keys; its
flash-attention path kept W + 1 until transformers#40163.

This builds a tiny Cohere2 (random weights, window 8, a sliding and a full layer) with
transformers, runs a 32-token prompt through vLLM (CPU, float32) and through transformers
with its window W and with W + 1, and compares the log-probabilities of the prompt's tokens:
vLLM agrees with transformers at W + 1, and with W only inside the first window.
Needs only torch, vLLM and transformers; about a minute (vLLM's engine start).
Run: python reproduce.py
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
    """transformers' log-probability of each prompt token after the first, window `window`."""
    model = Cohere2ForCausalLM.from_pretrained(
        folder, config=config(window), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        logits = model(torch.tensor([PROMPT])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return logprobs[:-1].gather(1, torch.tensor(PROMPT[1:])[:, None])[:, 0]


def target_logprobs(folder: str) -> torch.Tensor:
    """vLLM's log-probability of each prompt token after the first."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams

    llm = LLM(model=folder, dtype="float32", skip_tokenizer_init=True, enforce_eager=True,
              max_model_len=64, seed=0, gpu_memory_utilization=0.1)  # fmt: skip
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
    [out] = llm.generate([{"prompt_token_ids": PROMPT}], params)
    found = out.prompt_logprobs or []
    return torch.tensor([found[i][PROMPT[i]].logprob for i in range(1, len(PROMPT))])


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        Cohere2ForCausalLM(config(WINDOW)).float().save_pretrained(folder)
        target = target_logprobs(folder)
        print(f"prompt of {len(PROMPT)} tokens, sliding_window {WINDOW}; largest difference of "
              "the prompt tokens' log-probabilities, vLLM against transformers:")  # fmt: skip
        inside = slice(0, WINDOW - 1)  # positions 1..W-1: every key is inside any window
        gaps = {}
        for window in (WINDOW, WINDOW + 1):
            diff = (target - reference_logprobs(folder, window)).abs()
            gaps[window] = diff.max().item()
            print(f"  transformers window {window:2d}: positions < {WINDOW}: "
                  f"{diff[inside].max().item():.3g}; all: {diff.max().item():.3g}")  # fmt: skip
    if gaps[WINDOW] > 100 * max(gaps[WINDOW + 1], 1e-6):
        print(f"DIFFERS: vLLM attends to sliding_window + 1 = {WINDOW + 1} keys, transformers "
              f"to {WINDOW}")  # fmt: skip
    else:
        print("agrees")


if __name__ == "__main__":
    main()
