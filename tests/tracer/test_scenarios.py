"""Scenarios on the real engine: silent errors that show only when requests meet.

- the public scenario case (a prefix-cache hit one block too long), through the full
  diagnosis: localized top-1, its first bad commit found, reduced to the request before it;
- this suite's own cases (tests/fixtures/scenarios, the bench's format): a batching bug (the
  sampled rows gathered in reverse batch order) and a preemption bug (a preempted request
  resuming at its old position), each localized top-1 and reduced to the request it needs;
- no false alarm on pristine vLLM for a scenario that reuses a prefix, batches three requests
  and preempts the traced one, on two zoo architectures in float32 and bfloat16.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ekka.bench import (
    base_repository,
    build_case_model,
    case_prompt_ids,
    case_scenario,
    load_case,
    matches_truth,
    run_case,
)
from ekka.bisect.framework_repo import make_bug_history
from ekka.frameworks import installed_package_dir
from ekka.full import FullConfig, run_full_diagnosis
from ekka.reduce import diagnose_and_reduce
from ekka.tracer.diagnose import DiagnoseConfig
from ekka.tracer.protocol import ScenarioRequest
from ekka.tracer.scenario import Scenario
from ekka.tracer.trace import TraceReader
from tests.conftest import BENCH

pytestmark = pytest.mark.vllm
SCENARIOS = BENCH / "scenarios"
OWN = Path(__file__).resolve().parents[1] / "fixtures" / "scenarios"


def test_public_scenario_case_localized_bisected_and_reduced(tmp_path):
    """The full diagnosis, as `ekka bench --bisect` runs it, on a shorter history (a
    harmless commit, the bug, a harmless commit): every probe runs the scenario."""
    case = load_case(SCENARIOS / "prefix-cache-hit-length-one-block-over")
    model = build_case_model(case, tmp_path / "model")
    history = make_bug_history(
        base_repository(tmp_path),
        tmp_path / "repo",
        case.path / "bug.patch",
        "cache hit",
        before=1,
        after=1,
    )
    diagnosis, result = run_full_diagnosis(
        FullConfig(
            repo=str(history.repo),
            good=history.good,
            bad=history.bad,
            model=str(model),
            prompt_ids=tuple(case_prompt_ids(case, model)),
            workdir=str(tmp_path / "traces"),
            package_dir=str(installed_package_dir("vllm")),
            max_tokens=case.max_tokens,
            engine=case.engine,
            db_url=f"sqlite:///{tmp_path / 'verdicts.db'}",
            scenario=case_scenario(case, model),
        )
    )
    suspects = [s.component for s in diagnosis.localization.suspects]
    assert suspects and matches_truth(suspects[0], case.truth_components), suspects[:3]
    assert result.first_bad is not None and result.first_bad.sha == history.bug
    assert diagnosis.reduction is not None and diagnosis.reduction.kept == ("before 0",)
    assert "shares its first 2 blocks (64 tokens)" in diagnosis.reduction.statement
    assert "--scenario" in diagnosis.reduction.command


@pytest.mark.parametrize(
    ("case_id", "kept"),
    [
        ("batch-logits-rows-reversed", ["alongside 0"]),
        ("preempted-request-resumes-at-its-old-position", ["alongside 0"]),  # before 0 dropped
    ],
)
def test_own_scenario_cases_localized_and_reduced(case_id, kept, tmp_path):
    case = load_case(OWN / case_id)
    assert case.run is not None and case.run.has_scenario
    result = run_case(case, tmp_path)
    assert result.error is None, result.error
    assert result.top1, result.suspects[:3]
    assert result.extra["reduction"]["kept"] == kept
    # alone, the traced request is right: the reduction's first run said so
    assert result.extra["reduction"]["runs"] >= 2
    notes = json.loads((tmp_path / case_id / "report" / "report.json").read_text())["notes"]
    assert any("batched with other requests (alongside 0" in n for n in notes), notes
    if "preempted" in case_id:  # what the scheduler's spans show: resumed, not recomputed
        assert any("without recomputing" in n for n in notes), notes


def _ids(seed: int, n: int) -> tuple[int, ...]:
    return tuple([1] + [(seed * 7 + i * 13) % 500 + 3 for i in range(n - 1)])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_no_false_alarm_on_pristine_vllm_when_requests_meet(arch, dtype, zoo_model, tmp_path):
    """One scenario of every kind: the request before shares the traced prompt's first two
    32-token blocks (a prefix-cache hit), two requests are batched with it (three in a batch),
    and 10 usable blocks do not hold all three once they grow (the traced request, the
    latest, is preempted and recomputed)."""
    traced = _ids(1, 70)
    scenario = Scenario(
        before=(ScenarioRequest(traced[:64] + _ids(2, 7)[1:], 1),),
        alongside=(ScenarioRequest(_ids(3, 188), 40), ScenarioRequest(_ids(4, 10), 3)),
    )
    diagnosis = diagnose_and_reduce(
        DiagnoseConfig(
            model=str(zoo_model(arch, dtype=dtype)),
            prompt_ids=traced,
            workdir=str(tmp_path / "work"),
            dtype=dtype,
            max_tokens=30,
            engine={
                "block_size": 32,
                "num_gpu_blocks_override": 11,
                "max_model_len": 256,
                "enable_prefix_caching": True,
            },
            scenario=scenario,
        )
    )
    assert not diagnosis.diverged, diagnosis.verdict
    assert diagnosis.reduction is None  # nothing to reduce
    passes = TraceReader(tmp_path / "work" / "target").passes
    serving = [p.serving for p in passes if p.serving is not None]
    spans = [m.request for m in serving if m.request is not None]
    assert len(spans) == len(passes), "every pass placed by the scheduler"
    assert spans[0].start == 64, "the traced request took two blocks from the prefix cache"
    assert max(len(m.spans) for m in serving) == 3, "three in a batch"
    recomputed = [b for a, b in zip(spans, spans[1:]) if b.start < a.start + a.count]
    assert recomputed, "the traced request was preempted and recomputed"
    # every request of every pass had its metadata checked, and all of it matched
    checks = [c for c in diagnosis.comparisons if c.kind == "metadata"]
    assert checks and all(c.ratio == 0 for c in checks)
    assert len(diagnosis.target_tokens) == 30
