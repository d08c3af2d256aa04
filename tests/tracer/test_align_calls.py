"""A module called several times in one forward (`name#k`) pairs by its rule, call by call."""

from __future__ import annotations

from ekka.tracer.align import plan_component


def test_a_repeated_call_pairs_by_its_rule_with_the_references_same_call() -> None:
    refs = {"m.layers.0.mlp.down_proj", "m.layers.0.mlp.down_proj#1", "m.layers.0.mlp.act_fn#1"}
    first = plan_component("m.layers.0.mlp.act_fn", "SiluAndMul", "hrm_text", refs)
    again = plan_component("m.layers.0.mlp.act_fn#1", "SiluAndMul", "hrm_text", refs)
    assert first is not None and first.reference == ("m.layers.0.mlp.down_proj",)
    # vLLM's fused act(gate) * up: the input of down_proj's second call, not act_fn#1 (silu)
    assert again is not None and again.reference == ("m.layers.0.mlp.down_proj#1",)
    assert again.slot == "in" and again.target == "m.layers.0.mlp.act_fn#1"
    same = plan_component("m.layers.0.mlp.act_fn#1", "SiLU", "hrm_text", refs)
    assert same is not None and same.reference == ("m.layers.0.mlp.act_fn#1",)
