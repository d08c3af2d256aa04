"""The tiny-model zoo: random-weight models of 20 architectures that transformers and vLLM load.

    build_model("llama", "models/llama")            # config + weights + tokenizer
    get_arch("qwen2moe").defaults                   # the zoo's config overrides
    parse_set_values(["num_hidden_layers=3"])       # CLI --set items -> overrides

Importing this package imports neither torch nor transformers; `build_model` does.
"""

from __future__ import annotations

from ekka.zoo.archs import ARCHITECTURES, get_arch, list_architectures
from ekka.zoo.build import build_model, parse_set_values
from ekka.zoo.spec import ArchSpec
from ekka.zoo.tokenizer import build_tokenizer

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "build_model",
    "build_tokenizer",
    "get_arch",
    "list_architectures",
    "parse_set_values",
]
