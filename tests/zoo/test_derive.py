"""The derived zoo: the architectures of vLLM's registry and transformers, scaled down."""

from __future__ import annotations

import json

from ekka.zoo import build_model, get_arch, list_architectures
from ekka.zoo.derive import is_derived, registry_architectures, scale_config


def test_the_registry_is_read_from_vllms_source():
    names = registry_architectures()
    assert "LlamaForCausalLM" in names and "Cohere2ForCausalLM" in names
    assert len(names) > 80


def test_scaling_keeps_what_the_defaults_have():
    default = {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_key_value_heads": None,
        "sliding_window": 4096,
        "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
        "rope_theta": 1e6,
    }
    scaled = scale_config(default)
    assert scaled == {
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_key_value_heads": 1,  # None builds no class: one KV head
        "sliding_window": 8,
        "layer_types": ["sliding_attention", "full_attention"],
    }
    assert scale_config({"sliding_window": None}) == {}


def test_a_derived_architecture_builds_tiny(tmp_path):
    spec = get_arch("GPT2LMHeadModel")
    assert is_derived(spec) and spec in list_architectures(derived=True)
    assert spec not in list_architectures()
    out = build_model("GPT2LMHeadModel", tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    assert config["n_embd"] == 128 and config["n_layer"] == 2 and config["vocab_size"] == 512
    assert (out / "model.safetensors").stat().st_size < 5_000_000
