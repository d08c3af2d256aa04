"""vLLM adapter: runs the in-process engine with hooks on every module and writes a trace.

Run as `python -m ekka.tracer.adapters.vllm SPEC.json` (what `capture()` does), in a fresh
process whose PYTHONPATH may put a patched copy of vLLM's sources first.

Per forward pass it records the pass's token ids and positions (cloned at once: vLLM reuses
its input buffers), the CPU attention metadata of the first attention layer (seq_lens,
query_start_loc, slot_mapping, block table row), every module call, and the logits of the
pass. The step of a pass is derived from its positions: rows before the prompt's end are the
prefill (step 0, possibly in several chunks), a row at position P + k - 1 is decode step k.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ekka.tracer.capture import (
    CONTROL_ENV,
    NOT_YET,
    TOKENS_EVENT,
    TRACING_EVENT,
    WARMUP_PROMPT_TOKENS,
    CaptureSpec,
    ParentMessages,
    ask_parent,
    collector_paused,
    read_config,
    tell_parent,
    text_config,
    wait_for_parent,
)
from ekka.tracer.hooks import source_location
from ekka.tracer.replay import replay_modules  # here, not when the answer comes: it is awaited


def _framework_commit(package_dir: Path) -> str | None:
    try:
        from vllm import _version

        commit = getattr(_version, "__commit_id__", None)
        if commit:
            return str(commit)
    except ImportError:
        pass
    # A git checkout of the framework (a bisection worktree): its HEAD, when the package's
    # parent folder is the repository's top level (not some repository that merely contains it).
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


def _attention_metadata() -> dict[str, Any]:
    """seq_lens, query_start_loc, slot_mapping and block table of the pass (first layer)."""
    try:
        from vllm.forward_context import get_forward_context

        metadata = get_forward_context().attn_metadata
    except Exception:  # no context outside a model run, or another version's layout
        return {}
    if isinstance(metadata, list):
        metadata = metadata[0] if metadata else None
    if isinstance(metadata, dict):
        metadata = next(iter(metadata.values()), None)
    if metadata is None:
        return {}
    extra: dict[str, Any] = {}
    for key in ("seq_lens", "query_start_loc", "slot_mapping", "block_table"):
        value = getattr(metadata, key, None)
        if value is not None and hasattr(value, "tolist"):
            extra[key] = value.detach().cpu().tolist()
    return extra


def run(spec: CaptureSpec, after_generate: Any = None, when_tracing: Any = None) -> Path:
    """Capture `spec`. `after_generate(generated_ids) -> reference path | None` (in this process,
    or the parent's through `ask_parent` when started by `capture(..., after_generate=...)`)
    names the reference to replay on; without it, `spec.replay_reference` does.
    `when_tracing(scratch)` (or the parent, told through the pipe) learns that the target is
    ready to trace, with the folder of a short warm-up request's trace, and this process
    waits until it returns (the parent: until it says to go on); the timed untraced requests
    and the traced one follow. The timings' `tracing_told_at` and `traced_started_at` and a
    manifest's `closed_at` are `time.monotonic()` readings, comparable across the processes
    of one machine."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch
    import vllm
    from vllm import LLM, SamplingParams

    from ekka.tracer.hooks import ModuleRecorder
    from ekka.tracer.trace import REPLAY_FOLDER, PassInfo, TraceWriter

    package_dir = Path(vllm.__file__).resolve().parent
    header = {
        "framework": "vllm",
        "framework_version": vllm.__version__,
        "framework_commit": _framework_commit(package_dir),
        "framework_path": str(package_dir),
        "model": str(Path(spec.model).resolve()),
        "dtype": spec.dtype,
        "prompt": spec.prompt_text,
        "prompt_ids": list(spec.prompt_ids),
        "max_tokens": spec.max_tokens,
        "engine": dict(spec.engine),
        "model_config": read_config(spec.model),
    }
    writer = TraceWriter(spec.out, header, shard_bytes=spec.shard_bytes)
    try:
        engine = dict(spec.engine)
        engine.setdefault("max_model_len", _max_model_len(spec))
        t_start = time.perf_counter()
        llm = LLM(
            model=spec.model,
            skip_tokenizer_init=True,
            enforce_eager=True,
            gpu_memory_utilization=0.3,
            dtype=spec.dtype,
            seed=0,
            **engine,
        )
        prompt_len = len(spec.prompt_ids)
        state: dict[str, Any] = {}

        def install(model: torch.nn.Module) -> str:
            """Hooks on: the recorder's on every module, and the pass's and the logits'."""
            recorder = state.get("recorder")
            if recorder is None:
                recorder = state["recorder"] = ModuleRecorder(
                    state["writer"], model, modules=spec.modules, steps=spec.steps
                )
                state["delegates"] = module_delegates(model)
                state["root_source"] = source_location(type(model))

            def begin(
                module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> None:
                input_ids = kwargs.get("input_ids", args[0] if args else None)
                positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
                ids = [] if input_ids is None else input_ids.detach().flatten().tolist()
                pos = [] if positions is None else positions.detach().flatten().tolist()
                last = max(pos) if pos else 0
                step = 0 if last < prompt_len else last - prompt_len + 1
                recorder.begin_pass(step)
                recorder.writer.add_pass(
                    PassInfo(
                        index=recorder.pass_index,
                        step=step,
                        input_ids=tuple(ids),
                        positions=tuple(pos),
                        extra=_attention_metadata(),
                    )
                )

            def logits(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
                if isinstance(output, torch.Tensor) and output.numel():
                    recorder.record_tensor(
                        "logits", output.reshape(-1, output.shape[-1])[-1], kind="logits"
                    )

            handles = [model.register_forward_pre_hook(begin, with_kwargs=True)]
            recorder.install()
            for name, module in model.named_modules():
                if name.endswith("logits_processor"):
                    handles.append(module.register_forward_hook(logits))
            state["handles"] = handles
            return type(model).__name__

        def uninstall(model: torch.nn.Module) -> None:
            """Hooks off (the untraced requests run as they would without Ekka)."""
            for handle in state.pop("handles", []):
                handle.remove()
            state["recorder"].remove()

        timings = {"engine_start": time.perf_counter() - t_start}
        writer.header["threads"] = torch.get_num_threads()  # the traced request's torch threads
        # Warm-up requests first, so that the traced request does not also pay first-request
        # costs: one untraced, as long as the prompt, two steps (a prefill and a decode), since
        # oneDNN builds its kernels per matrix shape on first use; then one traced into a
        # scratch trace, short (its copies are thrown away), since the hooks' first calls cost
        # more too (caches, the interpreter's specialization, fresh memory for the copies).
        # Every token differs from the prompt's, so no block of them can be a cached prefix of
        # the traced request.
        t_warm = time.perf_counter()
        vocab = int(text_config(header["model_config"]).get("vocab_size") or 2)
        warm = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
        llm.generate(
            [{"prompt_token_ids": [(t + 1) % vocab for t in spec.prompt_ids]}], warm, use_tqdm=False
        )
        with tempfile.TemporaryDirectory(prefix="ekka-warmup-") as scratch:
            scratch_prompt = [(t + 2) % vocab for t in spec.prompt_ids[:WARMUP_PROMPT_TOKENS]]
            state["writer"] = TraceWriter(
                scratch,
                {**header, "prompt": None, "prompt_ids": scratch_prompt, "max_tokens": 2},
                shard_bytes=spec.shard_bytes,
            )
            model_class = llm.apply_model(install)[0]
            out = llm.generate([{"prompt_token_ids": scratch_prompt}], warm, use_tqdm=False)
            state["recorder"].restart(writer)
            llm.apply_model(uninstall)
            # a complete trace, like the real one: the caller may warm its analysis up on it
            state["writer"].close(
                generated_ids=list(out[0].outputs[0].token_ids),
                model_class=model_class,
                model_source=list(state["root_source"]),
                delegates=state["delegates"],
            )
            # Ready to trace: the caller's work that needs nothing from the target runs now,
            # while this process waits, so that the timed and traced requests below run alone.
            timings["tracing_told_at"] = time.monotonic()
            if when_tracing is not None:
                when_tracing(Path(scratch))
            elif os.environ.get(CONTROL_ENV):
                tell_parent(TRACING_EVENT, scratch=scratch)
                wait_for_parent()
            timings["waited_for_caller"] = time.monotonic() - timings["tracing_told_at"]
        # Then untraced requests like the traced one (as long, other tokens), timed: what
        # tracing costs is measured against the fastest, in this process and a moment apart (a
        # benchmark's baseline measured elsewhere or earlier carries this machine's drift).
        # Four: the first ones of an engine are slower.
        full = SamplingParams(
            max_tokens=spec.max_tokens, temperature=0.0, ignore_eos=True
        )  # the traced one's too
        untraced = []
        for shift in (3, 4, 5, 6):
            t_untraced = time.perf_counter()
            with collector_paused():  # as for the traced request
                llm.generate(
                    [{"prompt_token_ids": [(t + shift) % vocab for t in spec.prompt_ids]}],
                    full,
                    use_tqdm=False,
                )
            untraced.append(time.perf_counter() - t_untraced)
        timings["untraced_generate"] = min(untraced)
        llm.apply_model(install)
        timings["warmup"] = (
            time.perf_counter() - t_warm - timings["waited_for_caller"]
        )  # this process's own
        timings["traced_started_at"] = time.monotonic()
        t_run = time.perf_counter()
        with collector_paused():  # the hooks' thousands of small objects set off no collection
            outputs = llm.generate(
                [{"prompt_token_ids": list(spec.prompt_ids)}], full, use_tqdm=False
            )
        generated = list(outputs[0].outputs[0].token_ids)
        timings["traced_generate"] = time.perf_counter() - t_run
        recorder = state["recorder"]
        if after_generate is None and os.environ.get(CONTROL_ENV):
            # the parent can teacher-force its references while this process writes the trace
            tell_parent(TOKENS_EVENT, generated_ids=generated)
        recorder.remove()  # hands the records made during the request to the writer
    except BaseException:
        if "recorder" in state:  # keep what was recorded before the failure
            state["recorder"].remove()
        writer.close(complete=False)
        raise
    writer.close(
        generated_ids=generated,
        model_class=model_class,
        model_source=list(state.get("root_source") or (None, None)),
        delegates=state.get("delegates", {}),
        timings=timings,
    )
    # The trace is complete; replay is a second, small trace in `<out>/replay`. Which reference
    # and which modules: the caller's answer (it may first analyse the trace just written and
    # ask for its suspects only), or every leaf of the first pass on `spec.replay_reference`.
    if after_generate is not None:
        request = after_generate(generated)
    elif os.environ.get(CONTROL_ENV):
        request = ask_parent(generated)
    else:
        request = spec.replay_reference
    if isinstance(request, str):
        request = {"replay_reference": request, "modules": None}
    if request and request.get("replay_reference"):
        t_replay = time.perf_counter()
        replays = TraceWriter(
            Path(spec.out) / REPLAY_FOLDER, {**header, "replay_of": str(writer.path)}
        )
        # Told `more`: every leaf in call order while the parent analyses, on one core (its
        # other cores are the analysis'; vLLM keeps `torch.set_num_threads` from user code),
        # until the parent names the modules that matter; those not reached yet on every core.
        threads, until = torch.get_num_threads(), None
        if request.get("more"):
            messages = ParentMessages()

            def until() -> Any:
                told = messages.modules()
                if told is not NOT_YET:
                    torch._C.set_num_threads(threads)
                return told

            torch._C.set_num_threads(1)
        try:
            count = replay_modules(
                recorder.modules_by_name,
                writer.records,
                replays,
                request["replay_reference"],
                request.get("modules"),
                until=until,
            )
        finally:
            torch._C.set_num_threads(threads)
        replays.close(replayed=count, timings={"replay": time.perf_counter() - t_replay})
        if until is not None:
            # Every leaf replayed before the parent named its suspects: this process stays
            # until it has, so that its exit (the engine's teardown, freeing gigabytes) does
            # not take a core from the parent's analysis.
            messages.modules(wait=True)
    return writer.path


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
            if isinstance(value, (torch.nn.Module, torch.Tensor)) or not cls.__module__.startswith(
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


def _max_model_len(spec: CaptureSpec) -> int:
    from ekka.tracer.capture import context_length

    limit = context_length(read_config(spec.model)) or 4096
    return min(limit, 4096)


def main(argv: list[str]) -> int:
    spec = CaptureSpec.from_json(Path(argv[1]).read_text())
    run(spec)
    return 0


def _exit_at_once(code: int) -> None:
    """End the process without the interpreter's teardown, once its work is on disk.

    The traces and the replay are written and closed by then; what is left is vLLM's engine
    shutdown and the freeing of every object, which took 3 s on this machine after a tiny
    model's capture: the caller waited that long for each capture (every bisection probe), and
    the exiting process took a core from the caller's work. Only with the engine in this
    process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, the default here): an engine process of its
    own is shut down the usual way.
    """
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
        sys.exit(code)
    import ctypes

    sys.stdout.flush()
    sys.stderr.flush()
    ctypes.CDLL(None).fflush(None)  # what C code printed and its library still buffers
    os._exit(code)


if __name__ == "__main__":
    _exit_at_once(main(sys.argv))
