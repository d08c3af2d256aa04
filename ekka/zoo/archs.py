"""The zoo's 20 architectures: tiny configs that both transformers and vLLM's CPU backend run.

Each `ArchSpec` holds the config overrides the zoo puts on top of the transformers config
class's defaults (see `bench/ARCHS.md`: a common base of hidden 128, 2 layers, 2 query
heads / 1 KV head of size 64, vocab 512, plus each architecture's own fields). Pure data: this
module imports neither torch nor transformers.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ekka.errors import UnknownArchitectureError
from ekka.zoo.spec import NATIVE, TRANSFORMERS_BACKEND, ArchSpec

# ARCHS.md "Common base", without head_dim (some configs have no such field; hidden/heads = 64).
_BASE: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 512,
    "max_position_embeddings": 256,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
_HEAD_DIM = {"head_dim": 64}
# Tied-embedding archs whose class-default init gives degenerate greedy output (ARCHS.md): the
# input embedding dominates the residual stream, so the model echoes its last token. A wider init
# fixes Gemma, Cohere, Cohere2 and Starcoder2. Not Gemma2/Gemma3: their post-attention/post-MLP
# norms cap the branch outputs, so a wider init makes the embedding dominate more (Gemma3 echoes
# the last token at 0.2), and Gemma2's final softcap 0.5 saturates (exact ties among ~20 logits).
_WIDE_INIT = {"initializer_range": 0.2}


def _spec(
    name: str,
    family: str,
    config_class: str,
    extra: Mapping[str, Any],
    *,
    vllm_backend: str = NATIVE,
    notes: str = "",
) -> ArchSpec:
    """An ArchSpec whose defaults are the common base plus `extra` (read-only)."""
    defaults = {**_BASE, **extra}
    return ArchSpec(
        name=name,
        family=family,
        config_class=config_class,
        defaults=MappingProxyType(defaults),
        vllm_backend=vllm_backend,
        notes=notes,
    )


def _specs() -> list[ArchSpec]:
    """All zoo architectures, in the order of ARCHS.md's table."""
    return [
        _spec("LlamaForCausalLM", "llama", "LlamaConfig", _HEAD_DIM, notes="reference case"),
        _spec(
            "MistralForCausalLM",
            "mistral",
            "MistralConfig",
            {**_HEAD_DIM, "sliding_window": 8},
            notes="sliding_window=8 (vLLM reads it from the model-level config)",
        ),
        _spec(
            "Qwen2ForCausalLM",
            "qwen2",
            "Qwen2Config",
            _HEAD_DIM,
            notes="use_sliding_window=False (class default): no window",
        ),
        _spec(
            "Qwen3ForCausalLM",
            "qwen3",
            "Qwen3Config",
            _HEAD_DIM,
            notes="per-head q_norm/k_norm",
        ),
        _spec(
            "GemmaForCausalLM",
            "gemma",
            "GemmaConfig",
            {**_HEAD_DIM, **_WIDE_INIT},
            notes="tied embeddings; embed scale sqrt(hidden); initializer_range=0.2 for varied greedy",
        ),
        _spec(
            "Gemma2ForCausalLM",
            "gemma2",
            "Gemma2Config",
            {
                **_HEAD_DIM,
                "sliding_window": 8,
                "query_pre_attn_scalar": 64,
                "attn_logit_softcapping": 0.05,
                "final_logit_softcapping": 0.5,
                # released config.json files carry it beside hidden_activation (SGLang reads it)
                "hidden_act": "gelu_pytorch_tanh",
            },
            notes=(
                "softcaps 0.05/0.5 (the real 50/30 do nothing on a tiny model); sliding window 8; "
                "class-default init (0.2 saturates the final softcap: tied logits); hidden_act "
                "as released configs carry it"
            ),
        ),
        _spec(
            "Gemma3ForCausalLM",
            "gemma3",
            "Gemma3TextConfig",
            {
                **_HEAD_DIM,
                "num_hidden_layers": 3,
                "sliding_window": 8,
                "query_pre_attn_scalar": 64,
                "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
            },
            notes=(
                "text-only Gemma3; 3 layers, sliding/full/sliding with local/global rope bases; "
                "class-default init (0.2 makes it echo the last token)"
            ),
        ),
        _spec(
            "Phi3ForCausalLM",
            "phi3",
            "Phi3Config",
            {},
            notes="pad_token_id must be set (class default 32000 > vocab); no head_dim field",
        ),
        _spec(
            "PhiForCausalLM",
            "phi",
            "PhiConfig",
            {"num_key_value_heads": 2},
            vllm_backend=TRANSFORMERS_BACKEND,
            notes="vLLM Transformers backend; partial rotary 0.5",
        ),
        _spec(
            "Olmo2ForCausalLM",
            "olmo2",
            "Olmo2Config",
            _HEAD_DIM,
            vllm_backend=TRANSFORMERS_BACKEND,
            notes="vLLM Transformers backend",
        ),
        _spec(
            "GraniteForCausalLM",
            "granite",
            "GraniteConfig",
            {
                **_HEAD_DIM,
                "embedding_multiplier": 12.0,
                "residual_multiplier": 0.22,
                "attention_multiplier": 0.015625,
                "logits_scaling": 8.0,
            },
            notes="non-default embedding/residual/attention multipliers and logits_scaling",
        ),
        _spec(
            "CohereForCausalLM",
            "cohere",
            "CohereConfig",
            _WIDE_INIT,
            notes="parallel attention + MLP; tied embeddings; logit_scale",
        ),
        _spec(
            "StableLmForCausalLM",
            "stablelm",
            "StableLmConfig",
            {},
            notes="partial rotary 0.25",
        ),
        _spec(
            "MixtralForCausalLM",
            "mixtral",
            "MixtralConfig",
            {**_HEAD_DIM, "num_local_experts": 4, "num_experts_per_tok": 2},
            notes="4 experts, top-2; bf16 router near-ties move a few tokens to other experts",
        ),
        _spec(
            "Qwen2MoeForCausalLM",
            "qwen2_moe",
            "Qwen2MoeConfig",
            {
                **_HEAD_DIM,
                "num_experts": 4,
                "num_experts_per_tok": 2,
                "moe_intermediate_size": 64,
                "shared_expert_intermediate_size": 128,
            },
            notes="4 experts, top-2, gated shared expert",
        ),
        _spec(
            "Qwen3MoeForCausalLM",
            "qwen3_moe",
            "Qwen3MoeConfig",
            {**_HEAD_DIM, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64},
            notes="4 experts, top-2",
        ),
        _spec(
            "Starcoder2ForCausalLM",
            "starcoder2",
            "Starcoder2Config",
            {"sliding_window": None, **_WIDE_INIT},
            vllm_backend=TRANSFORMERS_BACKEND,
            notes="vLLM Transformers backend; tied embeddings; no sliding window",
        ),
        _spec(
            "Cohere2ForCausalLM",
            "cohere2",
            "Cohere2Config",
            {
                "sliding_window": 8,
                "layer_types": ["sliding_attention", "full_attention"],
                **_WIDE_INIT,
            },
            notes=(
                "vLLM uses sliding_window+1 on sliding layers, transformers sliding_window: "
                "prompts longer than the window differ (not a clean baseline)"
            ),
        ),
        _spec(
            "OlmoeForCausalLM",
            "olmoe",
            "OlmoeConfig",
            # one KV head per query head, as OLMoE's releases (OLMoE-1B-7B: 16 and 16)
            {"num_experts": 4, "num_experts_per_tok": 2, "num_key_value_heads": 2},
            notes="4 experts, top-2; as many KV heads as heads, as released",
        ),
        _spec(
            "Glm4ForCausalLM",
            "glm4",
            "Glm4Config",
            _HEAD_DIM,
            notes="partial rotary 0.5; extra post-attention / post-MLP norms",
        ),
    ]


