"""OLMoE on SGLang: k_norm is sized for every attention head, the norms' eps is hard-coded to
1e-5 and config.clip_qkv is ignored. An SGLang bug (loud for grouped-query configs, silent for
the two keys).

SGLang 0.5.23's `OlmoeAttention` (sglang/srt/models/olmoe.py) builds `q_norm` and `k_norm` as
`RMSNorm(hidden_size, eps=1e-5)`; transformers (transformers/models/olmoe/modeling_olmoe.py)
sizes `k_norm` for the KV heads (`head_dim * num_key_value_heads`) and reads
`config.rms_norm_eps` for every norm; SGLang's decoder layers and final norm also hard-code
`eps=1e-5`, and nothing in SGLang clamps q, k and v to `config.clip_qkv`, which transformers
does when it is set. Released OLMoE checkpoints (as many KV heads as heads, rms_norm_eps 1e-5,
clip_qkv null) are unaffected; a grouped-query config does not load, and a config that sets
either key differs silently. (vLLM 0.32.0 hard-codes the same eps and ignores clip_qkv too.)

This builds two tiny OLMoEs with transformers (random weights): one with 1 KV head for 2
heads, which SGLang does not load, and one with 2 KV heads, rms_norm_eps 1e-2 and clip_qkv 0.5,
whose 32-token prompt runs through SGLang (CPU, float32, torch-native paths); it compares the
prompt tokens' log-probabilities with transformers' as configured and with transformers told
what SGLang does. Needs only torch, SGLang and transformers (SGLang's environment); about two
minutes (two engine starts). Run: SGLANG_USE_CPU_ENGINE=1 python reproduce.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import Any

import torch
from transformers import OlmoeConfig, OlmoeForCausalLM

PROMPT = [1] + [(7 * i + 11) % 500 + 3 for i in range(31)]
SET = {"rms_norm_eps": 1e-2, "clip_qkv": 0.5}


def config(**override: Any) -> OlmoeConfig:
    values: dict[str, Any] = {
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 512,
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


def loads(folder: str) -> str:
    """Empty when SGLang loads the model in `folder`, else its error's last line. In a child
    process: SGLang ends its caller's process when its scheduler fails."""
    done = subprocess.run(
        [sys.executable, __file__, "--load", folder], capture_output=True, text=True, check=False
    )
    if done.returncode == 0:
        return ""
    lines = [ln for ln in done.stderr.splitlines() if "Error" in ln] or ["exit code"]
    return f"{lines[-1].strip()[:300]} (exit code {done.returncode})"


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        OlmoeForCausalLM(config(num_key_value_heads=1)).float().save_pretrained(folder)
        loud = loads(folder)
    print(f"1 KV head for 2 heads: SGLang {'fails to load: ' + loud if loud else 'loads'}")
    with tempfile.TemporaryDirectory() as folder:
        model = OlmoeForCausalLM(config()).float()
        with torch.no_grad():  # projections wide enough that clip_qkv clamps some values
            for name, p in model.named_parameters():
                if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
                    p.mul_(10)
        model.save_pretrained(folder)
        target = target_logprobs(folder)
        print(f"2 KV heads, config {SET}; largest difference of the prompt tokens' "
              "log-probabilities, SGLang against transformers:")  # fmt: skip
        gaps = {}
        for label, override in (
            ("as configured", {}),
            ("with clip_qkv None (SGLang's clip)", {"clip_qkv": None}),
            ("with rms_norm_eps 1e-5 (SGLang's eps)", {"rms_norm_eps": 1e-5}),
            ("with both (what SGLang runs)", {"rms_norm_eps": 1e-5, "clip_qkv": None}),
        ):
            gaps[label] = (target - reference_logprobs(folder, **override)).abs().max().item()
            print(f"  transformers {label}: {gaps[label]:.3g}")
    first, clip_fixed, eps_fixed, both = gaps.values()
    floor = 100 * max(both, 1e-6)
    ignored = [name for name, gap in (("rms_norm_eps", clip_fixed), ("clip_qkv", eps_fixed))
               if gap > floor]  # fmt: skip
    if first > floor or loud:
        what = [f"ignores {' and '.join(ignored)}"] if first > floor else []
        what += ["does not load a grouped-query OLMoE"] if loud else []
        print(f"DIFFERS: SGLang {' and '.join(what)}")
    else:
        print("agrees")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--load"]:
        target_logprobs(sys.argv[2])
    else:
        main()
