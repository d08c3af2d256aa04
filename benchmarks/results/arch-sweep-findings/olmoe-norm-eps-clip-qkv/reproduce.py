"""OLMoE in vLLM: the norms' eps is hard-coded to 1e-5 and config.clip_qkv is ignored.

vLLM's `OlmoeAttention`, `OlmoeDecoderLayer` and `OlmoeModel`
(vllm/model_executor/models/olmoe.py) build every RMSNorm (q_norm, k_norm, input_layernorm,
post_attention_layernorm, norm) with `eps=1e-5` whatever `config.rms_norm_eps` says, and never
clamp q, k and v to `config.clip_qkv`. transformers (transformers/models/olmoe/modeling_olmoe.py)
honours both. Released OLMoE checkpoints have rms_norm_eps 1e-5 and clip_qkv null, so they are
unaffected; a config that sets either differs silently.

This builds a tiny OLMoE (random weights) with transformers with rms_norm_eps 1e-2 and
clip_qkv 0.5, runs a 32-token prompt through vLLM (CPU, float32) and compares the prompt
tokens' log-probabilities with transformers' as configured, and with transformers told what
vLLM does: no clip_qkv, eps 1e-5, both.
Needs only torch, vLLM and transformers; about a minute (vLLM's engine start).
Run: python reproduce.py
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch
from transformers import OlmoeConfig, OlmoeForCausalLM

PROMPT = [1] + [(7 * i + 11) % 500 + 3 for i in range(31)]
SET = {"rms_norm_eps": 1e-2, "clip_qkv": 0.5}


def config(**override: Any) -> OlmoeConfig:
    values: dict[str, Any] = {
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 512,
        "max_position_embeddings": 256, "num_experts": 4, "num_experts_per_tok": 2,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, **SET, **override,
    }  # fmt: skip
    return OlmoeConfig(**values)


def reference_logprobs(folder: str, **override: Any) -> torch.Tensor:
    model = OlmoeForCausalLM.from_pretrained(
        folder, config=config(**override), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        logits = model(torch.tensor([PROMPT])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return logprobs[:-1].gather(1, torch.tensor(PROMPT[1:])[:, None])[:, 0]


def target_logprobs(folder: str) -> torch.Tensor:
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
        model = OlmoeForCausalLM(config()).float()
        with torch.no_grad():  # projections wide enough that clip_qkv clamps some values
            for name, p in model.named_parameters():
                if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
                    p.mul_(10)
        model.save_pretrained(folder)
        target = target_logprobs(folder)
        print(f"config {SET}; largest difference of the prompt tokens' log-probabilities, "
              "vLLM against transformers:")  # fmt: skip
        gaps = {}
        for label, override in (
            ("as configured", {}),
            ("with clip_qkv None (vLLM's clip)", {"clip_qkv": None}),
            ("with rms_norm_eps 1e-5 (vLLM's eps)", {"rms_norm_eps": 1e-5}),
            ("with both (what vLLM runs)", {"rms_norm_eps": 1e-5, "clip_qkv": None}),
        ):
            gaps[label] = (target - reference_logprobs(folder, **override)).abs().max().item()
            print(f"  transformers {label}: {gaps[label]:.3g}")
    first, clip_fixed, eps_fixed, both = gaps.values()
    floor = 100 * max(both, 1e-6)
    ignored = [name for name, gap in (("rms_norm_eps", clip_fixed), ("clip_qkv", eps_fixed))
               if gap > floor]  # fmt: skip
    if first > floor:
        print(f"DIFFERS: vLLM ignores {' and '.join(ignored) or 'the config'}")
    else:
        print("agrees")


if __name__ == "__main__":
    main()
