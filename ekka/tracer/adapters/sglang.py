"""SGLang adapter: the target's process. Runs SGLang's engine with hooks and has the trace written.

Served by a fork of a warm process (`ekka.tracer.warm`, which imported SGLang once: `preload`)
for `TargetSession`, with SGLang's own interpreter (its environment, `.venv-sglang`), in a
process of its own whose path may put a patched copy of SGLang's sources first. It answers the session's messages as the vLLM
adapter does (`ekka.tracer.protocol`): Start (the engine starts), Trace (the scenario runs,
the traced request's tokens are told, then its trace is written), Replay, Close.

SGLang's model lives in its scheduler's process, not in this one: the hooks and the trace
writer run there (`sglang_hooks`), installed through SGLang's own `forward_hooks` engine
argument and driven from here through `Engine.collective_rpc`. This module imports nothing of
Ekka's parent side (only the protocol, the model configuration and the trace's records).

On a CPU SGLang runs its torch-native paths (`SGLANG_USE_CPU_ENGINE=1`, the torch_native
attention) and, where no build of `sgl_kernel` exists, with Ekka's stand-in for it
(scripts/sgl_kernel_standin); every Ready then says so, and so does the report.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ekka.tracer.adapters.loop import answer
from ekka.tracer.metadata import TRACED
from ekka.tracer.model_config import read_config
from ekka.tracer.protocol import (
    CaptureSpec,
    Channel,
    Ready,
    ScenarioRequest,
    Start,
)
from ekka.tracer.trace import REPLAY_FOLDER, TraceManifest, TraceReader

STANDIN_NOTE = "SGLang's torch-native paths; no sgl_kernel"
HOOK_FACTORY = "ekka.tracer.adapters.sglang_hooks:install"
COMMAND = "ekka_command"  # sglang_hooks.COMMAND: the scheduler's method it adds
# Ekka's engine settings; a user's engine argument of the same name wins. The CPU's
# torch-native attention, eager (a CUDA graph replays without Python hooks), no overlap of
# scheduling and compute (the scheduler's batch is the one the model runs), no prefix reuse
# unless a scenario asks for it, a small KV pool, token ids in and out, greedy and seeded.
# The pool's size is `max_total_tokens`; `mem_fraction_static` only sets how much of the memory
# free before the model loaded must still be free after it (on a CPU: the machine's, which other
# processes share): with 0.05, SGLang refused to start whenever others took 5% meanwhile.
ENGINE_DEFAULTS: dict[str, Any] = {
    "device": "cpu",
    "attention_backend": "torch_native",
    "disable_cuda_graph": True,
    "disable_overlap_schedule": True,
    "disable_radix_cache": True,
    "mem_fraction_static": 0.5,
    "max_total_tokens": 2048,
    "skip_tokenizer_init": True,
    "random_seed": 0,
    "log_level": "warning",
}


def engine_arguments(user: Mapping[str, Any], dtype: str) -> dict[str, Any]:
    """`sglang.Engine`'s keyword arguments: Ekka's defaults, then the user's over them, then
    Ekka's hook (after any of the user's). A key that is not a field of SGLang's `ServerArgs`
    is a ValueError that lists them."""
    from sglang.srt.server_args import ServerArgs  # type: ignore[import-not-found]

    known = set(inspect.signature(ServerArgs).parameters)
    unknown = sorted(set(user) - known)
    if unknown:
        raise ValueError(
            f"--engine {', '.join(unknown)}: not an SGLang engine argument (a field of "
            f"sglang's ServerArgs; e.g. chunked_prefill_size, disable_radix_cache, "
            f"max_total_tokens, page_size)"
        )
    hooks = list(user.get("forward_hooks") or [])
    hooks.append(
        {
            "name": "ekka",
            "target_modules": ["logits_processor"],
            "hook_factory": HOOK_FACTORY,
            "config": {},
        }
    )
    return {**ENGINE_DEFAULTS, "dtype": dtype, **user, "forward_hooks": hooks}


def label_of(label: str) -> str:
    """The SGLang request id of a scenario's request ("traced", "before 0") in a capture."""
    return "ekka-" + label.replace(" ", "-")


