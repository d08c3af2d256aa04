"""transformers adapter: the reference, run in the parent's process, with hooks on every module.

Greedy decoding with the KV cache (a prefill pass, then one pass per token), or teacher forcing
(`spec.forced_ids`: one pass over the prompt and the target's tokens, so that every target
pass is compared at the same positions with the same inputs).

Besides every module call it records what the modeling code computes outside modules: the
post-rotary q and k, by wrapping the modeling module's `apply_rotary_pos_emb` (recorded as
`<attention>.apply_rotary_pos_emb`, with q, k, cos and sin as inputs; where it rotates one
tensor a call, each call is a record, q's then k's `#1`, with input x), and the logits of the
last position of each step.
"""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ekka.tracer.protocol import CaptureSpec

if TYPE_CHECKING:
    from ekka.tracer.trace import TraceManifest


@contextmanager
def wrap_rotary(model: Any, recorder: Any) -> Iterator[int]:
    """Wrap `apply_rotary_pos_emb` in every modeling module the model's classes come from,
    where it rotates q and k together (`(q, k, cos, sin, ...)`, which vLLM's rotary embedding
    computes too) or one tensor a call (Gemma 3n's and Gemma 4's `(x, cos, sin)`, called once
    for q and once for k: each call its own record). Another form (GPT-J's and CodeGen's
    `(tensor, sin, cos)` on the rotary slice only) is left alone: its calls are not vLLM's
    output, and read as `(q, k, ...)` they recorded the batch's slices of one tensor as a
    rotary output (a false divergence of `rotary_emb`)."""
    originals: list[tuple[Any, Any]] = []
    seen: set[str] = set()
    for module in model.modules():
        modname = type(module).__module__
        if modname in seen:
            continue
        seen.add(modname)
        pymod = sys.modules.get(modname)
        original = getattr(pymod, "apply_rotary_pos_emb", None)
        if pymod is None or original is None or getattr(original, "_ekka_wrapped", False):
            continue
        form = _rotary_form(original)
        if form is None:
            continue
        wrapped: Any

        if form == "one":

            def wrapped(*args: Any, _orig: Any = original, **kwargs: Any) -> Any:
                out = _orig(*args, **kwargs)
                _record_one(recorder, _orig, out, args, kwargs)
                return out

        else:

            def wrapped(q: Any, k: Any, *args: Any, _orig: Any = original, **kwargs: Any) -> Any:
                out = _orig(q, k, *args, **kwargs)
                cos = args[0] if args else kwargs.get("cos")
                unsqueeze = kwargs.get("unsqueeze_dim", 1)
                inputs = {
                    "q": _heads_first(q, cos, unsqueeze),
                    "k": _heads_first(k, cos, unsqueeze),
                }
                for i, arg in enumerate(args[:2]):
                    inputs[("cos", "sin")[i]] = arg
                outputs = [_heads_first(t, cos, unsqueeze) for t in out]
                recorder.record_function(
                    "apply_rotary_pos_emb", _orig, outputs, inputs, kind="rotary"
                )
                return out

        wrapped._ekka_wrapped = True
        pymod.apply_rotary_pos_emb = wrapped  # type: ignore[attr-defined]
        originals.append((pymod, original))
    try:
        yield len(originals)
    finally:
        for pymod, original in originals:
            pymod.apply_rotary_pos_emb = original


def _record_one(recorder: Any, func: Any, out: Any, args: tuple[Any, ...], kwargs: Any) -> None:
    """An `apply_rotary_pos_emb(x, cos, sin, ...)` that rotates one tensor a call: each call is
    its own record (`<attention>.apply_rotary_pos_emb`, then `#1`: q, then k), input `x`."""
    try:
        named = inspect.signature(func).bind(*args, **kwargs)
    except (TypeError, ValueError):  # not a signature to read: the call is not recorded
        return
    named.apply_defaults()
    values = dict(named.arguments)
    cos, sin = values.get("cos"), values.get("sin")
    unsqueeze = values.get("unsqueeze_dim", 1)
    unsqueeze = unsqueeze if isinstance(unsqueeze, int) else 1
    inputs = {"x": _heads_first(args[0], cos, unsqueeze), "cos": cos, "sin": sin}
    outputs = [_heads_first(out, cos, unsqueeze)]
    recorder.record_function("apply_rotary_pos_emb", func, outputs, inputs, kind="rotary")


def _rotary_form(function: Any) -> str | None:
    """How an `apply_rotary_pos_emb` rotates: "pair" (q and k together, its first two
    parameters), "one" (`(x, cos, sin, ...)`, one tensor a call: Gemma 3n, Gemma 4), None
    (another form, e.g. GPT-J's `(tensor, sin, cos)` on the rotary slice only: not recorded)."""
    try:
        names = list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return None
    if names[:2] == ["q", "k"]:
        return "pair"
    return "one" if names[:3] == ["x", "cos", "sin"] else None


