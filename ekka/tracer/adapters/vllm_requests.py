"""Where each forward pass's rows lie in the request, from vLLM's scheduler, and the serving
metadata the pass consumed (runs inside vLLM's process).

A serving bug corrupts what the model is given: its positions, its input ids, the attention
metadata (sequence lengths, query offsets, the slot mapping, the block table). So the rows of a
pass are placed in the request from the scheduler's host-side state instead: the tokens the
request had computed before the step and the tokens scheduled for it in the step, as the
scheduler hands them to the model runner (`execute_model(scheduler_output)`), with the KV-cache
blocks the scheduler allocated to the request. What the pass was given is recorded beside it;
the parent (`ekka.tracer.serving`) works out what a correct engine derives from the span and
the blocks, and compares.

Nothing here changes what vLLM computes: the runner's `execute_model` is wrapped to read its
argument, and the forward context is read in the model's forward pre-hook.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ekka.tracer.metadata import TRACED, AttentionMetadata, RequestSpan, nested_tuples

# The attention metadata fields recorded (those the CPU and GPU backends of vLLM v1 have);
# a backend without one simply does not record it.
ATTENTION_FIELDS = ("seq_lens", "query_start_loc", "slot_mapping", "block_table")


class SchedulerSpans:
    """Follows the scheduler's steps for every request of a scenario, one `execute_model` at a
    time: each request's span and blocks, and where its rows lie in the flattened batch."""

    def __init__(self) -> None:
        self.current: list[RequestSpan] | None = None  # the step the runner is executing
        self.labels: dict[str, str] = {}  # request id -> its label in the scenario
        self.block_ids: dict[str, list[list[int]]] = {}  # per request, per KV-cache group
        self.group_of: dict[str, int] = {}  # attention layer name -> KV-cache group
        self.block_sizes: list[int] = []
        self._runner: Any = None
        self._original: Any = None

    def install(self, worker: Any) -> bool:
        """Wrap the worker's model runner (called through `LLM.collective_rpc`). False where
        this vLLM's runner does not take a scheduler output (rows are then placed by the
        model's own positions, and the metadata is not checked)."""
        worker = getattr(worker, "worker", worker)
        runner = getattr(worker, "model_runner", None)
        if runner is None or not callable(getattr(runner, "execute_model", None)):
            return False
        config = getattr(runner, "kv_cache_config", None)
        for index, group in enumerate(getattr(config, "kv_cache_groups", None) or []):
            for name in group.layer_names:
                self.group_of[name] = index
        tables = getattr(getattr(runner.input_batch, "block_table", None), "block_tables", [])
        self.block_sizes = [int(t.block_size) for t in tables]
        original = runner.execute_model

        def execute_model(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
            self.observe(scheduler_output)
            try:
                return original(scheduler_output, *args, **kwargs)
            finally:
                self.current = None

        self._runner, self._original = runner, original
        runner.execute_model = execute_model
        return True

    def remove(self) -> None:
        if self._runner is not None:
            self._runner.execute_model = self._original
            self._runner = None

    def observe(self, out: Any) -> None:
        """The step's span of each scheduled request; the blocks allocated to it so far."""
        spans: list[RequestSpan] = []
        scheduled = getattr(out, "num_scheduled_tokens", None) or {}
        for new in getattr(out, "scheduled_new_reqs", None) or []:
            self.block_ids[new.req_id] = [list(g) for g in new.block_ids]
            spans.append(self._span(new.req_id, new.num_computed_tokens, scheduled))
        cached: Any = getattr(out, "scheduled_cached_reqs", None)
        resumed = getattr(cached, "resumed_req_ids", None) or set()
        for i, req_id in enumerate(getattr(cached, "req_ids", None) or []):
            new_blocks = cached.new_block_ids[i]
            if new_blocks is not None:
                if req_id in resumed or req_id not in self.block_ids:
                    self.block_ids[req_id] = [list(g) for g in new_blocks]
                else:
                    for group, ids in zip(self.block_ids[req_id], new_blocks):
                        group.extend(ids)
            spans.append(self._span(req_id, cached.num_computed_tokens[i], scheduled))
        self.current = spans

    def expect(self, external_ids: dict[str, str]) -> None:
        """The labels of the requests a generate call is about to add, by the id it gives them
        (the engine adds a suffix of its own: `7-1a2b3c4d` is request 7's)."""
        self.labels.update(external_ids)

    def label(self, req_id: str) -> str | None:
        found = self.labels.get(req_id)
        if found is None and "-" in req_id:
            found = self.labels.get(req_id.rsplit("-", 1)[0])
        return found

    def _span(self, req_id: str, computed: int, scheduled: dict[str, int]) -> RequestSpan:
        return RequestSpan(
            request=str(req_id),
            label=self.label(str(req_id)),
            start=int(computed),
            count=int(scheduled.get(req_id, 0)),
            block_ids=tuple(tuple(g) for g in self.block_ids.get(req_id, [])),
            block_sizes=tuple(self.block_sizes),
        )

    def batch(self) -> list[RequestSpan] | None:
        """The spans of the pass now running, in the order of their rows in the flattened
        batch, each with its `index` (its row among the sampled rows) and `offset` (its first
        row); None when no scheduler step is running.

        The order is the runner's host-side batch (`input_batch.req_ids`, after any reordering
        the attention backend asked for), which the runner lays the rows out by; where it does
        not hold exactly the scheduled requests, the scheduler's order."""
        if self.current is None:
            return None
        spans = {s.request: s for s in self.current if s.count > 0}
        input_batch = getattr(self._runner, "input_batch", None)
        order = [str(r) for r in (getattr(input_batch, "req_ids", None) or [])]
        order = order[: getattr(input_batch, "num_reqs", len(order))]
        if sorted(order) != sorted(spans):
            order = list(spans)
        out, offset = [], 0
        for index, req_id in enumerate(order):
            out.append(dataclasses.replace(spans[req_id], index=index, offset=offset))
            offset += spans[req_id].count
        return out

    def placement(self) -> RequestSpan | None:
        """The traced request's span in the pass now running (with its rows in the batch), or
        None when no scheduler step is running or the traced request is not in it (without
        labels, a pass of one request is the traced request's)."""
        batch = self.batch()
        if not batch:
            return None
        if not self.labels:
            return batch[0] if len(batch) == 1 else None
        return next((s for s in batch if s.label == TRACED), None)


def attention_metadata(group_of: dict[str, int]) -> dict[str, AttentionMetadata]:
    """The attention metadata of the pass, per KV-cache group (keyed by the group's index as a
    string; "0" where the groups are unknown): the fields of `ATTENTION_FIELDS` as lists, and
    the first attention layer that reads them (`ekka.tracer.metadata.AttentionMetadata`)."""
    try:
        from vllm.forward_context import get_forward_context

        metadata: object = get_forward_context().attn_metadata
    except Exception:  # no context outside a model run, or another version's layout
        return {}
    if isinstance(metadata, list):  # micro-batches: the first holds a lone request's tokens
        metadata = metadata[0] if metadata else None
    if not isinstance(metadata, dict):
        metadata = {"": metadata} if metadata is not None else {}
    found: dict[str, AttentionMetadata] = {}
    for layer, value in metadata.items():
        group = str(group_of.get(layer, 0))
        if group in found or value is None:
            continue
        fields: dict[str, Any] = {}
        seq_lens = getattr(value, "seq_lens", None)
        requests = len(seq_lens) if seq_lens is not None and hasattr(seq_lens, "__len__") else None
        for key in ATTENTION_FIELDS:
            tensor = getattr(value, key, None)
            if tensor is None or not hasattr(tensor, "tolist"):
                continue
            if key == "block_table" and tensor.dim() == 2 and requests is not None:
                tensor = tensor[:requests]  # the batch's rows, not the whole table
            fields[key] = nested_tuples(tensor.detach().cpu().tolist())
        found[group] = AttentionMetadata(layer=str(layer), **fields)
    return found
