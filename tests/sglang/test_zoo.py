"""Pristine SGLang against transformers on every zoo architecture its CPU path loads, in float32
and bfloat16: no false alarm, and the divergences examined once found where they are.

Measured on SGLang 0.5.23 (CPU, torch-native paths, the sgl_kernel stand-in) against
transformers 5.19.0, the zoo's models and the tests' 32-token prompt.
"""

from __future__ import annotations

import pytest

from ekka.tracer.coverage import NO_COUNTERPART
from ekka.zoo import list_architectures

pytestmark = [pytest.mark.sglang, pytest.mark.slow]

# The zoo architectures whose SGLang engine does not run on its CPU path, and why.
NOT_RUNNING = {
    "Qwen2MoeForCausalLM": "its shared expert's gate runs a Triton kernel "
    "(_fused_gate_sigmoid_mul_add_kernel), and Triton has no CPU driver (at the first forward)",
}
# Divergences examined once: SGLang computes something else than transformers (findings, not
# false alarms), with the component where they start and the dtypes they show in.
FINDINGS = {
    "Gemma2ForCausalLM": (
        "model.layers.0.self_attn.attn",
        ("float32",),
        "SGLang's torch-native attention backend never applies RadixAttention's logit_cap: "
        "Gemma 2's attn_logit_softcapping (0.05 here) is dropped (without it the model matches; "
        "in bfloat16 it stays under the divergence rule: ratio 4.7 at that attention alone)",
    ),
    "MistralForCausalLM": (
        "model.layers.0.self_attn.attn",
        ("float32", "bfloat16"),
        "SGLang serves Mistral with LlamaForCausalLM's attention, built without a sliding "
        "window: config.sliding_window (8 here) is ignored, every position attends to all before",
    ),
    "GemmaForCausalLM": (
        "model.layers.0.mlp.act_fn",
        ("float32",),
        "SGLang's gemma.py builds GeluAndMul('none') (exact GELU) where transformers' Gemma "
        "uses hidden_activation gelu_pytorch_tanh (in bfloat16 the two differ below its noise)",
    ),
    "Cohere2ForCausalLM": (
        "model.layers.0.self_attn.attn",
        ("float32", "bfloat16"),
        "the torch_native attention's sliding mask keeps k_pos >= q_pos - sliding_window: a "
        "window of sliding_window + 1 tokens, transformers' sliding_window (vLLM's finding too)",
    ),
}
# Pairings that do not fit yet, left out of the largest ratio. Phi's fc1 (examined): SGLang's
# PhiMLP sizes fc1 and fc2 as `n_inner` or 4 x hidden_size and ignores intermediate_size (512
# wide against transformers' 256 in the zoo model); on a CPU SGLang's padded weight loader puts
# the checkpoint's 256 rows first and leaves the rest zero, so its first 256 columns equal
# transformers' exactly and the rest are 0 (the activation's too, and fc2's output matches),
# but the comparison cuts the wider output as a partial rotary's q|k: a finding (issue 31),
# harmless where intermediate_size is 4 x hidden_size (Phi-2), a load error on a GPU. Gemma
# 3's model-level rotary embedding (SGLang's `rotary_emb` and `rotary_emb_local`, transformers'
# one module called per layer type) differed in one decode step of one float32 run out of
# three (ratio 2e5) while every layer after it matched.
MISFITS = {"PhiForCausalLM": (".mlp.fc1",), "Gemma3ForCausalLM": ("model.rotary_emb",)}
ARCHS = [a.name for a in list_architectures() if a.name not in NOT_RUNNING]


def test_every_zoo_architecture_is_tried():
    names = {a.name for a in list_architectures()}
    assert set(NOT_RUNNING) <= names and set(FINDINGS) <= names
    assert len(ARCHS) + len(NOT_RUNNING) == len(names) == 20


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("arch", ARCHS)
def test_pristine_sglang_has_no_false_alarm(arch, dtype, sglang_diagnosed):
    diagnosis = sglang_diagnosed(arch, dtype).diagnosis
    assert len(diagnosis.comparisons) > 20
    metadata = [c for c in diagnosis.comparisons if c.kind == "metadata"]
    assert len(metadata) == 3 * 3, "input ids, positions, attention metadata in each pass"
    assert all(c.ratio == 0 for c in metadata), [c.detail for c in metadata if c.ratio]
    # every module with a counterpart compared in every pass (Qwen 3's per-head q_norm and
    # k_norm too: their `[tokens * heads, head_dim]` rows recorded as one row per token)
    gaps = [c for c in diagnosis.coverage if not c.complete and NO_COUNTERPART not in c.reason]
    assert diagnosis.coverage and not gaps, gaps
    component, dtypes, note = FINDINGS.get(arch, ("", (), ""))
    if dtype in dtypes:
        assert diagnosis.diverged, note
        assert diagnosis.localization.suspects[0].component == component, note
        return
    assert not diagnosis.diverged, [(s.component, s.ratio) for s in diagnosis.localization.suspects]
    assert diagnosis.output is not None and not diagnosis.output.diverged
    fitting = [c for c in diagnosis.comparisons if not c.target.endswith(MISFITS.get(arch, ()))]
    worst = max(fitting, key=lambda c: c.ratio)
    if component and worst.ratio >= 4:
        # the finding in a dtype where it stays under the divergence rule (Gemma 2's softcap
        # in bfloat16: ratio 4.7 at layer 0's attention and o_proj's input, then back under 4)
        assert worst.target.startswith(component.rsplit(".", 1)[0]) and worst.ratio < 10, note
        return
    assert worst.ratio < 4, f"a mapping that does not fit: {worst.target} ratio {worst.ratio:.3g}"
