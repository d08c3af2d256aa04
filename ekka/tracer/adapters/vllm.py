"""vLLM adapter: the target's process. Runs vLLM's in-process engine with hooks and writes a trace.

Served by a fork of a warm process (`ekka.tracer.warm`, which imported vLLM once: `preload`)
for `TargetSession`, in a process of its own whose path may put a patched copy of vLLM's
sources first. It answers the session's
messages (`ekka.tracer.protocol`): Start (the engine starts), Trace (the request runs traced;
its tokens are told before the trace is written), Replay (modules run alone on the
reference's inputs, `vllm_replay`), Close (the process ends at once: its work is on disk).

This module runs inside the framework's process, as a container image or a remote worker
would run it: it imports nothing of Ekka's parent side (only the protocol, the model
configuration, the trace writer and the hooks).

Per forward pass it records where the pass's rows lie in the request, from the scheduler
(`vllm_requests`: the tokens computed before the step and those scheduled in it, never the
model's own positions, which a serving bug may have corrupted), what the model was given
(input ids, positions, the attention metadata of each KV-cache group), every module call (none
for a bisection probe, `logits_only`), and the logits of the pass. The step of a pass follows
from its span: a span that ends inside the prompt or at its end is the prefill (step 0,
possibly in several chunks), one that ends at P + k is decode step k.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ekka.tracer.adapters.loop import answer
from ekka.tracer.adapters.vllm_requests import SchedulerSpans, attention_metadata
from ekka.tracer.metadata import TRACED, ServingMetadata, nested_tuples
from ekka.tracer.model_config import context_length, read_config
from ekka.tracer.protocol import (
    CaptureSpec,
    Channel,
    Ready,
    ScenarioRequest,
    Start,
)
from ekka.tracer.trace import REPLAY_FOLDER, PassInfo, TraceManifest, TraceWriter

MAX_MODEL_LEN = 4096  # the engine's context unless the engine arguments say otherwise
# Ekka's engine settings; a user's engine argument of the same name wins. Eager mode, so that
# the hooks see every module call (a captured CUDA graph replays without Python); a modest
# memory share; greedy decoding seeded; token ids in and out (no tokenizer needed).
ENGINE_DEFAULTS: dict[str, Any] = {
    "skip_tokenizer_init": True,
    "enforce_eager": True,
    "gpu_memory_utilization": 0.3,
    "seed": 0,
}


def engine_arguments(
    user: Mapping[str, Any], context: int | None, longest: int = 0
) -> dict[str, Any]:
    """`vllm.LLM`'s keyword arguments: Ekka's defaults, a default `max_model_len`, then the
    user's engine arguments over them (an explicit `max_model_len` wins).

    The default is the model's context up to MAX_MODEL_LEN; where the engine arguments shrink
    the KV cache (`num_gpu_blocks_override`), no more than what the cache holds
    (`cache_capacity`), or, when that is unknown, what the scenario's longest request needs
    (`longest`: prompt plus generated tokens). vLLM refuses to start when `max_model_len` is
    more than the cache holds."""
    max_model_len = min(context or MAX_MODEL_LEN, MAX_MODEL_LEN)
    fits = max(cache_capacity(user) or 0, longest)  # 0: nothing known
    if user.get("num_gpu_blocks_override") is not None and fits:
        max_model_len = min(max_model_len, fits)
    return {**ENGINE_DEFAULTS, "max_model_len": max_model_len, **user}


def cache_capacity(engine: Mapping[str, Any]) -> int | None:
    """The tokens one request can hold in a KV cache of `num_gpu_blocks_override` blocks of
    `block_size` tokens: every block but the null block that vLLM holds back. None when the
    engine arguments do not give both (the block size's default depends on the platform)."""
    blocks, block_size = engine.get("num_gpu_blocks_override"), engine.get("block_size")
    if blocks is None or block_size is None:
        return None
    return max(int(blocks) - 1, 0) * int(block_size)


def longest_request(spec: CaptureSpec) -> int:
    """The tokens the scenario's longest request needs: its prompt and what it generates."""
    requests = [(spec.prompt_ids, spec.max_tokens)]
    requests += [(r.prompt_ids, r.max_tokens) for r in (*spec.before, *spec.alongside)]
    return max(len(ids) + tokens for ids, tokens in requests)


class VllmTarget:
    """The engine of one capture spec, its hooks and its trace."""

    def __init__(self, spec: CaptureSpec) -> None:
        import vllm

        self.spec = spec
        self.package_dir = Path(vllm.__file__).resolve().parent
        self.version = str(vllm.__version__)
        self.commit = framework_commit(self.package_dir)
        config = read_config(spec.model)
        self.header = TraceManifest(
            framework="vllm",
            framework_version=self.version,
            framework_commit=self.commit,
            framework_path=str(self.package_dir),
            model=spec.model,
            dtype=spec.dtype,
            prompt=spec.prompt_text,
            prompt_ids=tuple(spec.prompt_ids),
            max_tokens=spec.max_tokens,
            engine=dict(spec.engine),
            model_config=config,
            scenario={
                "before": [list(r.prompt_ids) for r in spec.before],
                "alongside": [list(r.prompt_ids) for r in spec.alongside],
                "traced_at": spec.traced_at,
            },
        )
        started = time.perf_counter()
        self.llm = vllm.LLM(
            model=spec.model,
            dtype=spec.dtype,  # type: ignore[arg-type]  # a Literal in vLLM's stubs; vLLM checks it
            **engine_arguments(spec.engine, context_length(config), longest_request(spec)),
        )
        self.timings = {"engine_start": time.perf_counter() - started}
        self.writer: TraceWriter | None = None
        self.recorder: Any = None
        self.generated: list[int] = []
        self.found: dict[str, Any] = {}  # the manifest's fields the capture found
        self.delegates: dict[str, list[list[Any]]] = {}
        self.root_source: tuple[str | None, int | None] = (None, None)
        self.spans = SchedulerSpans()
        self._handles: list[Any] = []

    def generate(self) -> list[int]:
        """The spec's scenario, greedy, with the hooks on (only the traced request's passes
        are recorded); the records are built afterwards."""
        self.writer = TraceWriter(self.spec.out, self.header, shard_bytes=self.spec.shard_bytes)
        spans = SchedulerSpans()
        self.spans = spans
        try:
            self.llm.collective_rpc(spans.install)
            model_class = self.llm.apply_model(self._install)[0]
            started = time.perf_counter()
            tokens = self._run_scenario()
            self.timings["traced_generate"] = time.perf_counter() - started
            self.llm.apply_model(self._uninstall)  # hands the records to the writer
            spans.remove()
        except BaseException:
            spans.remove()
            if self.recorder is not None:  # keep what was recorded before the failure
                self.recorder.remove()
            self.writer.close(complete=False)
            raise
        self.generated = tokens[TRACED]
        modules = self.recorder.module_classes if self.recorder is not None else {}
        self.found = {
            "model_class": model_class,
            "model_source": self.root_source,
            "delegates": nested_tuples(self.delegates),
            "modules": nested_tuples(modules),
        }
        if len(tokens) > 1:  # every request's tokens (prompt, then generated), by label
            self.found["requests"] = nested_tuples(tokens_by_label(self.spec, tokens))
        return self.generated

    def _run_scenario(self) -> dict[str, list[int]]:
        """The requests before the traced one, one generate call each, then the traced
        request's call with the requests alongside it; the generated tokens by label."""
        spec = self.spec
        traced = ScenarioRequest(spec.prompt_ids, spec.max_tokens)
        calls: list[list[tuple[str, ScenarioRequest]]] = [
            [(f"before {i}", r)] for i, r in enumerate(spec.before)
        ]
        main = [(f"alongside {i}", r) for i, r in enumerate(spec.alongside)]
        at = len(main) if spec.traced_at is None else spec.traced_at
        calls.append(main[:at] + [(TRACED, traced)] + main[at:])
        tokens: dict[str, list[int]] = {}
        for call in calls:
            for label, ids in self._generate(call).items():
                tokens[label] = ids
        return tokens

    def _generate(self, call: list[tuple[str, ScenarioRequest]]) -> dict[str, list[int]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        counter = getattr(getattr(self.llm, "request_counter", None), "counter", None)
        if isinstance(counter, int):  # the ids this call's requests get, in order
            self.spans.expect({str(counter + i): label for i, (label, _) in enumerate(call)})
        params = [
            SamplingParams(max_tokens=r.max_tokens, temperature=0.0, ignore_eos=True)
            for _, r in call
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for _, r in call]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)  # in the prompts' order
        return {
            label: [int(t) for t in out.outputs[0].token_ids]
            for (label, _), out in zip(call, outputs)
        }

    def write(self) -> Path:
        """Close the trace: the last shard and the manifest."""
        assert self.writer is not None, "generate first"
        started = time.perf_counter()
        self.writer.flush()
        self.timings["write"] = time.perf_counter() - started
        return self.writer.close(
            generated_ids=tuple(self.generated), timings=self.timings, **self.found
        )

    def replay(
        self,
        reference: str,
        modules: tuple[str, ...] | None,
        names: tuple[tuple[str, str], ...] = (),
    ) -> tuple[Path, int]:
        """Replay `modules` (None: every replayable leaf) on the reference's inputs (`names`:
        the reference's name of a module named otherwise there)."""
        from ekka.tracer.adapters.vllm_replay import replay_modules

        assert self.writer is not None and self.recorder is not None, "generate first"
        started = time.perf_counter()
        path = Path(self.spec.out) / REPLAY_FOLDER
        replays = TraceWriter(
            path, dataclasses.replace(self.header, replay_of=str(self.writer.path))
        )
        count = replay_modules(
            self.recorder.modules_by_name,
            self.writer.records,
            replays,
            reference,
            modules,
            passes=[p.positions for p in self.writer.passes],
            names=dict(names),
        )
        replays.close(replayed=count, timings={"replay": time.perf_counter() - started})
        return path, count

    # --- hooks, installed through `LLM.apply_model` (the model lives in the engine) ----------

    def _install(self, model: Any) -> str:
        """Hooks on: the pass's, the logits', and (unless `logits_only`) every module's."""
        import torch

        from ekka.tracer.hooks import ModuleRecorder, source_location

        assert self.writer is not None
        writer, prompt_len, spans = self.writer, len(self.spec.prompt_ids), self.spans
        recorder = ModuleRecorder(
            writer,
            model,
            modules=self.spec.modules,
            steps=self.spec.steps,
            hook_modules=not self.spec.logits_only,
        )
        self.recorder = recorder
        self.delegates = module_delegates(model)
        self.root_source = source_location(type(model))

        def begin(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
            ids = [] if input_ids is None else input_ids.detach().flatten().tolist()
            ids_all = ids
            given = [] if positions is None else positions.detach().tolist()
            batch = spans.batch()
            span = spans.placement()
            if batch and span is None and spans.labels:  # a pass of other requests only
                recorder.skip_pass()
                return
            serving = ServingMetadata(given_positions=nested_tuples(given))
            if span is not None:  # the request's own tokens, as the scheduler placed them
                pos = list(range(span.start, span.start + span.count))
                serving = dataclasses.replace(
                    serving, request=span, attention=attention_metadata(spans.group_of)
                )
                if batch is not None and len(batch) > 1:  # the batch's spans and its ids
                    serving = dataclasses.replace(
                        serving, batch=tuple(batch), batch_input_ids=tuple(ids)
                    )
                    ids = ids[span.offset : span.offset + span.count]
            else:  # no scheduler step seen: the model's own positions (not checked)
                pos = _flat_positions(given)
            end = pos[-1] + 1 if pos else 0
            step = max(0, end - prompt_len)
            recorder.begin_pass(step)
            # the traced request's rows of the batch (the scheduler's spans, not the tensors)
            recorder.rows = None
            if span is not None:
                total = sum(s.count for s in batch or [span])
                recorder.rows = (span.offset, span.count, total, len(ids_all))
            writer.add_pass(
                PassInfo(
                    index=recorder.pass_index,
                    step=step,
                    input_ids=tuple(ids),
                    positions=tuple(pos),
                    serving=serving,
                )
            )

        def sampled_rows(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
            """After the model's forward: the logits have one row per request of the batch, in
            the batch's order; the traced request's is its index."""
            span = spans.placement()
            batch = spans.batch() or []
            recorder.rows = None if span is None else (span.index, 1, len(batch), len(batch))

        def logits(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if not recorder.recording:
                return
            if isinstance(output, torch.Tensor) and output.numel():
                rows = recorder.take_rows(output.reshape(-1, output.shape[-1]))
                recorder.record_tensor("logits", rows[-1], kind="logits")

        self._handles = [
            model.register_forward_pre_hook(begin, with_kwargs=True),
            model.register_forward_hook(sampled_rows),
        ]
        recorder.install()
        for name, module in model.named_modules():
            if name.endswith("logits_processor"):
                self._handles.append(module.register_forward_hook(logits))
        return type(model).__name__

    def _uninstall(self, model: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self.recorder.remove()


def tokens_by_label(spec: CaptureSpec, generated: Mapping[str, list[int]]) -> dict[str, list[int]]:
    """Every request's tokens, prompt then generated, by its label."""
    prompts = {TRACED: spec.prompt_ids}
    prompts.update({f"before {i}": r.prompt_ids for i, r in enumerate(spec.before)})
    prompts.update({f"alongside {i}": r.prompt_ids for i, r in enumerate(spec.alongside)})
    return {label: list(prompts[label]) + list(ids) for label, ids in generated.items()}


def _flat_positions(given: Any) -> list[int]:
    """Token positions of the rows from the model's positions (M-RoPE's `[3, tokens]`: the
    first row, the text positions)."""
    if given and isinstance(given[0], list):
        given = given[0]
    return [int(p) for p in given]


def module_delegates(model: Any) -> dict[str, list[list[Any]]]:
    """Per module, the framework objects it holds that are not modules (an attention layer's
    backend implementation, say): class name, source file, line. Attribution uses them to see
    that a commit changing the backend changed what the module computes."""
    import torch

    from ekka.tracer.hooks import source_location

    top = type(model).__module__.split(".")[0]
    out: dict[str, list[list[Any]]] = {}
    for name, module in model.named_modules():
        found = []
        for value in vars(module).values():
            cls = type(value)
            if isinstance(value, torch.nn.Module | torch.Tensor) or not cls.__module__.startswith(
                top + "."
            ):
                continue
            if not callable(getattr(value, "forward", None)):
                continue
            file, line = source_location(cls)
            found.append([cls.__name__, file, line])
        if found:
            out[name] = found
    return out


def preload() -> None:
    """What a warm process imports before it forks targets (`ekka.tracer.warm`): vLLM and its
    engine's modules, everything an engine's start would import first."""
    import vllm
    import vllm.inputs

    vllm.LLM  # noqa: B018  # the package's lazy attribute: imports vLLM's engine
    vllm.SamplingParams  # noqa: B018


def framework_commit(package_dir: Path) -> str | None:
    """The commit vLLM was built from, or the HEAD of the git checkout it runs from (a
    bisection worktree), when the package's parent folder is that repository's top level."""
    try:
        from vllm import _version

        commit = getattr(_version, "__commit_id__", None)
        if commit:
            return str(commit)
    except ImportError:
        pass
    try:
        out = subprocess.run(
            ["git", "-C", str(package_dir.parent), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.split()
    if (
        out.returncode != 0
        or len(lines) != 2
        or Path(lines[0]).resolve() != package_dir.parent.resolve()
    ):
        return None
    return lines[1]


def serve(channel: Channel) -> None:
    """Answer the session's messages until it closes (or is gone)."""
    start = channel.receive()
    if not isinstance(start, Start):
        raise RuntimeError(f"the session's first message is {start!r}, not a start")
    started = time.perf_counter()
    target = VllmTarget(start.spec)
    channel.send(
        Ready(
            framework="vllm",
            version=target.version,
            commit=target.commit,
            path=str(target.package_dir),
            seconds=time.perf_counter() - started,
        )
    )
    answer(channel, target, lambda m: target.replay(m.reference, m.modules, m.names))


def exit_at_once(code: int) -> None:
    """End the process without the interpreter's teardown: its work is on disk by now.

    What is left is vLLM's engine shutdown and the freeing of every object, which took 3 s
    after a tiny model's capture here (every bisection probe waited that long). Only with
    the engine in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`): an engine process of its
    own is shut down the usual way.
    """
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
        sys.exit(code)
    import ctypes

    sys.stdout.flush()
    sys.stderr.flush()
    ctypes.CDLL(None).fflush(None)  # what C code printed and its library still buffers
    os._exit(code)
