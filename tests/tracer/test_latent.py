"""Latent divergences on synthetic comparison sequences: which components are replayed, and
the verdict the replay gives each (no framework needed)."""

from __future__ import annotations

from ekka.report.records import Latent, LatentVerdict
from ekka.tracer.latent import candidates, judge
from ekka.tracer.localize import localize
from tests.tracer.test_localize import comp

# Gemma3n's shape in vLLM 0.32.0: the projection matches, the norm's input is off by a scale
# the caller never applies, the norm's own output differs (through eps), then everything matches.
GEMMA3N = [
    comp(0, "model.self_decoder.per_layer_model_projection", 0.0, kind="input"),
    comp(1, "model.self_decoder.per_layer_model_projection", 0.0),
    comp(2, "model.self_decoder.per_layer_projection_norm", 2.58e6, kind="input"),
    comp(3, "model.self_decoder.per_layer_projection_norm", 6272.0),
    *[comp(4 + i, f"model.layers.{i}.mlp", 0.1) for i in range(6)],
]


def test_a_fading_error_has_no_change_point_but_is_a_candidate() -> None:
    assert not localize(GEMMA3N, 4.0).diverged
    assert candidates(GEMMA3N, 4.0) == ("model.self_decoder.per_layer_projection_norm",)


def test_glue_the_input_differs_after_a_match_and_the_module_alone_matches() -> None:
    [latent] = judge(GEMMA3N, 4.0, {"model.self_decoder.per_layer_projection_norm": 0.2})
    assert latent.verdict is LatentVerdict.GLUE and latent.confirmed
    assert latent.owner == "model.self_decoder"
    assert latent.ratio == 6272.0 and latent.input_ratio == 2.58e6
    assert "model.self_decoder's forward" in latent.statement()
    assert Latent.from_json(latent.to_json()) == latent


def test_module_its_replay_alone_reproduces_the_error() -> None:
    comps = [comp(0, "a", 0.1), comp(1, "b.act", 0.1, kind="input"), comp(2, "b.act", 50.0)]
    comps += [comp(3 + i, f"c{i}", 0.1) for i in range(4)]
    [latent] = judge(comps, 4.0, {"b.act": 48.0})
    assert latent.verdict is LatentVerdict.MODULE and latent.owner == "b.act"
    assert latent.statement().startswith("latent: b.act (X) differs by itself")


def test_upstream_and_unreplayed_are_not_confirmed() -> None:
    # the input came in wrong from an output that was already above the threshold
    comps = [comp(0, "a", 30.0), comp(1, "b", 30.0, kind="input"), comp(2, "b", 30.0)]
    comps += [comp(3 + i, f"c{i}", 0.1) for i in range(6)]
    by_name = {x.component: x for x in judge(comps, 4.0, {"b": 0.5})}
    assert by_name["b"].verdict is LatentVerdict.UPSTREAM and not by_name["b"].confirmed
    assert by_name["a"].verdict is LatentVerdict.UNREPLAYED and not by_name["a"].confirmed


def test_nothing_above_the_threshold_nothing_to_replay() -> None:
    comps = [comp(i, f"m{i}", 0.5) for i in range(5)]
    assert candidates(comps, 4.0) == () and judge(comps, 4.0, {}) == ()


def test_layout_a_replay_that_differs_only_in_the_order_of_its_features() -> None:
    """vLLM's Bloom reorders its fused qkv rows on load: alone, the projection gives the
    reference's values in another order; sorted, they agree. Not a finding."""
    comps = [comp(0, "qkv", 3e5), *[comp(1 + i, f"c{i}", 0.1) for i in range(6)]]
    [layout] = judge(comps, 4.0, {"qkv": 2.9e5}, {"qkv": 0.2})
    assert layout.verdict is LatentVerdict.LAYOUT and not layout.confirmed
    assert "weight layout" in layout.statement()
    [module] = judge(comps, 4.0, {"qkv": 2.9e5}, {"qkv": 50.0})  # sorted, still apart
    assert module.verdict is LatentVerdict.MODULE


def test_sorted_rows_tell_a_permutation_from_a_different_value() -> None:
    import torch

    from ekka.tracer.metrics import compute_error_ratio

    torch.manual_seed(0)
    reference = torch.randn(8, 12)
    permuted = reference[:, torch.randperm(12)]

    def ratio(x: torch.Tensor) -> float:
        xs, rs = x.sort(dim=-1).values, reference.sort(dim=-1).values
        return compute_error_ratio(xs, rs, rs, "float32")

    assert compute_error_ratio(permuted, reference, reference, "float32") > 1e4
    assert ratio(permuted) < 1.0 and ratio(reference * 1.01) > 1e3


def test_a_module_named_otherwise_is_replayed_on_its_counterparts_input() -> None:
    """vLLM's `model.self_decoder.per_layer_projection_norm` is transformers'
    `model.per_layer_projection_norm`: its replay reads that input; a plan on another module's
    input (act_fn = the input of down_proj) names no input of the module's own."""
    from ekka.tracer.align import ComponentMap, Plan
    from ekka.tracer.diagnose import reference_names

    norm = "model.self_decoder.per_layer_projection_norm"
    mapping = ComponentMap(
        plans={
            norm: Plan(norm, "first", ("model.per_layer_projection_norm",), None),
            "m.mlp.act_fn": Plan("m.mlp.act_fn", "first", ("m.mlp.down_proj",), None, slot="in"),
            "m.norm": Plan("m.norm", "first", ("m.norm",), None),
        }
    )
    names = reference_names(mapping, [norm, "m.mlp.act_fn", "m.norm", "unplanned"])
    assert names == {norm: "model.per_layer_projection_norm"}
