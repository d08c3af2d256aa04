"""Mapping rules and value pairing on small traces written with the real TraceWriter."""

from __future__ import annotations

import torch

from ekka.tracer.align import RULES, infer_missing, plan_component, plan_components
from ekka.tracer.compare import iter_comparisons
from tests.tracer.traces import T
from tests.tracer.traces import write_trace as _trace


def test_rules_cover_fused_projections_layers_attention_and_families():
    names = {
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.k_proj",
        "model.layers.0.self_attn.v_proj",
        "model.layers.0.mlp.gate_proj",
        "model.layers.0.mlp.up_proj",
        "model.layers.0.mlp.down_proj",
        "model.layers.0.self_attn.o_proj",
        "model.layers.0",
        "model.layers.0.mlp",
        "logits",
        "model.layers.0.self_attn.apply_rotary_pos_emb",
        "model.embed_tokens",
    }
    plan = plan_component("model.layers.0.self_attn.qkv_proj", "QKVParallelLinear", "llama", names)
    assert plan.reference_op == "concat" and plan.reference[0].endswith("q_proj")
    assert (
        plan_component("model.layers.0", "LlamaDecoderLayer", "llama", names).target_op
        == "sum_pair"
    )
    assert (
        plan_component("model.layers.0", "CohereDecoderLayer", "cohere", names).target_op == "first"
    )
    attn = plan_component("model.layers.0.self_attn.attn", "Attention", "llama", names)
    assert attn.slot == "in" and attn.reference == ("model.layers.0.self_attn.o_proj",)
    act = plan_component("model.layers.0.mlp.act_fn", "SiluAndMul", "llama", names)
    assert act.slot == "in" and act.reference == ("model.layers.0.mlp.down_proj",)
    rot = plan_component("model.layers.0.self_attn.rotary_emb", "RotaryEmbedding", "llama", names)
    assert rot.reference_op == "heads_concat" and rot.slot == "outs"
    assert (
        plan_component("model.embed_tokens", "VocabParallelEmbedding", "gemma", names).target_op
        == "scale_sqrt_hidden"
    )
    moe = plan_component("model.layers.0.block_sparse_moe", "MixtralMoE", "mixtral", names)
    assert moe.reference == ("model.layers.0.mlp",)
    assert plan_component("logits_processor", "LogitsProcessor", "llama", names).reference == (
        "logits",
    )
    assert all(r.note or r.target for r in RULES)


def test_value_pairing_is_marked_inferred_and_far_values_stay_unmapped(tmp_path):
    x = torch.randn(T, 16)
    target = _trace(
        tmp_path / "t",
        "vllm",
        [
            ("model.layers.0.mystery", "Custom", [x + 1e-7]),
            ("model.layers.0.stranger", "Custom", [torch.randn(T, 16) * 50]),
        ],
    )
    reference = _trace(
        tmp_path / "r",
        "transformers",
        [
            ("model.layers.0.mlp.down_proj", "Linear", [x[None]]),
            ("model.layers.0.mlp", "LlamaMLP", [torch.randn(1, T, 16)]),
        ],
    )
    mapping = infer_missing(plan_components(target, reference), target, reference)
    plan = mapping.plans["model.layers.0.mystery"]
    assert (
        plan.inferred
        and plan.reference == ("model.layers.0.mlp.down_proj",)
        and "inferred" in plan.describe()
    )
    assert "model.layers.0.stranger" in mapping.unmapped
    assert "no mapping rule" in mapping.unmapped["model.layers.0.stranger"].reason
    comps = list(iter_comparisons(target, reference, mapping=mapping))
    assert (
        [c.target for c in comps] == ["model.layers.0.mystery"]
        and comps[0].inferred
        and comps[0].ratio < 1
    )


def test_attention_layout_puts_tokens_first_even_with_as_many_heads_as_tokens():
    """Post-rotary q of 2 heads over a 2-token continuation: `[1, heads, tokens, d]` must come
    out token by token, not head by head (the heads and tokens axes have the same size)."""
    from ekka.tracer.align import _rows_of

    heads, tokens, d = 2, 2, 4
    q = torch.arange(heads * tokens * d, dtype=torch.float32).reshape(1, heads, tokens, d)
    rows = _rows_of(q, tokens)
    for token in range(tokens):
        assert torch.equal(rows[token], q[0, :, token])
    wide = torch.randn(1, 3, 5, d)  # unambiguous: 3 heads, 5 tokens
    assert torch.equal(_rows_of(wide, 5), wide[0].transpose(0, 1))
    hidden = torch.randn(1, 5, 8)  # a module's [1, tokens, hidden] output
    assert torch.equal(_rows_of(hidden, 5), hidden[0])


def test_rotary_is_recorded_heads_first_whatever_the_model_applies_it_to():
    from ekka.tracer.adapters.transformers import _heads_first

    cos = torch.randn(1, 3, 4)  # 3 tokens
    heads_first = torch.randn(1, 2, 3, 4)
    assert _heads_first(heads_first, cos, 1) is heads_first
    token_major = torch.randn(1, 3, 2, 4)  # unsqueeze_dim=2 models
    assert torch.equal(_heads_first(token_major, cos, 2), token_major.transpose(1, 2))
    assert torch.equal(
        _heads_first(token_major, cos, 1), token_major.transpose(1, 2)
    )  # told by the shapes
    square = torch.randn(1, 3, 3, 4)  # as many heads as tokens: the call's unsqueeze_dim decides
    assert _heads_first(square, cos, 1) is square
    assert torch.equal(_heads_first(square, cos, 2), square.transpose(1, 2))


def test_a_rotary_that_transformers_applies_one_tensor_a_call_pairs_with_both_calls():
    """Gemma 3n and Gemma 4 rotate q, then k, in two calls: two records (`#1` the second),
    side by side against vLLM's (q, k); a model with one call keeps the one-record rule."""
    one = "model.layers.0.self_attn.apply_rotary_pos_emb"
    rot = plan_component(
        "model.layers.0.self_attn.rotary_emb",
        "Gemma4RotaryEmbedding",
        "gemma4_text",
        {one, f"{one}#1"},
    )
    assert rot is not None and rot.reference == (one, f"{one}#1")
    assert rot.reference_op == "heads_concat" and rot.slot == "outs"
    rot = plan_component("model.layers.0.self_attn.rotary_emb", "RotaryEmbedding", "llama", {one})
    assert rot is not None and rot.reference == (one,)
