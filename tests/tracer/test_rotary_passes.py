"""Rotary embeddings compared in every pass: each chunk of a chunked prefill and each decode
step, against the reference's post-rotary q and k at that pass's positions, for the rotary kinds
a zoo model can be configured with (default, linear, YaRN, Llama 3, LongRoPE; partial rotary in
the layer-convention test's StableLM). The zoo has no M-RoPE model (text-only architectures)."""

from __future__ import annotations

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
KINDS = {
    "linear": ("LlamaForCausalLM", {"rope_type": "linear", "factor": 2.0}),
    "yarn": (
        "LlamaForCausalLM",
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL},
    ),
    "llama3": (
        "LlamaForCausalLM",
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": ORIGINAL,
        },
    ),
    "longrope": (
        "Phi3ForCausalLM",
        {
            "rope_type": "longrope",
            "short_factor": [1.0 + 0.05 * i for i in range(32)],
            "long_factor": [1.0 + 0.5 * i for i in range(32)],
        },
    ),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_rotary_pass_is_compared_and_matches(kind, tmp_path):
    arch, rope = KINDS[kind]
    overrides: dict[str, object] = {
        "rope_parameters": {"rope_theta": 10000.0, **rope},
        "max_position_embeddings": 128,
    }
    if kind == "longrope":  # Phi-3 keeps it in the config (vLLM reads it there)
        overrides["original_max_position_embeddings"] = ORIGINAL
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
    for entry in coverage_map(target, reference, mapping, comparisons):
        if entry.component in rotary:
            assert entry.complete and len(entry.compared) == 5, entry
    threshold = threshold_for("float32")
    worst = max((c for c in comparisons if c.kind != "metadata"), key=lambda c: c.ratio)
    assert worst.ratio < threshold, (worst.target, worst.pass_index, worst.ratio)
