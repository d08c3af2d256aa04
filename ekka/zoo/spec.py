"""The zoo's one record, `ArchSpec`, and its backend names: a leaf that `archs` (the
hand-written architectures) and `derive` (the ones a framework's registry and transformers
both have) share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ekka.frameworks import FRAMEWORKS

NATIVE = "native"
TRANSFORMERS_BACKEND = "transformers"


@dataclass(frozen=True)
class ArchSpec:
    """One zoo architecture: its transformers class, config class and the zoo's overrides."""

    name: str
    family: str
    config_class: str
    defaults: Mapping[str, Any] = field(hash=False)
    vllm_backend: str = NATIVE
    notes: str = ""
    # the target frameworks whose model registry holds it (`ekka.frameworks`); the
    # hand-written ones load in every framework
    frameworks: tuple[str, ...] = tuple(FRAMEWORKS)
