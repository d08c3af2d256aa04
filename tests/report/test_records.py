"""The report's records round-trip through JSON; the package stays light; the Markdown report."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from typing import Any

import pytest

import ekka.report
from ekka.errors import ReportFormatError
from ekka.report import (
    BisectionSummary,
    CommitRef,
    Comparison,
    Coverage,
    Diagnosis,
    Localization,
    OutputCheck,
    ProbeStep,
    Reduction,
    RootCause,
    Suspect,
    TargetInfo,
    TouchedSymbol,
    render_markdown,
    write_reports,
)


def comparison(sequence: int, ratio: float, pass_index: int = 0, **fields: Any) -> Comparison:
    return Comparison(
        sequence,
        f"model.layers.{sequence}.mlp",
        "LlamaMLP",
        "vllm/model_executor/models/llama.py",
        10 + sequence,
        pass_index,
        pass_index,
        sequence,
        "output",
        False,
        ratio,
        ratio * 1e-6 if math.isfinite(ratio) else ratio,
        1e-6,
        not math.isfinite(ratio),
        3,
        4,
        **fields,
    )


def suspect(rank: int = 1, ratio: float = math.inf, **fields: Any) -> Suspect:
    values: dict[str, Any] = {
        "rank": rank,
        "component": "model.layers.0.input_layernorm",
        "module_class": "RMSNorm",
        "source_file": "vllm/model_executor/layers/layernorm.py",
        "source_line": 42,
        "ratio": ratio,
        "jump": math.inf,
        "persistence": 1.0,
        "pass_index": 0,
        "step": 0,
        "position": 3,
        "evidence": "non-finite values (NaN/inf) where the reference is finite",
        "confirmed": True,
    }
    values.update(fields)
    return Suspect(**values)


ROOT_CAUSE = RootCause(
    commit="a" * 40,
    pr=1234,
    statement=(
        "commit aaaaaaaaaa (PR #1234) changed LlamaDecoderLayer.__init__ in "
        "vllm/model_executor/models/llama.py; LlamaDecoderLayer (model.layers.0) builds and owns "
        "the first component that diverges: model.layers.0.input_layernorm (ratio inf)"
    ),
    matched=True,
    level="owner",
    component="model.layers.0.input_layernorm",
    touched=(
        TouchedSymbol("vllm/model_executor/models/llama.py", "LlamaDecoderLayer.__init__", 1, 1),
    ),
)

BISECTION = BisectionSummary(
    status="found",
    good=CommitRef("1" * 40, "good start", None),
    bad=CommitRef("2" * 40, "bad end", 7),
    first_bad=CommitRef("a" * 40, "Break the norm", 1234),
    probes=4,
    cached=1,
    rounds=2,
    steps=(
        ProbeStep(0, "1" * 40, "good start", "good", "logits match", 1.25, False),
        ProbeStep(0, "2" * 40, "bad end", "bad", "logits diverge", 1.5, True),
        ProbeStep(1, "a" * 40, "Break the norm", "bad", "logits diverge", 1.0),
    ),
    candidates=(CommitRef("a" * 40, "Break the norm", 1234),),
)


def diagnosis(**fields: Any) -> Diagnosis:
    comps = (
        comparison(0, 0.9),
        comparison(1, math.inf, kind="input", token_ratio=math.inf),
        comparison(2, 35.0, discounted_tokens=2, token_ratio=40.0),
        comparison(3, 1.1, pass_index=1),
    )
    values: dict[str, Any] = {
        "model": "/models/llama",
        "dtype": "bfloat16",
        "prompt": "Hello there",
        "prompt_ids": (1, 2, 3),
        "max_tokens": 4,
        "threshold": 2.0,
        "target": TargetInfo("vllm", "0.32.0", "abc123", "/src/vllm"),
        "target_tokens": (5, 6, 7, 8),
        "reference_tokens": (5, 6, 9, 8),
        "localization": Localization(2.0, (suspect(1), suspect(2, 35.0, confirmed=None)), comps[1]),
        "comparisons": comps,
        "unmapped": (("model.rotary_emb", "no reference component"), ("model.x", "no rule")),
        "engine": {"enable_chunked_prefill": True, "max_num_batched_tokens": 8},
        "timings": {"target": 1.5, "analysis": 0.25},
    }
    values.update(fields)
    return Diagnosis(**values)


REDUCTION = Reduction(
    kept=("before 0",),
    alone=False,
    statement="diverges only when the request before it (before 0, run first) shares its "
    "first 2 blocks (64 tokens)",
    command="ekka diagnose --model m --scenario reduced.toml",
    scenario_file="reduced.toml",
    runs=1,
    seconds=35.5,
    requests=1,
)


COVERAGE = (
    Coverage("model.layers.0.input_layernorm", "RMSNorm", (0, 1, 2)),
    Coverage(
        "model.layers.1.self_attn.rotary_emb",
        "RotaryEmbedding",
        (),
        (0, 1, 2),
        "no reference counterpart: no mapping rule",
    ),
    Coverage("model.layers.0", "LlamaDecoderLayer", (0, 2), (1,), "a pass without a span: 1"),
)

RECORDS = [
    comparison(0, 1.5),
    comparison(1, math.inf, token_ratio=math.inf),
    comparison(2, 3.0, kind="input", discounted_tokens=1),
    comparison(
        3, math.inf, kind="metadata", detail="pass 1: positions 16..31 expected, 32..47 given"
    ),
    suspect(),
    suspect(3, math.inf, metadata="pass 1: positions 16..31 expected, 32..47 given"),
    OutputCheck(False, None, "the logits match (largest error ratio 1.2)", 1.2),
    OutputCheck(True, 0, "the logits of step 0 diverge: error ratio inf", math.inf),
    suspect(2, 3.5, jump=-math.inf, confirmed=False),
    Localization(2.0),
    Localization(3.0, (suspect(),), comparison(1, math.inf)),
    TargetInfo(),
    TargetInfo("vllm", "0.32.0", None, "/src"),
    TouchedSymbol("a.py", "A.f", 3, 0),
    ROOT_CAUSE,
    RootCause("b" * 40, None, "no suspect", False, "none", None),
    CommitRef("c" * 40),
    ProbeStep(2, "d" * 40, "s", "skip", "build failed", math.inf, True),
    BISECTION,
    BisectionSummary("ambiguous", CommitRef("1" * 40), CommitRef("2" * 40), None, 3, 0, 2),
    diagnosis(),
    diagnosis(root_cause=ROOT_CAUSE, bisection=BISECTION),
    diagnosis(
        localization=Localization(2.0),
        output=OutputCheck(True, 1, "the greedy token of step 1 is 7, the reference's 9", 1.1),
        notes=("the oracle and the localization disagree",),
    ),
    REDUCTION,
    COVERAGE[1],
    diagnosis(coverage=COVERAGE),
    diagnosis(
        scenario={
            "before": [{"prompt_token_ids": [1, 2], "max_tokens": 1}],
            "alongside": [],
            "traced_at": None,
        },
        reduction=REDUCTION,
        notes=(
            "the traced request took its first 64 prompt tokens (of 100) from the prefix cache",
        ),
    ),
    diagnosis(
        threshold=math.inf,
        localization=Localization(math.inf),
        prompt=None,
        engine={},
        timings={"target": math.inf},
    ),
]


def test_the_coverage_map_is_in_the_json_and_the_html() -> None:
    original = diagnosis(coverage=COVERAGE)
    data = original.to_json()
    assert data["coverage"][1]["not_compared"] == [0, 1, 2]
    assert Diagnosis.from_json(json.loads(json.dumps(data))).coverage == COVERAGE
    md = render_markdown(original)
    assert "3 target modules: 1 compared in every pass they ran in, 1 in some, 1 in none." in md
    assert "| `model.layers.0` | LlamaDecoderLayer | 0, 2 | 1 | a pass without a span: 1 |" in md
    assert "| `model.layers.0.input_layernorm` | RMSNorm | 0-2 | - | - |" in md
    assert "## Coverage" not in render_markdown(diagnosis())


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_every_record_round_trips_through_json_text(record: Any) -> None:
    data = record.to_json()
    assert type(record).from_json(data) == record
    text = json.dumps(data, allow_nan=False)  # "inf"/"nan" strings, never bare Infinity
    again = type(record).from_json(json.loads(text))
    assert again == record
    assert again.to_json() == data
    assert json.dumps(again.to_json(), allow_nan=False) == text


def test_nan_is_written_as_a_string_and_read_back_as_a_float() -> None:
    record = comparison(0, math.nan, token_ratio=math.nan)
    text = json.dumps(record.to_json(), allow_nan=False)
    assert '"ratio": "nan"' in text
    again = Comparison.from_json(json.loads(text))
    assert math.isnan(again.ratio) and math.isnan(again.token_ratio)
    assert again.to_json() == record.to_json()
    assert dataclasses.replace(again, ratio=0.0, error=0.0, token_ratio=0.0) == (
        dataclasses.replace(record, ratio=0.0, error=0.0, token_ratio=0.0)
    )


def test_a_diagnosis_reads_back_with_typed_records() -> None:
    original = diagnosis(root_cause=ROOT_CAUSE, bisection=BISECTION)
    again = Diagnosis.from_json(json.loads(json.dumps(original.to_json())))
    assert isinstance(again.localization.suspects, tuple)
    assert isinstance(again.localization.suspects[0], Suspect)
    assert isinstance(again.comparisons[1], Comparison) and again.comparisons[1].ratio == math.inf
    assert again.localization.change_point == original.comparisons[1]
    assert again.unmapped == original.unmapped and again.prompt_ids == (1, 2, 3)
    assert again.verdict == ROOT_CAUSE.statement and again.diverged


def test_the_json_keeps_timings_in_their_own_section_and_leads_with_the_verdict() -> None:
    data = diagnosis().to_json()
    assert list(data)[:2] == ["verdict", "diverged"]
    assert data["timings"] == {"target": 1.5, "analysis": 0.25}
    assert data["suspects"][0]["ratio"] == "inf" and data["target"]["path"] == "/src/vllm"
    assert "seconds" not in data


def test_records_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        diagnosis().model = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        comparison(0, 1.0).ratio = 2.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Localization(2.0).change_point = None  # type: ignore[misc]


def test_a_diagnosis_and_its_localization_share_one_threshold() -> None:
    with pytest.raises(ValueError, match="threshold"):
        diagnosis(threshold=3.0)


def test_verdicts() -> None:
    assert diagnosis(localization=Localization(2.0)).verdict == "no divergence"
    assert diagnosis().verdict == (
        "divergence: model.layers.0.input_layernorm (RMSNorm) is the first component that diverges"
    )
    assert diagnosis(root_cause=ROOT_CAUSE).verdict == ROOT_CAUSE.statement


def test_a_diverging_output_is_never_no_divergence() -> None:
    """No component crosses the threshold, the output does: diverged, and the verdict says
    where to look."""
    output = OutputCheck(True, 1, "the greedy token of step 1 is 7, the reference's 9", 1.1)
    found = diagnosis(localization=Localization(2.0), output=output)
    assert found.diverged
    assert found.verdict.startswith(
        "the output diverges at step 1 (the greedy token of step 1 is 7, the reference's 9), "
        "but no traced component does: the cause is outside the traced modules"
    )
    assert found.verdict.endswith(
        "closest: model.layers.2.mlp (35), model.layers.3.mlp (1.1), model.layers.0.mlp (0.9)"
    )
    matching = diagnosis(
        localization=Localization(2.0), output=dataclasses.replace(output, diverged=False)
    )
    assert not matching.diverged and matching.verdict == "no divergence"


def test_a_metadata_change_point_is_named_in_the_verdict() -> None:
    change = comparison(
        1,
        math.inf,
        kind="metadata",
        detail="pass 1 (step 0, positions 16..31): positions 16..31 expected, 32..47 given",
    )
    found = diagnosis(localization=Localization(2.0, (suspect(1),), change))
    assert found.verdict.endswith(
        "consumed wrong serving metadata first: pass 1 (step 0, positions 16..31): positions "
        "16..31 expected, 32..47 given"
    )


def test_a_missing_key_names_the_record_and_the_key() -> None:
    data = diagnosis().to_json()
    del data["suspects"][0]["component"]
    with pytest.raises(
        ReportFormatError, match=r"at suspects\[0\] \(Suspect\): missing field 'component'"
    ):
        Diagnosis.from_json(data)
    with pytest.raises(ReportFormatError, match="not a number"):
        Comparison.from_json({**comparison(0, 1.0).to_json(), "ratio": "lots"})
    with pytest.raises(ReportFormatError, match="not an object"):
        Localization.from_json([])  # type: ignore[arg-type]


def test_root_cause_and_bisection_read_the_bisect_modules_json() -> None:
    from ekka.bisect.attribution import Attribution, Touched
    from ekka.bisect.history import CommitInfo, CommitRange
    from ekka.bisect.search import BisectResult, BisectStatus, BisectStep
    from ekka.bisect.verdict import ProbeResult, Verdict

    attribution = Attribution(
        "a" * 40, 12, "commit a changed X", True, "class", "m.x", (Touched("f.py", "X.f", 2, 1),)
    )
    root = RootCause.from_json(attribution.to_json())
    assert root == RootCause(
        "a" * 40,
        12,
        "commit a changed X",
        True,
        "class",
        "m.x",
        (TouchedSymbol("f.py", "X.f", 2, 1),),
    )

    def commit(n: int, pr: int | None = None) -> CommitInfo:
        return CommitInfo(str(n) * 40, f"commit {n}", f"commit {n}\n\nbody", "A", "2024-01-01", pr)

    good, mid, bad = commit(1), commit(2, 99), commit(3)
    steps = (
        BisectStep(good, Verdict.GOOD, "match", 0, 1.0, runs=(ProbeResult(Verdict.GOOD, "m"),)),
        BisectStep(bad, Verdict.BAD, "diverge", 0, 2.0, cached=True),
        BisectStep(mid, Verdict.BAD, "diverge", 1, 1.5),
    )
    result = BisectResult(
        BisectStatus.FOUND, good, bad, mid, good, CommitRange(good, bad, [mid]), steps, 2, 1, ()
    )
    summary = BisectionSummary.from_json(result.to_json())
    assert summary.status == "found" and summary.first_bad == CommitRef("2" * 40, "commit 2", 99)
    assert (summary.good.sha, summary.bad.sha) == ("1" * 40, "3" * 40)
    assert (summary.probes, summary.cached, summary.rounds) == (2, 1, 1)
    assert summary.steps[1] == ProbeStep(0, "3" * 40, "commit 3", "bad", "diverge", 2.0, True)
    assert summary.candidates == (CommitRef("2" * 40, "commit 2", 99),)
    attached = dataclasses.replace(diagnosis(), root_cause=root, bisection=summary)
    assert Diagnosis.from_json(json.loads(json.dumps(attached.to_json()))) == attached


def test_markdown_of_a_full_diagnosis() -> None:
    md = render_markdown(diagnosis(root_cause=ROOT_CAUSE, bisection=BISECTION))
    assert f"**Verdict: {ROOT_CAUSE.statement}.**" in md
    assert "## Root cause" in md and ROOT_CAUSE.statement + "\n" in md
    assert "first bad commit `aaaaaaaaaaaa` Break the norm (PR #1234)" in md
    assert "### Probe log" in md and "| bad (cached) |" in md
    assert "`LlamaDecoderLayer.__init__` in `vllm/model_executor/models/llama.py`" in md
    assert "## Suspects" in md and "| 1 | `model.layers.0.input_layernorm` | RMSNorm |" in md
    assert "| 2 | `model.layers.0.input_layernorm` | RMSNorm |" in md
    assert "`enable_chunked_prefill=true`" in md
    assert "- `model.rotary_emb`: no reference component" in md
    assert "Seconds" not in md and "seconds:" not in md.lower() and "timings" not in md


def test_markdown_without_a_divergence() -> None:
    md = render_markdown(diagnosis(localization=Localization(2.0)))
    assert "**Verdict: no divergence.**" in md and "## Suspects" not in md
    assert "## Root cause" not in md and "Seconds" not in md


def test_write_reports_writes_the_four_files(tmp_path: Any) -> None:
    original = diagnosis(root_cause=ROOT_CAUSE, bisection=BISECTION)
    paths = write_reports(original, tmp_path / "out")
    assert sorted(paths) == ["html", "json", "md", "png"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert Diagnosis.from_json(json.loads(paths["json"].read_text())) == original
    html = paths["html"].read_text()
    assert "data:image/png;base64," in html and "<table>" in html and "Seconds" not in html


def test_the_package_imports_neither_torch_nor_numpy() -> None:
    code = "import ekka.report, sys; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "False"]


def test_exported_names() -> None:
    assert sorted(ekka.report.__all__) == [
        "BisectionSummary",
        "CommitRef",
        "Comparison",
        "Coverage",
        "Diagnosis",
        "Latent",
        "LatentVerdict",
        "Localization",
        "OutputCheck",
        "ProbeStep",
        "Reduction",
        "RootCause",
        "Suspect",
        "TargetInfo",
        "TouchedSymbol",
        "comparisons_table",
        "plot_ratios",
        "render_html",
        "render_markdown",
        "suspects_table",
        "write_reports",
    ]
    assert all(hasattr(ekka.report, name) for name in ekka.report.__all__)


def test_markdown_of_a_reduced_scenario() -> None:
    md = render_markdown(
        diagnosis(scenario={"before": [[1]], "alongside": []}, reduction=REDUCTION)
    )
    assert "scenario: 1 request(s) before the traced one, 0 alongside it" in md
    assert "## Reduced scenario" in md and REDUCTION.statement in md
    assert "reproduce: `ekka diagnose --model m --scenario reduced.toml`" in md


def test_the_comparisons_table_shows_every_row_and_marks_a_large_ratio() -> None:
    from rich.console import Console

    console = Console(record=True, width=200, color_system="truecolor", force_terminal=True)
    ekka.report.comparisons_table([comparison(0, 1.5), comparison(1, 9.0)], console)
    text = console.export_text(styles=True)
    assert "target vs reference, component by component" in text
    rows = [line for line in text.splitlines() if "model.layers" in line]
    assert len(rows) == 2 and "\x1b[31m" not in rows[0] and "\x1b[31m" in rows[1]


def test_a_latent_difference_is_reported_and_round_trips() -> None:
    from ekka.report.records import Latent, LatentVerdict

    latent = (
        Latent("model.self_decoder.per_layer_projection_norm", "RMSNorm", "vllm/x.py", 3,
               "model.self_decoder", LatentVerdict.GLUE, 6272.0, 2.58e6, 0, 0.0),
        Latent("model.layers.0.self_attn.attn", "Attention", None, None,
               "model.layers.0.self_attn.attn", LatentVerdict.UNREPLAYED, 30.0, 0.0, 0),
    )  # fmt: skip
    original = diagnosis(localization=Localization(2.0), latent=latent)
    md = render_markdown(original)
    assert "**Verdict: no divergence.**" in md and "## Latent differences" in md
    assert "- **confirmed**: latent: the code in model.self_decoder's forward" in md
    assert "- not confirmed: model.layers.0.self_attn.attn (Attention)" in md
    assert Diagnosis.from_json(original.to_json()) == original
    assert "## Latent differences" not in render_markdown(diagnosis(localization=Localization(2.0)))
