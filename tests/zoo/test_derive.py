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
    laguna = _derived_config("LagunaForCausalLM")  # Laguna-XS.2's sliding and full layers
    assert laguna.layer_types == ["sliding_attention", "full_attention"]
    kimi = _derived_config("KimiLinearForCausalLM")  # the keys SGLang reads, transformers too
    assert kimi.layer_types == ["linear_attention", "full_attention"]
    assert kimi.mlp_layer_types == ["dense", "sparse"] and kimi.linear_head_dim == 64


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


def test_deepseek_v4_config_json_and_tensors_as_released() -> None:
    """DeepSeek V4's config.json carries compress_ratios and num_hash_layers, as released (vLLM
    reads them), not transformers' layer_types / mlp_layer_types (vLLM's config class rejects
    "hash_moe"); transformers reads the released form back to the same layers."""
    from ekka.zoo.derive import released_config, released_name

    name = "DeepseekV4ForCausalLM"
    config = _derived_config(name)
    assert config.layer_types == ["heavily_compressed_attention", "compressed_sparse_attention"]
    assert config.mlp_layer_types == ["hash_moe", "moe"]
    assert (config.head_dim, config.qk_rope_head_dim) == (512, 64)
    assert config.num_attention_heads % config.o_groups == 0
    written = config.to_dict()
    released = released_config(name, written)
    assert "layer_types" not in released and "mlp_layer_types" not in released
    assert (released["compress_ratios"], released["num_hash_layers"]) == ([128, 4], 1)
    again = type(config).from_dict(released)
    assert (again.layer_types, again.mlp_layer_types) == (config.layer_types,
                                                          config.mlp_layer_types)  # fmt: skip
    # vLLM's own DeepseekV4Config is a plain PreTrainedConfig: its layer type check (vLLM's
    # import alone takes seconds)
    from huggingface_hub.errors import StrictDataclassClassValidationError
    from transformers import PreTrainedConfig

    with pytest.raises(StrictDataclassClassValidationError, match="hash_moe"):
        PreTrainedConfig(**written)
    assert PreTrainedConfig(**released).num_hash_layers == 1
    assert released_config("LlamaForCausalLM", written) == written  # the others: as written
    assert released_name(name, "model.hc_head.hc_fn") == "hc_head_fn"
    assert released_name(name, "model.layers.1.attn.norm.weight").endswith("attn.kv_norm.weight")
    compressor = "model.layers.1.attn.compressor.norm.weight"
    assert released_name(name, compressor) == compressor
    assert released_name("LlamaForCausalLM", "model.hc_head.hc_fn") == "model.hc_head.hc_fn"


def test_qwen4_exp_builds_with_its_released_indexer() -> None:
    from ekka.zoo.build import _count_parameters

    config = _derived_config("Qwen4ExpForCausalLM")
    assert config.layer_types == ["linear_attention", "indexed_attention"]
    assert config.indexer_budget % config.indexer_compress_ratio == 0
    assert 0 < _count_parameters(get_arch("Qwen4ExpForCausalLM"), config) < 50_000_000


def test_qwen3_next_config_json_carries_its_released_full_attention_interval() -> None:
    """SGLang's Qwen3NextConfig reads full_attention_interval, which released config.json files
    carry and transformers folds into layer_types: the zoo writes the released form, which
    transformers reads back to the same layers (a Gated DeltaNet layer, then a full one)."""
    from ekka.zoo.derive import released_config

    name = "Qwen3NextForCausalLM"
    config = _derived_config(name)
    assert config.layer_types == ["linear_attention", "full_attention"]
    released = released_config(name, config.to_dict())
    assert "layer_types" not in released and released["full_attention_interval"] == 2
    assert type(config).from_dict(released).layer_types == config.layer_types