def _heads_first(t: Any, cos: Any, unsqueeze_dim: int) -> Any:
    """q or k as `[batch, heads, tokens, d]`, the layout the trace keeps them in: most models
    apply rotary to that layout (`unsqueeze_dim=1`), some to `[batch, tokens, heads, d]`
    (`unsqueeze_dim=2`). The tokens are `cos`'s second-to-last axis."""
    if getattr(t, "dim", lambda: 0)() != 4:
        return t
    tokens = cos.shape[-2] if getattr(cos, "dim", lambda: 0)() >= 2 else None
    token_major = t.shape[1] == tokens and (t.shape[2] != tokens or unsqueeze_dim == 2)
    return t.transpose(1, 2) if token_major else t


def _config_dict(model_dir: str) -> dict[str, Any]:
    import json

    return dict(json.loads((Path(model_dir) / "config.json").read_text()))


def _header(spec: CaptureSpec, model: Any) -> TraceManifest:
    """The trace header of a transformers capture of `spec` with `model`."""
    import transformers

    from ekka.tracer.trace import TraceManifest

    return TraceManifest(
        framework="transformers",
        framework_version=transformers.__version__,
        framework_commit=None,
        framework_path=str(Path(transformers.__file__).resolve().parent),
        model=str(Path(spec.model).resolve()),
        dtype=spec.dtype,
        prompt=spec.prompt_text,
        prompt_ids=tuple(spec.prompt_ids),
        max_tokens=spec.max_tokens,
        engine={},
        model_class=type(model).__name__,
        model_config=_config_dict(spec.model),
    )


def load_model(model_dir: str, dtype: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    # Ekka reports its own progress; no bar per reference load (an unannotated transformers call)
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch_dtype, attn_implementation="eager"
    )
    model.eval()  # type: ignore[no-untyped-call]  # transformers' eval() has no annotations
    return model


def run(spec: CaptureSpec, *, model: Any = None) -> Path:
    import torch

    from ekka.tracer.hooks import ModuleRecorder
    from ekka.tracer.trace import TraceWriter

    t_load = time.perf_counter()
    if model is None:
        model = load_model(spec.model, spec.dtype)
    timings = {"load": time.perf_counter() - t_load}
    writer = TraceWriter(spec.out, _header(spec, model), shard_bytes=spec.shard_bytes)
    recorder = ModuleRecorder(writer, model, modules=spec.modules, steps=spec.steps)
    recorder.install()
    generated: list[int] = []
    t_run = time.perf_counter()
    try:
        with torch.no_grad(), wrap_rotary(model, recorder):
            if spec.forced_ids:
                generated = _forced_pass(spec, model, recorder, writer)
            else:
                generated = _greedy(spec, model, recorder, writer)
    except BaseException:
        recorder.remove()
        writer.close(complete=False)
        raise
    recorder.remove()
    timings["traced_run"] = time.perf_counter() - t_run
    t_write = time.perf_counter()
    writer.flush()
    timings["write"] = time.perf_counter() - t_write
    writer.close(generated_ids=tuple(generated), timings=timings)
    return writer.path


def _forward(
    model: Any,
    recorder: Any,
    writer: Any,
    feed: list[int],
    positions: list[int],
    step: int,
    past: Any,
    *,
    cache: bool = False,
    prompt: int = 0,
) -> Any:
    """One traced pass. `prompt`: the prompt's length, for a prefix LM (`config.prefix_lm`):
    its first pass marks the prompt as the prefix (token_type_ids 1: bidirectional there), as
    a serving framework runs it; the tokens after it stay causal."""
    import torch

    from ekka.tracer.trace import PassInfo

    recorder.begin_pass(step)
    writer.add_pass(
        PassInfo(
            index=recorder.pass_index, step=step, input_ids=tuple(feed), positions=tuple(positions)
        )
    )
    prefix: dict[str, Any] = {}
    if past is None and getattr(model.config, "prefix_lm", False):
        prefix["token_type_ids"] = torch.tensor([[int(p < prompt) for p in positions]])
    out = model(
        input_ids=torch.tensor([feed]),
        position_ids=torch.tensor([positions]),
        past_key_values=past,
        use_cache=cache or past is not None or step == 0,
        **prefix,
    )
    recorder.record_tensor("logits", out.logits[0], kind="logits")
    return out


def _greedy(spec: CaptureSpec, model: Any, recorder: Any, writer: Any) -> list[int]:
    """Greedy decoding with the KV cache: a prefill pass, then one pass per generated token."""
    ids = list(spec.prompt_ids)
    generated: list[int] = []
    past = None
    for step in range(spec.max_tokens):
        if step == 0:
            feed, positions = ids, list(range(len(ids)))
        else:
            feed, positions = ids[-1:], [len(ids) - 1]
        out = _forward(model, recorder, writer, feed, positions, step, past, prompt=len(ids))
        past = out.past_key_values
        token = int(out.logits[0, -1].float().argmax().item())
        ids.append(token)
        generated.append(token)
    return generated


def _forced_pass(spec: CaptureSpec, model: Any, recorder: Any, writer: Any) -> list[int]:
    """Teacher forcing: one pass over prompt + forced ids, no cache; returns the greedy choices."""
    feed = list(spec.prompt_ids) + list(spec.forced_ids)
    prompt = len(spec.prompt_ids)
    out = _forward(model, recorder, writer, feed, list(range(len(feed))), 0, None, prompt=prompt)
    start = len(spec.prompt_ids) - 1
    return [int(t) for t in out.logits[0, start:].float().argmax(dim=-1).tolist()]
