"""Localize mode end to end on real vLLM (CPU) and transformers: no false alarms on the zoo,
the known Cohere2 disagreement found, a patched vLLM diagnosed, reports and exit codes."""

from __future__ import annotations

import json

import pytest

from ekka.bench import copy_sources, find_cases
from ekka.bisect.framework_repo import apply_patch
from ekka.cli import main
from ekka.repo import installed_framework_dir
from ekka.tracer.diagnose import DiagnoseConfig, run_diagnosis
from ekka.tracer.trace import TraceReader
from ekka.zoo import list_architectures
from tests.conftest import PROMPT_IDS

pytestmark = pytest.mark.vllm
CASES = __import__("pathlib").Path(__file__).resolve().parents[3] / "shared" / "bench" / "cases"
ARCHS = [a.name for a in list_architectures()]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("arch", ARCHS)
def test_unmodified_vllm_has_no_divergence(arch, dtype, zoo_model, tmp_path):
    diagnosis = run_diagnosis(
        DiagnoseConfig(
            model=str(zoo_model(arch)),
            prompt_ids=PROMPT_IDS,
            workdir=str(tmp_path),
            dtype=dtype,
            max_tokens=3,
        )
    )
    assert len(diagnosis.comparisons) > 20
    # the target's process replayed leaves while the analysis ran (as many as it reached
    # before being told there was nothing to confirm) without failing on any
    assert TraceReader(tmp_path / "target" / "replay").complete
    if arch == "Cohere2ForCausalLM":
        # vLLM widens Cohere2's sliding window by one on purpose; transformers does not.
        assert diagnosis.diverged
        assert diagnosis.localization.suspects[0].component == "model.layers.0.self_attn.attn"
    else:
        assert not diagnosis.diverged, [
            (s.component, s.ratio) for s in diagnosis.localization.suspects
        ]
        worst = max(diagnosis.comparisons, key=lambda c: c.ratio)
        assert worst.ratio < 4, (
            f"a mapping that does not fit: {worst.target} ratio {worst.ratio:.3g}"
        )


def _patched_copy(case_id: str, root):
    case = find_cases(CASES, [case_id])[0]
    copy_sources(installed_framework_dir(), root)
    apply_patch(case.path / "bug.patch", root)
    return case


@pytest.mark.skipif(not CASES.is_dir(), reason="shared/bench is not beside the checkout")
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


@pytest.mark.skipif(not CASES.is_dir(), reason="shared/bench is not beside the checkout")
def test_a_replay_that_fails_after_the_analysis_leaves_the_suspects_standing(
    tmp_path, zoo_model, monkeypatch
):
    """The target's process replays after its trace is written and analysed: its failure
    there (here: a reference it cannot read) costs the replay's verdict, not the diagnosis."""
    import ekka.tracer.diagnose as diagnose

    real_capture = diagnose.capture

    def capture(spec, **hooks):
        answer = hooks["after_generate"]

        def unreadable_reference(generated):
            ready = answer(generated)  # deferred: the reference is still being written
            return lambda: {**ready(), "replay_reference": str(tmp_path / "no-such-reference")}

        return real_capture(spec, **{**hooks, "after_generate": unreadable_reference})

    monkeypatch.setattr(diagnose, "capture", capture)
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


def test_cli_diagnose_refuses_an_unknown_ahead_mode(tmp_path, zoo_model, capsys):
    code = main(
        [
            "diagnose",
            "--model",
            str(zoo_model("qwen2")),
            "--prompt-ids",
            "1,2,3",
            "--ahead",
            "always",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2 and "use one of off, prompt, guess" in capsys.readouterr().err


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
            "--ahead",
            "off",
        ]
    )
    assert code == 0, capsys.readouterr().out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["verdict"] == "no divergence"
    assert (
        "reference_ahead" not in report["seconds"]
    )  # every reference pass after the target's tokens


@pytest.mark.skipif(not CASES.is_dir(), reason="shared/bench is not beside the checkout")
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


