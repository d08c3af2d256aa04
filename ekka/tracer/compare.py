"""The component-by-component comparison of a target trace with its references.

Each aligned component is measured with the robust error ratio (`ekka.tracer.metrics`), every
pass of it against one gather of the reference rows, and every comparison's figures worked out
at once from the row norms (`metrics.segment_figures`). The stream also holds, per pass, the
serving metadata's checks (`ekka.tracer.serving`) just before the module that consumes the
metadata, and the inputs of the decoder layers just before their first call inside: the
localization walks up them to find where glue code went wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ekka.report.records import Comparison
from ekka.tracer import transforms
from ekka.tracer.align import Aligner, ComponentMap, Plan, plan_components, positions_for
from ekka.tracer.hooks import DECODER_LAYER
from ekka.tracer.metrics import noise_floor, row_norms, segment_figures
from ekka.tracer.serving import ATTENTION, EMBEDDING, ROTARY, MetadataCheck, check_passes
from ekka.tracer.trace import Record, TraceReader


def iter_comparisons(
    target: TraceReader,
    reference: TraceReader,
    reference32: TraceReader | None = None,
    *,
    mapping: ComponentMap | None = None,
    step: int | None = None,
) -> Iterator[Comparison]:
    """The aligned comparisons, in the target's call order (a module's input before its output).

    Worked out component by component: every pass (step) of a component is measured against
    one gather of the reference rows at all of their positions, since a teacher-forced
    reference computes the whole sequence in one pass. Only one component's tensors are held
    at a time.
    """
    mapping = mapping or plan_components(target, reference)
    aligner = Aligner(target, reference, reference32)
    passes = {p.index: p for p in target.passes}
    high = reference32 or reference
    dtype = target.dtype
    routing = RoutingTolerance(dict(target.manifest.model_config), dtype)
    components: dict[str, list[Any]] = {}  # name -> its records, in order of first call
    for record in target.records:
        if step is not None and record.step != step:
            continue
        if record.name in mapping.plans and record.pass_index in passes:
            components.setdefault(record.name, []).append(record)
    sink = _Figures(noise_floor(dtype), _first_inside(target.records))
    for name, records in components.items():
        plan = mapping.plans[name]
        batch = _Batch(aligner, plan, records, passes, reference, high, sink)
        if plan.inputs and (_input_comparable(plan) or DECODER_LAYER.fullmatch(name)):
            batch.inputs()
        batch.outputs(routing)
    checked = [p for p in target.passes if step is None or p.step == step]
    sink.add_metadata(
        check_passes(checked, target.prompt_ids + target.generated_ids, target.manifest.requests),
        _consumers(target.records),
    )
    yield from sink.comparisons()


def _first_inside(records: Sequence[Record]) -> dict[tuple[int, str], int]:
    """(pass, module) -> the index of the first record inside the module (where its call
    began, as the records are written when calls end)."""
    first: dict[tuple[int, str], int] = {}
    for record in records:
        parts = record.name.split("#")[0].split(".")
        for cut in range(1, len(parts)):
            first.setdefault((record.pass_index, ".".join(parts[:cut])), record.index)
    return first


def _consumers(records: Sequence[Record]) -> dict[tuple[int, str], Record]:
    """(pass, consumer kind) -> the module of the pass that reads that metadata first: the
    embedding (input ids), the rotary embedding (positions; without one, the attention), the
    attention that reads the KV cache (vLLM's `Attention` at `.attn`; else the first leaf
    module whose class is an attention)."""
    found: dict[tuple[int, str], Record] = {}
    fallback: dict[int, Record] = {}  # pass -> the first leaf attention of another name
    for record in records:
        if record.kind != "module":
            continue
        p, cls = record.pass_index, record.module_class
        if "Embedding" in cls and "Rotary" not in cls:
            found.setdefault((p, EMBEDDING), record)
        if re.search(r"Rotary|RoPE|Rope", cls):
            found.setdefault((p, ROTARY), record)
        if record.name.endswith(".attn") or cls == "Attention":
            found.setdefault((p, ATTENTION), record)
        elif "Attention" in cls and (record.leaf or p not in fallback):
            # another attention leaf; else the module holding the attention (where the hooks do
            # not see the inner call, as in vLLM's Phi, OLMo 2, Starcoder2)
            if record.leaf and p in fallback and not fallback[p].leaf:
                fallback[p] = record
            fallback.setdefault(p, record)
    for p, record in fallback.items():
        found.setdefault((p, ATTENTION), record)
    for p in {p for p, _ in found}:
        if (p, ATTENTION) in found:
            found.setdefault((p, ROTARY), found[(p, ATTENTION)])
    return found


class RoutingTolerance:
    """MoE routers at near-tied logits may pick other experts for a token or two in bfloat16.

    At each router (a component whose aligned output is `[tokens, num_experts]`), tokens whose
    target top-k expert set differs from the float32 reference's *and* whose reference margin
    between the k-th and (k+1)-th router logit is within the dtype's noise are discounted: left
    out of the ratio of that router and of every later component of the same pass. A router
    that is really wrong flips tokens with clear margins, which are not discounted.
    """

    def __init__(self, config: dict[str, Any], dtype: str) -> None:
        text = config.get("text_config") or config
        self.experts = int(text.get("num_local_experts") or text.get("num_experts") or 0)
        self.top_k = int(text.get("num_experts_per_tok") or 0)
        self.floor = noise_floor(dtype)
        self.pass_index = -1
        self._rows: dict[int, set[int]] = {}  # pass -> discounted rows

    @property
    def rows(self) -> set[int]:
        return self._rows.setdefault(self.pass_index, set())

    def begin(self, pass_index: int) -> None:
        """Later calls of observe and keep are about this pass."""
        self.pass_index = pass_index

    def observe(self, x: torch.Tensor, x_r: torch.Tensor, y_r: torch.Tensor) -> None:
        if not self.experts or not self.top_k or x.dim() != 2 or x.shape[-1] != self.experts:
            return
        k = min(self.top_k, self.experts - 1)
        target_sets = x.topk(k, dim=-1).indices.sort(dim=-1).values
        reference_sets = y_r.topk(k, dim=-1).indices.sort(dim=-1).values
        ranked = y_r.sort(dim=-1, descending=True).values
        margin = ranked[:, k - 1] - ranked[:, k]
        noise = (x_r - y_r).abs().max(dim=-1).values + (x - y_r).abs().median(dim=-1).values
        scale = y_r.abs().max(dim=-1).values * self.floor
        near_tie = margin <= 4 * torch.maximum(noise, scale)
        flipped = (target_sets != reference_sets).any(dim=-1)
        self.rows.update(int(i) for i in torch.nonzero(flipped & near_tie).flatten())

    def keep(self, rows: int) -> list[int] | None:
        discounted = self._rows.get(self.pass_index)
        if not discounted:
            return None
        return [i for i in range(rows) if i not in discounted]


FLOATING = ("float", "bfloat", "half")


def _input_keys(record: Record) -> tuple[str, str | None] | None:
    """The input a module's comparison reads: its first floating-point tensor argument, and a
    second of the same shape (a fused add-norm's residual, a decoder layer's residual stream),
    whose sum with the first is the other reading; None without a floating-point input (an
    embedding's ids)."""
    floats = [(k, m) for k, m in record.inputs if m is not None and m.dtype.startswith(FLOATING)]
    if not floats:
        return None
    key, meta = floats[0]
    second = next((k for k, m in floats[1:] if m.shape == meta.shape), None)
    return key, second


def _input_comparable(plan: Plan) -> bool:
    """Modules whose input is the reference module's input: same-name or fused projections."""
    return (
        plan.slot == "out" and plan.target_op == "first" and plan.reference_op in (None, "concat")
    )


Segment = tuple[
    Any, Sequence[torch.Tensor], list[int]
]  # (record, candidate target tensors, positions)
# Segments back to back with their row norms: the reference's, each candidate's error, and the
# serving-dtype reference's noise (None in float32).
Group = tuple[list[Segment], torch.Tensor, list[torch.Tensor], "torch.Tensor | None"]


class _Batch:
    """Every pass of one target component, measured against one gather of the reference.

    The row norms of all passes are taken in one operation per tensor and handed to the sink,
    which works out every comparison's figures at once.
    """

    def __init__(
        self,
        aligner: Aligner,
        plan: Plan,
        records: list[Any],
        passes: dict[int, Any],
        reference: TraceReader,
        high: TraceReader,
        sink: _Figures,
    ) -> None:
        self.aligner, self.plan, self.records, self.passes = aligner, plan, records, passes
        self.reference, self.high, self.sink = reference, high, sink

    def _gather(self, plan: Plan, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        x_r = self.aligner.reference_tensor(self.reference, plan, positions)
        if x_r is None:
            return None
        y_r = (
            x_r
            if self.high is self.reference
            else self.aligner.reference_tensor(self.high, plan, positions)
        )
        return None if y_r is None else (x_r, y_r)

    def _rows(
        self,
        plan: Plan,
        segments: list[Segment],
        whole: tuple[torch.Tensor, torch.Tensor] | None = None,
        joined: list[torch.Tensor] | None = None,
    ) -> list[Group]:
        """The segments in groups, each with its row norms (`joined`: each candidate of every
        segment already one under the other, as the segments hold them).

        One group, one gather and one norm per tensor, when every position is in the reference
        and every shape fits; else a group per segment, dropping those that do not fit.
        """
        if not segments:
            return []
        if whole is None:
            whole = self._gather(plan, [p for _, _, positions in segments for p in positions])
        count = len(segments[0][1])
        if whole is not None and (
            # slices of `joined`, each of its record's rows: every slice fits when the stack does
            # (the positions gathered are as many as the rows only if no record has fewer)
            all(
                j.shape[1:] == whole[0].shape[1:] and j.shape[0] == whole[0].shape[0]
                for j in joined
            )
            if joined is not None
            else all(
                len(xs) == count
                and all(x.shape[1:] == whole[0].shape[1:] and x.shape[0] == len(ps) for x in xs)
                for _, xs, ps in segments
            )
        ):
            x_r, y_r = whole
            if joined is None:
                joined = [_cat([xs[c] for _, xs, _ in segments]) for c in range(count)]
            y, ts, n = _norm_tensors(x_r, y_r, joined)
            return [(segments, y, ts, n)]
        groups: list[Group] = []
        for record, xs, positions in segments:
            pair = self._gather(plan, positions)
            if pair is None:
                continue
            x_r, y_r = pair
            fits = [x for x in xs if x.shape == x_r.shape]
            if fits:
                y, ts, n = _norm_tensors(x_r, y_r, fits)
                groups.append(([(record, fits, positions)], y, ts, n))
        return groups

    def inputs(self) -> None:
        """What the target module received against what the reference module received.

        A fused add-norm receives `(x, residual)` where the reference receives their sum: both
        readings are tried and the closer one is kept.
        """
        in_plan = Plan(
            self.plan.target, "first", self.plan.reference[:1], None, slot="in", rule="input"
        )
        stacked = self._stacked_inputs()
        if stacked is not None:
            joined, lengths = stacked
            segments = self._split(joined, lengths)
            for group in self._rows(in_plan, segments, joined=joined):
                self.sink.add(group, in_plan, "input")
            return
        segments = []
        for record in self.records:
            keys = _input_keys(record)
            if keys is None:
                continue
            inputs = self.aligner.target.inputs(record)
            first_in = inputs.get(keys[0])
            if first_in is None:
                continue
            candidates = [first_in]
            second = inputs.get(keys[1]) if keys[1] is not None else None
            if second is not None and second.shape == first_in.shape:
                candidates.append(first_in + second)
            rows = len(self.passes[record.pass_index].positions)
            try:
                xs = [transforms.to_rows(c, rows).float() for c in candidates]
            except RuntimeError:
                continue
            segments.append(
                (record, xs, positions_for(xs[0].shape[0], self.passes[record.pass_index]))
            )
        for group in self._rows(in_plan, segments):
            self.sink.add(group, in_plan, "input")

    def outputs(self, routing: RoutingTolerance | None = None) -> None:
        stacked = self._stacked_outputs()
        joined = None
        if stacked is not None:
            joined, lengths = stacked
            segments = self._split(joined, lengths)
        else:
            segments = []
            for record in self.records:
                try:
                    x = self.aligner.target_tensor(
                        record, self.plan, len(self.passes[record.pass_index].positions)
                    )
                except (RuntimeError, AssertionError, IndexError):
                    continue
                segments.append(
                    (record, [x], positions_for(x.shape[0], self.passes[record.pass_index]))
                )
        if routing is not None and routing.experts:
            self._routed(segments, routing)
            return
        whole = (
            self._gather(self.plan, [p for _, _, positions in segments for p in positions])
            if segments
            else None
        )
        if whole is not None and (
            joined[0].shape[-1] != whole[0].shape[-1]
            if joined is not None
            else any(x.shape[-1] != whole[0].shape[-1] for _, (x,), _ in segments)
        ):
            fitted = self._fit(segments, whole[0].shape[-1])
            whole = whole if len(fitted) == len(segments) else None  # rows no longer line up
            segments, joined = fitted, None
        for group in self._rows(self.plan, segments, whole, joined=joined):
            self.sink.add(group, self.plan, "output")

    def _split(self, joined: list[torch.Tensor], lengths: list[int]) -> list[Segment]:
        """Segments of the records' rows, one under the other in `joined` (each candidate): their
        tensors are views made when asked for (`_Slices`); measured as a stack, they never are."""
        segments: list[Segment] = []
        start = 0
        for record, rows in zip(self.records, lengths):
            segments.append(
                (
                    record,
                    _Slices(joined, start, rows),
                    positions_for(rows, self.passes[record.pass_index]),
                )
            )
            start += rows
        return segments

    def _stacked_outputs(self) -> tuple[list[torch.Tensor], list[int]] | None:
        """Every record's target tensor one under the other, read with one gather per output
        the plan uses, and each record's rows; None where that does not apply (read record by
        record).

        It applies where those outputs are 2-D, rows first, in every record alike: the target
        ops work row by row, so applied once to the stack they give the stack of their
        per-record results.
        """
        op = self.plan.target_op
        used = _OP_OUTPUTS.get(op)
        if used is None:
            return None
        first = self.records[0].outputs
        wanted = [i for i in (range(len(first)) if used == "all" else used) if i < len(first)]
        used = [i for i in wanted if first[i] is not None]
        lengths = []
        for record in self.records:
            outputs = record.outputs
            if len(outputs) != len(first) or any(
                (outputs[i] is None) != (first[i] is None) for i in wanted
            ):
                return None
            metas = [outputs[i] for i in used]
            if not metas or any(
                len(m.shape) != 2 or m.shape[0] != metas[0].shape[0] for m in metas
            ):
                return None
            lengths.append(metas[0].shape[0])
        columns: list[torch.Tensor | None] = [None] * len(first)
        for i in used:
            columns[i] = self.aligner.target.stacked_rows([r.outputs[i] for r in self.records])
            if columns[i] is None:
                return None
        try:
            return [transforms.TARGET_OPS[op](columns, None).float()], lengths
        except (RuntimeError, AssertionError, IndexError):
            return None

    def _stacked_inputs(self) -> tuple[list[torch.Tensor], list[int]] | None:
        """`inputs`' candidates for every record, one under the other, read with one gather
        per argument; None where the records' inputs are not all alike and 2-D."""
        chosen = [_input_keys(record) for record in self.records]
        if not chosen or any(c is None for c in chosen):
            return None
        metas = [dict(record.inputs) for record in self.records]
        firsts = [m[c[0]] for m, c in zip(metas, chosen) if c is not None]
        if len(firsts) != len(metas) or any(len(m.shape) != 2 for m in firsts):
            return None
        seconds = [
            m.get(c[1]) if c is not None and c[1] is not None else None
            for m, c in zip(metas, chosen)
        ]
        pair = all(m is not None and m.shape == f.shape for m, f in zip(seconds, firsts))
        if not pair and any(m is not None and m.shape == f.shape for m, f in zip(seconds, firsts)):
            return None  # some records have a second reading, others not
        first_in = self.aligner.target.stacked_rows(firsts)
        if first_in is None or not first_in.is_floating_point():
            return None
        candidates = [first_in]
        if pair:
            second = self.aligner.target.stacked_rows([m for m in seconds if m is not None])
            if second is None:
                return None
            if second.is_floating_point():
                candidates.append(first_in + second)
        return [c.float() for c in candidates], [m.shape[0] for m in firsts]

    def _fit(self, segments: list[Segment], width: int) -> list[Segment]:
        """Partial rotary: cut the target's q|k to the rotated dims the reference records."""
        heads = _qk_heads(dict(self.aligner.target.manifest.model_config))
        fitted: list[Segment] = []
        for record, (x,), positions in segments:
            cut = (
                _fit_partial(x, torch.empty(x.shape[0], width), heads)
                if x.shape[-1] != width
                else x
            )
            if cut is not None:
                fitted.append((record, [cut], positions))
        return fitted

    def _routed(self, segments: list[Segment], routing: RoutingTolerance) -> None:
        """MoE models: pass by pass, so that tokens a router discounted leave the later ratios."""
        for record, (x,), positions in segments:
            pair = self._gather(self.plan, positions)
            if pair is None:
                continue
            x_r, y_r = pair
            if x.shape != x_r.shape:
                fitted = self._fit([(record, [x], positions)], x_r.shape[-1])
                if not fitted or fitted[0][1][0].shape != x_r.shape:
                    continue
                x = fitted[0][1][0]
            routing.begin(record.pass_index)
            routing.observe(x, x_r, y_r)
            keep = routing.keep(x.shape[0])
            discounted = 0
            if keep is not None and len(keep) < x.shape[0] and keep:
                discounted = x.shape[0] - len(keep)
                x, x_r, y_r = x[keep], (y_r[keep] if x_r is y_r else x_r[keep]), y_r[keep]
                if self.high is self.reference:
                    x_r = y_r
                positions = [positions[i] for i in keep]
            y, ts, n = _norm_tensors(x_r, y_r, [x])
            self.sink.add(([(record, [x], positions)], y, ts, n), self.plan, "output", discounted)


class _Slices(Sequence[torch.Tensor]):
    """Rows `start` to `start + rows` of each tensor of `joined`, as views made on access."""

    __slots__ = ("joined", "start", "rows")

    def __init__(self, joined: list[torch.Tensor], start: int, rows: int) -> None:
        self.joined, self.start, self.rows = joined, start, rows

    def __len__(self) -> int:
        return len(self.joined)

    def __getitem__(
        self, index: Any
    ) -> Any:  # an index (no slices: nothing slices a segment's tensors)
        return self.joined[index].narrow(0, self.start, self.rows)


class _Figures:
    """Every comparison's figures, worked out at once from the row norms the batches hand in.

    The row norms of every comparison are kept back to back, and `metrics.segment_figures`
    works out all their figures with one NumPy operation per step. A row without noise (the
    reference is its own float32 run) carries -1 there, since a norm is never negative.
    """

    def __init__(self, floor: float, first_inside: dict[tuple[int, str], int]) -> None:
        self.floor = floor
        self.first_inside = first_inside
        self.fixed: list[tuple[tuple[int, int], Comparison]] = []  # metadata, already measured
        self.y: list[float] = []  # every row of every comparison, back to back
        self.t: list[float] = []
        self.n: list[float] = []
        # (order, record, plan, kind, discounted, positions): one per comparison, rows in order
        self.items: list[tuple[tuple[int, int], Any, Plan, str, int, list[int]]] = []
        self.lengths: list[int] = []

    def add(self, group: Group, plan: Plan, kind: str, discounted: int = 0) -> None:
        """One group's comparisons; of several candidates, each segment takes the one whose
        error is smallest (the first of equals)."""
        segments, y, ts, n = group
        # a segment of no rows holds none of the tensors' rows, and has nothing to measure
        segments = [segment for segment in segments if segment[2]]
        if not segments:
            return
        lengths = [len(positions) for _, _, positions in segments]
        if len(ts) > 1:
            starts = np.cumsum([0] + lengths[:-1])
            totals = np.stack(
                [np.add.reduceat(c.numpy().astype(np.float64) ** 2, starts) for c in ts]
            )
            best = np.repeat(_first_min(totals), lengths)
            t = np.stack([c.numpy() for c in ts])[best, np.arange(len(best))].tolist()
        else:
            t = ts[0].tolist()
        # Kept as Python floats, not as the small tensors they come in: small allocations held
        # between the large ones the analysis frees kept the C heap from shrinking (an 8B
        # trace's analysis grew to 12 GB).
        self.y.extend(y.tolist())
        self.t.extend(t)
        self.n.extend([-1.0] * len(t) if n is None else n.tolist())
        for record, _, positions in segments:
            self.items.append(
                (self._order(record, kind), record, plan, kind, discounted, positions)
            )
        self.lengths.extend(lengths)

    def _order(self, record: Record, kind: str) -> tuple[int, int]:
        """Where a comparison goes in the stream: a module's input before its output; a
        container's input where its call began (before everything inside it)."""
        if kind != "input":
            return (record.index, 1)
        inside = self.first_inside.get((record.pass_index, record.name))
        return (record.index, 0) if inside is None else (inside, -2)

    def add_metadata(
        self, checks: Sequence[MetadataCheck], consumers: dict[tuple[int, str], Record]
    ) -> None:
        """Each check just before the module that consumes its metadata (none without one: a
        trace of the logits alone)."""
        for check in checks:
            record = consumers.get((check.pass_index, check.consumer))
            if record is None:
                continue
            bad = not check.ok
            # before the consumer's call began (a container's record comes after its insides)
            began = self.first_inside.get((record.pass_index, record.name), record.index)
            self.fixed.append(
                (
                    (min(began, record.index), -1),
                    Comparison(
                        0,
                        record.name,
                        record.module_class,
                        record.source_file,
                        record.source_line,
                        record.pass_index,
                        record.step,
                        record.call_index,
                        "serving metadata: " + ", ".join(check.checked),
                        False,
                        math.inf if bad else 0.0,
                        math.inf if bad else 0.0,
                        0.0,
                        False,
                        check.first_wrong if check.first_wrong is not None else check.start,
                        check.count,
                        "metadata",
                        detail=check.describe(),
                    ),
                )
            )

    def comparisons(self) -> Iterator[Comparison]:
        figures = self._figures() if self.items else []
        # measured comparisons by index, metadata ones by -1 - their index; in stream order
        keys = [(item[0], i) for i, item in enumerate(self.items)]
        keys += [(key, -1 - j) for j, (key, _) in enumerate(self.fixed)]
        order = [i for _, i in sorted(keys)]
        described: dict[int, str] = {}  # by the plan's id: hashing a plan costs more than this
        items, isfinite = self.items, math.isfinite
        for sequence, i in enumerate(order):
            if i < 0:
                yield replace(self.fixed[-1 - i][1], sequence=sequence)
                continue
            _, record, plan, kind, discounted, positions = items[i]
            ratio, error, noise, worst, token_ratio = figures[i]
            text = described.get(id(plan))
            if text is None:
                text = described[id(plan)] = plan.describe()
            # positional, in the fields' order: a few hundred of these per analysis
            yield Comparison(
                sequence,
                record.name,
                record.module_class,
                record.source_file,
                record.source_line,
                record.pass_index,
                record.step,
                record.call_index,
                text,
                plan.inferred,
                ratio,
                error,
                noise,
                not isfinite(error),
                positions[worst],
                len(positions),
                kind,
                discounted,
                token_ratio,
            )

    def _figures(self) -> list[tuple[float, float, float, int, float]]:
        """(ratio, error, noise, worst row, its token ratio) of each comparison; a component's
        passes and steps pool their noise (`segment_figures`)."""
        ids: dict[tuple[str, str], int] = {}
        groups = [ids.setdefault((item[1].name, item[3]), len(ids)) for item in self.items]
        ratio, error, noise, worst, top, _ = segment_figures(
            np.array(self.y, dtype=np.float64),
            np.array(self.t, dtype=np.float64),
            np.array(self.n, dtype=np.float64),
            self.lengths,
            self.floor,
            groups,
        )
        return list(
            zip(ratio.tolist(), error.tolist(), noise.tolist(), worst.tolist(), top.tolist())
        )


def _first_min(totals: np.ndarray) -> np.ndarray:
    """Per column, the row `min` picks: a later row only where it is smaller than the best so
    far (never where either is NaN)."""
    best = np.zeros(totals.shape[1], dtype=np.int64)
    for row in range(1, totals.shape[0]):
        best = np.where(totals[row] < totals[best, np.arange(totals.shape[1])], row, best)
    return best


def _norm_tensors(
    x_reference: torch.Tensor, y_reference: torch.Tensor, targets: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
    """`row_norms` as float32 tensors."""
    noise = None if x_reference is y_reference else row_norms(x_reference - y_reference)
    return row_norms(y_reference), [row_norms(x - y_reference) for x in targets], noise


# The outputs each row-by-row target op reads ("all": every one); ops not listed are read record
# by record.
_OP_OUTPUTS: dict[str, Any] = {
    "first": (0,),
    "scale_sqrt_hidden": (0,),
    "sum_pair": (0, 1),
    "cat_outputs": "all",
}


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _fit_partial(x: torch.Tensor, y: torch.Tensor, heads: int | None = None) -> torch.Tensor | None:
    """Partial rotary: the target's q|k hold every head dim, the reference only the rotated ones.

    `heads` (query + key heads, from the model's config) says how to cut the target's rows;
    without it, head counts that divide both widths are tried.
    """
    if x.shape[0] != y.shape[0] or x.shape[-1] <= y.shape[-1]:
        return None
    options = [heads] if heads else list(range(1, 257))
    for h in options:
        if h and x.shape[-1] % h == 0 and y.shape[-1] % h == 0:
            d, rot = x.shape[-1] // h, y.shape[-1] // h
            if rot < d:
                return x.reshape(x.shape[0], h, d)[..., :rot].reshape(x.shape[0], -1)
    return None


def _qk_heads(config: dict[str, Any]) -> int | None:
    text = config.get("text_config") or config
    q = text.get("num_attention_heads")
    if not q:
        return None
    kv = text.get("num_key_value_heads") or q
    return int(q) + int(kv)


def compare_traces(
    target: TraceReader,
    reference: TraceReader,
    reference32: TraceReader | None = None,
    *,
    step: int | None = None,
) -> list[Comparison]:
    return list(iter_comparisons(target, reference, reference32, step=step))
