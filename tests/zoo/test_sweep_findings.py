"""The architecture sweep's row kinds, failure causes, findings file and finding folders, on
rows made by hand (no framework runs; the reproduction scripts run in the vLLM-marked tests)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from ekka.errors import UsageError
from ekka.report.records import Latent, LatentVerdict
from ekka.sweep.arch_findings import FindingFolder, code_excerpt
from ekka.sweep.arch_render import render_markdown, write_reports
from ekka.sweep.arch_rows import (
    ArchRow,
    FailCause,
    RowKind,
    SweepReport,
    fail_cause,
    load_findings,
    parse_findings,
    row_kind,
)

VERSIONS = {"vllm": "0.32.0", "transformers": "5.19.0"}
REPRODUCE = Path(__file__).parents[2] / "ekka" / "data" / "reproduce"


def latent(verdict: LatentVerdict) -> Latent:
    return Latent("m.norm", "RMSNorm", None, None, "m", verdict, 6272.0, 2.58e6, 0, 0.0)


def row(arch: str, status: str, ratio: float | None = None, **fields: object) -> ArchRow:
    loads = status in ("match", "diverges")
    return ArchRow(arch, "float32", status, True, loads, loads, fields.pop("reason", "x"),
                   ratio=ratio, command=f"ekka zoo build {arch}", **fields)  # fmt: skip


ROWS = (
    row("LlamaForCausalLM", "match", 0.15),
    row("Gemma3nForCausalLM", "match", 2.58e6, latent=(latent(LatentVerdict.GLUE),)),
    row("Exaone4ForCausalLM", "match", 2.9e5, latent=(latent(LatentVerdict.UNREPLAYED),)),
    row("ApertusForCausalLM", "diverges", 136.0, component="model.layers.0.mlp.act_fn"),
    row("Cohere2ForCausalLM", "diverges", 1.3e5, component="model.layers.0.self_attn.attn"),
    row("HrmTextForCausalLM", "diverges", 2.6e5, component="model.L_module.layers.0.self_attn"),
    row("FalconForCausalLM", "vllm-failed", reason="vLLM: RuntimeError: start (0) + length (512)"),
    row("MambaForCausalLM", "vllm-failed", reason="vLLM: no attribute 'selective_scan_fwd'"),
    row("AfmoeForCausalLM", "vllm-failed",
        reason="vLLM: AttributeError: 'AfmoeConfig' object has no attribute 'score_func'"),
    row("LagunaForCausalLM", "vllm-failed", reason="vLLM: AssertionError: "),
    row("DbrxForCausalLM", "build-failed", reason="AttributeError: rope_theta"),
)  # fmt: skip


@pytest.fixture
def report() -> SweepReport:
    return SweepReport(VERSIONS, ROWS, 1.0, 0, tuple(load_findings()))


def test_row_kinds_and_causes(report: SweepReport) -> None:
    kinds = {r.architecture: report.kind(r) for r in report.rows}
    assert kinds["LlamaForCausalLM"] is RowKind.MATCH
    assert kinds["Gemma3nForCausalLM"] is RowKind.LATENT  # confirmed by the replay
    assert kinds["Exaone4ForCausalLM"] is RowKind.UNEXPLAINED  # never a silent "transient"
    assert kinds["ApertusForCausalLM"] is RowKind.DIVERGES
    assert kinds["Cohere2ForCausalLM"] is RowKind.DIVERGES  # a known convention difference
    assert kinds["HrmTextForCausalLM"] is RowKind.GAP  # Ekka's gap, named
    labels = {r.architecture: report.label(r) for r in report.rows}
    assert labels["FalconForCausalLM"] == "fails (vLLM)"  # a known vLLM bug, loud
    assert labels["MambaForCausalLM"] == "fails (missing CPU kernel)"
    assert labels["AfmoeForCausalLM"] == "fails (Ekka's configuration)"
    # a bare AssertionError: the CPU router's missing path, named by its finding
    assert labels["LagunaForCausalLM"] == "fails (missing CPU kernel)"
    assert fail_cause(ROWS[9], None) is FailCause.TARGET  # without the finding: vLLM's
    assert labels["DbrxForCausalLM"] == "fails (Ekka's configuration)"
    assert fail_cause(ROWS[0], None) is None
    assert fail_cause(ROWS[7], None) is FailCause.KERNEL
    assert row_kind(ROWS[1], None) is RowKind.LATENT
    # new: the unexplained ratio only (Gemma3n's latent finding is known)
    assert [r.architecture for r in report.rows if report.new(r)] == ["Exaone4ForCausalLM"]
    assert report.summary()["new_findings"] == 1
    assert report.summary()["float32 kinds"]["latent"] == 1


def test_an_unknown_latent_module_is_new() -> None:
    report = SweepReport(VERSIONS, ROWS[1:2], 1.0, 0, ())
    assert report.new(ROWS[1]) and report.summary()["new_findings"] == 1
    assert "latent: the code in m's forward that feeds m.norm" in render_markdown(report)


def test_the_findings_file_is_classified_and_cohere2_is_a_convention_difference() -> None:
    every = load_findings()
    findings = {f.architecture: f for f in every if f.framework == "vllm"}
    assert findings["Cohere2ForCausalLM"].classification == "convention difference"
    assert "training convention" in findings["Cohere2ForCausalLM"].side
    assert findings["Gemma3nForCausalLM"].classification == "vllm bug"
    assert findings["HrmTextForCausalLM"].classification == "ekka gap"
    assert {f.framework for f in every} == {"vllm", "sglang"}
    sglang = {f.architecture: f for f in every if f.framework == "sglang"}
    assert sglang["MistralForCausalLM"].classification == "sglang bug"
    assert sglang["Cohere2ForCausalLM"].classification == "convention difference"
    assert all(f.target_version == "0.5.23" for f in sglang.values())
    for f in every:  # every slug has its reproduction
        assert f.slug is None or (REPRODUCE / f"{f.slug}.py").is_file()
    with pytest.raises(UsageError, match="kind 'vllm bug \\(precision\\)'"):
        parse_findings(json.dumps([{**_entry(), "kind": "vllm bug (precision)"}]))


def _entry() -> dict[str, object]:
    return {"architecture": "X", "dtypes": ["float32"], "vllm": "0.32.0",
            "transformers": "5.19.0", "kind": "vllm bug", "note": "n"}  # fmt: skip


def test_finding_folders_are_written_and_linked(report: SweepReport, tmp_path: Path) -> None:
    paths = write_reports(report, tmp_path)
    found = tmp_path / "findings"
    folders = sorted(p.name for p in found.iterdir())
    assert folders == [
        "apertus-xielu-bfloat16",
        "cohere2-sliding-window",
        "falcon-ffn-hidden-size",
        "gemma3n-per-layer-projection-scale",
        "new-Exaone4ForCausalLM-float32",
    ]
    gemma = found / "gemma3n-per-layer-projection-scale"
    record = FindingFolder.from_json(json.loads((gemma / "classification.json").read_text()))
    assert record.classification == "vllm bug" and record.reproduce == "reproduce.py"
    assert record.rows[0].kind == "latent" and record.rows[0].component == "m"
    text = (gemma / "report.md").read_text()
    assert text.startswith("# Gemma3nForCausalLM: vLLM bug")
    assert "## Which side differs, and why" in text and "gemma3n.py:651-657" in text
    new = FindingFolder.from_json(
        json.loads((found / "new-Exaone4ForCausalLM-float32" / "classification.json").read_text())
    )
    assert new.classification == "unexamined" and new.reproduce is None
    md = paths["md"].read_text()
    assert "[finding folder](findings/gemma3n-per-layer-projection-scale)" in md
    assert "[finding folder](findings/new-Exaone4ForCausalLM-float32)" in md
    assert json.loads(paths["json"].read_text())["finding_folders"]["cohere2-sliding-window"]


def test_reproductions_import_no_ekka() -> None:
    scripts = sorted(REPRODUCE.glob("*.py"))
    assert len(scripts) >= 4
    for script in scripts:
        tree = ast.parse(script.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] == "ekka"], script.name
        assert 'if __name__ == "__main__":' in script.read_text()


def test_code_excerpts_read_the_installed_lines() -> None:
    assert code_excerpt("nowhere/x.py:1") is None and code_excerpt("not a reference") is None
    excerpt = code_excerpt("json/__init__.py:1-2")
    assert excerpt is not None and excerpt.splitlines()[0].startswith("    1  ")


def test_a_finding_the_sweeps_config_does_not_show_explains_no_row() -> None:
    findings = tuple(load_findings())
    [olmoe] = [f for f in findings if (f.architecture, f.framework) == ("OlmoeForCausalLM", "vllm")]
    assert not olmoe.shown_by_sweep and olmoe.slug == "olmoe-norm-eps-clip-qkv"
    diverging = row("OlmoeForCausalLM", "diverges", 50.0, component="model.layers.0.mlp")
    report = SweepReport(VERSIONS, (diverging,), 1.0, 0, findings)
    assert report.kind(diverging) is RowKind.DIVERGES and report.new(diverging)
    matching = row("OlmoeForCausalLM", "match", 0.2)
    assert SweepReport(VERSIONS, (matching,), 1.0, 0, findings).kind(matching) is RowKind.MATCH


def test_a_finding_named_since_leaves_no_stale_folder(tmp_path: Path) -> None:
    exaone = row("Exaone4ForCausalLM", "match", 2.4e5, latent=(latent(LatentVerdict.UNREPLAYED),))
    write_reports(SweepReport(VERSIONS, (exaone,), 1.0, 0, ()), tmp_path)
    assert (tmp_path / "findings" / "new-Exaone4ForCausalLM-float32").is_dir()
    write_reports(SweepReport(VERSIONS, (ROWS[0],), 1.0, 0, ()), tmp_path)
    assert not (tmp_path / "findings").exists() or not list((tmp_path / "findings").iterdir())
