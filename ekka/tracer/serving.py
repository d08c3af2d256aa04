"""The serving metadata of each target pass against what a correct engine derives from the request.

The target records, per forward pass, where the pass's rows lie in the request (from the
scheduler: the tokens computed before the step and those scheduled in it, with the KV-cache
blocks allocated to the request) and what the model was given. A correct engine gives:

- input ids: the request's tokens (the prompt, then the generated ones) over the span;
- positions: the span's positions, `start .. start + count - 1`;
- attention metadata, per KV-cache group: sequence length `start + count`, query offsets
  `[0, count]`, the block table row starting with the request's blocks, and the slot mapping
  `block[p // block_size] * block_size + p % block_size` of each position p of the span.

Each check names the module that consumes the metadata first (the embedding, the rotary
embedding, the attention), so that the comparison stream holds it just before that module and
the change point can land on it; a mismatch is said as "positions 16..31 expected, 32..47 given".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from ekka.tracer.metadata import AttentionMetadata, Positions, RequestSpan
from ekka.tracer.trace import PassInfo

# What consumes each check's metadata first (`consumer_of` finds that module in a pass).
EMBEDDING, ROTARY, ATTENTION = "embedding", "rotary", "attention"


@dataclass(frozen=True)
class MetadataCheck:
    """One pass's metadata for one consumer, against the expectation."""

    pass_index: int
    step: int
    consumer: str  # EMBEDDING, ROTARY or ATTENTION
    checked: tuple[str, ...]  # the metadata compared ("input ids", "positions", ...)
    mismatches: tuple[str, ...]  # one sentence per wrong field; empty when all match
    start: int  # the span's first position
    count: int  # the span's tokens
    first_wrong: int | None  # the first position where a field is wrong, when known

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def describe(self) -> str:
        where = (
            f"pass {self.pass_index} (step {self.step}, positions {_range(self.start, self.count)})"
        )
        if self.ok:
            return f"{where}: {', '.join(self.checked)} as expected"
        return f"{where}: " + "; ".join(self.mismatches)


def check_passes(
    passes: Sequence[PassInfo],
    tokens: Sequence[int],
    others: Mapping[str, Sequence[int]] | None = None,
) -> list[MetadataCheck]:
    """Every check of every pass placed by the scheduler (`tokens`: the traced request's
    prompt then generated tokens; `others`: those of the scenario's other requests, by label)."""
    checks: list[MetadataCheck] = []
    for info in passes:
        checks.extend(check_pass(info, tokens, others))
    return checks


def check_pass(
    info: PassInfo,
    tokens: Sequence[int],
    others: Mapping[str, Sequence[int]] | None = None,
) -> list[MetadataCheck]:
    """The pass's checks, one per consumer, covering every request the pass served: each
    request's input ids, positions and attention metadata at its own rows of the batch. In a
    batch, a mismatch names its request ("slot mapping of request alongside 0 ...")."""
    serving = info.serving
    span = None if serving is None else serving.request
    if serving is None or span is None:
        return []  # placed by the model's own positions: nothing independent to check against
    start, count = span.start, span.count
    batch = serving.spans
    all_ids = info.input_ids if serving.batch_input_ids is None else serving.batch_input_ids
    consumers: dict[str, dict[str, tuple[str, int | None] | None]] = {
        EMBEDDING: {},
        ROTARY: {},
        ATTENTION: {},
    }
    for request in batch:
        traced = request.request == span.request
        own = tokens if traced else (others or {}).get(str(request.label))
        label = "" if len(batch) == 1 else f" of {_who(request, traced)}"
        s, c = request.start, request.count
        found: dict[str, dict[str, tuple[str, int | None] | None]] = {
            EMBEDDING: {}
            if own is None
            else {
                "input ids": _compare(
                    list(own[s : s + c]), all_ids[request.offset : request.offset + c], s
                )
            },
            ROTARY: {"positions": _positions(serving.given_positions, s, c, request.offset)},
            ATTENTION: {},
        }
        attention = serving.attention
        for group, given in sorted(attention.items()):
            group_label = "" if len(attention) == 1 else f" (KV-cache group {group})"
            for name, wrong in _attention(given, request, int(group)).items():
                found[ATTENTION][name + group_label] = wrong
        for consumer, fields in found.items():
            for name, wrong in fields.items():
                if wrong is not None and not traced:  # placed at the traced request's start
                    wrong = (wrong[0], start)
                consumers[consumer][name + label] = wrong
    return [
        _check(info, consumer, start, count, fields)
        for consumer, fields in consumers.items()
        if fields
    ]


def _who(request: RequestSpan, traced: bool) -> str:
    if traced:
        return "the traced request"
    return f"request {request.label or request.request}"


def _check(
    info: PassInfo,
    consumer: str,
    start: int,
    count: int,
    fields: dict[str, tuple[str, int | None] | None],
) -> MetadataCheck:
    """`fields`: per metadata name, None where it matches, else (the sentence, first wrong
    position)."""
    wrong = [(name, found) for name, found in fields.items() if found is not None]
    firsts = [f[1] for _, f in wrong if f[1] is not None]
    return MetadataCheck(
        pass_index=info.index,
        step=info.step,
        consumer=consumer,
        checked=tuple(fields),
        mismatches=tuple(f"{name} {found[0]}" for name, found in wrong),
        start=start,
        count=count,
        first_wrong=min(firsts) if firsts else None,
    )