@pytest.mark.skipif(not CASES.is_dir(), reason="shared/bench is not beside the checkout")
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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_reference_made_ahead_gives_the_same_diagnosis(tmp_path, zoo_model, dtype):
    """The reference's prompt pass (once the target is ready to trace), and its guess of the
    target's tokens (while the engine starts), must not change the diagnosis: the same
    suspects, ratios within rounding. The patched vLLM's tokens differ from the reference's
    guess here, so the follow-up pass runs too."""
    from importlib.resources import files
    from pathlib import Path

    copy_sources(installed_framework_dir(), tmp_path / "src")
    apply_patch(Path(str(files("ekka") / "data" / "demo-regression.patch")), tmp_path / "src")
    model = zoo_model("llama", rms_norm_eps=1e-2)  # the patched layers use 1e-6 instead
    found = {}
    for mode in ("off", "prompt", "guess"):
        config = DiagnoseConfig(
            model=str(model),
            prompt_ids=PROMPT_IDS,
            workdir=str(tmp_path / mode),
            dtype=dtype,
            max_tokens=4,
            target_pythonpath=(str(tmp_path / "src"),),
            ahead=mode,
        )
        found[mode] = run_diagnosis(config)
        references = [TraceReader(p) for p in sorted((tmp_path / mode).glob("reference-*"))]
        assert len(references) == (1 if dtype == "float32" else 2)
        for reference in references:
            assert sorted(p for info in reference.passes for p in info.positions) == list(
                range(len(PROMPT_IDS) + 3)
            )
            assert len(reference.passes) == (
                1 if mode == "off" else 2
            )  # the prompt, then its continuation
        serving = TraceReader(tmp_path / mode / f"reference-{dtype}")
        # the guess is the reference's own greedy run: right exactly when, forced on the
        # target's tokens, the reference would have chosen them itself
        chose_the_same = serving.generated_ids[:-1] == found[mode].target_tokens[:-1]
        assert serving.manifest.get("guess_right") is (chose_the_same if mode == "guess" else None)
        print(dtype, mode, "guess right:", serving.manifest.get("guess_right"))
        assert ("reference_ahead" in found[mode].seconds) is (mode != "off")
        assert found[mode].seconds["analysis_warm_up"] > 0  # on the target's scratch trace
        timings = TraceReader(tmp_path / mode / "target").manifest["timings"]
        if (
            mode == "prompt"
        ):  # not during the engine's start: once the target is ready, while it waits
            assert (
                timings["tracing_told_at"]
                <= found[mode].marks["ahead_started_at"]
                < timings["traced_started_at"]
            )
        else:
            assert "ahead_started_at" not in found[mode].marks
    plain = found["off"]
    assert plain.diverged and plain.localization.suspects[0].component.endswith("layernorm")
    for mode in ("prompt", "guess"):
        early = found[mode]
        assert early.diverged and plain.target_tokens == early.target_tokens
        assert [s.component for s in plain.localization.suspects] == [
            s.component for s in early.localization.suspects
        ]
        for a, b in zip(plain.comparisons, early.comparisons):
            assert (a.target, a.pass_index, a.kind) == (b.target, b.pass_index, b.kind)
            assert abs(a.ratio - b.ratio) <= 0.05 * max(a.ratio, b.ratio) + 0.5, (
                mode,
                a.target,
                a.ratio,
                b.ratio,
            )


def test_the_references_leave_one_core_to_the_target_until_it_has_written_its_trace(monkeypatch):
    import os

    import torch

    from ekka.tracer.diagnose import _threads_beside_writer

    class Layer(torch.nn.Module):
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return x

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Layer() for _ in range(4)])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    model, before = Model(), torch.get_num_threads()
    monkeypatch.setattr(os, "cpu_count", lambda: before)  # a pool over every core
    if before < 2:
        pytest.skip("needs torch to use two threads or more")
    seen: list[int] = []
    with _threads_beside_writer([model], lambda: False):  # still writing throughout
        model(torch.zeros(1))
    assert seen == [before - 1] * 4
    assert torch.get_num_threads() == before
    seen.clear()
    with _threads_beside_writer([model], lambda: len(seen) >= 2):  # written once two layers ran
        model(torch.zeros(1))
    assert seen == [before - 1, before - 1, before, before]
    assert torch.get_num_threads() == before
    seen.clear()
    with _threads_beside_writer([model], lambda: True):  # written already: every core at once
        model(torch.zeros(1))
    assert seen == [before] * 4
