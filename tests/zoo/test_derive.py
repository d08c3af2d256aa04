"""The derived zoo: the architectures of vLLM's or SGLang's registry that transformers has,
scaled down."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ekka.frameworks import listed_architectures
from ekka.zoo import ARCHITECTURES, build_model, get_arch, list_architectures
from ekka.zoo.derive import is_derived, registry_architectures, scale_config
from tests.sglang.conftest import sglang_python


def test_the_registry_is_read_from_vllms_source():
    names = registry_architectures("vllm")
    assert "LlamaForCausalLM" in names and "Cohere2ForCausalLM" in names
    assert len(names) > 80


def test_a_registry_lists_architectures_as_a_dicts_keys_or_its_classes() -> None:
    source = (
        "_MODELS = {'LlamaForCausalLM': ('llama', 'Llama'), 'OptForCausalLM': ('opt', 'X'),\n"
        "           **_OTHERS}\n"
        "EntryClass = [GemmaForCausalLM, Gemma2ForCausalLM]\nOne = OlmoForCausalLM\n"
        "def f():\n    Nested = [X]\n"
    )
    assert listed_architectures(source, "_MODELS") == ["LlamaForCausalLM", "OptForCausalLM"]
    assert listed_architectures(source, "EntryClass") == ["GemmaForCausalLM", "Gemma2ForCausalLM"]
    assert listed_architectures(source, "One") == ["OlmoForCausalLM"]
    assert listed_architectures(source, "Nested") == listed_architectures(source, "No") == []


def test_the_zoo_derives_the_architectures_of_either_frameworks_registry() -> None:
    sglang_python()  # SGLang's sources are read in its environment (a skip, or CI's failure)
    vllm, sglang = set(registry_architectures("vllm")), set(registry_architectures("sglang"))
    # each SGLang model module's EntryClass, read without importing SGLang
    assert {"LlamaForCausalLM", "OlmoForCausalLM", "PersimmonForCausalLM"} <= sglang
    assert "OlmoForCausalLM" not in vllm  # vLLM serves it through its transformers backend
    specs = {s.name: s for s in list_architectures(derived=True)}
    olmo = specs["OlmoForCausalLM"]
    assert is_derived(olmo) and olmo.frameworks == ("sglang",)
    assert specs["GPT2LMHeadModel"].frameworks == ("vllm", "sglang")
    assert specs["LlamaForCausalLM"].frameworks == ("vllm", "sglang")  # hand-written: both
    for spec in specs.values():
        assert spec.name in ARCHITECTURES or {
            f for f, held in (("vllm", vllm), ("sglang", sglang)) if spec.name in held
        } == set(spec.frameworks)


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
    # a multimodal family's composite config: each part scaled as a config of its own
    composite = {"text_config": default, "vision_config": {"hidden_size": 1152}, "image_size": 896}
    assert scale_config(composite) == {
        "text_config": scaled,
        "vision_config": {"hidden_size": 128},
    }


def test_a_derived_architecture_builds_tiny(tmp_path):
    spec = get_arch("GPT2LMHeadModel")
    assert is_derived(spec) and spec in list_architectures(derived=True)
    assert spec not in list_architectures()
    out = build_model("GPT2LMHeadModel", tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    assert config["n_embd"] == 128 and config["n_layer"] == 2 and config["vocab_size"] == 512
    assert (out / "model.safetensors").stat().st_size < 5_000_000


def _derived_config(name: str) -> Any:
    """The derived config of `name` as `ekka zoo build` makes it (no weights)."""
    from ekka.zoo.build import _make_config

    return _make_config(get_arch(name), {}, zoo_defaults=True)


@pytest.mark.parametrize(
    "name", ["DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "Glm4MoeLiteForCausalLM",
             "LongcatFlashForCausalLM", "AXK1ForCausalLM"],
)  # fmt: skip
def test_mla_configs_have_the_released_latent_cache(name: str) -> None:
    """576 = kv_lora_rank 512 + qk_rope_head_dim 64, as every released DeepSeek-style MLA
    checkpoint (and the one latent size vLLM's CPU MLA kernel is built for)."""
    config = _derived_config(name)
    assert (config.kv_lora_rank, config.qk_rope_head_dim) == (512, 64)
    # a KV head per query head, as released (transformers' MLA attention fails with one)
    assert config.num_key_value_heads == config.num_attention_heads
    assert config.hidden_size == 128  # the rest stays tiny


def test_checkpoint_keys_keep_the_fixes_and_add_the_released_keys() -> None:
    falcon = _derived_config("FalconForCausalLM")
    assert falcon.ffn_hidden_size == 4 * falcon.hidden_size  # as every released Falcon
    assert falcon.multi_query and not falcon.new_decoder_architecture  # the fix kept
    zamba2 = _derived_config("Zamba2ForCausalLM")
    assert zamba2.num_key_value_heads == zamba2.num_attention_heads  # Zamba2's MHA
    assert zamba2.layers_block_type[-1] == "hybrid"  # the fix kept
    lite = _derived_config("Glm4MoeLiteForCausalLM")
    assert lite.first_k_dense_replace == 1 and lite.mlp_layer_types == ["dense", "sparse"]
    v2 = _derived_config("DeepseekV2ForCausalLM")
    assert (v2.n_group, v2.topk_group) == (1, 1)  # DeepSeek-V2-Lite's routing


def test_released_checkpoint_tensors_and_mamba_groups() -> None:
    from ekka.zoo.derive import checkpoint_tensors

    axk1 = _derived_config("AXK1ForCausalLM")
    # the dense layer's norm, which vLLM builds and loads and transformers does not save
    assert checkpoint_tensors("AXK1ForCausalLM", axk1) == {
        "model.layers.0.post_mlp_layernorm.weight": (128,)
    }
    assert checkpoint_tensors("LlamaForCausalLM", axk1) == {}
    for name, heads in (("Mamba2ForCausalLM", "num_heads"), ("NemotronHForCausalLM",
                                                             "mamba_num_heads")):  # fmt: skip
        config = _derived_config(name)
        assert getattr(config, heads) % config.n_groups == 0  # a head per group at least
