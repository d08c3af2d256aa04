"""Decoder-layer outputs paired by their family's convention (align.LAYER_CONVENTIONS, data):
what vLLM's layer returns against transformers' layer output, for every zoo family, and on a
pristine run every layer's output compared in every pass and matched."""

from __future__ import annotations

import pytest

from ekka.tracer.align import LAYER_CONVENTIONS, infer_missing, plan_component, plan_components
from ekka.tracer.compare import iter_comparisons
from ekka.tracer.coverage import coverage_map
from ekka.zoo import list_architectures

NAMES = {"model.layers.0", "model.layers.0.mlp"}


def test_every_zoo_family_has_one_layer_convention():
    for arch in list_architectures():
        found = [c.name for c in LAYER_CONVENTIONS if arch.family in c.families]
        assert len(found) == 1, (arch.name, found)


@pytest.mark.parametrize(
    ("family", "op"),
    [("llama", "sum_pair"), ("gemma3", "sum_pair"), ("exaone4", "first"), ("cohere", "first")],
)
def test_a_layer_is_paired_by_its_convention(family, op):
    plan = plan_component("model.layers.0", "DecoderLayer", family, NAMES)
    assert plan is not None and plan.target_op == op


def test_a_layer_of_an_unknown_family_gets_no_default_pairing():
    """Left to the pairing by value (infer_missing tries both ops), never a guessed op; its
    children keep their same-name pairing."""
    assert plan_component("model.layers.0", "DecoderLayer", "unknown", NAMES) is None
    assert plan_component("model.layers.0.mlp", "MLP", "unknown", NAMES) is not None


@pytest.mark.vllm
@pytest.mark.parametrize(
    "arch",
    [
        "LlamaForCausalLM",  # pre-norm
        "Gemma3ForCausalLM",  # sandwich-norm
        "Olmo2ForCausalLM",  # post-norm (Transformers backend)
        "CohereForCausalLM",  # parallel attention and MLP
        "StableLmForCausalLM",  # residual added inside
    ],
)
def test_a_pristine_run_matches_every_decoder_layer_in_every_pass(captured, diagnosed, arch):
    """And the coverage map holds every module that ran, each one with a reference
    counterpart compared in every pass."""
    # the vLLM capture of the session's pristine diagnosis of this request (one engine start,
    # shared with test_diagnose.py's test_unmodified_vllm_has_no_divergence[<arch>-float32])
    target = diagnosed(arch).target
    reference = captured("transformers", arch)
    mapping = infer_missing(plan_components(target, reference), target, reference)
    comparisons = list(iter_comparisons(target, reference, mapping=mapping))
    coverage = coverage_map(target, reference, mapping, comparisons)
    ran = {r.name for r in target.records if r.kind not in ("logits", "replay")}
    assert {c.component for c in coverage} == ran
    for entry in coverage:
        if entry.component in mapping.plans:
            assert entry.complete, entry
        else:
            assert not entry.compared and entry.reason, entry
    rows = [c for c in comparisons if c.kind == "output"]
    layers = {c.target for c in rows if c.target.count(".") == 2 and ".layers." in c.target}
    count = int(target.manifest.model_config.get("num_hidden_layers", 0))
    assert layers == {f"model.layers.{i}" for i in range(count)}
    for layer in layers:
        compared = [c for c in rows if c.target == layer]
        assert {c.pass_index for c in compared} == {p.index for p in target.passes}, layer
        for c in compared:
            assert c.error < 1e-4, (layer, c.pass_index, c.plan, c.error)


def test_a_replay_runs_in_the_target_s_batches():
    """A module whose result depends on its batch (a rotary that picks its factors by the
    batch's largest position) replays as the target's passes ran it, not in one call."""
    import torch

    from ekka.tracer.adapters.vllm_replay import call_in_batches, replay_batches

    batches = replay_batches([range(0, 16), range(16, 32), range(32, 37), [37]], 38)
    assert batches == [list(range(0, 16)), list(range(16, 32)), list(range(32, 37)), [37]]
    assert replay_batches([range(0, 4)], 6) == [[0, 1, 2, 3], [4, 5]]

    def per_batch(positions: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        factor = 2.0 if int(positions.max()) >= 32 else 1.0
        return q * factor, positions

    positions = torch.arange(38)
    q = torch.ones(38, 4)
    out, pos = call_in_batches(per_batch, (positions, q), batches)
    assert out is not None and pos is not None
    assert torch.equal(pos, positions)
    assert torch.all(out[:32] == 1.0) and torch.all(out[32:] == 2.0)


@pytest.mark.vllm
def test_a_pristine_post_norm_exaone4_matches_every_decoder_layer(tmp_path):
    """EXAONE 4 (not a zoo architecture; the model of the bench case
    exaone4-global-layer-rope, unpatched): vLLM's post-norm layer returns (full output, residual
    after attention), which summed made layer 0 differ from transformers'."""
    from ekka.bench import build_case_model, case_prompt_ids, load_case
    from ekka.tracer.capture import capture
    from ekka.tracer.protocol import CaptureSpec
    from tests.conftest import BENCH

    case = load_case(BENCH / "cases" / "exaone4-global-layer-rope")
    model = build_case_model(case, tmp_path / "model")
    ids = tuple(case_prompt_ids(case, model))
    target = capture(CaptureSpec("vllm", str(model), ids, str(tmp_path / "t"), max_tokens=2))
    reference = capture(
        CaptureSpec(
            "transformers",
            str(model),
            ids,
            str(tmp_path / "r"),
            max_tokens=2,
            forced_ids=tuple(target.generated_ids[:-1]),
        )
    )
    layers = [
        c
        for c in compare_layers(target, reference)
        if c.target in ("model.layers.0", "model.layers.1")
    ]
    assert {(c.target, c.pass_index) for c in layers} == {
        (f"model.layers.{i}", p.index) for i in range(2) for p in target.passes
    }
    for c in layers:
        assert c.plan.startswith("first("), c.plan
        assert c.error < 1e-4, (c.target, c.pass_index, c.error)


def compare_layers(target, reference):
    mapping = infer_missing(plan_components(target, reference), target, reference)
    return [c for c in iter_comparisons(target, reference, mapping=mapping) if c.kind == "output"]
