"""Rotary embeddings compared in every pass: each chunk of a chunked prefill and each decode
step, against the reference's post-rotary q and k at that pass's positions, for every rotary
kind the zoo's architectures use (default: most; partial rotary: StableLM, Phi, GLM 4,
Nemotron; GPT-J-style interleaved halves: GLM 4; Llama 3: Apertus; YaRN: GPT-OSS (untruncated)
and Ministral 3; proportional with a partial rotary: Gemma 4's global layers, whose
transformers code rotates q and k one a call) and for those a zoo model can be configured with
(linear, dynamic, LongRoPE).

Dynamic NTK scaling is the unscaled rotary on both sides up to `max_position_embeddings`
(transformers rescales only past it, by the length of each forward pass; vLLM 0.32 keeps one
cos/sin cache of `max_position_embeddings` rows yet admits `max_position_embeddings * factor`
tokens, so past it the two are not the same function): the test stays below it.

No zoo architecture uses M-RoPE: no config in the zoo has `mrope_section`, and the one
text-only architecture whose vLLM model has an M-RoPE path (Qwen 3.5) does not load on this
vLLM build (its module imports torchvision through Qwen3-VL's image processor)."""

from __future__ import annotations

from typing import Any

import pytest

from ekka.tracer.align import infer_missing, plan_components
from ekka.tracer.capture import capture
from ekka.tracer.compare import iter_comparisons
from ekka.tracer.coverage import coverage_map
from ekka.tracer.localize import threshold_for
from ekka.tracer.protocol import CaptureSpec
from ekka.zoo import build_model

pytestmark = pytest.mark.vllm

# 37 tokens: with 16 tokens a step, the prefill runs in chunks of 16, 16 and 5
LONG_PROMPT = tuple([1] + [(5 * i + 7) % 480 + 16 for i in range(36)])
ORIGINAL = 32  # below the sequence's length: the scaled kinds' long-context branches bite
THETA = {"rope_theta": 10000.0}


def _rope(**parameters: Any) -> dict[str, Any]:
    return {"rope_parameters": {**THETA, **parameters}, "max_position_embeddings": 128}


# kind -> (architecture, config overrides, whether every other comparison must match too)
KINDS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "default": ("LlamaForCausalLM", _rope(rope_type="default"), True),
    "linear": ("LlamaForCausalLM", _rope(rope_type="linear", factor=2.0), True),
    "dynamic": ("LlamaForCausalLM", _rope(rope_type="dynamic", factor=2.0), True),
    "yarn": (
        "LlamaForCausalLM",
        _rope(rope_type="yarn", factor=4.0, original_max_position_embeddings=ORIGINAL),
        True,
    ),
    "yarn-untruncated": (  # GPT-OSS's parameters
        "LlamaForCausalLM",
        _rope(
            rope_type="yarn",
            factor=4.0,
            beta_fast=32.0,
            beta_slow=1.0,
            truncate=False,
            original_max_position_embeddings=ORIGINAL,
        ),
        True,
    ),
    "llama3": (
        "LlamaForCausalLM",
        _rope(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=ORIGINAL,
        ),
        True,
    ),
    "longrope": (
        "Phi3ForCausalLM",
        {
            **_rope(
                rope_type="longrope",
                short_factor=[1.0 + 0.05 * i for i in range(32)],
                long_factor=[1.0 + 0.5 * i for i in range(32)],
            ),
            # Phi-3 keeps it in the config too (vLLM reads it there)
            "original_max_position_embeddings": ORIGINAL,
        },
        True,
    ),
    "partial": ("StableLmForCausalLM", _rope(partial_rotary_factor=0.25), True),
    "partial-interleaved": ("Glm4ForCausalLM", _rope(partial_rotary_factor=0.5), True),
    # the zoo's derived Gemma 4 as it is (sliding layer: default; global layer: proportional,
    # partial 0.25); only its rotary is asserted: its per-layer embeddings are an alignment gap
    # of their own (the architecture sweep's transient row)
    "proportional": ("Gemma4ForCausalLM", {}, False),
}
# vLLM's rotary class per kind: the kind the test means is the one that ran
CLASSES = {
    "default": {"RotaryEmbedding"},
    "linear": {"LinearScalingRotaryEmbedding"},
    "dynamic": {"DynamicNTKScalingRotaryEmbedding"},
    "yarn": {"YaRNScalingRotaryEmbedding"},
    "yarn-untruncated": {"YaRNScalingRotaryEmbedding"},
    "llama3": {"Llama3RotaryEmbedding"},
    "longrope": {"Phi3LongRoPEScaledRotaryEmbedding"},
    "partial": {"RotaryEmbedding"},
    "partial-interleaved": {"RotaryEmbedding"},
    "proportional": {"RotaryEmbedding", "Gemma4RotaryEmbedding"},
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_rotary_pass_is_compared_and_matches(kind, tmp_path):
    arch, overrides, whole = KINDS[kind]
    model = str(build_model(arch, tmp_path / "model", overrides=overrides))
    target = capture(
        CaptureSpec(
            "vllm",
            model,
            LONG_PROMPT,
            str(tmp_path / "target"),
            max_tokens=3,
            engine={"max_num_batched_tokens": 16},
        )
    )
    reference = capture(
        CaptureSpec(
            "transformers",
            model,
            LONG_PROMPT,
            str(tmp_path / "reference"),
            max_tokens=3,
            forced_ids=tuple(target.generated_ids[:-1]),
        )
    )
    assert [len(p.positions) for p in target.passes] == [16, 16, 5, 1, 1]
    mapping = infer_missing(plan_components(target, reference), target, reference)
    comparisons = list(iter_comparisons(target, reference, mapping=mapping))
    rotary = {c.target for c in comparisons if c.target.endswith("rotary_emb")}
    assert rotary == {f"model.layers.{i}.self_attn.rotary_emb" for i in range(2)}
    classes = {r.module_class for r in target.records if r.name in rotary}
    assert classes == CLASSES[kind], classes
    for entry in coverage_map(target, reference, mapping, comparisons):
        if entry.component in rotary:
            assert entry.complete and len(entry.compared) == 5, entry
    threshold = threshold_for("float32")
    rows = [c for c in comparisons if c.kind != "metadata" and (whole or c.target in rotary)]
    assert {(c.target, c.pass_index) for c in rows if c.target in rotary} == {
        (name, p.index) for name in rotary for p in target.passes
    }
    worst = max(rows, key=lambda c: c.ratio)
    assert worst.ratio < threshold, (worst.target, worst.pass_index, worst.ratio)
