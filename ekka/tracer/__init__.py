"""The tracer: capture traces from the target and the reference, align them, localize errors.

Two sides, kept apart by imports. Inside the framework's process (what a container image or a
remote worker runs): `hooks`, `adapters.vllm`, `adapters.vllm_replay`,
`adapters.vllm_requests`, and what both sides share: `protocol` (the messages), `trace` and
`shards` (storage), `metadata` (a pass's serving metadata), `model_config`. They import nothing of the parent's side: `session` (the
target session), `capture`, `adapters.transformers` (the reference), `align`, `transforms`,
`metrics`, `serving` (the serving metadata's checks), `compare`, `localize`, `verdict`,
`diagnose`.

This package's names are imported on first use, so that importing the inside loads nothing of
the parent's side.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "CaptureSpec": "ekka.tracer.protocol",
    "PassInfo": "ekka.tracer.trace",
    "Record": "ekka.tracer.trace",
    "ServingMetadata": "ekka.tracer.metadata",
    "TargetSession": "ekka.tracer.session",
    "TensorMeta": "ekka.tracer.trace",
    "TraceManifest": "ekka.tracer.trace",
    "TraceReader": "ekka.tracer.trace",
    "TraceWriter": "ekka.tracer.trace",
    "capture": "ekka.tracer.capture",
    "is_trace": "ekka.tracer.trace",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
