"""LFM2, LFM2-MoE and every MLA model (DeepSeek V2/V3, A.X K1, GLM-4.7-Flash) in vLLM's CPU build:
the rotary embedding scrambles a query that has more than one head when it is passed as
(tokens, heads, head_dim).

`Lfm2Attention.forward` (vllm/model_executor/models/lfm2.py, and lfm2_moe.py alike) applies its
q/k layernorms per head and then calls `self.rotary_emb(positions, q, k)` on the 3-D views
(tokens, heads, head_dim). On the CPU build `RotaryEmbedding.forward_cpu`
(vllm/model_executor/layers/rotary_embedding/base.py) hands them to the in-place C++ op
`_C.rotary_embedding`, which rotates correctly only the 2-D form (tokens, heads * head_dim) or a
single head: with 2 or more heads in 3-D every head comes out wrong (a relative error of order 1
at every position but 0). `forward_native` (the PyTorch path) is right in both forms, and
transformers' `apply_rotary_pos_emb` agrees with it. Models that flatten q and k to 2-D before
the rotary (Llama, Qwen3, ...) are unaffected; the one-head keys of the sweep's LFM2 config too.

This runs vLLM's rotary embedding on the same query and key (LFM2's sizes: head_dim 64, rope
theta 1e6, neox style) in the three forms, against transformers' LFM2 rotary: the controls in
one process, the 3-D call with two heads in another (it may also corrupt memory: a "double
free" was seen after it).
Needs only torch, vLLM and transformers; seconds. Run: python reproduce.py
"""

from __future__ import annotations

import subprocess
import sys

HEAD_DIM = 64
TOKENS = 32
THETA = 1e6
FORMS = {
    "native": "forward_native (PyTorch), q as (tokens, heads, 64)",
    "2-D": "CPU op, q as (tokens, heads*64) (as Llama calls it)",
    "3-D": "CPU op, q as (tokens, heads, 64) (as lfm2.py calls it)",
    "MLA": "CPU op, q_pe as the slice q[..., 64:] of (tokens, heads, 128), interleaved (as mla.py)",
}
# (form, query heads): the controls in one process, the bug in its own (it may corrupt memory)
RUNS = ((("native", 2), ("2-D", 2), ("3-D", 1)), (("3-D", 2), ("MLA", 2)))
# MLA (vllm/model_executor/layers/mla.py): q's rope part, the slice q[..., nope:] of
# (tokens, heads, nope + rope), interleaved (DeepSeek's GPT-J style), against forward_native


def run(cases: list[tuple[str, int]]) -> None:
    """Print, per case, the largest error of vLLM's rotary in that form against transformers'."""
    import torch
    from transformers import Lfm2Config
    from transformers.models.lfm2.modeling_lfm2 import Lfm2RotaryEmbedding, apply_rotary_pos_emb
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.rotary_embedding import get_rope

    rope_parameters = {"rope_type": "default", "rope_theta": THETA}
    with set_current_vllm_config(VllmConfig()):
        rope = get_rope(HEAD_DIM, max_position=256, rope_parameters=rope_parameters,
                        is_neox_style=True)  # fmt: skip
    for form, heads in cases:
        if form == "MLA":
            print(f"MLA {heads} {mla_error(heads):.6g}", flush=True)
            continue
        torch.manual_seed(0)
        q = torch.randn(TOKENS, heads, HEAD_DIM)
        k = torch.randn(TOKENS, 1, HEAD_DIM)
        positions = torch.arange(TOKENS)
        config = Lfm2Config(hidden_size=heads * HEAD_DIM, num_attention_heads=heads,
                            rope_parameters=rope_parameters)  # fmt: skip
        cos, sin = Lfm2RotaryEmbedding(config)(q, positions[None])
        q_ref, _ = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
        expected = q_ref[0].transpose(0, 1)  # (tokens, heads, head_dim)
        with set_current_vllm_config(VllmConfig()):
            if form == "native":
                out, _ = rope.forward_native(positions, q.clone(), k.clone())
            elif form == "3-D":
                out, _ = rope.forward_cpu(positions, q.clone(), k.clone())
            else:
                out, _ = rope.forward_cpu(positions, q.clone().reshape(TOKENS, -1),
                                          k.clone().reshape(TOKENS, -1))  # fmt: skip
        error = (out.view(TOKENS, heads, HEAD_DIM) - expected).abs().max().item()
        print(f"{form} {heads} {error:.6g}", flush=True)


def mla_error(heads: int) -> float:
    """vLLM's CPU rotary op on MLA's q_pe slice against its own forward_native."""
    import torch
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.rotary_embedding import get_rope

    torch.manual_seed(0)
    q_pe = torch.randn(TOKENS, heads, 2 * HEAD_DIM)[..., HEAD_DIM:]
    k_pe = torch.randn(TOKENS, 1, HEAD_DIM)
    positions = torch.arange(TOKENS)
    with set_current_vllm_config(VllmConfig()):
        rope = get_rope(HEAD_DIM, max_position=256, is_neox_style=False,
                        rope_parameters={"rope_type": "default", "rope_theta": 1e4})  # fmt: skip
        expected, _ = rope.forward_native(positions, q_pe.clone(), k_pe.clone())
        out, _ = rope.forward_cpu(positions, q_pe.clone(), k_pe.clone())
    return float((out - expected).abs().max().item())


def main() -> None:
    if len(sys.argv) > 1:
        run([(a.split(":")[0], int(a.split(":")[1])) for a in sys.argv[1:]])
        return
    errors: dict[tuple[str, int], float] = {}
    for cases in RUNS:
        args = [f"{form}:{heads}" for form, heads in cases]
        done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
        for line in done.stdout.splitlines():
            form, heads, error = line.split()
            errors[form, int(heads)] = float(error)
        for form, heads in cases:
            shown = (f"largest error {errors[form, heads]:.3g}" if (form, heads) in errors
                     else "failed: " + done.stderr.strip()[-200:])  # fmt: skip
            against = "its own forward_native" if form == "MLA" else "transformers"
            print(f"vLLM rotary, {FORMS[form]}, {heads} head(s), against {against}: {shown}")
    bad = errors.get(("3-D", 2))
    print("DIFFERS: vLLM's CPU rotary op scrambles a 3-D query of several heads"
          if bad is None or bad > 1e-3 else "agrees")  # fmt: skip


if __name__ == "__main__":
    main()
