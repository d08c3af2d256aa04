"""The reference: transformers, teacher-forced on the target's tokens in one pass."""

from __future__ import annotations

import torch

from tests.conftest import PROMPT_IDS


def test_a_loaded_model_gives_the_trace_a_fresh_load_gives(zoo_model, captured, tmp_path):
    """`ekka diagnose` loads the reference while the target's engine starts and traces it
    once the target's tokens come: the same trace as a capture that loads its own model."""
    from ekka.tracer.adapters import transformers
    from ekka.tracer.capture import CaptureSpec, resolved
    from ekka.tracer.trace import TraceReader

    generated = (9, 8, 7)
    model = transformers.load_model(str(zoo_model("llama")), "float32")
    spec = resolved(
        CaptureSpec(
            framework="transformers",
            model=str(zoo_model("llama")),
            prompt_ids=PROMPT_IDS,
            out=str(tmp_path / "r"),
            max_tokens=4,
            forced_ids=generated,
        )
    )
    made = TraceReader(transformers.run(spec, model=model))
    expected = captured("transformers", "llama", max_tokens=4, forced_ids=generated)
    assert [p.positions for p in made.passes] == [tuple(range(len(PROMPT_IDS) + 3))]
    assert made.generated_ids == expected.generated_ids
    assert [r.name for r in made.records] == [r.name for r in expected.records]
    for a, b in zip(made.records, expected.records):
        for x, y in zip(made.outputs(a), expected.outputs(b)):
            assert (x is None) == (y is None) and (x is None or torch.equal(x, y)), a.name
