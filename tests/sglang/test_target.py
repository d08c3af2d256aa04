"""Pristine SGLang shows no divergence against transformers; a planted bug in its sources is
localized to the component it lives in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ekka.errors import CaptureError
from ekka.reduce import diagnose_and_reduce
from ekka.tracer.adapters.sglang import STANDIN_NOTE
from ekka.tracer.diagnose import DiagnoseConfig, run_diagnosis
from ekka.tracer.protocol import CaptureSpec, ScenarioRequest
from ekka.tracer.scenario import Scenario
from ekka.tracer.trace import TraceReader
from tests.conftest import LONG_PROMPT_IDS, PROMPT_IDS
from tests.sglang.conftest import sglang_python

pytestmark = [pytest.mark.sglang, pytest.mark.slow]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_pristine_sglang_matches_transformers_on_llama(sglang_diagnosed, dtype):
    found = sglang_diagnosed("llama", dtype=dtype)
    diagnosis = found.diagnosis
    assert not diagnosis.diverged, diagnosis.localization.suspects
    assert diagnosis.target.framework == "sglang"
    assert STANDIN_NOTE in diagnosis.target.notes
    assert diagnosis.target_tokens == diagnosis.reference_tokens
    names = {c.target for c in diagnosis.comparisons}
    # every kind of component is compared, the decoder layers by SGLang's convention
    for name in (
        "model.embed_tokens",
        "model.layers.0",
        "model.layers.0.self_attn.qkv_proj",
        "model.layers.0.self_attn.rotary_emb",
        "model.layers.0.self_attn.attn",
        "model.layers.0.mlp.gate_up_proj",
        "model.layers.1.post_attention_layernorm",
        "model.norm",
        "logits_processor",
    ):
        assert name in names, name
    # the logits processor (its `LogitsProcessorOutput`'s logits) in every pass, each the
    # traced request's last row, within the noise
    logits = [c for c in diagnosis.comparisons if c.target == "logits_processor"]
    assert [(c.pass_index, c.rows) for c in logits] == [(0, 1), (1, 1), (2, 1)], logits
    assert all(c.kind == "output" and c.ratio < 2 for c in logits), logits
    # the serving metadata of every pass was checked, against the scheduler's spans
    target = found.target
    assert [p.step for p in target.passes] == [0, 1, 2]
    assert all(p.serving is not None and p.serving.request is not None for p in target.passes)
    metadata = [c for c in diagnosis.comparisons if c.kind == "metadata"]
    assert len(metadata) == 3 * len(target.passes), metadata  # embedding, rotary, attention
    assert all(c.ratio == 0 and "as expected" in c.detail for c in metadata), metadata


def _patched_sglang(dest: Path) -> Path:
    """A copy of SGLang's package whose RMSNorm ignores its epsilon: links to every file but
    the patched one and the package's `__init__.py` (copied, so that the package resolves to
    the copy)."""
    import subprocess

    python = sglang_python()
    found = subprocess.run(
        [python, "-c", "import importlib.util; print(importlib.util.find_spec('sglang').origin)"],
        capture_output=True,
        text=True,
        check=True,
    )
    package = Path(found.stdout.strip()).resolve().parent
    copy = dest / "sglang"
    for folder, dirs, files in os.walk(package):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        here = copy / Path(folder).relative_to(package)
        here.mkdir(parents=True)
        for name in files:
            (here / name).symlink_to(Path(folder) / name)
    (copy / "__init__.py").unlink()
    (copy / "__init__.py").write_text((package / "__init__.py").read_text())
    layernorm = copy / "srt" / "layers" / "layernorm.py"
    source = layernorm.read_text()
    wrong = source.replace(
        "x = x * torch.rsqrt(variance + self.variance_epsilon)", "x = x * torch.rsqrt(variance)"
    )
    assert wrong != source, "SGLang's RMSNorm.forward_native changed; update the planted bug"
    layernorm.unlink()
    layernorm.write_text(wrong)
    return dest


def test_a_planted_rmsnorm_bug_is_localized_to_the_norm(tmp_path, zoo_model):
    sglang_python()
    src = _patched_sglang(tmp_path / "src")
    diagnosis = run_diagnosis(
        DiagnoseConfig(
            model=str(zoo_model("llama", rms_norm_eps=1e-5)),
            prompt_ids=PROMPT_IDS,
            workdir=str(tmp_path / "work"),
            max_tokens=3,
            target_pythonpath=(str(src),),
            framework="sglang",
        )
    )
    assert diagnosis.diverged
    top = diagnosis.localization.suspects[0]
    assert top.component == "model.layers.0.input_layernorm", diagnosis.localization.suspects
    assert top.source_file == "sglang/srt/layers/layernorm.py"
    assert top.confirmed is True  # replayed alone in SGLang's scheduler, it reproduces the error
    assert diagnosis.target.path == str(src / "sglang")


def test_an_unknown_engine_argument_is_named(tmp_path, zoo_model):
    from ekka.tracer.capture import capture

    sglang_python()
    spec = CaptureSpec(
        framework="sglang",
        model=str(zoo_model("llama")),
        prompt_ids=PROMPT_IDS,
        out=str(tmp_path / "t"),
        engine={"no_such_setting": 1},
    )
    with pytest.raises(CaptureError, match="no_such_setting: not an SGLang engine argument"):
        capture(spec, timeout=300)
    assert not os.path.exists(tmp_path / "t" / "manifest.json")


def test_chunked_prefill_passes_are_placed_by_the_scheduler(sglang_diagnosed):
    """A 37-token prompt in chunks of at most 16 tokens, then two decode steps: every pass
    placed by the scheduler's `Req`s and every metadata check as expected."""
    diagnosis = sglang_diagnosed(
        "llama", prompt_ids=LONG_PROMPT_IDS, engine={"chunked_prefill_size": 16}
    ).diagnosis
    passes = {c.pass_index: c.step for c in diagnosis.comparisons}
    assert passes == {0: 0, 1: 0, 2: 0, 3: 1, 4: 2}
    metadata = [c for c in diagnosis.comparisons if c.kind == "metadata"]
    assert len(metadata) == 5 * 3
    assert all(c.ratio == 0 for c in metadata), [c.detail for c in metadata if c.ratio]
    assert not diagnosis.diverged, diagnosis.verdict


