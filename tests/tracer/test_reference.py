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


def test_a_prefix_lm_attends_over_the_whole_prompt(tmp_path):
    """A prefix LM (HrmText, `config.prefix_lm`) runs with the prompt marked as its prefix
    (token_type_ids 1), as vLLM serves it: a prompt token's hidden state depends on the tokens
    after it in the prompt, and a forced token after the prompt is still causal."""
    from ekka.tracer.adapters import transformers
    from ekka.tracer.capture import CaptureSpec, resolved
    from ekka.tracer.trace import TraceReader
    from ekka.zoo import build_model

    build_model("HrmTextForCausalLM", tmp_path / "m", dtype="float32")
    model = transformers.load_model(str(tmp_path / "m"), "float32")
    assert model.config.prefix_lm

    def logits(prompt: tuple[int, ...], forced: tuple[int, ...], name: str) -> torch.Tensor:
        spec = resolved(
            CaptureSpec(framework="transformers", model=str(tmp_path / "m"), prompt_ids=prompt,
                        out=str(tmp_path / name), max_tokens=len(forced) + 1, forced_ids=forced)
        )  # fmt: skip
        trace = TraceReader(transformers.run(spec, model=model))
        [record] = [r for r in trace.records if r.kind == "logits"]
        out = trace.outputs(record)[0]
        assert out is not None
        return out

    a = logits((1, 5, 6, 7), (9, 10), "a")
    b = logits((1, 5, 6, 8), (9, 10), "b")  # the last prompt token changed
    assert not torch.allclose(a[0], b[0])  # bidirectional over the prompt
    c = logits((1, 5, 6, 7, 9), (10, 11), "c")  # 9 in the prompt now: position 3 sees it
    assert not torch.allclose(a[3], c[3])
    d = logits((1, 5, 6, 7), (9, 12), "d")  # a later forced token: causal after the prompt
    assert torch.allclose(a[:5], d[:5])


def test_a_rotary_is_recorded_where_it_is_vllms_counterpart():
    """vLLM's rotary embedding returns q and k rotated over the whole head: a reference
    function that rotates q and k together is recorded as one call, Gemma 3n's that rotates q,
    then k, over the whole head as one call each; GPT-J's rotary slice is not its counterpart
    and is not wrapped (read as `(q, k, ...)` it recorded a batch's slices)."""
    from transformers.models.gemma3n import modeling_gemma3n
    from transformers.models.gptj import modeling_gptj
    from transformers.models.llama import modeling_llama

    from ekka.tracer.adapters.transformers import _rotary_form

    assert _rotary_form(modeling_llama.apply_rotary_pos_emb) == "pair"
    assert _rotary_form(modeling_gemma3n.apply_rotary_pos_emb) == "one"
    assert _rotary_form(modeling_gptj.apply_rotary_pos_emb) is None
    assert _rotary_form(print) is None
