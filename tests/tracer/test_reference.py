"""The teacher-forced reference made around the target's generation (`ForcedReference`).

Whatever way it is made (ahead on a guess that turns out right, ahead on a wrong guess and
then followed, or only followed), the trace must hold every position of prompt + generated[:-1]
computed on the *target's* tokens, with the values a one-pass teacher-forced capture gives.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import PROMPT_IDS

MAX_TOKENS = 5


def _reference(zoo_model, tmp_path, arch="llama", name="r"):
    from ekka.tracer.adapters.transformers import ForcedReference
    from ekka.tracer.capture import CaptureSpec

    spec = CaptureSpec(
        framework="transformers",
        model=str(zoo_model(arch)),
        prompt_ids=PROMPT_IDS,
        out=str(tmp_path / name),
        max_tokens=MAX_TOKENS,
    )
    return ForcedReference(spec)


def _one_pass(captured, arch, generated):
    return captured("transformers", arch, max_tokens=MAX_TOKENS, forced_ids=tuple(generated[:-1]))


def _assert_same_rows(made, expected, tolerance):
    """Every component of `expected` (one pass over all positions), at every position."""
    from ekka.tracer.align import Aligner, Plan

    positions = list(expected.passes[0].positions)
    assert sorted(p for info in made.passes for p in info.positions) == positions
    aligner = Aligner(made, made)
    expected_aligner = Aligner(expected, expected)
    names = {r.name for r in expected.records if r.kind != "logits"}
    assert names == {r.name for r in made.records if r.kind != "logits"}
    for name in sorted(names):
        plan = Plan(name, "first", (name,), None)
        x = aligner.reference_tensor(made, plan, positions)
        y = expected_aligner.reference_tensor(expected, plan, positions)
        assert x is not None and y is not None and x.shape == y.shape, name
        error = float((x - y).norm() / (y.norm() + 1e-30))
        assert error <= tolerance, f"{name}: relative difference {error:.2e}"


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_a_right_guess_leaves_nothing_to_do_after_the_target(zoo_model, captured, tmp_path, arch):
    from ekka.tracer.trace import TraceReader

    reference = _reference(zoo_model, tmp_path, arch)
    guess = reference.ahead()
    assert len(guess) == MAX_TOKENS - 1
    shards = sorted(p.name for p in (tmp_path / "r").glob("tensors-*"))
    assert shards, "the passes made ahead of the target are written ahead of it too"
    generated = guess + [7]  # the target chose what the reference guessed (the last is never fed)
    assert reference.follow(generated) is True
    made = TraceReader(reference.close())
    assert made.manifest["guess_right"] is True
    assert [p.positions for p in made.passes] == [
        tuple(range(len(PROMPT_IDS))),
        tuple(range(len(PROMPT_IDS), len(PROMPT_IDS) + MAX_TOKENS - 1)),
    ]
    assert list(made.passes[1].input_ids) == guess
    expected = _one_pass(captured, arch, generated)
    assert made.generated_ids == expected.generated_ids
    _assert_same_rows(made, expected, 1e-5)  # a KV cache and a one-pass run differ by rounding


def test_a_wrong_guess_is_traced_again_on_the_targets_tokens(zoo_model, captured, tmp_path):
    from ekka.tracer.trace import TraceReader

    reference = _reference(
        zoo_model, tmp_path, "mistral"
    )  # sliding window 8: the cache is copied, not cut
    guess = reference.ahead()
    generated = [
        guess[0],
        (guess[1] + 1) % 500,
        40,
        41,
        42,
    ]  # the target goes its own way at token 1
    assert reference.follow(generated) is False
    made = TraceReader(reference.close())
    assert made.manifest["guess_right"] is False
    assert len(made.passes) == 2 and list(made.passes[1].input_ids) == generated[:-1]
    assert all(r.pass_index in (0, 1) for r in made.records)
    expected = _one_pass(captured, "mistral", generated)
    assert made.generated_ids == expected.generated_ids
    _assert_same_rows(made, expected, 1e-5)


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warmed-up"])
def test_following_without_a_guess_is_the_one_pass_teacher_forced_capture(
    zoo_model, captured, tmp_path, warm
):
    from ekka.tracer.trace import TraceReader

    generated = [9, 8, 7, 6, 5]
    reference = _reference(zoo_model, tmp_path)
    if warm:  # its passes go to a scratch trace: nothing of them is left in the reference's
        reference.warm_up()
        assert "warm_up" in reference.timings and not reference.writer.records
        scratch = reference.scratch  # kept for the caller's analysis warm-up, until the closing
        assert [p.positions for p in TraceReader(scratch).passes] == [tuple(range(17))]
    assert reference.follow(generated) is None
    made = TraceReader(reference.close())
    assert reference.scratch is None and not (warm and scratch.exists())
    expected = _one_pass(captured, "llama", generated)
    assert [p.positions for p in made.passes] == [p.positions for p in expected.passes]
    assert [r.name for r in made.records] == [r.name for r in expected.records]
    assert made.generated_ids == expected.generated_ids
    for ours, theirs in zip(made.records, expected.records):
        for a, b in zip(made.outputs(ours), expected.outputs(theirs)):
            assert (a is None and b is None) or torch.equal(a, b), ours.name


def test_a_reference_abandoned_after_a_target_failure_is_marked_incomplete(zoo_model, tmp_path):
    from ekka.tracer.trace import TraceReader

    reference = _reference(zoo_model, tmp_path)
    reference.ahead()
    reference.abandon()
    assert TraceReader(tmp_path / "r").complete is False
