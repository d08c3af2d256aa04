"""The zoo beyond its hand-written architectures: every decoder-only text-generation
architecture that the model registry of an installed target framework (vLLM's, SGLang's) holds
and transformers has as a causal LM.

Each registry's names come from the framework's installed sources read as text
(`Framework.models`: vLLM's `_TEXT_GENERATION_MODELS` in its `registry.py`, SGLang's model
modules' `EntryClass`; parsed with `ast`, neither framework is imported, SGLang's environment
is not even Ekka's); each derived architecture records which frameworks' registries hold it
(`ArchSpec.frameworks`: a sweep's `all` is its framework's). Transformers' names come from its
auto mappings (causal-LM model class per model type, config class per model type). A derived
architecture's tiny config is its config class's defaults scaled down (`SCALED`: layers, hidden
size, heads with head_dim 64, experts, vocabulary; a key is set only where the defaults have it;
a composite config's parts, `SUB_CONFIGS`, each the same way), then its overrides from
`OVERRIDES` (data, for what the scaled defaults get wrong). `ekka.zoo.build` applies both.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ekka.errors import UsageError
from ekka.frameworks import FRAMEWORKS, framework, installed_package_dir, listed_architectures
from ekka.zoo.spec import NATIVE, ArchSpec

DERIVED = "derived"  # ArchSpec.notes prefix of a derived architecture

# Config keys scaled down where the class defaults have them (value None in the defaults is
# kept, except where noted in `scale_config`).
SCALED: Mapping[str, Any] = MappingProxyType(
    {
        "hidden_size": 128, "n_embd": 128, "d_model": 128,
        "intermediate_size": 256, "ffn_hidden_size": 256, "n_inner": 256, "ffn_dim": 256,
        "num_hidden_layers": 2, "n_layer": 2, "num_layers": 2,
        "num_attention_heads": 2, "n_head": 2, "num_heads": 2,
        "num_key_value_heads": 1, "head_dim": 64,
        "vocab_size": 512, "max_position_embeddings": 256, "n_positions": 256,
        "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
        "num_experts_per_tok": 2, "moe_k": 2, "moe_topk": 2,
        "moe_intermediate_size": 64, "shared_expert_intermediate_size": 128,
        "n_shared_experts": 1, "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1,
        "kv_lora_rank": 64, "q_lora_rank": 64, "qk_nope_head_dim": 64, "qk_rope_head_dim": 64,
        "v_head_dim": 64, "num_nextn_predict_layers": 0,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    }
)  # fmt: skip
SLIDING_WINDOW = 8  # a window the tests' 32-token prompt crosses
# The parts of a multimodal family's composite config (Gemma 3's, as SGLang registers its
# ForConditionalGeneration): each scaled down the same way as a config of its own
SUB_CONFIGS = ("text_config", "vision_config", "audio_config")

# Multi-head latent attention: as many key and value heads as query heads, as every released
# DeepSeek-style MLA config.json (DeepSeek-V3: 128 and 128); transformers' MLA attention expands
# the latent keys to every head (one KV head fails in its attention)
MLA_HEADS: Mapping[str, Any] = MappingProxyType({"num_key_value_heads": 2})

# Keys that the family's real config.json carries and vLLM reads, where the config class's
# defaults lack them (or hold what no released checkpoint has); values as the released
# checkpoints have them, sizes scaled down. Without them vLLM fails on the derived config
# (Ekka's configuration, not vLLM's fault: the sweep's "fails (Ekka's configuration)").
CHECKPOINT_KEYS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        # Arcee Trinity (afmoe): sigmoid routing, normalized, one group
        "AfmoeForCausalLM": {"score_func": "sigmoid", "route_norm": True, "n_group": 1,
                             "topk_group": 1},
        # Hunyuan v3: the first layer dense, the experts' width under its own key, q/k norms
        "HYV3ForCausalLM": {"first_k_dense_replace": 1, "expert_hidden_dim": 64,
                            "route_norm": True, "qk_norm": True},
        # LFM2: the block and convolution widths (the hidden size), a convolution layer
        "Lfm2ForCausalLM": {"block_dim": 128, "conv_dim": 128,
                            "layer_types": ["conv", "full_attention"]},
        # LFM2-MoE: dense layers first, then sparse ones (the class default makes both dense)
        "Lfm2MoeForCausalLM": {"layer_types": ["conv", "full_attention"], "num_dense_layers": 1},
        # MiniMax-M2: sigmoid routing with its correction bias; rotary over the whole head
        # (the transformers config has no partial rotary: a smaller rotary_dim would compare
        # two different models)
        "MiniMaxM2ForCausalLM": {"rotary_dim": 64, "scoring_func": "sigmoid",
                                 "use_routing_bias": True},
        # Llama 4: one routed expert per token (vLLM's CPU MoE applies the router weight on the
        # input only for top-1, as the released Scout and Maverick are), a small dense MLP
        "Llama4ForCausalLM": {"num_experts_per_tok": 1, "intermediate_size_mlp": 256},
        # DeepSeek V3: noaux_tc routing with its correction bias, sigmoid scores; the latent
        # cache of every released DeepSeek MLA checkpoint, kv_lora_rank 512 + qk_rope_head_dim 64
        # (576: the one latent size vLLM's CPU MLA kernel is built for)
        "DeepseekV3ForCausalLM": {"topk_method": "noaux_tc", "scoring_func": "sigmoid",
                                  "kv_lora_rank": 512, **MLA_HEADS},
        # DeepSeek V2 (Lite): greedy top-k routing in one group (DeepSeek-V2-Lite's config.json:
        # n_group 1, topk_group 1; vLLM routes every DeepSeek V2 grouped), its experts per token
        # (the class has none), the released latent rank (see V3)
        "DeepseekV2ForCausalLM": {"n_group": 1, "topk_group": 1, "num_experts_per_tok": 2,
                                  "kv_lora_rank": 512, **MLA_HEADS},
        # GLM-4.7-Flash (glm4_moe_lite): the first layer dense (config.json's
        # first_k_dense_replace, which vLLM reads; transformers derives mlp_layer_types), the
        # released latent rank (see DeepSeek V3)
        "Glm4MoeLiteForCausalLM": {"first_k_dense_replace": 1, "kv_lora_rank": 512,
                                   **MLA_HEADS},
        # LongCat-Flash: its MLA's LoRA scaling on (transformers always applies it), identity
        # zero experts but none of them (transformers' experts keep weight rows for zero experts,
        # which its save writes as expert weights no released checkpoint has: vLLM refuses
        # them), the released latent rank (see DeepSeek V3)
        "LongcatFlashForCausalLM": {"mla_scale_q_lora": True, "mla_scale_kv_lora": True,
                                    "zero_expert_type": "identity", "zero_expert_num": 0,
                                    "kv_lora_rank": 512, **MLA_HEADS},
        # MiMo-V2-Flash: the layer pattern and the sliding layers' attention under the keys of
        # its released config.json, which vLLM reads (transformers derives them: layer_types,
        # mlp_layer_types, twice the KV heads and sinks in the sliding layers); the released head
        # sizes (192 for q/k, 128 for v: rotary 0.334 of 192 = 64 dims)
        "MiMoV2FlashForCausalLM": {
            "hybrid_layer_pattern": [0, 1], "moe_layer_freq": [0, 1],
            "mlp_layer_types": ["dense", "sparse"],
            "head_dim": 192, "v_head_dim": 128, "swa_head_dim": 192, "swa_v_head_dim": 128,
            "swa_num_attention_heads": 2, "swa_num_key_value_heads": 2,
            "sliding_window_size": SLIDING_WINDOW, "add_swa_attention_sink_bias": True,
            "add_full_attention_sink_bias": False, "layernorm_epsilon": 1e-5,
            "swa_rope_theta": 10000.0, "partial_rotary_factor": 0.334,
        },
        # Nemotron-H (dense, as Nemotron-H-8B: its pattern "M-M-*-" has Mamba-2, attention and
        # relu2 MLP layers, no MoE): Mamba heads of 64 filling expand * hidden, one group
        "NemotronHForCausalLM": {
            "layers_block_type": ["linear_attention", "mlp", "full_attention", "mlp"],
            "mamba_num_heads": 4, "mamba_head_dim": 64, "n_groups": 1,
        },
        # A.X K1: DeepSeek V3's routing (noaux_tc, sigmoid), the released latent rank (see
        # DeepSeek V3); its dense layers' post_mlp_layernorm: CHECKPOINT_TENSORS
        "AXK1ForCausalLM": {"topk_method": "noaux_tc", "scoring_func": "sigmoid",
                            "kv_lora_rank": 512, **MLA_HEADS},
        # Mamba2: one group of B/C heads, as the released mamba2-130m..2.7b (n_groups 1); the
        # class default (8, Codestral's) leaves no head per group with the zoo's 4 heads (vLLM's
        # CPU kernels divide by it: exit -8)
        "Mamba2ForCausalLM": {"n_groups": 1},
        # Hunyuan dense and MoE (V1): the head size and the q/k norms, as every released
        # config.json (Hunyuan-7B, Hunyuan-A13B: head_dim 128, use_qk_norm true; the class
        # defaults leave head_dim None, which transformers' attention fails on, and SGLang builds
        # the norms only with use_qk_norm); the MoE's shared expert and the experts' width under
        # the keys SGLang reads (use_mixed_mlp_moe, num_shared_expert, moe_intermediate_size:
        # transformers' experts and shared MLP are intermediate_size wide)
        "HunYuanDenseV1ForCausalLM": {"head_dim": 64, "use_qk_norm": True},
        "HunYuanMoEV1ForCausalLM": {"head_dim": 64, "use_qk_norm": True,
                                    "use_mixed_mlp_moe": True, "num_shared_expert": 1,
                                    "moe_intermediate_size": 256},
        # Mellum: interleaved sliding-window and full attention, as the family is built; the
        # class default makes every layer full while keeping a window, which SGLang refuses
        # (a hybrid sliding-window model without a sliding layer)
        "MellumForCausalLM": {"layer_types": ["sliding_attention", "full_attention"]},
        # ZAYA: one expert per token, the only routing transformers' ZAYA supports (as the
        # released ZAYA1); the keys of the released config.json that SGLang's own ZAYA config
        # reads: num_query_groups (its KV heads, which SGLang checks), ffn_hidden_size (the
        # experts' width, transformers' moe_intermediate_size)
        "ZayaForCausalLM": {"num_experts_per_tok": 1, "num_query_groups": 1,
                            "ffn_hidden_size": 64},
        # OLMo (1): multi-head attention, as every released OLMo config.json (OLMo-7B-hf: 32
        # key and value heads for 32 heads); SGLang's OlmoAttention has no GQA (one KV head
        # fails at its KV cache write)
        "OlmoForCausalLM": {"num_key_value_heads": 2},
        # Zamba2: multi-head attention in its shared blocks (every released Zamba2 has
        # num_key_value_heads = num_attention_heads; vLLM's Zamba2Attention has no GQA)
        "Zamba2ForCausalLM": {"num_key_value_heads": 2},
        # Laguna (Laguna-XS.2: a hybrid of sliding-window and full-attention layers, window 512):
        # a sliding and a full layer (the class default has no sliding layer, and SGLang builds
        # Laguna's hybrid KV pool whenever sliding_window is set)
        "LagunaForCausalLM": {"layer_types": ["sliding_attention", "full_attention"]},
        # Kimi Linear (Kimi-Linear-48B-A3B): the first layer dense, then MoE every layer, and its
        # Kimi Delta Attention and MLA layers under linear_attn_config (1-indexed layer lists),
        # the keys of its config.json that SGLang reads (transformers derives mlp_layer_types
        # and layer_types from them); a KDA layer, then a full MLA layer; KDA heads of 64
        "KimiLinearForCausalLM": {
            "first_k_dense_replace": 1, "moe_layer_freq": 1,
            "linear_attn_config": {"kda_layers": [1], "full_attn_layers": [2], "head_dim": 64,
                                   "num_heads": 2, "short_conv_kernel_size": 4},
        },
        # Falcon: the MLP 4x the hidden size, as every released Falcon (falcon-7b: 4544 and
        # 18176); vLLM's FalconMLP hard-codes that width (the finding falcon-ffn-hidden-size)
        "FalconForCausalLM": {"new_decoder_architecture": False, "multi_query": True,
                              "ffn_hidden_size": 512},
        # MiniCPM3: multi-head latent attention, one key and value head per query head (its
        # transformers attention expands the latent keys to every head; no GQA)
        "MiniCPM3ForCausalLM": {"num_key_value_heads": 2},
        # Granite 4 (hybrid): Mamba heads of 64 as released, a Mamba and an attention layer
        "GraniteMoeHybridForCausalLM": {"mamba_n_heads": 4, "mamba_d_head": 64,
                                        "layer_types": ["linear_attention", "full_attention"]},
        # DeepSeek V4: config.json as released (DeepSeek-V4-Flash): the attention per layer as
        # compress_ratios (128: heavily compressed, 4: compressed sparse with its indexer) and the
        # hash-routed layers as num_hash_layers, which vLLM reads (transformers folds them into
        # layer_types / mlp_layer_types, which the released file lacks: RELEASED_WITHOUT); the
        # released head, 512 with a rotary part of 64 (vLLM's CPU compressor takes 512 or 128);
        # the output projection's groups dividing the heads, as released (64 heads, 8 groups);
        # the routed layers' correction bias, which the checkpoint holds (ffn.gate.bias) and
        # vLLM builds only for noaux_tc routing
        "DeepseekV4ForCausalLM": {"compress_ratios": [128, 4], "num_hash_layers": 1,
                                  "head_dim": 512, "qk_rope_head_dim": 64, "o_groups": 2,
                                  "topk_method": "noaux_tc"},
        # Qwen3-Next: its layers as released, full attention every full_attention_interval-th
        # layer (4 in Qwen3-Next-80B-A3B's config.json, which SGLang's Qwen3NextConfig reads;
        # transformers folds it into layer_types, which the released file lacks:
        # RELEASED_WITHOUT); 2 here, so that the two layers are a Gated DeltaNet and a full one
        "Qwen3NextForCausalLM": {"full_attention_interval": 2},
        # Qwen4-Exp: its attention layers' QSA token indexer, as the released text config has it
        # (4 index heads of 128, one key head, a budget of 2048 tokens in blocks of 4); the class
        # leaves them None, and its indexed attention layers cannot be built without them
        "Qwen4ExpForCausalLM": {"indexer_n_heads": 4, "indexer_kv_heads": 1,
                                "indexer_head_dim": 128, "indexer_budget": 2048,
                                "indexer_compress_ratio": 4},
        # DBRX: the rotary base in the attention config, a small expert width
        "DbrxForCausalLM": {
            "n_heads": 2,
            "attn_config": {"rope_theta": 10000.0, "kv_n_heads": 1, "clip_qkv": None},
            "ffn_config": {"ffn_hidden_size": 256, "moe_num_experts": 4, "moe_top_k": 1},
        },
    }
)  # fmt: skip

# Keys that transformers' config class derives from checkpoint keys it consumes (folded away
# in its __post_init__) and writes to config.json, where the family's released config.json
# carries those checkpoint keys instead: the zoo writes config.json as released
# (`released_config`). DeepSeek V4: layer_types and mlp_layer_types, from compress_ratios and
# num_hash_layers; vLLM's own DeepseekV4Config (a plain PreTrainedConfig) checks mlp_layer_types
# against ("sparse", "dense") and fails on transformers' "hash_moe" / "moe". Qwen3-Next:
# layer_types, from full_attention_interval, which SGLang's own Qwen3NextConfig reads.
RELEASED_WITHOUT: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "DeepseekV4ForCausalLM": ("layer_types", "mlp_layer_types"),
        "Qwen3NextForCausalLM": ("layer_types",),
    }
)

# Tensors the family's released checkpoints hold and transformers' model does not save (norm
# weights, saved as ones of the hidden size): (name with {layer}, the config attribute whose
# value is how many layers, from the first, hold it).
# A.X K1's checkpoint has post_mlp_layernorm in every layer, the first_k_dense_replace dense
# ones too (unused there: transformers drops it, vLLM builds and loads it; vLLM's A.X K1 was
# served from the released checkpoint, vllm-project/vllm#32407, and vLLM's loader refuses a
# checkpoint without it).
CHECKPOINT_TENSORS: Mapping[str, tuple[tuple[str, str], ...]] = MappingProxyType(
    {
        "AXK1ForCausalLM": (
            ("model.layers.{layer}.post_mlp_layernorm.weight", "first_k_dense_replace"),
        ),
    }
)

# Tensor names of the family's released checkpoints where transformers' save of a model built
# from a config (not loaded from a checkpoint) writes others: (regular expression, replacement).
# DeepSeek V4: transformers reverses its load-time renames without the "model." prefix change
# (dropped for a model not loaded from a checkpoint), so hc_head_fn / _base / _scale come out as
# model.hc_head.hc_fn ...; and its reverse of ".norm." -> ".kv_norm." (the compressor's norm)
# renames the attention's own kv_norm to norm. vLLM, as the released checkpoint, names them
# hc_head_fn and attn.kv_norm.
CHECKPOINT_NAMES: Mapping[str, tuple[tuple[str, str], ...]] = MappingProxyType(
    {
        "DeepseekV4ForCausalLM": (
            (r"^model\.hc_head\.hc_(fn|base|scale)$", r"hc_head_\1"),
            (r"\.attn\.norm\.weight$", ".attn.kv_norm.weight"),
        ),
    }
)

# Per-architecture overrides on top of the scaled defaults, where those do not build or run.
_FIXES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "GPT2LMHeadModel": {"n_head": 2, "n_embd": 128},
        "BloomForCausalLM": {"n_head": 2},
        "OPTForCausalLM": {"word_embed_proj_dim": 128},
        "GPTJForCausalLM": {"rotary_dim": 32},
        "Glm4MoeForCausalLM": {"head_dim": 64},  # vLLM reads config.head_dim; no default
        "Lfm2MoeForCausalLM": {"layer_types": ["conv", "full_attention"]},
        "Mamba2ForCausalLM": {"num_heads": 4},  # hidden * expand == num_heads * head_dim
        "Zamba2ForCausalLM": {"layers_block_type": ["mamba", "hybrid"]},
        "Gemma3nForCausalLM": {
            "num_kv_shared_layers": 0,
            "activation_sparsity_pattern": [0.0, 0.0],
        },
    }
)
# The overrides of each architecture: its fixes, then its checkpoint keys over them.
OVERRIDES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        name: {**_FIXES.get(name, {}), **CHECKPOINT_KEYS.get(name, {})}
        for name in (*_FIXES, *CHECKPOINT_KEYS)
    }
)


@functools.cache
def registry_architectures(name: str) -> tuple[str, ...]:
    """The architectures framework `name`'s model registry holds, read from its installed
    sources (`Framework.models`, with `ast`: never imported, its environment may not be
    Ekka's); () where it is not installed."""
    fw = framework(name)
    try:
        package = installed_package_dir(name)
    except UsageError:
        return ()
    names: list[str] = []
    for path in sorted(package.glob(fw.models.files)):
        names += listed_architectures(path.read_text(), fw.models.name)
    return tuple(dict.fromkeys(names))


@functools.cache
def transformers_causal_lms() -> Mapping[str, str]:
    """Causal-LM class name -> its config class name, from transformers' auto mappings."""
    from transformers.models.auto import configuration_auto
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config_names: Mapping[str, str] = getattr(configuration_auto, "CONFIG_MAPPING_NAMES")  # noqa: B009 (not re-exported)

    out: dict[str, str] = {}
    for model_type, names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items():
        config = config_names.get(model_type)
        for name in (names,) if isinstance(names, str) else tuple(names):
            # a causal LM of a multimodal family: its text config, not the composite one
            if config and (name not in out or config.endswith("TextConfig")):
                out[name] = config
    return out


@functools.cache
def derived_specs(known: frozenset[str]) -> tuple[ArchSpec, ...]:
    """An ArchSpec per architecture of either framework's registry that transformers has as a
    causal LM and `known` (the hand-written) lacks: vLLM's first, in its registry's order, then
    the ones only SGLang's holds."""
    classes = transformers_causal_lms()
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    family: dict[str, str] = {}
    for model_type, names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items():
        for name in (names,) if isinstance(names, str) else tuple(names):
            family.setdefault(name, model_type)
    held: dict[str, list[str]] = {}  # architecture -> the frameworks whose registry holds it
    for target in FRAMEWORKS:
        for name in registry_architectures(target):
            held.setdefault(name, []).append(target)
    specs = []
    for name, targets in held.items():
        if name in known or name not in classes:
            continue
        specs.append(
            ArchSpec(
                name=name,
                family=family[name],
                config_class=classes[name],
                defaults=MappingProxyType(dict(OVERRIDES.get(name, {}))),
                vllm_backend=NATIVE,
                notes=f"{DERIVED}: the config class's defaults scaled down",
                frameworks=tuple(targets),
            )
        )
    return tuple(specs)


def is_derived(spec: ArchSpec) -> bool:
    return spec.notes.startswith(DERIVED)


def scale_config(default: Mapping[str, Any]) -> dict[str, Any]:
    """The scaled-down keys for a config whose class defaults are `default` (its to_dict())."""
    out = {k: v for k, v in SCALED.items() if k in default and default[k] is not None}
    if "num_key_value_heads" in default and default["num_key_value_heads"] is None:
        out["num_key_value_heads"] = SCALED["num_key_value_heads"]  # else no class builds
    if default.get("sliding_window") is not None:
        out["sliding_window"] = SLIDING_WINDOW
    layers = out.get("num_hidden_layers", out.get("num_layers", out.get("n_layer")))
    types = default.get("layer_types")
    if layers and isinstance(types, list) and types:
        distinct = list(dict.fromkeys(types))
        out["layer_types"] = [distinct[i % len(distinct)] for i in range(layers)]
    for part in SUB_CONFIGS:
        if isinstance(default.get(part), dict):
            out[part] = scale_config(default[part])
    return out


def checkpoint_tensors(name: str, config: Any) -> dict[str, tuple[int, ...]]:
    """The tensors (name -> shape, ones of the hidden size) that `name`'s released checkpoints
    hold beyond what transformers saves (`CHECKPOINT_TENSORS`)."""
    out: dict[str, tuple[int, ...]] = {}
    for pattern, layers in CHECKPOINT_TENSORS.get(name, ()):
        for layer in range(int(getattr(config, layers))):
            out[pattern.format(layer=layer)] = (int(config.hidden_size),)
    return out


def released_config(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """`name`'s config.json (`config`, as transformers wrote it) as its released checkpoints have
    it: without the keys transformers derives (`RELEASED_WITHOUT`), with the checkpoint keys it
    consumed (`CHECKPOINT_KEYS`). Other architectures' configs are returned unchanged."""
    drop = RELEASED_WITHOUT.get(name, ())
    out = {key: value for key, value in config.items() if key not in drop}
    if drop:
        for key, value in CHECKPOINT_KEYS.get(name, {}).items():
            out.setdefault(key, value)
    return out


def released_name(name: str, tensor: str) -> str:
    """The name `name`'s released checkpoints give the tensor transformers saved as `tensor`."""
    for pattern, replacement in CHECKPOINT_NAMES.get(name, ()):
        tensor = re.sub(pattern, replacement, tensor)
    return tensor
