"""Localize mode end to end on real vLLM (CPU) and transformers: no false alarms on the zoo,
the known findings (ekka/data/arch-sweep-findings.json) found, a patched vLLM diagnosed,
reports and exit codes."""

from __future__ import annotations

import json

import pytest

from ekka.bench import copy_sources, find_cases
from ekka.bisect.framework_repo import apply_patch
from ekka.cli import main
from ekka.frameworks import installed_package_dir
from ekka.sweep.arch_rows import known_finding, load_findings
from ekka.sweep.arch_runner import framework_versions
from ekka.tracer.coverage import NO_COUNTERPART
from ekka.tracer.diagnose import DiagnoseConfig, run_diagnosis
from ekka.zoo import list_architectures
from tests.conftest import BENCH, LONG_PROMPT_IDS, PROMPT_IDS

pytestmark = pytest.mark.vllm
CASES = BENCH / "cases"
ARCHS = [a.name for a in list_architectures()]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("arch", ARCHS)
def test_unmodified_vllm_has_no_divergence(arch, dtype, diagnosed):
    # the session's diagnosis of this request: tests/tracer/test_capture.py asserts on its
    # target's trace (the vLLM capture) for four of these architectures
    diagnosis = diagnosed(arch, dtype).diagnosis
    assert len(diagnosis.comparisons) > 20
    metadata = [c for c in diagnosis.comparisons if c.kind == "metadata"]
    assert len(metadata) == 3 * 3, "input ids, positions, attention metadata in each pass"
    assert all(c.ratio == 0 for c in metadata), [c.detail for c in metadata if c.ratio]
    # the coverage map: every module that ran, each with a counterpart compared in every pass
    gaps = [c for c in diagnosis.coverage if not c.complete and NO_COUNTERPART not in c.reason]
    assert diagnosis.coverage and not gaps, gaps
    # A divergence examined once (ekka/data/arch-sweep-findings.json, for these releases):
    # Cohere2's sliding window, which vLLM widens by one on purpose and transformers does not
    # (a finding the zoo's config does not show, OLMoE's, is not expected here).
    finding = known_finding(load_findings(), arch, dtype, framework_versions())
    if finding is not None and finding.shown_by_sweep:
        assert diagnosis.diverged, finding.note
        assert diagnosis.localization.suspects[0].component == finding.component
    else:
        assert not diagnosis.diverged, [
            (s.component, s.ratio) for s in diagnosis.localization.suspects
        ]
        assert diagnosis.output is not None and not diagnosis.output.diverged
        worst = max(diagnosis.comparisons, key=lambda c: c.ratio)
        assert worst.ratio < 4, (
            f"a mapping that does not fit: {worst.target} ratio {worst.ratio:.3g}"
        )


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Gemma3ForCausalLM", "Qwen3MoeForCausalLM"])
def test_unmodified_vllm_chunked_prefill_matches_the_request_everywhere(arch, diagnosed):
    """Chunked prefill and decode on a pristine engine (one KV-cache group, a sliding-window
    and a full one, an MoE): every pass placed and every metadata check as expected. The
    prompt's 37 tokens run in chunks of 16, 16 and 5 (tests/tracer/test_capture.py reads
    Llama's chunks from the same diagnosis's target trace)."""
    diagnosis = diagnosed(
        arch, prompt_ids=LONG_PROMPT_IDS, engine={"max_num_batched_tokens": 16}
    ).diagnosis
    passes = {c.pass_index: c.step for c in diagnosis.comparisons}
    assert passes == {0: 0, 1: 0, 2: 0, 3: 1, 4: 2}
    metadata = [c for c in diagnosis.comparisons if c.kind == "metadata"]
    assert len(metadata) == 5 * 3
    assert all(c.ratio == 0 for c in metadata), [c.detail for c in metadata if c.ratio]
    assert not diagnosis.diverged, diagnosis.verdict


def _patched_copy(case_id: str, root):
    case = find_cases(CASES, [case_id])[0]
    copy_sources(installed_package_dir("vllm"), root)
    apply_patch(case.path / "bug.patch", root)
    return case