def test_no_false_alarm_when_requests_meet_in_sglang(tmp_path, zoo_model):
    """A request before shares the traced prompt's first 16 tokens (SGLang's radix cache, on
    for this scenario, hands them over) and one request is batched with the traced one."""
    sglang_python()
    traced = PROMPT_IDS
    scenario = Scenario(
        before=(ScenarioRequest(traced[:16] + (7, 8, 9), 1),),
        alongside=(ScenarioRequest(tuple(range(3, 23)), 4),),
    )
    diagnosis = diagnose_and_reduce(
        DiagnoseConfig(
            model=str(zoo_model("llama")),
            prompt_ids=traced,
            workdir=str(tmp_path / "work"),
            max_tokens=3,
            engine={"disable_radix_cache": False},
            scenario=scenario,
            framework="sglang",
        )
    )
    assert not diagnosis.diverged, diagnosis.verdict
    passes = TraceReader(tmp_path / "work" / "target").passes
    spans = [p.serving.request for p in passes if p.serving is not None]
    assert len(spans) == len(passes) == 3, "every pass placed by the scheduler"
    assert spans[0] is not None and spans[0].start == 16, "16 prompt tokens from the radix cache"
    assert max(len(p.serving.spans) for p in passes if p.serving) == 2, "two in a batch"
    metadata = [c for c in diagnosis.comparisons if c.kind == "metadata"]
    assert metadata and all(c.ratio == 0 for c in metadata), [c.detail for c in metadata]
    # the logits processor compared in every pass, the traced request's row of the batch's logits
    logits = [c for c in diagnosis.comparisons if c.target == "logits_processor"]
    assert [c.rows for c in logits] == [1, 1, 1], logits
