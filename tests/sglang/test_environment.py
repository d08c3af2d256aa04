"""SGLang's interpreter and rules, without starting SGLang."""

from __future__ import annotations

import pytest

from ekka.errors import UsageError
from ekka.frameworks import FRAMEWORKS, python_for
from ekka.tracer.align import RULES, SGLANG_RULES, plan_component, rules_for
from ekka.tracer.session import target_env


def test_sglang_runs_with_the_interpreter_its_variable_names(tmp_path, monkeypatch):
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    monkeypatch.setenv("EKKA_SGLANG_PYTHON", str(python))
    assert python_for("sglang") == str(python)
    assert target_env((), "sglang")["SGLANG_USE_CPU_ENGINE"] == "1"
    assert "SGLANG_USE_CPU_ENGINE" not in FRAMEWORKS["vllm"].env


def test_a_missing_sglang_environment_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EKKA_SGLANG_PYTHON", str(tmp_path / "nothing" / "python"))
    with pytest.raises(UsageError, match="SGLang's environment is not installed.*make venv"):
        python_for("sglang")


def test_sglang_decoder_layers_pair_with_their_mlp_and_vllms_do_not():
    names = {"model.layers.0", "model.layers.0.mlp"}
    sglang = plan_component(
        "model.layers.0", "LlamaDecoderLayer", "llama", names, rules_for("sglang")
    )
    vllm = plan_component("model.layers.0", "LlamaDecoderLayer", "llama", names, rules_for("vllm"))
    assert sglang is not None and sglang.reference == ("model.layers.0.mlp",)
    assert not sglang.inputs  # its input is the last layer's mlp output: no reference's input
    assert vllm is not None and vllm.reference == ("model.layers.0",) and vllm.inputs
    assert rules_for("vllm") is RULES and rules_for("sglang") is SGLANG_RULES
    # a family without SGLang's layer boundaries keeps vLLM's convention
    gemma = plan_component(
        "model.layers.0", "Gemma3DecoderLayer", "gemma3_text", names, rules_for("sglang")
    )
    assert gemma is not None and gemma.reference == ("model.layers.0",)


def test_docker_probes_of_sglang_use_sglangs_images(monkeypatch, tmp_path):
    from ekka.compose import full_config
    from ekka.containers.spec import ExecutorSpec
    from ekka.request import Request, Resolved
    from ekka.tracer.scenario import Scenario

    monkeypatch.setattr("ekka.frameworks.installed_package_dir", lambda _name: tmp_path)
    resolved = Resolved(Request(model="m", prompt_ids=(1, 2), framework="sglang"), Scenario())
    config = full_config(
        resolved, ExecutorSpec(kind="docker"), repo="r", good="g", bad="b", workdir="w"
    )
    assert config.executor == "docker" and config.images is not None
    assert config.images.framework == "sglang" and config.images.tag("abc") == "ekka/sglang:abc"