def test_cli_diagnose_names_the_broken_norm_and_writes_reports(tmp_path, zoo_model, capsys):
    case = _patched_copy("llama-rmsnorm-eps-ignored", tmp_path / "src")
    model = zoo_model("llama", rms_norm_eps=1e-5)
    out = tmp_path / "report"
    code = main(
        [
            "diagnose",
            "--model",
            str(model),
            "--prompt-ids",
            ",".join(map(str, PROMPT_IDS)),
            "--max-tokens",
            "3",
            "--out",
            str(out),
            "--target-path",
            str(tmp_path / "src"),
        ]
    )
    text = capsys.readouterr().out
    assert code == 1, text
    report = json.loads((out / "report.json").read_text())
    assert report["diverged"] and report["target"]["path"].startswith(str(tmp_path / "src"))
    top = report["suspects"][0]
    assert top["component"] in (
        "model.layers.0.input_layernorm",
        "model.layers.0.post_attention_layernorm",
    )
    assert (
        top["source_file"] == "vllm/model_executor/layers/layernorm.py" and top["source_line"] > 0
    )
    assert top["confirmed"] is True  # replay on the reference's input reproduces the error
    assert any(c["kind"] == "input" for c in report["comparisons"])
    md = (out / "report.md").read_text()
    assert "Verdict: divergence" in md and case.truth_components[0].split("*")[0] in md
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html


def test_a_replay_that_fails_after_the_analysis_leaves_the_suspects_standing(
    tmp_path, zoo_model, monkeypatch
):
    """The target's process replays after its trace is written and analysed: its failure
    there (here: a reference it cannot read) costs the replay's verdict, not the diagnosis."""
    from ekka.tracer.session import TargetSession

    real_replay = TargetSession.replay

    def replay_on_nothing(self, reference, modules=None):
        return real_replay(self, tmp_path / "no-such-reference", modules)

    monkeypatch.setattr(TargetSession, "replay", replay_on_nothing)
    _patched_copy("llama-rmsnorm-eps-ignored", tmp_path / "src")
    said: list[str] = []
    diagnosis = run_diagnosis(
        DiagnoseConfig(
            model=str(zoo_model("llama", rms_norm_eps=1e-5)),
            prompt_ids=PROMPT_IDS,
            workdir=str(tmp_path / "work"),
            max_tokens=3,
            target_pythonpath=(str(tmp_path / "src"),),
        ),
        progress=said.append,
    )
    assert diagnosis.diverged
    assert diagnosis.localization.suspects[0].component in (
        "model.layers.0.input_layernorm",
        "model.layers.0.post_attention_layernorm",
    )
    assert all(s.confirmed is None for s in diagnosis.localization.suspects)
    assert any("the replay failed" in line and "exit code" in line for line in said), said


def test_cli_diagnose_exit_code_zero_without_divergence(tmp_path, zoo_model, capsys):
    code = main(
        [
            "diagnose",
            "--model",
            str(zoo_model("qwen2")),
            "--prompt-ids",
            ",".join(map(str, PROMPT_IDS)),
            "--max-tokens",
            "2",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 0, capsys.readouterr().out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["verdict"] == "no divergence"
    # internal timings stay in the JSON's own section, out of what a user reads
    assert report["timings"]["analysis"] > 0
    assert "analysis" not in (tmp_path / "r" / "report.md").read_text().lower().split("verdict")[0]
    assert "Seconds" not in (tmp_path / "r" / "report.md").read_text()


def test_bench_scores_every_public_case(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(
        ["bench", str(CASES), "--json", str(out), "--no-bisect", "--workdir", str(tmp_path / "w")]
    )
    assert code == 0, capsys.readouterr().out
    result = json.loads(out.read_text())
    assert {"cases", "top1", "top5"} <= set(result)
    for case in result["cases"]:
        assert {"id", "top1", "top5", "suspects", "seconds"} <= set(case)
        assert "error" not in case, case
    assert result["top1"] == 1.0, [(c["id"], c["suspects"][:3]) for c in result["cases"]]
    assert result["top5"] == 1.0


def test_bench_rejects_unknown_case(tmp_path, capsys):
    code = main(["bench", str(tmp_path), "--no-bisect"])
    assert code == 2 and "no case folders" in capsys.readouterr().err


def test_bench_with_bisection_finds_the_bug_commit(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            str(CASES),
            "--case",
            "mistral-sliding-window-off-by-one",
            "--json",
            str(out),
            "--workdir",
            str(tmp_path / "w"),
        ]
    )
    assert code == 0, capsys.readouterr().out
    result = json.loads(out.read_text())
    case = result["cases"][0]
    assert result["bisect"] == 1.0 and case["bisect"] is True
    assert case["first_bad"] == case["bug_commit"] and 0 < case["probes"] <= 6
    assert case["top1"]
    # the patch is in the CPU attention backend, the suspect is the model's Attention module:
    # the root cause names the commit either way
    assert case["root_cause"] and case["bug_commit"][:10] in case["root_cause"]