def _compare(
    expected: Sequence[int], given: Sequence[int], start: int
) -> tuple[str, int | None] | None:
    """None where `given` holds `expected` first (padding after it is allowed)."""
    head = list(given[: len(expected)])
    if head == list(expected):
        return None
    first = next((i for i, (a, b) in enumerate(zip(expected, head)) if a != b), len(head))
    return f"{_values(expected)} expected, {_values(head)} given", start + first


def _positions(
    given: Positions, start: int, count: int, offset: int
) -> tuple[str, int | None] | None:
    expected = list(range(start, start + count))
    sections = given and isinstance(given[0], tuple)
    rows = cast(Sequence[Sequence[int]], given if sections else (given,))
    for row in rows:  # M-RoPE: every section of a text token holds its position
        found = _compare(expected, row[offset : offset + count], start)
        if found is not None:
            return found
    return None


def _attention(
    given: AttentionMetadata, span: RequestSpan, group: int
) -> dict[str, tuple[str, int | None] | None]:
    """The request's attention metadata: its row `span.index` of the per-request fields, its
    rows `span.offset ..` of the per-token ones."""
    start, count, index, offset = span.start, span.count, span.index, span.offset
    end = start + count
    out: dict[str, tuple[str, int | None] | None] = {}
    if given.seq_lens is not None:
        out["sequence length"] = _compare([end], given.seq_lens[index:], start)
    if given.query_start_loc is not None:
        out["query offsets"] = _compare(
            [offset, offset + count], given.query_start_loc[index:], start
        )
    blocks, sizes = span.block_ids, span.block_sizes
    if group >= len(blocks) or group >= len(sizes) or not sizes[group]:
        return out
    ids, size = blocks[group], sizes[group]
    needed = -(-end // size)
    if given.block_table is not None and len(ids) >= needed:
        rows = given.block_table
        if rows and isinstance(rows[0], tuple):  # one row per request
            row = cast(Sequence[int], rows[index] if index < len(rows) else ())
        else:
            row = cast(Sequence[int], rows)
        out["block table"] = _compare(ids[:needed], row, 0)
        if out["block table"] is not None:  # which position first reads a wrong block
            wrong = out["block table"][1] or 0
            out["block table"] = (out["block table"][0], max(start, wrong * size))
    if given.slot_mapping is not None and len(ids) >= needed:
        slots = [ids[p // size] * size + p % size for p in range(start, end)]
        out["slot mapping"] = _compare(slots, given.slot_mapping[offset:], start)
    return out


def _range(start: int, count: int) -> str:
    return str(start) if count == 1 else f"{start}..{start + count - 1}"


def _values(values: Sequence[int]) -> str:
    """`16..31` for a run of consecutive values, else the values (the first eight)."""
    values = list(values)
    if not values:
        return "nothing"
    if len(values) > 2 and values == list(range(values[0], values[0] + len(values))):
        return f"{values[0]}..{values[-1]}"
    shown = ", ".join(str(v) for v in values[:8])
    return f"[{shown}{', ...' if len(values) > 8 else ''}]"


def scenario_events(passes: Sequence[PassInfo], prompt_len: int) -> list[str]:
    """What the traced request met in its engine, from the scheduler's spans: a prefix-cache
    hit, the requests batched with it, a preemption (a span that starts again before where
    the last one ended: the request was recomputed)."""
    spans = [
        (p, p.serving.request)
        for p in passes
        if p.serving is not None and p.serving.request is not None
    ]
    if not spans:
        return []
    events: list[str] = []
    first = spans[0][1]
    if first.start > 0:
        events.append(
            f"the traced request took its first {first.start} prompt tokens (of {prompt_len}) "
            "from the prefix cache"
        )
    batched = [
        p.serving.batch for p, _ in spans if p.serving is not None and len(p.serving.batch) > 1
    ]
    if batched:
        others = sorted(
            {str(b.label) for batch in batched for b in batch if b.request != first.request}
        )
        events.append(
            f"{len(batched)} of its {len(spans)} passes were batched with other requests "
            f"({', '.join(others)})"
        )
    end, blocks = None, None
    for info, span in spans:
        start, own = span.start, [list(g) for g in span.block_ids]
        kept = blocks is None or all(g[: len(b)] == b for g, b in zip(own, blocks))
        if end is not None and start < end:
            events.append(
                f"it was preempted and recomputed: pass {info.index} starts again at position "
                f"{start} after position {end - 1} had been computed"
            )
        elif not kept and blocks is not None:
            events.append(
                f"its KV-cache blocks were replaced before pass {info.index} ({blocks} became "
                f"{own}: it was preempted) and it resumed at position {start} without "
                "recomputing the tokens before it"
            )
        end, blocks = start + span.count, own
    return events
