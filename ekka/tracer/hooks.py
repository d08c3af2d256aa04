"""Forward hooks that record every module call of a torch model into a TraceWriter.

This module runs inside the framework's process (vLLM's or transformers'); it needs torch and
ekka.tracer.trace, nothing else of Ekka.

What it records, per forward pass and in call order:
- each module's outputs (flattened: a tuple `(hidden, residual)` becomes two tensors), cloned
  at once because frameworks reuse and modify buffers in place;
- for modules that hold parameters and call no other module while they run (the leaves of the
  execution that compute with weights: linear layers, norms, embeddings, MoE experts), their
  inputs too, cloned *before* the module runs (vLLM's fused norms add the residual in place).
  What such a module receives is what the code around it (its parent's forward) produced, so
  comparing it finds a bug in that glue. Parameter-free leaves (activations, rotary, attention)
  receive the outputs of the module before them, already recorded; their inputs are not.
- for the decoder layers (`DECODER_LAYER`), their inputs too, though they are containers: a
  layer's input that diverges while the outputs before it match puts the glue in the caller's
  forward (the backbone's), not in the layer's. They are the outputs of the module before,
  stored once.

A tensor a module returns or receives that was recorded earlier in the same pass with the same
contents (a layer returns its MLP's output; a projection receives the norm's output) is stored
once: the later record refers to the stored copy (checked by value, so a tensor changed in
place in between is stored again).

The hooks themselves only copy: the records are built and handed to the writer later (when the
hooks are removed, or when the copies waiting pass `PENDING_BYTES`), so that what the capture
adds to the traced run itself stays small; the order of the records is the order of the calls.

Names: a call is named after the module that made it when the module object is shared (vLLM
registers one rotary embedding under layer 0 and calls it from every layer): the call is
attributed to the layer it ran in. A module called more than once in a pass gets `#k` on its
k-th repeated call.
"""

from __future__ import annotations

import fnmatch
import inspect
import linecache
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from ekka.tracer.trace import TensorMeta, TraceWriter


