"""Silent errors of the serving machinery and of glue code, localized on the real engine.

Each case is a patch on a copy of the installed vLLM's sources (`tests/fixtures/serving/`),
written for this suite (the public bench stays as it is), one per class of bug that misled the
localization before: positions the model is given that are not the request's (a later prefill
chunk, a decode token), glue code in the backbone's forward between the embedding and the
first layer, wrong tokens fed, and a bug outside every traced module (the sampler).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ekka.bench import copy_sources
from ekka.bisect.framework_repo import apply_patch
from ekka.frameworks import installed_package_dir
from ekka.report import Diagnosis
from ekka.tracer.diagnose import DiagnoseConfig, run_diagnosis
from tests.conftest import PROMPT_IDS

pytestmark = pytest.mark.vllm
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "serving"
# 37 tokens: with 16 tokens a step, the prefill runs in chunks of 16, 16 and 5
LONG_PROMPT = tuple([1] + [(5 * i + 7) % 480 + 16 for i in range(36)])


def diagnose(
    case: str, model: Path, tmp_path: Path, prompt: tuple[int, ...] = PROMPT_IDS, **engine: object
) -> Diagnosis:
    sources = tmp_path / "vllm-src"
    copy_sources(installed_package_dir("vllm"), sources)
    apply_patch(FIXTURES / f"{case}.patch", sources)
    return run_diagnosis(
        DiagnoseConfig(
            model=str(model),
            prompt_ids=prompt,
            workdir=str(tmp_path / "work"),
            max_tokens=3,
            engine=engine,
            target_pythonpath=(str(sources),),
        )
    )


def test_a_decode_position_one_too_far(zoo_model, tmp_path):
    diagnosis = diagnose("decode-position-one-too-far", zoo_model("llama"), tmp_path)
    change = diagnosis.localization.change_point
    assert change is not None and change.kind == "metadata", diagnosis.verdict
    assert change.pass_index == 1 and change.step == 1  # the first decode, compared at its step
    assert "positions [32] expected, [33] given" in change.detail
    top = diagnosis.localization.suspects[0]
    assert top.component == "model.layers.0.self_attn.rotary_emb"
    assert "positions [32] expected, [33] given" in top.metadata
    assert "consumed wrong serving metadata first" in diagnosis.verdict
    # before it, in the same pass, everything matches: the pass was compared at the right step
    before = [
        c
        for c in diagnosis.comparisons
        if c.pass_index == 1 and c.sequence < change.sequence and c.kind != "metadata"
    ]
    assert before and max(c.ratio for c in before) < 2


def test_wrong_tokens_fed_are_a_finding_at_the_embedding(zoo_model, tmp_path):
    diagnosis = diagnose("decode-feeds-the-previous-token", zoo_model("llama"), tmp_path)
    change = diagnosis.localization.change_point
    assert change is not None and change.kind == "metadata", diagnosis.verdict
    assert change.pass_index == 1 and change.target == "model.embed_tokens"
    fed, sampled = PROMPT_IDS[-1], diagnosis.target_tokens[0]
    assert f"input ids [{sampled}] expected, [{fed}] given" in change.detail
    assert diagnosis.localization.suspects[0].component == "model.embed_tokens"


def test_a_later_prefill_chunk_placed_one_chunk_too_far(zoo_model, tmp_path):
    diagnosis = diagnose(
        "prefill-chunk-placed-one-chunk-later",
        zoo_model("llama"),
        tmp_path,
        prompt=LONG_PROMPT,
        max_num_batched_tokens=16,
    )
    change = diagnosis.localization.change_point
    assert change is not None and change.kind == "metadata", diagnosis.verdict
    assert change.pass_index == 1 and change.step == 0
    assert "positions 16..31 expected, 32..47 given" in change.detail
    assert diagnosis.localization.suspects[0].component == "model.layers.0.self_attn.rotary_emb"
    # every pass was compared, the later chunks and the decode steps included
    assert {c.pass_index for c in diagnosis.comparisons} >= {0, 1, 2, 3, 4}
    first_chunk = [c for c in diagnosis.comparisons if c.pass_index == 0]
    assert max(c.ratio for c in first_chunk) < 2


def test_glue_between_the_embedding_and_the_first_layer_is_the_backbones(zoo_model, tmp_path):
    diagnosis = diagnose("gemma-embedding-normalizer-dropped", zoo_model("gemma"), tmp_path)
    top = diagnosis.localization.suspects[0]
    assert top.component == "model", diagnosis.verdict
    assert top.module_class == "GemmaModel"
    assert "the glue code in model.forward" in top.evidence
    change = diagnosis.localization.change_point
    assert change is not None and change.target == "model.layers.0" and change.kind == "input"


def test_a_dropped_embedding_multiplier_is_the_backbones_too(zoo_model, tmp_path):
    model = zoo_model("granite", embedding_multiplier=12.0)
    diagnosis = diagnose("granite-embedding-multiplier-dropped", model, tmp_path)
    assert diagnosis.localization.suspects[0].component == "model", diagnosis.verdict


def test_a_bug_outside_the_traced_modules_is_never_a_silent_pass(zoo_model, tmp_path):
    """The sampler picks the wrong token id: every module matches on the tokens it was given,
    and the output still diverges. The diagnosis says so (exit 1), with where to look."""
    diagnosis = diagnose("sampler-greedy-token-ids-off-by-one", zoo_model("llama"), tmp_path)
    assert diagnosis.localization.change_point is None
    assert diagnosis.diverged
    assert diagnosis.output is not None and diagnosis.output.step == 0
    assert "greedy token of step 0" in diagnosis.output.reason
    assert "no traced component does" in diagnosis.verdict
    assert "closest:" in diagnosis.verdict
    again = Diagnosis.from_json(diagnosis.to_json())
    assert again.diverged and again.verdict == diagnosis.verdict
