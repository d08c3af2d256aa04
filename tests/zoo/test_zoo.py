"""Tests of the tiny-model zoo against the real transformers (no mocks)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors import safe_open

import ekka.zoo
from ekka.errors import OutputFolderError, UnknownArchitectureError, UsageError
from ekka.zoo import (
    ARCHITECTURES,
    ArchSpec,
    build_model,
    build_tokenizer,
    get_arch,
    list_architectures,
    parse_set_values,
)
from tests.conftest import BENCH

PROMPT = "The quick brown fox jumps over the lazy dog."
REPO = Path(__file__).resolve().parents[2]

# ARCHS.md table order.
EXPECTED_ORDER = [
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Phi3ForCausalLM",
    "PhiForCausalLM",
    "Olmo2ForCausalLM",
    "GraniteForCausalLM",
    "CohereForCausalLM",
    "StableLmForCausalLM",
    "MixtralForCausalLM",
    "Qwen2MoeForCausalLM",
    "Qwen3MoeForCausalLM",
    "Starcoder2ForCausalLM",
    "Cohere2ForCausalLM",
    "OlmoeForCausalLM",
    "Glm4ForCausalLM",
]

# [model.config] of bench/cases/gemma-mlp-exact-gelu/case.toml.
GEMMA_CASE_CONFIG: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,
    "vocab_size": 512,
    "max_position_embeddings": 256,
    "initializer_range": 0.2,
}

# Config entries that are derived or bookkeeping, not class defaults to compare.
_NOT_DEFAULTS = {"dtype", "architectures", "transformers_version", "_name_or_path", "layer_types"}


def _file_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of a folder, by relative name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(folder / "model.safetensors", "pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


def _head_size(config: Any) -> int:
    return int(
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    )


def _bench_case_configs() -> list[tuple[str, str, dict[str, Any]]]:
    """(case id, architecture, [model.config]) of the public bench cases (bench/cases)."""
    found = []
    for toml in sorted((BENCH / "cases").glob("*/case.toml")):
        data = tomllib.loads(toml.read_text(encoding="utf-8"))
        model = data["model"]
        found.append((data["id"], model["architecture"], dict(model.get("config", {}))))
    return found


# ---------------------------------------------------------------------------- public surface


def test_public_names() -> None:
    assert sorted(ekka.zoo.__all__) == sorted(
        [
            "ARCHITECTURES",
            "ArchSpec",
            "build_model",
            "build_tokenizer",
            "get_arch",
            "list_architectures",
            "parse_set_values",
        ]
    )
    for name in ekka.zoo.__all__:
        assert hasattr(ekka.zoo, name)


def test_import_is_light() -> None:
    code = (
        "import sys, ekka.zoo; "
        "print(sorted(m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert result.stdout.strip() == "[]"


def test_architectures_table() -> None:
    assert [spec.name for spec in list_architectures()] == EXPECTED_ORDER
    assert list(ARCHITECTURES) == EXPECTED_ORDER
    for spec in list_architectures():
        assert isinstance(spec, ArchSpec)
        assert spec.vllm_backend in ("native", "transformers")
        assert hasattr(transformers, spec.name)
        assert getattr(transformers, spec.name).config_class.__name__ == spec.config_class
        assert spec.defaults["vocab_size"] == 512
    backends = {spec.family for spec in list_architectures() if spec.vllm_backend == "transformers"}
    assert backends == {"phi", "olmo2", "starcoder2"}


def test_arch_specs_are_frozen() -> None:
    spec = get_arch("llama")
    with pytest.raises(AttributeError):
        spec.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.defaults["hidden_size"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("LlamaForCausalLM", "LlamaForCausalLM"),
        ("llamaforcausallm", "LlamaForCausalLM"),
        ("llama", "LlamaForCausalLM"),
        ("Qwen2", "Qwen2ForCausalLM"),
        ("gemma3", "Gemma3ForCausalLM"),
        ("gemma3_text", "Gemma3ForCausalLM"),
        ("qwen2moe", "Qwen2MoeForCausalLM"),
        ("qwen2_moe", "Qwen2MoeForCausalLM"),
        ("qwen3-moe", "Qwen3MoeForCausalLM"),
        ("mixtral", "MixtralForCausalLM"),
        ("stablelm", "StableLmForCausalLM"),
        ("phi", "PhiForCausalLM"),
        ("phi3", "Phi3ForCausalLM"),
        ("cohere2", "Cohere2ForCausalLM"),
    ],
)
def test_alias_lookup(alias: str, name: str) -> None:
    assert get_arch(alias).name == name


def test_unknown_architecture_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(UnknownArchitectureError) as info:
        get_arch("lama")
    message = str(info.value)
    assert "'lama'" in message
    assert "Did you mean 'LlamaForCausalLM'" in message
    for name in EXPECTED_ORDER:
        assert name in message
    assert isinstance(info.value, UsageError)
    with pytest.raises(UnknownArchitectureError, match="Known architectures"):
        # not a decoder-only architecture of vLLM's; were it built, it lands in tmp_path
        build_model("BertForMaskedLM", tmp_path / "unused")
    assert not (tmp_path / "unused").exists()


# ---------------------------------------------------------------------------- --set parsing


def test_parse_set_values() -> None:
    parsed = parse_set_values(
        [
            "num_hidden_layers=8",
            "rms_norm_eps=1e-5",
            "tie_word_embeddings=true",
            "sliding_window=null",
            "layer_types=[1,2]",
            "hidden_act=silu",
            "name=a=b",
            "empty=",
        ]
    )
    assert parsed == {
        "num_hidden_layers": 8,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "sliding_window": None,
        "layer_types": [1, 2],
        "hidden_act": "silu",
        "name": "a=b",
        "empty": "",
    }
    assert isinstance(parsed["num_hidden_layers"], int)
    assert isinstance(parsed["rms_norm_eps"], float)


@pytest.mark.parametrize("item", ["num_hidden_layers", "=3", ""])
def test_parse_set_values_malformed(item: str) -> None:
    with pytest.raises(UsageError, match="key=value"):
        parse_set_values([item])


# ---------------------------------------------------------------------------- every architecture


@pytest.mark.parametrize("arch", EXPECTED_ORDER)
def test_every_architecture_builds_loads_and_runs(arch: str, tmp_path: Path) -> None:
    out = build_model(arch, tmp_path / "model")
    assert out == tmp_path / "model"
    files = set(_file_bytes(out))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert "ekka-zoo.json" in files

    model = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == arch
    assert model.config.architectures == [arch]
    assert _head_size(model.config) == 64
    assert model.config.vocab_size == 512
    assert (model.config.bos_token_id, model.config.eos_token_id) == (1, 2)

    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == 1
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 512)
    assert torch.isfinite(logits).all()

    stored = _tensors(out)
    assert all(t.dtype == torch.float32 for t in stored.values())
    assert ("lm_head.weight" in stored) != bool(model.config.tie_word_embeddings)


def test_zoo_defaults_follow_archs_md() -> None:
    assert get_arch("gemma2").defaults["attn_logit_softcapping"] == 0.05
    assert get_arch("gemma2").defaults["final_logit_softcapping"] == 0.5
    assert get_arch("gemma3").defaults["num_hidden_layers"] == 3
    assert len(get_arch("gemma3").defaults["layer_types"]) == 3
    assert get_arch("phi3").defaults["pad_token_id"] == 0
    assert get_arch("starcoder2").defaults["sliding_window"] is None
    assert get_arch("mistral").defaults["sliding_window"] == 8
    assert get_arch("granite").defaults["logits_scaling"] == 8.0
    assert get_arch("mixtral").defaults["num_local_experts"] == 4
    wide = {s.family for s in list_architectures() if s.defaults.get("initializer_range") == 0.2}
    # Gemma2/Gemma3 keep the class default: a wide init saturates Gemma2's softcap and makes
    # Gemma3 echo its last token (see archs.py).
    assert wide == {"gemma", "cohere", "cohere2", "starcoder2"}


# ---------------------------------------------------------------------------- determinism, dtype


def test_builds_are_byte_identical(tmp_path: Path) -> None:
    first = _file_bytes(build_model("llama", tmp_path / "a", overrides={"rms_norm_eps": 1e-5}))
    second = _file_bytes(build_model("llama", tmp_path / "b", overrides={"rms_norm_eps": 1e-5}))
    assert set(first) == set(second)
    for name in first:
        assert first[name] == second[name], name


def test_builds_are_byte_identical_across_processes(tmp_path: Path) -> None:
    code = "import sys; from ekka.zoo import build_model; build_model('mixtral', sys.argv[1])"
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "child")], check=True, cwd=REPO, timeout=300
    )
    child = _file_bytes(tmp_path / "child")
    here = _file_bytes(build_model("mixtral", tmp_path / "here"))
    assert set(child) == set(here)
    for name in child:
        assert child[name] == here[name], name


def test_different_seed_different_weights(tmp_path: Path) -> None:
    seed0 = _tensors(build_model("qwen2", tmp_path / "s0", seed=0))
    seed1 = _tensors(build_model("qwen2", tmp_path / "s1", seed=1))
    assert set(seed0) == set(seed1)
    assert not torch.equal(seed0["model.embed_tokens.weight"], seed1["model.embed_tokens.weight"])
    assert json.loads((tmp_path / "s1" / "ekka-zoo.json").read_text())["seed"] == 1


def test_bfloat16_build(tmp_path: Path) -> None:
    out = build_model("gemma2", tmp_path / "bf16", dtype="bfloat16")
    stored = _tensors(out)
    assert stored and all(t.dtype == torch.bfloat16 for t in stored.values())
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    fp32 = _tensors(build_model("gemma2", tmp_path / "fp32"))
    name = "model.embed_tokens.weight"
    assert torch.equal(stored[name], fp32[name].to(torch.bfloat16))
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 6, 7]])).logits
    assert torch.isfinite(logits.float()).all()


def test_invalid_dtype(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="float32, bfloat16"):
        build_model("llama", tmp_path / "m", dtype="float16")
    assert not (tmp_path / "m").exists()


def test_manifest(tmp_path: Path) -> None:
    out = build_model("Qwen3", tmp_path / "m", seed=3, overrides={"num_hidden_layers": 3})
    text = (out / "ekka-zoo.json").read_text()
    assert json.loads(text) == {
        "architecture": "Qwen3ForCausalLM",
        "seed": 3,
        "dtype": "float32",
        "overrides": {"num_hidden_layers": 3},
        "zoo_defaults": True,
    }
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"


# ---------------------------------------------------------------------------- overrides


def test_overrides_apply(tmp_path: Path) -> None:
    out = build_model("llama", tmp_path / "m", overrides={"num_hidden_layers": 3})
    config = transformers.AutoConfig.from_pretrained(out)
    assert config.num_hidden_layers == 3
    assert config.hidden_size == 128  # zoo default kept
    assert sum(".layers.2." in name for name in _tensors(out)) > 0


def test_unknown_override_key(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="num_hiden_layers") as info:
        build_model("llama", tmp_path / "m", overrides={"num_hiden_layers": 3})
    assert "num_hidden_layers" in str(info.value)  # the close match
    assert not (tmp_path / "m").exists()


def test_legacy_and_modeling_keys_are_accepted(tmp_path: Path) -> None:
    # Qwen2Config has no head_dim field (the modeling code reads it with getattr) and takes
    # rope_theta only as a legacy keyword: both are valid, as in the bench cases.
    sizes = {k: v for k, v in GEMMA_CASE_CONFIG.items() if k != "initializer_range"}
    out = build_model(
        "qwen2",
        tmp_path / "m",
        overrides={**sizes, "rope_theta": 1e6},
        zoo_defaults=False,
    )
    config = transformers.AutoConfig.from_pretrained(out)
    assert config.head_dim == 64
    assert config.rope_parameters["rope_theta"] == 1e6


def test_real_size_config_is_refused(tmp_path: Path) -> None:
    # zoo_defaults=False with no sizes keeps Qwen2's real sizes: refused before allocation.
    with pytest.raises(UsageError, match="tiny models"):
        build_model("qwen2", tmp_path / "m", overrides={"head_dim": 128}, zoo_defaults=False)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "overrides",
    [{"hidden_size": "wide"}, {"num_attention_heads": 3}, {"hidden_act": "no-such-activation"}],
)
def test_config_the_class_rejects(overrides: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="LlamaConfig rejected|cannot be built"):
        build_model("llama", tmp_path / "m", overrides=overrides)
    assert not (tmp_path / "m").exists()


def test_vocab_smaller_than_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="vocab_size=256"):
        build_model("llama", tmp_path / "m", overrides={"vocab_size": 256})


def test_larger_vocab_is_fine(tmp_path: Path) -> None:
    out = build_model("llama", tmp_path / "m", overrides={"vocab_size": 640})
    assert _tensors(out)["model.embed_tokens.weight"].shape == (640, 128)


def test_output_folder_rules(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError):
        build_model("llama", foreign)
    assert (foreign / "notes.txt").read_text() == "mine"

    out = build_model("llama", tmp_path / "zoo")
    again = build_model("mistral", out)  # a previous zoo build may be replaced
    assert json.loads((again / "config.json").read_text())["architectures"] == [
        "MistralForCausalLM"
    ]


# ---------------------------------------------------------------------------- zoo_defaults=False


def test_zoo_defaults_false_keeps_class_defaults(tmp_path: Path) -> None:
    out = build_model(
        "GemmaForCausalLM", tmp_path / "m", overrides=GEMMA_CASE_CONFIG, zoo_defaults=False
    )
    saved = json.loads((out / "config.json").read_text())
    default = transformers.GemmaConfig().to_dict()
    for key, value in GEMMA_CASE_CONFIG.items():
        assert saved[key] == value
    for key, value in default.items():
        if key not in GEMMA_CASE_CONFIG and key not in _NOT_DEFAULTS and key in saved:
            assert saved[key] == value, key
    # Gemma's class defaults, not the zoo's common base:
    assert (saved["bos_token_id"], saved["eos_token_id"]) == (2, 1)
    assert saved["initializer_range"] == 0.2


@pytest.mark.parametrize(
    ("case_id", "arch", "config"),
    _bench_case_configs(),
)
def test_bench_case_configs_build(
    case_id: str, arch: str, config: dict[str, Any], tmp_path: Path
) -> None:
    out = build_model(arch, tmp_path / case_id, overrides=config, zoo_defaults=False)
    loaded = transformers.AutoConfig.from_pretrained(out)
    default = type(loaded)().to_dict()
    saved = loaded.to_dict()
    rope_given = any(key.startswith("rope") for key in config)
    for key, value in config.items():
        if key == "rope_theta":
            assert saved["rope_parameters"]["rope_theta"] == value
        else:
            assert saved[key] == value, key
    for key, value in default.items():
        if key in config or key in _NOT_DEFAULTS or (rope_given and key == "rope_parameters"):
            continue
        assert saved.get(key) == value, key


# ---------------------------------------------------------------------------- tokenizer


def test_tokenizer(tmp_path: Path) -> None:
    build_tokenizer(tmp_path / "tok")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert tokenizer.is_fast
    assert len(tokenizer) == 512
    assert len(tokenizer.get_vocab()) == 512
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    ids = tokenizer(PROMPT)["input_ids"]
    assert ids[0] == 1 and 1 not in ids[1:]
    texts = [PROMPT, "  two  spaces,\ttabs\nand lines ", "Zürich, naïve café: 42 €", "x"]
    for text in texts:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        assert 1 not in encoded
        assert tokenizer.decode(encoded) == text
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["model_max_length"] == 256


def test_tokenizer_is_deterministic(tmp_path: Path) -> None:
    build_tokenizer(tmp_path / "a")
    build_tokenizer(tmp_path / "b")
    assert _file_bytes(tmp_path / "a") == _file_bytes(tmp_path / "b")
    build_tokenizer(tmp_path / "c", vocab_size=300)
    assert _file_bytes(tmp_path / "c") != _file_bytes(tmp_path / "a")
    assert len(transformers.AutoTokenizer.from_pretrained(tmp_path / "c")) == 300


@pytest.mark.parametrize("size", [100, 100_000])
def test_tokenizer_bad_sizes(size: int, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="vocab_size"):
        build_tokenizer(tmp_path / "t", vocab_size=size)


def test_model_tokenizer_matches_standalone(tmp_path: Path) -> None:
    out = build_model("llama", tmp_path / "m")
    build_tokenizer(tmp_path / "t")
    assert (out / "tokenizer.json").read_bytes() == (tmp_path / "t" / "tokenizer.json").read_bytes()
