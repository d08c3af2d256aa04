"""The final comment from a saved report.json (the demo's full diagnosis), and the others."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ekka.bot import messages
from ekka.report import Diagnosis
from ekka.report.comment import ratio_chart
from ekka.request import JobParams, Request

pytestmark = pytest.mark.bot
REPORT = Path(__file__).parent / "data" / "report.json"
PARAMS = JobParams(
    request=Request(
        model="/models/tiny-llama",
        prompt_text="The quick brown fox",
        dtype="float32",
        max_tokens=4,
        engine={"enable_chunked_prefill": True},
    ),
    good="v1",
    bad="main",
    model_name="tiny-llama",
)


@pytest.fixture(scope="module")
def diagnosis() -> Diagnosis:
    return Diagnosis.from_json(json.loads(REPORT.read_text()))


def final(diagnosis: Diagnosis, base_url: str | None = "https://ekka.example.org") -> str:
    assert diagnosis.bisection is not None
    return messages.final_comment(
        job=7,
        repository="acme/vllm",
        params=PARAMS,
        diagnosis=diagnosis,
        bisection=diagnosis.bisection,
        base_url=base_url,
    )


def test_the_final_comment_says_what_a_maintainer_needs(diagnosis):
    text = final(diagnosis)
    first = diagnosis.bisection.first_bad
    assert text.startswith("<!-- ekka-job:7 -->\n")
    assert f"**Root cause:** {diagnosis.root_cause.statement}" in text
    assert f"(https://github.com/acme/vllm/commit/{first.sha})" in text
    assert "[PR #9006](https://github.com/acme/vllm/pull/9006)" in text
    rows = [line for line in text.splitlines() if re.match(r"\| \d \| `", line)]
    assert len(rows) == len(diagnosis.localization.suspects)
    assert rows[0].startswith("| 1 | `model.layers.0.input_layernorm` | RMSNorm |")
    assert "wrong by itself" in rows[0]
    assert (
        "--engine enable_chunked_prefill=true" in text and "--prompt 'The quick brown fox'" in text
    )
    assert text.rstrip().endswith("https://ekka.example.org/jobs/7/report")
    assert "jobs/7/report" not in final(diagnosis, base_url=None)


def test_the_chart_is_a_mermaid_xychart_of_the_change_points_pass(diagnosis):
    chart = ratio_chart(diagnosis)
    block = chart.split("```mermaid\n", 1)[1].split("```", 1)[0]
    lines = block.splitlines()
    assert lines[0] == "xychart-beta"
    labels = re.findall(r'"([^"]*)"', lines[2])
    values = [float(v) for v in lines[4].strip().removeprefix("line [").rstrip("]").split(", ")]
    threshold = {float(v) for v in lines[5].strip().removeprefix("line [").rstrip("]").split(", ")}
    outputs = [c for c in diagnosis.comparisons if c.pass_index == 0 and c.kind == "output"]
    assert len(labels) == len(values) == len(outputs) and len(set(labels)) == len(labels)
    assert threshold == {round(__import__("math").log10(2.0), 2)}
    # the planted norm bug: the ratio jumps from noise to ~3e3 at the first input_layernorm
    at = next(i for i, c in enumerate(outputs) if c.target == "model.layers.0.input_layernorm")
    assert values[at] > 3 and all(v < 1 for v in values[:at])


def test_progress_and_the_estimate():
    assert messages.estimate_probes(11) == 5 and messages.estimate_probes(1) == 1
    line = messages.progress_line(4, 7, "[round 2] abc: bad")
    assert line == "probed 4 of ~7 commits: [round 2] abc: bad"
    assert messages.progress_line(9, 7, "x").startswith("probed 9 of ~9")


def test_every_template_carries_its_marker():
    names = [n for n in dir(messages) if n.isupper() and isinstance(getattr(messages, n), str)]
    templates = [n for n in names if "{marker}" in getattr(messages, n)]
    assert len(templates) >= 12
    markers = {messages.job_marker(3), messages.pr_marker(3), messages.command_marker(5)}
    assert markers == {"<!-- ekka-job:3 -->", "<!-- ekka-job:3 pr -->", "<!-- ekka-command:5 -->"}


def test_the_reports_name_the_framework_that_ran_the_target(diagnosis):
    """The final comment and the sweep's issue name the framework from `ekka.frameworks` (and how
    it ran), and the command to reproduce asks for it; vLLM's as before."""
    from dataclasses import replace

    from ekka.report import TargetInfo
    from ekka.sweep.messages import regression_issue

    vllm = final(diagnosis)
    assert "- target: vLLM 0.32.0\n" in vllm and "in vLLM's call order" in vllm
    assert "--framework" not in vllm
    note = "SGLang's torch-native paths; no sgl_kernel"
    sglang = replace(diagnosis, target=TargetInfo("sglang", "0.5.23", notes=(note,)))
    params = replace(PARAMS, request=replace(PARAMS.request, framework="sglang"))
    assert sglang.bisection is not None
    text = messages.final_comment(
        job=7, repository="acme/sglang", params=params, diagnosis=sglang,
        bisection=sglang.bisection, base_url=None,
    )  # fmt: skip
    _, issue = regression_issue(
        sweep="nightly", regression=1, repository="acme/sglang", branch="main", params=params,
        diagnosis=sglang, run=2, head=sglang.bisection.bad.sha,
    )  # fmt: skip
    for body in (text, issue):
        assert f"- target: SGLang 0.5.23 ({note})\n" in body and "vLLM" not in body
        assert "--framework sglang" in body and "--repo /path/to/sglang" in body
    assert "in SGLang's call order" in text
