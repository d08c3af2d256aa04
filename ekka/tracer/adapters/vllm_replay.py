"""vLLM replay: run a target module alone on the *reference's* input (in the target's process).

A large local error confirms the module itself; a small one says its error arrived from
upstream. Replayed here: norms, linear layers (fused projections too), fused activations
(`act(gate) * up`), rotary embeddings. Attention needs the engine's per-pass metadata and is
not replayed.

The target's process calls `replay_modules` when the session asks (`Replay`), after its trace
is written, with a reference trace that covers the prompt (the teacher-forced reference in the
serving dtype) and the modules to replay (`ekka diagnose` names its suspects). Outputs are
written to a trace of their own (`<target>/replay`) as records of kind "replay" under the
module's name, one row per position of the reference's first pass. A module is called once per
forward batch the target ran (each chunk of a chunked prefill, each decode step: the positions of
each of its passes), so that what depends on the batch (a rotary embedding whose factors are
chosen per batch) is replayed as it ran. Which reference tensors a
vLLM module takes (its fused projections, its rotary embedding's q and k) is vLLM's rule,
kept here with the vLLM adapter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ekka.tracer.hooks import flatten_tensors, source_location
from ekka.tracer.trace import Record, TraceReader, TraceWriter

REPLAY_KIND = "replay"


def _heads_rows(t: torch.Tensor) -> torch.Tensor:
    """`[1, heads, T, d]` -> `[T, heads*d]`."""
    if t.dim() == 4:
        t = t[0].transpose(0, 1)
    return t.reshape(t.shape[0], -1)


def _reference_output(
    reference: TraceReader, name: str, index: dict[str, Record]
) -> torch.Tensor | None:
    record = index.get(name)
    if record is None:
        return None
    out = reference.outputs(record)[0]
    return None if out is None else (out[0] if out.dim() >= 3 and out.shape[0] == 1 else out)


def _reference_input(
    reference: TraceReader, name: str, index: dict[str, Record]
) -> torch.Tensor | None:
    record = index.get(name)
    if record is None:
        return None
    inputs = reference.inputs(record)
    return inputs.get("0")


def reference_inputs(
    record: Record,
    module: torch.nn.Module,
    reference: TraceReader,
    index: dict[str, Record],
    rows: int,
    reference_name: str | None = None,
) -> tuple[Any, ...] | None:
    """The arguments to call the target module with, built from the reference's tensors
    (`reference_name`: the module's name in the reference, where it differs)."""
    cls = type(module).__name__
    parent = record.name.rsplit(".", 1)[0]
    if "Rotary" in cls:
        rot = index.get(f"{parent}.apply_rotary_pos_emb")
        if rot is None:
            return None
        inputs = reference.inputs(rot)
        q, k = inputs.get("q"), inputs.get("k")
        second = index.get(f"{parent}.apply_rotary_pos_emb#1")
        if q is None and second is not None:  # rotated one a call: q's input x, then k's
            q, k = inputs.get("x"), reference.inputs(second).get("x")
        if q is None or k is None:
            return None
        positions = torch.arange(q.shape[2], dtype=torch.long)
        return positions, _heads_rows(q).contiguous(), _heads_rows(k).contiguous()
    if "AndMul" in cls:
        gate = _reference_output(reference, f"{parent}.gate_proj", index)
        up = _reference_output(reference, f"{parent}.up_proj", index)
        if gate is None or up is None:
            return None
        return (torch.cat([gate, up], dim=-1).contiguous(),)
    if "Attention" in cls or "Embedding" in cls:
        return None
    own = reference_name or record.name
    for candidate in (own, f"{parent}.q_proj", f"{parent}.gate_proj"):
        x = _reference_input(reference, candidate, index)
        if x is not None and (candidate == own or own.endswith(("qkv_proj", "gate_up_proj"))):
            if x.dim() >= 3 and x.shape[0] == 1:
                x = x[0]
            return (x.contiguous(),)
    return None


def replay_batches(passes: Sequence[Sequence[int]], rows: int) -> list[list[int]]:
    """The reference's rows `0..rows-1` split as the target's passes held them (each position
    in the first pass that computed it); the rows no pass computed, one batch after them."""
    seen: set[int] = set()
    batches: list[list[int]] = []
    for positions in passes:
        batch = [p for p in positions if 0 <= p < rows and p not in seen]
        if batch:
            batches.append(batch)
            seen.update(batch)
    rest = [p for p in range(rows) if p not in seen]
    if rest:
        batches.append(rest)
    return batches


def call_in_batches(
    forward: Any, args: tuple[Any, ...], batches: Sequence[Sequence[int]]
) -> list[torch.Tensor | None]:
    """`forward` called on each batch's rows of `args` (every argument holds one row per
    position), its outputs put back in position order."""
    rows = int(args[0].shape[0])
    results: list[torch.Tensor | None] | None = None
    for batch in batches:
        index = torch.tensor(batch, dtype=torch.long)
        with torch.no_grad():
            outputs = flatten_tensors(forward(*(a[index] for a in args)))
        if results is None:
            results = [None if t is None else t.new_empty((rows, *t.shape[1:])) for t in outputs]
        for result, t in zip(results, outputs):
            if result is not None and t is not None:
                result[index] = t
    return results or []


def replay_modules(
    modules_by_name: dict[str, torch.nn.Module],
    records: list[Record],
    writer: TraceWriter,
    reference_path: str,
    only: Sequence[str] | None = None,
    passes: Sequence[Sequence[int]] = (),
    names: Mapping[str, str] | None = None,
) -> int:
    """Replay the replayable leaf modules of the target's first pass (`records`, the target's),
    or those named in `only`; writes one record per module to `writer`, returns how many.
    `passes`: the positions of each of the target's passes, the batches the replay runs in;
    `names`: a module's name in the reference where it differs (its input is read there)."""
    reference = TraceReader(reference_path)
    first_pass = reference.passes[0].index if reference.passes else 0
    index = {r.name: r for r in reference.records if r.pass_index == first_pass}
    rows = len(reference.passes[0].positions) if reference.passes else 0
    batches = replay_batches(passes, rows)
    wanted = None if only is None else set(only)
    done: set[str] = set()
    count = 0
    target_records = [r for r in records if r.pass_index == 0 and r.leaf and r.kind == "module"]
    for record in target_records:
        if record.name in done or (wanted is not None and record.name not in wanted):
            continue
        done.add(record.name)
        module = modules_by_name.get(record.name)
        if module is None:
            continue
        try:
            args = reference_inputs(
                record, module, reference, index, rows, (names or {}).get(record.name)
            )
            if args is None:
                continue
            dtype = next((p.dtype for p in module.parameters()), None)
            # fresh copies: the reference's tensors are views of its trace, and a module may
            # write to its input
            args = tuple(
                (a.to(dtype) if dtype is not None and a.is_floating_point() else a).clone()
                for a in args
            )
            # vLLM's custom ops carry a pure-PyTorch reference path: replaying through it runs
            # the module's own parameters and settings without the CPU kernels' layout demands
            # (a bf16 rotary kernel fed tensors from outside a forward pass can crash the process).
            forward = getattr(module, "forward_native", None) or module
            if len(batches) > 1 and all(a.shape[0] == rows for a in args):
                outputs = call_in_batches(forward, args, batches)
            else:
                with torch.no_grad():
                    outputs = flatten_tensors(forward(*args))
        except Exception:  # a module that cannot run alone is simply not replayed
            continue
        file, line = source_location(type(module))
        writer.add(
            name=record.name,
            module_class=type(module).__name__,
            source_file=file,
            source_line=line,
            step=0,
            pass_index=-1,
            call_index=count,
            outputs=[None if t is None else t.detach().clone() for t in outputs],
            kind=REPLAY_KIND,
            leaf=True,
        )
        count += 1
    return count
