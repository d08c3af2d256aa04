"""A model folder's configuration: read, and the few figures both sides need from it.

Shared by the parent and the target's process; it imports nothing else of Ekka but its errors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ekka.errors import ModelFolderError

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def read_config(model: str | Path) -> dict[str, Any]:
    """The model folder's config.json, or a ModelFolderError that says what is missing."""
    path = Path(model)
    if not path.exists():
        raise ModelFolderError(
            f"model folder {path} does not exist; build one with `ekka zoo build ARCH --out {path}`."
        )
    if not path.is_dir():
        raise ModelFolderError(f"--model {path} is a file; give the model's folder.")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelFolderError(
            f"model folder {path} has no config.json: it is not a model folder or it is incomplete."
        )
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise ModelFolderError(f"{config_file} is not valid JSON ({exc}).") from None
    if not isinstance(config, dict):
        raise ModelFolderError(f"{config_file} is not a JSON object.")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
        raise ModelFolderError(
            f"model folder {path} has no weights (*.safetensors): it is incomplete; rebuild it."
        )
    if not config.get("architectures"):
        raise ModelFolderError(f"{config_file} names no architecture (`architectures` is empty).")
    return config


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a configuration (multimodal ones nest it)."""
    inner = config.get("text_config")
    return inner if isinstance(inner, Mapping) else config


def head_size(config: Mapping[str, Any]) -> int | None:
    """The attention head size (None: the configuration names no heads, e.g. a state-space
    model). GPT-2-style configurations name their sizes n_embd and n_head."""
    cfg = text_config(config)
    if cfg.get("head_dim"):
        return int(cfg["head_dim"])
    hidden = next((cfg[k] for k in ("hidden_size", "n_embd", "d_model") if cfg.get(k)), None)
    heads = next((cfg[k] for k in ("num_attention_heads", "n_head") if cfg.get(k)), None)
    if hidden is None or heads is None:
        return None
    return int(hidden) // int(heads)


def context_length(config: Mapping[str, Any]) -> int | None:
    cfg = text_config(config)
    # max_seq_len: DBRX's and MPT's key
    keys = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length",
            "max_seq_len")  # fmt: skip
    for key in keys:
        if cfg.get(key):
            return int(cfg[key])
    return None
