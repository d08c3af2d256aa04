"""The tracer: capture traces from the target and the reference, align them, localize errors."""

from __future__ import annotations

from ekka.tracer.capture import CaptureSpec, capture
from ekka.tracer.trace import PassInfo, Record, TensorMeta, TraceReader, TraceWriter, is_trace

__all__ = [
    "CaptureSpec",
    "PassInfo",
    "Record",
    "TensorMeta",
    "TraceReader",
    "TraceWriter",
    "capture",
    "is_trace",
]
