"""Small traces for the alignment's tests, written with the real TraceWriter (no engine)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ekka.tracer.trace import PassInfo, TraceManifest, TraceReader, TraceWriter

T = 6  # the prompt's tokens: one pass over positions 0..T-1


def write_trace(
    path: Path,
    framework: str,
    records: Sequence[tuple[str, str, Any]],
    config: Mapping[str, Any] | None = None,
) -> TraceReader:
    """A trace of one prefill pass: each record (name, module class, outputs) one call."""
    writer = TraceWriter(
        path,
        TraceManifest(
            framework,
            prompt_ids=tuple(range(T)),
            model_config=dict(config or {"model_type": "llama"}),
        ),
    )
    writer.add_pass(PassInfo(index=0, step=0, input_ids=tuple(range(T)), positions=tuple(range(T))))
    for i, (name, cls, outputs) in enumerate(records):
        writer.add(
            name=name,
            module_class=cls,
            source_file="x.py",
            source_line=1,
            step=0,
            pass_index=0,
            call_index=i,
            outputs=outputs,
        )
    writer.close()
    return TraceReader(path)
