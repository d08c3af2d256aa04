"""The serving metadata of one forward pass, as the target's adapter records it beside the pass
(runs inside the framework's process; imports nothing of Ekka but the codec).

The fields are the framework's own values, named for what they are, so that any serving
framework fills them from its scheduler and its model runner's batch:

| field | vLLM | SGLang (forward batch) |
|---|---|---|
| `RequestSpan.start`, `count` | computed tokens, scheduled tokens | prefix length, extend length |
| `RequestSpan.block_ids` | the request's KV-cache blocks, per group | (none: token slots) |
| `given_positions` | the model's `positions` | `positions` |
| `AttentionMetadata.seq_lens` | `seq_lens` | `seq_lens` |
| `AttentionMetadata.query_start_loc` | `query_start_loc` | (cumulated extend lengths) |
| `AttentionMetadata.slot_mapping` | `slot_mapping` | `out_cache_loc` |
| `AttentionMetadata.block_table` | `block_table` | `req_to_token` rows (page size 1) |

A field a framework or backend does not have stays None (or empty) and is not checked. The
parent (`ekka.tracer.serving`) derives what a correct engine gives from the spans and compares.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ekka.codec import JsonRecord

TRACED = "traced"  # the traced request's label (the others: "before 0", "alongside 1")
# Positions as the model was given them: one row, or one row per M-RoPE section.
Positions = tuple[int, ...] | tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class RequestSpan(JsonRecord):
    """Where one request's rows of a pass lie, in the request and in the flattened batch."""

    request: str  # the engine's request id
    start: int  # the tokens the request had computed before the pass
    count: int  # the tokens the pass computes for it
    label: str | None = None  # its label in the scenario ("traced", "before 0"); None: unknown
    # the KV-cache blocks allocated to the request so far, per KV-cache group, and each
    # group's block size
    block_ids: tuple[tuple[int, ...], ...] = ()
    block_sizes: tuple[int, ...] = ()
    index: int = 0  # its row among the pass's sampled rows (one per request)
    offset: int = 0  # its first row in the flattened batch


@dataclass(frozen=True)
class AttentionMetadata(JsonRecord):
    """The attention metadata one KV-cache group's layers read in a pass (see the table
    above); `layer` is the first attention layer that reads it."""

    layer: str = ""
    seq_lens: tuple[int, ...] | None = None  # per request
    query_start_loc: tuple[int, ...] | None = None  # per request, then the end
    slot_mapping: tuple[int, ...] | None = None  # per token: where its key and value go
    # per request, its KV-cache blocks (one row where the backend holds a single request's)
    block_table: tuple[tuple[int, ...], ...] | tuple[int, ...] | None = None


@dataclass(frozen=True)
class ServingMetadata(JsonRecord):
    """What the scheduler placed in one pass and what the model was given.

    `request` is the traced request's span; None where no scheduler step was seen (the rows
    are then placed by the model's own positions, and nothing is checked). `batch` holds every
    request's span in row order when the pass served more than one, with `batch_input_ids` the
    whole batch's input ids. `attention` is keyed by the KV-cache group's index as a string
    ("0" where the groups are unknown).
    """

    given_positions: Positions = ()
    request: RequestSpan | None = None
    attention: Mapping[str, AttentionMetadata] = field(default_factory=dict)
    batch: tuple[RequestSpan, ...] = ()
    batch_input_ids: tuple[int, ...] | None = None

    @property
    def spans(self) -> tuple[RequestSpan, ...]:
        """Every request the pass served, in row order (the traced one alone when unbatched)."""
        if self.batch:
            return self.batch
        return () if self.request is None else (self.request,)


def nested_tuples(values: Any) -> Any:
    """Nested lists (a tensor's `tolist()`) as nested tuples, as the records hold them; a
    dict's values likewise."""
    if isinstance(values, dict):
        return {k: nested_tuples(v) for k, v in values.items()}
    return tuple(nested_tuples(v) for v in values) if isinstance(values, list) else values
