"""SGLang's alignment rules for MoE blocks, on small traces written with the real TraceWriter
(no engine): what SGLang's CPU path returns from `experts` and `TopK`, against transformers."""

from __future__ import annotations

import torch

from ekka.tracer.align import plan_component, plan_components, rules_for
from ekka.tracer.compare import iter_comparisons
from tests.tracer.traces import T, write_trace

HIDDEN, EXPERTS, TOP_K = 16, 8, 2
EXPERTS_NAME = "model.layers.1.mlp.experts"


def _trace(path, framework, config, records):
    return write_trace(path, framework, records, config)


def _ratios(target, reference):
    mapping = plan_components(target, reference)
    return mapping, {
        c.target: c.ratio for c in iter_comparisons(target, reference, mapping=mapping)
    }


def test_glm4_moe_routed_experts_pair_with_transformers_experts_over_the_scaling_factor(tmp_path):
    """SGLang's Glm4Moe on a CPU scales the routed experts after `experts` and adds the shared
    experts after that; transformers' routing weights carry the factor."""
    config = {"model_type": "glm4_moe", "routed_scaling_factor": 2.5}
    routed, shared = torch.randn(T, HIDDEN), torch.randn(T, HIDDEN)
    target = _trace(tmp_path / "t", "sglang", config, [(EXPERTS_NAME, "FusedMoE", [routed])])
    reference = _trace(
        tmp_path / "r",
        "transformers",
        config,
        [
            (EXPERTS_NAME, "Glm4MoeNaiveMoe", [2.5 * routed[None]]),
            ("model.layers.1.mlp.shared_experts", "Glm4MoeMLP", [shared[None]]),
        ],
    )
    mapping, ratios = _ratios(target, reference)
    plan = mapping.plans[EXPERTS_NAME]
    assert plan.reference == (EXPERTS_NAME,) and plan.divisor == 2.5
    assert "routed_scaling_factor (2.5)" in plan.describe()
    assert ratios[EXPERTS_NAME] < 1
    # vLLM's SharedFusedMoE returns routed + shared experts: its rule is unchanged
    names = {EXPERTS_NAME, "model.layers.1.mlp.shared_experts"}
    vllm = plan_component(EXPERTS_NAME, "SharedFusedMoE", "glm4_moe", names, rules_for("vllm"))
    assert vllm is not None and vllm.reference_op == "sum" and vllm.divisor == 1.0


def test_ernie_and_hy_v3_routed_experts_pair_by_name_and_hy_v3s_shared_mlp_with_shared_experts():
    names = {EXPERTS_NAME, "model.layers.1.mlp.shared_experts"}
    for family in ("ernie4_5_moe", "hy_v3"):
        plan = plan_component(EXPERTS_NAME, "FusedMoE", family, names, rules_for("sglang"))
        assert plan is not None and plan.reference == (EXPERTS_NAME,)
        assert plan.reference_op is None and plan.divisor == 1.0
    shared = plan_component(
        "model.layers.1.mlp.shared_mlp", "HYV3FeedForward", "hy_v3", names, rules_for("sglang")
    )
    assert shared is not None and shared.reference == ("model.layers.1.mlp.shared_experts",)


def test_granite_moe_topk_pairs_with_the_routers_choice_whatever_the_order(tmp_path):
    """SGLang's TopK returns (weights, ids, logits), transformers' router (ids, weights, logits);
    the same choice in another order matches, another weight does not. SGLang's gate is the
    router's logits."""
    config = {
        "model_type": "granitemoe",
        "num_local_experts": EXPERTS,
        "num_experts_per_tok": TOP_K,
    }
    logits = torch.randn(T, EXPERTS, generator=torch.Generator().manual_seed(0))
    top, ids = torch.softmax(logits, -1).topk(TOP_K)
    weights = top / top.sum(-1, keepdim=True)
    name = "model.layers.0.block_sparse_moe.topk"
    wrong = weights.clone()
    wrong[0, 0] += 0.5
    gate = "model.layers.0.block_sparse_moe.gate"
    records = [
        (gate, "ReplicatedLinear", [logits.clone(), None]),
        (name, "TopK", [weights.flip(-1), ids.flip(-1).int(), logits]),
        (name.replace("layers.0", "layers.1"), "TopK", [wrong, ids.int(), logits]),
    ]
    target = _trace(tmp_path / "t", "sglang", config, records)
    reference = _trace(
        tmp_path / "r",
        "transformers",
        config,
        [
            (n.replace("topk", "router"), "GraniteMoeTopKRouter", [ids, weights, logits])
            for n in (name, name.replace("layers.0", "layers.1"))
        ],
    )
    mapping, ratios = _ratios(target, reference)
    assert mapping.plans[name].reference == ("model.layers.0.block_sparse_moe.router",)
    assert ratios[name] < 1 and ratios[gate] < 1  # the gate: the router's logits
    assert ratios[name.replace("layers.0", "layers.1")] > 1e3
