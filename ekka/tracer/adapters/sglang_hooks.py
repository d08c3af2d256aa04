"""SGLang's scheduler side: the hooks and the trace writer, in the process that holds the model.

SGLang runs its model in a scheduler subprocess. The target process (`ekka.tracer.adapters.
sglang`) starts the engine with SGLang's own `forward_hooks` argument naming `install` below as
the factory of a hook on the model's logits processor; SGLang calls it in the scheduler while
it sets the model up. `install` finds the model and the scheduler that called it, and gives the
scheduler one method, `ekka_command`, which the target process calls through SGLang's
`Engine.collective_rpc` (its RPC to the schedulers):

- `begin`: a trace writer for the capture spec, and the hooks (`ModuleRecorder`) on the model;
- `end`: the hooks off, the trace closed with the tokens the target process was told;
- `replay`: modules replayed alone on the reference's inputs (`vllm_replay.replay_modules`).

Per forward pass it records where the traced request's rows lie, from the scheduler's
host-side state (the running `ScheduleBatch` and its `Req`s: the prefix already computed and
the tokens extended, or the one decoded token; never the model's own positions), the slots the
scheduler allocated to the request, and what the model was given (its positions, and from the
forward batch: sequence lengths, query offsets, the request-to-token rows and the output cache
locations), then every module call, and the logits of the traced request's row.

Nothing of SGLang is changed: the hooks only copy. An error in a hook stops the recording and
is raised by `end`, never inside SGLang's forward.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ekka.tracer.hooks import flatten_tensors
from ekka.tracer.metadata import (
    TRACED,
    AttentionMetadata,
    RequestSpan,
    ServingMetadata,
    nested_tuples,
)
from ekka.tracer.trace import REPLAY_FOLDER, PassInfo, TraceManifest, TraceWriter

COMMAND = "ekka_command"  # the scheduler's method the target process calls
# what SGLang's logits processor returns: a record whose `next_token_logits` are the logits
LOGITS_OUTPUT = "LogitsProcessorOutput"
# norm classes whose call may be per head, on `[tokens * heads, head_dim]` rows
PER_HEAD_NORMS = ("RMSNorm",)


def install(config: Mapping[str, Any]) -> Any:
    """SGLang's hook factory (`forward_hooks`): sets up the recorder on the model and the
    scheduler that are being built, and returns the logits processor's forward hook."""
    model = _caller_local("model", "Module")
    scheduler = _caller_local("self", "Scheduler") or _find_scheduler()
    if model is None or scheduler is None:
        raise RuntimeError(
            "ekka's hook factory found no model or no scheduler in SGLang's call; this SGLang "
            "registers its forward hooks elsewhere"
        )
    recorder = SchedulerRecorder(model, scheduler)
    setattr(scheduler, COMMAND, recorder.command)
    return recorder.logits


def _caller_local(name: str, class_name: str) -> Any:
    """The nearest caller's local `name` whose class (or a base) is named `class_name`."""
    frame = sys._getframe(1)
    while frame is not None:
        value = frame.f_locals.get(name)
        if value is not None and any(c.__name__ == class_name for c in type(value).__mro__):
            return value
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _find_scheduler() -> Any:
    for value in gc.get_objects():
        cls = type(value)
        if cls.__name__ == "Scheduler" and cls.__module__.startswith("sglang."):
            return value
    return None


