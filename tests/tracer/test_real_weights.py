"""Real weights (Gemma 3 270M, trained): pristine vLLM raises no alarm in float32 or bfloat16 on
a short and a long prompt, and the public real-weight bench cases are localized top-1.

"No alarm" is checked with a margin, not only through the change point's persistence rule:
every comparison's ratio stays below the dtype's threshold."""

from __future__ import annotations

import pytest

from ekka.bench import find_cases, run_case
from ekka.tracer.capture import tokenize
from ekka.tracer.diagnose import DiagnoseConfig, run_diagnosis
from ekka.tracer.localize import threshold_for
from tests.conftest import BENCH

pytestmark = [pytest.mark.real, pytest.mark.vllm, pytest.mark.slow]
REAL_CASES = BENCH / "real"
# The long case's prompt: 593 tokens of English prose, past Gemma 3's 512-token window.
LONG_CASE = "gemma3-sliding-window-on-every-layer"


@pytest.fixture(scope="module")
def text_ids(real_model):
    (case,) = find_cases(REAL_CASES, [LONG_CASE])
    assert case.prompt is not None
    return tokenize(real_model, case.prompt)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("length", [48, 593])
def test_pristine_vllm_has_no_divergence_on_real_weights(
    real_model, text_ids, dtype, length, tmp_path
):
    ids = text_ids[:length]
    assert len(ids) == length and ids[0] == 2  # <bos>
    diagnosis = run_diagnosis(
        DiagnoseConfig(
            model=str(real_model),
            prompt_ids=tuple(ids),
            workdir=str(tmp_path),
            dtype=dtype,
            max_tokens=4,
        )
    )
    assert not diagnosis.diverged, diagnosis.verdict
    assert diagnosis.output is not None and not diagnosis.output.diverged
    metadata = [c for c in diagnosis.comparisons if c.kind == "metadata"]
    assert metadata and all(c.ratio == 0 for c in metadata)
    measured = [c for c in diagnosis.comparisons if c.kind != "metadata"]
    assert len(measured) > 1000  # 18 layers, 4 passes
    worst = max(measured, key=lambda c: c.ratio)
    assert worst.ratio < threshold_for(dtype), (worst.target, worst.pass_index, worst.ratio)


@pytest.mark.parametrize("case_id", sorted(p.name for p in REAL_CASES.iterdir() if p.is_dir()))
def test_real_weight_cases_are_localized_top1(real_model, case_id, tmp_path):
    (case,) = find_cases(REAL_CASES, [case_id])
    result = run_case(case, tmp_path)
    assert result.error is None, result.error
    assert result.top1, (result.suspects, case.truth_components)
    assert result.extra["verdict"].startswith("divergence")
