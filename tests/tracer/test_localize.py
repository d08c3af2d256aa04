"""Change-point localization on synthetic comparison sequences (no framework needed)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from ekka.bench import matches_truth
from ekka.report.records import Comparison
from ekka.tracer.compare import RoutingTolerance
from ekka.tracer.localize import localize
from ekka.tracer.metrics import compute_error_ratio, compute_figures


def comp(
    seq: int,
    name: str,
    ratio: float,
    pass_index: int = 0,
    kind: str = "output",
    nonfinite: bool = False,
) -> Comparison:
    return Comparison(
        sequence=seq,
        target=name,
        module_class="X",
        source_file="vllm/x.py",
        source_line=seq,
        pass_index=pass_index,
        step=pass_index,
        call_index=seq,
        plan="p",
        inferred=False,
        ratio=ratio,
        error=ratio * 1e-6,
        noise=1e-6,
        nonfinite=nonfinite,
        worst_position=3,
        rows=4,
        kind=kind,
    )


def chain(ratios, names=None, pass_index=0, start=0):
    names = names or [f"m{i}" for i in range(len(ratios))]
    return [comp(start + i, n, r, pass_index) for i, (n, r) in enumerate(zip(names, ratios))]


def test_no_divergence_when_everything_is_noise():
    result = localize(chain([0.1, 1.2, 0.9, 1.5, 1.1]))
    assert not result.diverged and result.suspects == () and bool(result)


def test_change_point_is_earliest_persistent_rise_not_the_largest():
    result = localize(chain([0.5, 0.7, 40, 30, 900, 200, 500]))
    assert result.diverged
    assert result.suspects[0].component == "m2"
    assert result.suspects[0].persistence == 1.0
    assert result.suspects[0].source_file == "vllm/x.py"


def test_transient_spike_is_not_a_change_point():
    result = localize(chain([0.5, 7.0, 0.6, 0.5, 0.8, 30, 40, 50]))
    assert result.suspects[0].component == "m5"


def test_nonfinite_target_is_a_divergence():
    seq = chain([0.5, 0.5]) + [comp(2, "logits_processor", math.inf, nonfinite=True)]
    result = localize(seq)
    assert result.suspects[0].component == "logits_processor"
    assert "non-finite" in result.suspects[0].evidence
    found = compute_figures(
        torch.tensor([float("nan"), 1.0]), torch.ones(2), torch.ones(2), "float32"
    )
    assert math.isinf(found.ratio) and math.isinf(found.error)


def test_later_pass_divergence_is_found_in_that_pass():
    seq = chain([0.5, 0.4, 0.6], ["a", "attn", "b"], 0) + chain(
        [0.5, 50, 60], ["a", "attn", "b"], 1, start=3
    )
    result = localize(seq)
    assert result.suspects[0].component == "attn" and result.suspects[0].pass_index == 1


def test_suspects_are_unique_and_at_most_five():
    names = ["a", "b", "c", "d", "e", "f", "g"]
    seq = chain([10, 20, 30, 40, 50, 60, 70], names, 0) + chain(
        [10, 20, 30, 40, 50, 60, 70], names, 1, start=7
    )
    result = localize(seq)
    comps = [s.component for s in result.suspects]
    assert len(comps) == 5 and len(set(comps)) == 5 and comps[0] == "a"


def test_diverging_input_names_the_parent_module():
    seq = [
        comp(0, "model.layers.0.self_attn.o_proj", 0.4),
        comp(1, "model.layers.0.mlp.down_proj", 30, kind="input"),
        comp(2, "model.layers.0.mlp.down_proj", 35),
        comp(3, "model.layers.0", 40),
    ]
    result = localize(seq)
    assert result.suspects[0].component == "model.layers.0.mlp"
    assert "glue" in result.suspects[0].evidence


def test_a_layers_diverging_input_puts_the_glue_in_the_backbone():
    """The embedding matches, the first layer's input does not: the code between them is in
    the backbone's forward (`model`), not in the layer's."""
    seq = [
        comp(0, "model.embed_tokens", 0.3),
        comp(1, "model.layers.0", 50, kind="input"),
        comp(2, "model.layers.0.input_layernorm", 50, kind="input"),
        comp(3, "model.layers.0.input_layernorm", 1.0),
        comp(4, "model.layers.0.self_attn.qkv_proj", 30),
        comp(5, "model.layers.0", 40),
        comp(6, "model", 40),
    ]
    top = localize(seq).suspects[0]
    assert top.component == "model"
    assert "glue code in model.forward" in top.evidence


def test_a_layers_matching_input_keeps_the_glue_in_the_layer():
    seq = [
        comp(0, "model.embed_tokens", 0.3),
        comp(1, "model.layers.0", 1.0, kind="input"),
        comp(2, "model.layers.0.self_attn.o_proj", 0.8),
        comp(3, "model.layers.0.post_attention_layernorm", 60, kind="input"),
        comp(4, "model.layers.0.post_attention_layernorm", 60),
        comp(5, "model.layers.0", 40),
    ]
    top = localize(seq).suspects[0]
    assert top.component == "model.layers.0"
    assert top.source_line == 5  # the layer's own class and source, not the norm's


def test_wrong_metadata_names_its_consumer_with_the_check_as_evidence():
    wrong = replace(
        comp(2, "model.layers.0.self_attn.rotary_emb", math.inf, pass_index=1, kind="metadata"),
        detail="pass 1 (step 1, positions 32): positions 32 expected, 33 given",
    )
    seq = [
        comp(0, "model.embed_tokens", 0.3, pass_index=1),
        comp(1, "model.layers.0.self_attn.qkv_proj", 0.4, pass_index=1),
        wrong,
        comp(3, "model.layers.0.self_attn.rotary_emb", 30, pass_index=1),
        comp(4, "model.layers.0.self_attn.attn", 30, pass_index=1),
        comp(5, "model.layers.0", 30, pass_index=1),
    ]
    result = localize(seq)
    assert result.change_point == wrong
    top = result.suspects[0]
    assert top.component == "model.layers.0.self_attn.rotary_emb"
    assert "positions 32 expected, 33 given" in top.evidence


def test_wrong_metadata_stays_up_when_the_passes_after_it_diverge():
    """A wrong cache slot in the prefill is read back later: persistence counts the run."""
    wrong = comp(1, "model.layers.0.self_attn.attn", math.inf, kind="metadata")
    seq = [comp(0, "model.layers.0.self_attn.qkv_proj", 0.4), wrong]
    seq += [comp(2 + i, f"c{i}", 0.5) for i in range(3)]  # the prefill reads its own K/V
    seq += [comp(5 + i, f"d{i}", 40, pass_index=1) for i in range(8)]
    assert localize(seq).change_point == wrong


def test_threshold_is_configurable():
    seq = chain([0.5, 3.0, 3.0, 3.0])
    assert localize(seq, threshold=2).diverged
    assert not localize(seq, threshold=5).diverged


def test_robust_ratio_uses_dtype_noise():
    y = torch.randn(8, 16)
    x_r = y + 1e-2 * torch.randn(8, 16)  # bf16-like noise of the reference
    x_t = y + 1e-2 * torch.randn(8, 16)  # the target: same amount of noise
    ratio = compute_error_ratio(x_t, x_r, y, "bfloat16")
    assert 0.5 < ratio < 2
    bad = y + 1e-1 * torch.randn(8, 16)
    assert compute_error_ratio(bad, x_r, y, "bfloat16") > 5
    # float32: the reference is its own float32 run, the floor is float32 noise
    assert compute_error_ratio(y + 1e-7 * torch.randn(8, 16), y, y, "float32") < 1
    assert compute_error_ratio(y + 1e-4 * y, y, y, "float32") > 10


def test_routing_tolerance_discounts_only_near_ties():
    tol = RoutingTolerance({"num_local_experts": 4, "num_experts_per_tok": 2}, "bfloat16")
    tol.begin(0)
    y = torch.tensor([[3.0, 2.0, 1.0, 0.0], [3.0, 1.001, 1.0, 0.0], [3.0, 2.0, 1.0, 0.0]])
    x_r = y + 0.004
    x = y.clone()
    x[1] = torch.tensor([3.0, 1.0, 1.003, 0.0])  # near tie flipped: discounted
    x[2] = torch.tensor([3.0, 0.0, 1.0, 2.0])  # clear margin flipped: a real routing bug
    tol.observe(x, x_r, y)
    assert tol.keep(3) == [0, 2]


def test_matches_truth_globs():
    assert matches_truth("model.layers.3.self_attn.attn", ["model.layers.*.self_attn.attn"])
    assert matches_truth("model.layers.0.mlp.act_fn#1", ["model.layers.*.mlp.act_fn"])
    assert not matches_truth("model.layers.0.mlp", ["model.layers.*.mlp.act_fn"])


def test_single_token_divergence_is_not_diluted():
    y = torch.randn(512, 64)
    x_r = y + 4e-3 * torch.randn(512, 64)
    x_t = y + 4e-3 * torch.randn(512, 64)
    clean = compute_figures(x_t, x_r, y, "bfloat16")
    x_t[300] += 0.1 * y[300]  # one token off by 10 %
    found = compute_figures(x_t, x_r, y, "bfloat16")
    assert found.ratio < 2  # the pass-level ratio hides it
    assert clean.token_ratio < 8 < found.token_ratio and found.worst_row == 300
    assert max(found.token_ratios) == found.token_ratio


def test_persistence_is_the_share_of_later_components_above_the_threshold():
    """Counted once per pass from the end (not re-counted per crossing): the same figures as
    counting what follows each crossing."""
    import random

    rng = random.Random(3)
    for _ in range(50):
        ratios = [rng.choice([0.5, 1.0, 3.0, 10.0, math.inf]) for _ in range(rng.randint(1, 30))]
        result = localize(chain(ratios), threshold=2.0)
        for suspect in result.suspects:
            i = int(suspect.component[1:])
            after = ratios[i + 1 :]
            expected = 1.0 if not after else sum(r > 2.0 for r in after) / len(after)
            assert suspect.persistence == expected


def _norm(values):
    return math.sqrt(math.fsum(v * v for v in values))


def _figures_by_hand(y_rows, t_rows, n_rows, floor):
    """(ratio, error, noise, per-token ratios) of one comparison, worked out one float at a
    time from the documented formula: the check on the product's vectorized figures."""
    y_total = _norm(y_rows) or 1e-30
    t_total = _norm(t_rows)
    error = t_total / y_total if math.isfinite(t_total) else math.inf
    noise = 0.0 if n_rows is None else _norm(n_rows) / y_total
    # each comparison here is its own component: its pooled noise is its own
    pooled = floor if n_rows is None or not math.isfinite(noise) else max(noise, floor)
    noise = max(noise, floor) if math.isfinite(noise) else noise
    ratio = error / noise if noise > 0 else math.inf
    if n_rows is None:
        token_noise = [floor * y for y in y_rows]
    else:
        token_noise = [max(n, pooled * y) for n, y in zip(n_rows, y_rows)]
    median = sorted(token_noise)[(len(token_noise) - 1) // 2]  # the lower median
    tokens = []
    for t, n in zip(t_rows, token_noise):
        value = t / max(n, median, 1e-30)
        tokens.append(math.inf if value != value else value)  # NaN -> inf
    return ratio, error, noise, tokens


def test_figures_of_many_comparisons_at_once_are_each_ones_figures():
    """The sink works out every comparison's figures with one vectorized pass: the same as
    the formula worked out by hand on each, the candidate `min` picks, and the first worst
    token."""
    import random
    from types import SimpleNamespace

    from ekka.tracer.align import Plan
    from ekka.tracer.compare import _Figures

    rng = random.Random(11)

    def single(values: list[float]) -> list[float]:
        return torch.tensor(values, dtype=torch.float32).tolist()

    special = [0.0, math.inf, math.nan, 1e-9]

    def value(scale: float) -> float:
        return rng.choice(special) if rng.random() < 0.08 else rng.random() * scale

    for trial in range(40):
        floor = rng.choice([4e-6, 2.0**-9])
        noisy = rng.random() < 0.5
        sink = _Figures(floor, {})
        expected = {}
        index = 0
        for _ in range(rng.randint(1, 6)):  # groups: one component's segments each
            count = rng.choice([1, 1, 2])
            lengths = [rng.choice([1, 1, 1, 2, 4, 17]) for _ in range(rng.randint(1, 5))]
            rows = sum(lengths)
            # float32 values, as `_row_norms` gives the sink
            y = single([value(10.0) for _ in range(rows)])
            ts = [single([value(1e-3) for _ in range(rows)]) for _ in range(count)]
            n = single([value(1e-3) for _ in range(rows)]) if noisy else None
            segments, start = [], 0
            for length in lengths:
                record = SimpleNamespace(
                    index=index,
                    name=f"m{index}",
                    module_class="X",
                    source_file=None,
                    source_line=None,
                    pass_index=0,
                    step=0,
                    call_index=index,
                )
                index += 1
                positions = list(range(100 + start, 100 + start + length))
                segments.append((record, [None] * count, positions))
                end = start + length
                best = min([t[start:end] for t in ts], key=_norm)
                expected[record.index] = (
                    _figures_by_hand(
                        y[start:end], best, None if n is None else n[start:end], floor
                    ),
                    positions,
                )
                start = end
            tensor = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
            group = (segments, tensor(y), [tensor(t) for t in ts], None if n is None else tensor(n))
            sink.add(group, Plan("m", "first", ("m",), None), "output")
        got = {c.call_index: c for c in sink.comparisons()}
        assert sorted(got) == sorted(expected)
        for key, ((ratio, error, noise, tokens), positions) in expected.items():
            c = got[key]
            worst = max(range(len(tokens)), key=tokens.__getitem__)
            for a, b in (
                (c.ratio, ratio),
                (c.error, error),
                (c.noise, noise),
                (c.token_ratio, tokens[worst]),
            ):
                assert (a != a and b != b) or a == pytest.approx(b, rel=1e-5), (trial, key)
            assert c.worst_position == positions[worst] and c.rows == len(positions)


def test_a_component_pools_its_noise_over_its_passes():
    """A decode step's one row whose serving-dtype reference happened to round well is not
    taken for the component's noise: the component's noise over the run is the floor."""
    from ekka.tracer.metrics import segment_figures

    # component 0: a prefill of 4 rows (relative noise 0.01) and a decode row (0.002);
    # component 1: one row alone (0.002), pooled with nothing
    y = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    n = np.array([0.01, 0.01, 0.01, 0.01, 0.002, 0.002])
    t = np.array([0.01, 0.01, 0.01, 0.01, 0.008, 0.008])
    ratio, _, noise, _, top, _ = segment_figures(y, t, n, [4, 1, 1], 2.0**-9, [0, 0, 1])
    pooled = math.sqrt((4 * 0.01**2 + 0.002**2) / 5)
    assert noise[1] == pytest.approx(pooled)
    assert ratio[1] == pytest.approx(0.008 / pooled) and top[1] == pytest.approx(ratio[1])
    assert ratio[2] == pytest.approx(0.008 / 0.002)  # alone: its own noise
    # float32 (no serving-dtype reference, -1): only the dtype's floor
    quiet = segment_figures(y, t, -np.ones(6), [4, 1, 1], 4e-6, [0, 0, 1])
    assert quiet[0][1] == pytest.approx(0.008 / 4e-6)