ARCHITECTURES: dict[str, ArchSpec] = {spec.name: spec for spec in _specs()}

# Names that are neither a class name nor a family nor the class name without "ForCausalLM".
_EXTRA_ALIASES: dict[str, str] = {
    "gemma3_text": "Gemma3ForCausalLM",
    "commandr": "CohereForCausalLM",
    "command_r": "CohereForCausalLM",
}


def _normalize(name: str) -> str:
    """Lookup key: case-insensitive, ignoring `_`, `-` and spaces."""
    return "".join(ch for ch in name.lower() if ch not in "_- ")


def _aliases(spec: ArchSpec) -> list[str]:
    """The names `get_arch` accepts for one spec."""
    stem = spec.name.removesuffix("ForCausalLM")
    return [spec.name, spec.family, stem]


def _alias_table() -> dict[str, str]:
    """Normalized alias -> architecture class name."""
    table: dict[str, str] = {}
    for spec in ARCHITECTURES.values():
        for alias in _aliases(spec):
            table[_normalize(alias)] = spec.name
    for alias, name in _EXTRA_ALIASES.items():
        table[_normalize(alias)] = name
    return table


def _unknown_message(name: str) -> str:
    """Error text: the close match (if any) and the known names."""
    choices = [alias for spec in ARCHITECTURES.values() for alias in _aliases(spec)]
    lowered = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    hint = f" Did you mean {get_arch(lowered[close[0]]).name!r}?" if close else ""
    known = ", ".join(f"{spec.name} ({spec.family})" for spec in ARCHITECTURES.values())
    return (
        f"Unknown architecture {name!r}.{hint} Known architectures: {known}; and those derived "
        "from vLLM's or SGLang's registry and transformers (`ekka zoo list`)."
    )


def get_arch(name: str) -> ArchSpec:
    """The ArchSpec for a class name (any case) or a short alias such as "qwen2moe"; else one
    of the derived architectures (`ekka.zoo.derive`: a framework's registry and transformers) by its
    class name.

    Raises UnknownArchitectureError listing the known names (and a close match if there is one).
    """
    resolved = _alias_table().get(_normalize(name))
    if resolved is not None:
        return ARCHITECTURES[resolved]
    derived = {_normalize(s.name): s for s in _derived()}
    if _normalize(name) in derived:
        return derived[_normalize(name)]
    raise UnknownArchitectureError(_unknown_message(name))


def _derived() -> tuple[ArchSpec, ...]:
    from ekka.zoo.derive import derived_specs

    try:
        return derived_specs(frozenset(ARCHITECTURES))
    except ImportError:  # transformers is not installed: the hand-written ones only
        return ()


def list_architectures(*, derived: bool = False) -> list[ArchSpec]:
    """The zoo's hand-written architectures, in the order of ARCHS.md's table; with
    `derived`, then every other architecture that vLLM's or SGLang's registry holds and
    transformers has."""
    return list(ARCHITECTURES.values()) + (list(_derived()) if derived else [])