class SglangTarget:
    """The engine of one capture spec; its scheduler holds the hooks and the trace."""

    def __init__(self, spec: CaptureSpec) -> None:
        import sglang  # type: ignore[import-not-found]

        self.spec = spec
        self.package_dir = Path(sglang.__file__).resolve().parent
        self.version = str(sglang.__version__)
        self.notes = standin_notes()
        config = read_config(spec.model)
        self.header = TraceManifest(
            framework="sglang",
            framework_version=self.version,
            framework_commit=None,
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
        self.engine = sglang.Engine(
            model_path=spec.model, **engine_arguments(spec.engine, spec.dtype)
        )
        self.timings = {"engine_start": time.perf_counter() - started}
        self.generated: list[int] = []
        self.tokens: dict[str, list[int]] = {}

    def generate(self) -> list[int]:
        """The spec's scenario, greedy, with the hooks on in the scheduler (only the traced
        request's passes are recorded)."""
        spec = self.spec
        labels = [TRACED]
        labels += [f"before {i}" for i in range(len(spec.before))]
        labels += [f"alongside {i}" for i in range(len(spec.alongside))]
        self._command(
            "begin",
            out=spec.out,
            header=self.header.to_json(),
            labels={label_of(label): label for label in labels},
            modules=list(spec.modules),
            steps=spec.steps,
            logits_only=spec.logits_only,
            shard_bytes=spec.shard_bytes,
        )
        started = time.perf_counter()
        self.tokens = self._run_scenario()
        self.timings["traced_generate"] = time.perf_counter() - started
        self.generated = self.tokens[TRACED]
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
            outputs = self.engine.generate(
                input_ids=[list(r.prompt_ids) for _, r in call],
                sampling_params=[
                    {"temperature": 0.0, "max_new_tokens": r.max_tokens, "ignore_eos": True}
                    for _, r in call
                ],
                rid=[label_of(label) for label, _ in call],
            )
            for (label, _), out in zip(call, outputs):  # in the call's order
                tokens[label] = [int(t) for t in out["output_ids"]]
        return tokens

    def write(self) -> Path:
        """Have the scheduler close the trace, with the tokens and the scenario's requests."""
        found: dict[str, Any] = {"timings": dict(self.timings)}
        if len(self.tokens) > 1:
            prompts = {TRACED: self.spec.prompt_ids}
            prompts.update({f"before {i}": r.prompt_ids for i, r in enumerate(self.spec.before)})
            prompts.update(
                {f"alongside {i}": r.prompt_ids for i, r in enumerate(self.spec.alongside)}
            )
            found["requests"] = {
                label: tuple(prompts[label]) + tuple(ids) for label, ids in self.tokens.items()
            }
        self._command("end", generated_ids=list(self.generated), found=found)
        return Path(self.spec.out)

    def replay(
        self,
        reference: str,
        modules: tuple[str, ...] | None,
        names: tuple[tuple[str, str], ...] = (),
    ) -> tuple[Path, int]:
        """Replay `modules` (None: every replayable leaf) on the reference's inputs (`names`:
        the reference's name of a module named otherwise there), in the scheduler; the replay
        trace's path and how many modules it replayed."""
        self._command(
            "replay",
            reference=reference,
            modules=None if modules is None else list(modules),
            names=dict(names),
        )
        path = Path(self.spec.out) / REPLAY_FOLDER
        return path, int(TraceReader(path).manifest.replayed or 0)

    def _command(self, name: str, **arguments: Any) -> None:
        """One command to the scheduler's recorder (`sglang_hooks`); its error as a
        RuntimeError (SGLang answers an RPC with a success flag and the error's text)."""
        try:
            self.engine.collective_rpc(COMMAND, name=name, **arguments)
        except AssertionError as exc:
            raise RuntimeError(f"SGLang's scheduler failed to {name} the trace: {exc}") from None


def preload() -> None:
    """What a warm process imports before it forks targets (`ekka.tracer.warm`): SGLang's
    engine and its arguments (its scheduler, a process SGLang spawns, imports its own)."""
    import importlib

    for name in ("sglang", "sglang.srt.entrypoints.engine", "sglang.srt.server_args"):
        importlib.import_module(name)


def standin_notes() -> tuple[str, ...]:
    """What the report must say about how SGLang ran: Ekka's stand-in for sgl_kernel."""
    try:
        import sgl_kernel  # type: ignore[import-not-found]
    except ImportError:
        return (STANDIN_NOTE,)
    return (STANDIN_NOTE,) if getattr(sgl_kernel, "STANDIN", False) else ()


def serve(channel: Channel) -> None:
    """Answer the session's messages until it closes (or is gone)."""
    start = channel.receive()
    if not isinstance(start, Start):
        raise RuntimeError(f"the session's first message is {start!r}, not a start")
    started = time.perf_counter()
    target = SglangTarget(start.spec)
    channel.send(
        Ready(
            framework="sglang",
            version=target.version,
            commit=None,
            path=str(target.package_dir),
            seconds=time.perf_counter() - started,
            notes=target.notes,
        )
    )
    answer(channel, target, lambda m: target.replay(m.reference, m.modules, m.names))


def exit_at_once(code: int) -> None:
    """End this process and SGLang's (its scheduler and detokenizer are its children) without
    SGLang's shutdown: the work is on disk by now."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        from sglang.srt.utils import kill_process_tree  # type: ignore[import-not-found]

        kill_process_tree(os.getpid(), include_parent=False, wait_timeout=10)
    except Exception:  # SGLang never imported, or a child gone already
        pass
    os._exit(code)