def flatten_tensors(value: Any) -> list[torch.Tensor | None]:
    """Flatten a module output into a list of tensors (None where an item is not a tensor)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        flat: list[torch.Tensor | None] = []
        for item in value:
            if isinstance(item, (tuple, list)):
                flat.extend(flatten_tensors(item))
            else:
                flat.append(item if isinstance(item, torch.Tensor) else None)
        return flat
    if isinstance(value, dict):
        return [v if isinstance(v, torch.Tensor) else None for v in value.values()]
    return [None]


def clone(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().clone()


PENDING_BYTES = 64 * 1024 * 1024  # copies waiting for their records before they are handed over

_LAYER = re.compile(r"layers\.(\d+)\.")
# Decoder layers: containers whose inputs are recorded too (where the glue between two layers
# goes wrong, the layer's input diverges while every output before it matches).
DECODER_LAYER = re.compile(r"(?:.*\.)?layers\.\d+")

_SOURCE_CACHE: dict[Any, tuple[str | None, int | None]] = {}


def source_location(obj: Any) -> tuple[str | None, int | None]:
    """(file relative to its top-level package's parent, first line) of a class or function.

    The line is found by scanning the (cached) file for the definition, which is much cheaper
    than `inspect.getsourcelines` (it parses the whole file) on the first call of every class.
    """
    if obj in _SOURCE_CACHE:
        return _SOURCE_CACHE[obj]
    try:
        path = inspect.getsourcefile(obj)
    except TypeError:
        path = None
    if path is None:
        _SOURCE_CACHE[obj] = (None, None)
        return None, None
    line = _definition_line(path, obj)
    rel = path
    top = sys.modules.get(getattr(obj, "__module__", "").split(".")[0])
    top_file = getattr(top, "__file__", None)
    if top_file:
        root = Path(top_file).resolve().parent.parent
        try:
            rel = str(Path(path).resolve().relative_to(root))
        except ValueError:
            rel = path
    _SOURCE_CACHE[obj] = (rel, line)
    return rel, line


def _definition_line(path: str, obj: Any) -> int | None:
    code = getattr(obj, "__code__", None)
    if code is not None:
        return int(code.co_firstlineno)
    pattern = re.compile(rf"^\s*class\s+{re.escape(obj.__name__)}\b")
    for number, text in enumerate(linecache.getlines(path), start=1):
        if pattern.match(text):
            return number
    try:
        return int(inspect.getsourcelines(obj)[1])
    except (OSError, TypeError):
        return None


def parse_steps(spec: str | None) -> Callable[[int], bool]:
    """`prefill` (step 0 only), `all`, or a comma list of step numbers -> a predicate."""
    if spec is None or spec == "all":
        return lambda step: True
    if spec == "prefill":
        return lambda step: step == 0
    try:
        wanted = {int(s) for s in spec.split(",") if s.strip()}
    except ValueError:
        from ekka.errors import UsageError

        raise UsageError(
            f"--steps {spec!r}: use 'prefill', 'all' or step numbers like 0,1,2."
        ) from None
    return lambda step: step in wanted


class ModuleRecorder:
    """Installs hooks on every submodule of `root` and writes what they see to `writer`."""

    def __init__(
        self,
        writer: TraceWriter,
        root: torch.nn.Module,
        *,
        modules: Sequence[str] | None = None,
        steps: str | None = None,
        hook_modules: bool = True,
        outputs: Callable[[torch.nn.Module, Any], list[torch.Tensor | None]] | None = None,
    ) -> None:
        self.writer = writer
        self.hook_modules = hook_modules
        # a module's output as the tensors recorded (a framework whose module returns a
        # record, not tensors, or rows of another shape, says which tensors its output is)
        self.outputs_of = outputs or (lambda module, output: flatten_tensors(output))
        self.root = root
        self.patterns = list(modules or [])
        self.want_step = parse_steps(steps)
        self.names: dict[int, str] = {id(m): n for n, m in root.named_modules() if n}
        self.step = 0
        self.pass_index = -1
        self._recording = False  # set per pass by begin_pass
        # Where the traced request's rows lie in a batch of several requests: (first row,
        # rows, the batch's rows as the scheduler counts them, the rows the model ran with
        # padding); a tensor of the batch's rows is recorded as those rows only. Set by the
        # adapter from the scheduler's spans, never from the model's tensors.
        self.rows: tuple[int, int, int, int] | None = None
        self.call_index = 0
        self._stack: list[list[Any]] = []  # [name, had_child_call, cloned_inputs]
        self._seen: dict[str, int] = {}
        self._handles: list[Any] = []
        self.modules_by_name: dict[str, torch.nn.Module] = {}  # effective name -> module (replay)
        # module id -> its inputs are recorded: it holds weights and may be a leaf, or it is a
        # decoder layer
        self._input_candidates: dict[int, bool] = {}
        self._containers: set[int] = set()  # decoder layers: inputs kept although not leaves
        # every module by name: class, source file, line (also those whose calls the hooks do
        # not see, such as a backbone whose compiled `__call__` bypasses them)
        self.module_classes: dict[str, list[Any]] = {}
        self._classes: dict[
            int, tuple[str, str | None, int | None]
        ] = {}  # module id -> class, file, line
        self._renamed: dict[
            tuple[str, str], str
        ] = {}  # (registered name, caller) -> effective name
        # Tensors recorded in this pass, by where they live: (copy, its stored meta). A module
        # that returns, or receives, a tensor already recorded with the same contents (a layer
        # returning its MLP's output, a projection receiving the norm's output) refers to the
        # stored copy instead of storing another.
        self._kept: dict[tuple[Any, ...], torch.Tensor] = {}
        # Records not yet handed to the writer: (fields, output copies, input copies), in call
        # order. A copy shared by two records is the same object in both; `_stored` maps the
        # id of a copy handed over to its stored meta (the copy is held, so the id stays its).
        self._pending: list[tuple[tuple[Any, ...], list[Any], dict[str, Any] | None]] = []
        self._pending_bytes = 0
        self._stored: dict[int, tuple[torch.Tensor, TensorMeta]] = {}

    # pass bookkeeping (called by the framework adapter)
    def begin_pass(self, step: int) -> None:
        if self._stored:  # records were handed over in the middle of the last pass
            self._hand_over_all()
        self.pass_index += 1
        self.step = step
        self.call_index = 0
        self._seen = {}
        self._stack = []
        self._kept = {}
        self._recording = self.want_step(step)

    def skip_pass(self) -> None:
        """A pass without the traced request (another request of its scenario): not recorded."""
        if self._stored:
            self._hand_over_all()
        self._recording = False
        self.rows = None

    def take_rows(self, t: torch.Tensor) -> torch.Tensor:
        """The traced request's rows of a tensor holding one row per row of the batch."""
        if self.rows is None or t.dim() == 0:
            return t
        first, count, total, padded = self.rows
        if t.shape[0] not in (total, padded) or (first == 0 and count == t.shape[0]):
            return t
        return t[first : first + count]

    @property
    def recording(self) -> bool:
        return self._recording

    def _selected(self, name: str) -> bool:
        return not self.patterns or any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    def _effective_name(self, name: str) -> str:
        """A module object shared by the layers (registered once, under layer 0) is named after
        the layer that called it; any other module keeps its registered name."""
        if not self._stack:
            return name
        key = (name, self._stack[-1][0])
        found = self._renamed.get(key)
        if found is None:
            found = name
            own, caller = _LAYER.search(name), _LAYER.search(key[1])
            if own and caller and own.group(1) != caller.group(1):
                found = name[: own.start(1)] + caller.group(1) + name[own.end(1) :]
            self._renamed[key] = found
        return found

    def _unique(self, name: str) -> str:
        count = self._seen.get(name, 0)
        self._seen[name] = count + 1
        return name if count == 0 else f"{name}#{count}"

    def install(self) -> None:
        """Hook every module; what the hooks need per module (class, source line, whether it can
        be a leaf) is worked out here, once, rather than on the first call of each module.
        Without `hook_modules`, none: only what the adapter records itself (the logits)."""
        if not self.hook_modules:
            return
        for name, module in self.root.named_modules():
            if not name:
                continue
            cls = type(module)
            self._classes[id(module)] = (cls.__name__, *source_location(cls))
            self.module_classes[name] = list(self._classes[id(module)])
            self._input_candidates[id(module)] = _records_inputs(module)
            if DECODER_LAYER.fullmatch(name):
                self._input_candidates[id(module)] = True
                self._containers.add(id(module))
            self._handles.append(module.register_forward_pre_hook(self._pre, with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._post, with_kwargs=True))

    def remove(self) -> None:
        """Unhook, and hand every record still waiting to the writer."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._hand_over_all()

    def _hand_over_all(self) -> None:
        """Hand every waiting record over; no later record can share a copy with them."""
        self.finish()
        self._stored = {}

    def _emit(
        self, fields: tuple[Any, ...], outputs: list[Any], inputs: dict[str, Any] | None
    ) -> None:
        self._pending.append((fields, outputs, inputs))
        if self._pending_bytes >= PENDING_BYTES:
            self.finish()

    def finish(self) -> None:
        """Hand the waiting records to the writer, in call order."""
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        stored, add = self._stored, self.writer.add
        for (
            name,
            cls_name,
            file,
            line,
            step,
            pass_index,
            call_index,
            kind,
            leaf,
        ), outputs, inputs in pending:
            outs = [
                None if t is None else (stored[id(t)][1] if id(t) in stored else t) for t in outputs
            ]
            ins = (
                None
                if inputs is None
                else {k: (stored[id(t)][1] if id(t) in stored else t) for k, t in inputs.items()}
            )
            record = add(
                name=name,
                module_class=cls_name,
                source_file=file,
                source_line=line,
                step=step,
                pass_index=pass_index,
                call_index=call_index,
                outputs=outs,
                inputs=ins,
                kind=kind,
                leaf=leaf,
            )
            for t, meta in zip(outputs, record.outputs):
                if t is not None and meta is not None:
                    stored[id(t)] = (t, meta)
            if inputs:
                for k, meta in record.inputs:
                    t = inputs.get(k)
                    if t is not None:
                        stored[id(t)] = (t, meta)

    def _pre(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self._recording:
            return
        name = self._effective_name(self.names[id(module)])
        if self._stack:
            self._stack[-1][1] = True
        candidate = self._input_candidates.get(id(module))
        if candidate is None:
            candidate = self._input_candidates[id(module)] = _records_inputs(module)
        inputs = (
            self._copy_inputs(args, kwargs)
            if candidate and (not self.patterns or self._selected(name))
            else None
        )
        self._stack.append([name, False, inputs])

    def _copy(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """A copy of `t`: an equal copy made this pass of the tensor at the same place, or a
        fresh one, remembered by where `t` lives."""
        if t is None:
            return None
        t = self.take_rows(t)
        key = (t.data_ptr(), t.shape, t.stride(), t.dtype)
        kept = self._kept.get(key)
        if kept is not None and torch.equal(kept, t):
            return kept
        if t.requires_grad:  # the frameworks run without autograd; a model called with it
            t = t.detach()
        # a plain clone of a contiguous tensor costs 1.3 us against 2.1 with the format asked for
        copy = self._kept[key] = t.clone() if t.is_contiguous() else t.contiguous()
        self._pending_bytes += copy.nbytes
        return copy

    def _copy_inputs(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, torch.Tensor | None]:
        inputs = {}
        for i, arg in enumerate(args):
            if isinstance(arg, torch.Tensor):
                inputs[str(i)] = self._copy(arg)
        for key, value in kwargs.items():
            if isinstance(value, torch.Tensor):
                inputs[key] = self._copy(value)
        return inputs

    def _post(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        if not self._recording or not self._stack:
            return
        name, had_child, inputs = self._stack.pop()
        if self.patterns and not self._selected(name):
            return
        known = self._classes.get(id(module))
        if known is None:
            known = self._classes[id(module)] = (
                type(module).__name__,
                *source_location(type(module)),
            )
        cls_name, file, line = known
        if name not in self.modules_by_name:
            self.modules_by_name[name] = module
        outputs = [self._copy(t) for t in self.outputs_of(module, output)]
        fields = (
            self._unique(name),
            cls_name,
            file,
            line,
            self.step,
            self.pass_index,
            self.call_index,
            "module",
            not had_child,
        )
        keep = not had_child or id(module) in self._containers
        self._emit(fields, outputs, inputs if keep else None)
        self.call_index += 1

    def record_function(
        self,
        suffix: str,
        func: Any,
        outputs: Iterable[torch.Tensor | None],
        inputs: dict[str, torch.Tensor | None],
        *,
        kind: str,
    ) -> None:
        """Record a call of a plain function (no module) under the calling module's name."""
        if not self.recording:
            return
        caller = self._stack[-1][0] if self._stack else ""
        name = f"{caller}.{suffix}" if caller else suffix
        if not self._selected(name):
            return
        if self._stack:
            self._stack[-1][1] = True
        file, line = source_location(func)
        fields = (
            self._unique(name),
            getattr(func, "__name__", suffix),
            file,
            line,
            self.step,
            self.pass_index,
            self.call_index,
            kind,
            True,
        )
        self._emit(
            fields,
            [None if t is None else clone(self.take_rows(t)) for t in outputs],
            {k: None if v is None else clone(self.take_rows(v)) for k, v in inputs.items()},
        )
        self.call_index += 1

    def record_tensor(self, name: str, tensor: torch.Tensor, *, kind: str) -> None:
        """Record a tensor that no module returns (the logits of a step)."""
        if not self.recording:
            return
        fields = (name, kind, None, None, self.step, self.pass_index, self.call_index, kind, False)
        self._emit(fields, [clone(tensor)], None)
        self.call_index += 1


def _records_inputs(module: torch.nn.Module) -> bool:
    """Holds parameters of its own, and no child holds any (so it may be a leaf of the run)."""
    return any(True for _ in module.parameters(recurse=False)) and all(
        not any(True for _ in child.parameters()) for child in module.children()
    )