class SchedulerRecorder:
    """One capture at a time: the spec's writer and hooks, the passes' spans and metadata."""

    def __init__(self, model: Any, scheduler: Any) -> None:
        self.model = model
        self.scheduler = scheduler
        self.writer: TraceWriter | None = None
        self.recorder: Any = None
        self.labels: dict[str, str] = {}
        self.prompt_len = 0
        self.error: BaseException | None = None
        self.slots: dict[str, list[int]] = {}  # per request, the KV slots allocated to it
        self._forward_batch: Any = None  # the forward batch of the pass now recorded
        # the traced request's row among the logits' rows (one per request) in that pass
        self._sampled_rows: tuple[int, int, int, int] | None = None
        # the first attention layer: the one the attention metadata is named after
        self.attention_layer = next(
            (n for n, m in model.named_modules() if type(m).__name__ == "RadixAttention"), ""
        )
        self._handles: list[Any] = []
        self.timings: dict[str, float] = {}

    # --- the commands (Engine.collective_rpc) ---------------------------------------------

    def command(self, name: str, **arguments: Any) -> None:
        if name == "begin":
            self.begin(**arguments)
        elif name == "end":
            self.end(**arguments)
        elif name == "replay":
            self.replay(**arguments)
        else:
            raise ValueError(f"unknown command {name!r}")

    def begin(
        self,
        out: str,
        header: Mapping[str, Any],
        labels: Mapping[str, str],
        modules: list[str],
        steps: str,
        logits_only: bool,
        shard_bytes: int,
    ) -> None:
        """A fresh trace for the header's capture, with the hooks on."""
        from ekka.tracer.hooks import ModuleRecorder

        manifest = TraceManifest.from_json(header)
        self.writer = TraceWriter(Path(out), manifest, shard_bytes=shard_bytes)
        self.labels = dict(labels)
        self.prompt_len = len(manifest.prompt_ids)
        self.error = None
        self.slots = {}
        self.recorder = ModuleRecorder(
            self.writer,
            self.model,
            modules=modules,
            steps=steps,
            hook_modules=not logits_only,
            outputs=self.module_outputs,
        )
        # the pass begins at the first call into the model that gets the forward batch
        # (SGLang calls the model's `forward` itself, so the model's own hooks never run)
        for child in self.model.children():
            self._handles.append(
                child.register_forward_pre_hook(self._begin_pass, with_kwargs=True, prepend=True)
            )
        self.recorder.install()

    def end(self, generated_ids: list[int], found: Mapping[str, Any]) -> None:
        """The hooks off and the trace closed (incomplete, and the hook's error raised, when a
        hook failed)."""
        from ekka.tracer.hooks import source_location

        assert self.writer is not None and self.recorder is not None, "begin first"
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.recorder.remove()
        self._forward_batch = None
        if self.error is not None:
            self.writer.close(complete=False)
            raise self.error
        started = time.perf_counter()
        self.writer.flush()
        self.timings["write"] = time.perf_counter() - started
        found = dict(found)
        self.writer.close(
            generated_ids=tuple(generated_ids),
            timings={**found.pop("timings", {}), **self.timings},
            model_class=type(self.model).__name__,
            model_source=source_location(type(self.model)),
            modules=nested_tuples(self.recorder.module_classes),
            **found,
        )

    def replay(
        self, reference: str, modules: list[str] | None, names: Mapping[str, str] | None = None
    ) -> None:
        """Replay `modules` (None: every replayable leaf) on the reference's inputs, into the
        trace's replay folder (`names`: the reference's name of a module named otherwise
        there, where its input is read)."""
        from ekka.tracer.adapters.vllm_replay import replay_modules

        assert self.writer is not None and self.recorder is not None, "begin and end first"
        started = time.perf_counter()
        path = self.writer.path / REPLAY_FOLDER
        replays = TraceWriter(
            path, dataclasses.replace(self.writer.header, replay_of=str(self.writer.path))
        )
        count = replay_modules(
            self.recorder.modules_by_name,
            self.writer.records,
            replays,
            reference,
            None if modules is None else tuple(modules),
            passes=[p.positions for p in self.writer.passes],
            names=names,
        )
        replays.close(replayed=count, timings={"replay": time.perf_counter() - started})

    # --- the hooks ------------------------------------------------------------------------

    def _begin_pass(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.error is not None or self.recorder is None:
            return
        forward_batch = next(
            (
                a
                for a in (*args, *kwargs.values())
                if type(a).__name__ == "ForwardBatch" and hasattr(a, "forward_mode")
            ),
            None,
        )
        if forward_batch is None or forward_batch is self._forward_batch:
            return  # not a call into the model with its batch, or the pass is open already
        self._forward_batch = forward_batch
        try:
            self._place(forward_batch)
        except Exception as exc:  # raised by `end`, never inside SGLang's forward
            self.error = exc
            self.recorder.skip_pass()

    def _place(self, forward_batch: Any) -> None:
        """Begin the pass: the traced request's span from the scheduler's batch, the metadata
        the model was given, the rows the recorder keeps."""
        recorder, writer = self.recorder, self.writer
        assert recorder is not None and writer is not None
        batch = self.scheduler.cur_batch_for_debug
        spans = self._spans(batch) if batch is not None else []
        span = next((s for s in spans if s.label == TRACED), None)
        if span is None:  # a pass of other requests only (or outside any scheduled batch)
            recorder.skip_pass()
            return
        ids = forward_batch.input_ids.detach().flatten().tolist()
        given = forward_batch.positions.detach().tolist()
        serving = ServingMetadata(
            given_positions=nested_tuples(given),
            request=span,
            attention=self._attention(forward_batch, spans),
        )
        if len(spans) > 1:
            serving = dataclasses.replace(serving, batch=tuple(spans), batch_input_ids=tuple(ids))
        own = ids[span.offset : span.offset + span.count]
        end = span.start + span.count
        step = max(0, end - self.prompt_len)
        recorder.begin_pass(step)
        total = sum(s.count for s in spans)
        recorder.rows = (span.offset, span.count, total, len(ids))
        writer.add_pass(
            PassInfo(
                index=recorder.pass_index,
                step=step,
                input_ids=tuple(own),
                positions=tuple(range(span.start, end)),
                serving=serving,
            )
        )
        self._sampled_rows = (span.index, 1, len(spans), len(spans))

    def _spans(self, batch: Any) -> list[RequestSpan]:
        """Every request's span in the batch's row order, from the scheduler's `Req`s: an
        extend computes `[prefix_len, prefix_len + extend_len)`, a decode step the one token at
        `seqlen - 1`; with the slots allocated to it (`ScheduleBatch.out_cache_loc`, the
        allocator's answer) after those it held."""
        extend = batch.forward_mode.is_extend()
        allocated = [] if batch.out_cache_loc is None else batch.out_cache_loc.tolist()
        pool = batch.req_to_token_pool.req_to_token
        rows = getattr(batch, "req_pool_indices_cpu", None)  # each request's pool row
        spans, offset = [], 0
        for index, req in enumerate(batch.reqs):
            rid = str(req.rid)
            if extend:
                start, count = int(req.prefix_len), int(req.extend_len)
            else:
                start, count = int(req.seqlen) - 1, 1
            known = self.slots.get(rid, [])
            if len(known) < start:  # a prefix this capture did not see placed (a cached one)
                row = int(rows[index]) if rows is not None else int(req.kv.req_pool_idx)
                known = pool[row, :start].tolist()
            slots = known[:start] + allocated[offset : offset + count]
            self.slots[rid] = slots
            spans.append(
                RequestSpan(
                    request=rid,
                    start=start,
                    count=count,
                    label=self.labels.get(rid),
                    block_ids=(tuple(slots),),
                    block_sizes=(1,),
                    index=index,
                    offset=offset,
                )
            )
            offset += count
        return spans

    def _attention(self, forward_batch: Any, spans: list[RequestSpan]) -> dict[str, Any]:
        """What the attention reads (page size 1: a request's block table row is its
        request-to-token row, its slots the output cache locations)."""
        seq_lens = [int(s) for s in forward_batch.seq_lens.tolist()]
        pool = self.scheduler.cur_batch_for_debug.req_to_token_pool.req_to_token
        rows = tuple(
            tuple(pool[int(i), :n].tolist())
            for i, n in zip(forward_batch.req_pool_indices.tolist(), seq_lens)
        )
        starts = getattr(forward_batch, "extend_start_loc", None)
        query = None
        if forward_batch.forward_mode.is_extend() and starts is not None:
            query = (*[int(s) for s in starts.tolist()], sum(s.count for s in spans))
        return {
            "0": AttentionMetadata(
                layer=self.attention_layer,
                seq_lens=tuple(seq_lens),
                query_start_loc=query,
                slot_mapping=tuple(int(s) for s in forward_batch.out_cache_loc.tolist()),
                block_table=rows,
            )
        }

    def module_outputs(self, module: Any, output: Any) -> list[torch.Tensor | None]:
        """A module's output as the tensors recorded, one row per token of the pass:

        - the logits processor's `LogitsProcessorOutput` is its `next_token_logits` at the
          traced request's row (so it is a compared component, paired with the reference's
          logits as vLLM's tensor is);
        - a norm applied per head (Qwen 3's `q_norm`, `k_norm`) returns `[tokens * heads,
          head_dim]` rows: they are viewed as `[tokens, heads * head_dim]`, the traced
          request's rows then taken as any module's;
        - any other output, its tensors."""
        logits = getattr(output, "next_token_logits", None)
        if type(output).__name__ == LOGITS_OUTPUT and isinstance(logits, torch.Tensor):
            return [self._request_row(logits) if logits.numel() else None]
        tensors = flatten_tensors(output)
        rows = (
            None if self.recorder is None or self.recorder.rows is None else self.recorder.rows[3]
        )
        if rows and len(tensors) == 1 and type(module).__name__.endswith(PER_HEAD_NORMS):
            t = tensors[0]
            if t is not None and t.dim() == 2 and t.shape[0] != rows and t.shape[0] % rows == 0:
                return [t.reshape(rows, -1)]
        return tensors

    def _request_row(self, logits: torch.Tensor) -> torch.Tensor:
        """The traced request's row of the logits, which hold one row per request of the batch
        (the last token of each extend, the decoded one), `[1, vocab]`."""
        rows = logits.reshape(-1, logits.shape[-1])
        if self._sampled_rows is not None:
            first, count, total, _ = self._sampled_rows
            if rows.shape[0] == total:
                rows = rows[first : first + count]
        return rows

    def logits(self, module: Any, args: tuple[Any, ...], output: Any) -> None:
        """The logits processor's output: the logits of the traced request's row."""
        recorder = self.recorder
        if recorder is None or not recorder.recording or self.error is not None:
            return
        try:
            logits = getattr(output, "next_token_logits", None)
            if logits is None or not logits.numel():
                return
            recorder.record_tensor("logits", self._request_row(logits)[-1], kind="logits")
        except Exception as exc:
            self.error = exc
