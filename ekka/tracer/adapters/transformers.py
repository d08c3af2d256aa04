"""transformers adapter: the reference side. Greedy decoding with hooks on every module.

Besides every module call it records what the modeling code computes outside modules: the
post-rotary q and k, by wrapping the modeling module's `apply_rotary_pos_emb` (recorded as
`<attention>.apply_rotary_pos_emb`, with q, k, cos and sin as inputs), and the logits of the
last position of each step.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ekka.tracer.capture import WARMUP_PROMPT_TOKENS, CaptureSpec


@contextmanager
def wrap_rotary(model: Any, recorder: Any) -> Iterator[int]:
    """Wrap `apply_rotary_pos_emb` in every modeling module the model's classes come from."""
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

        def wrapped(q: Any, k: Any, *args: Any, _orig: Any = original, **kwargs: Any) -> Any:
            out = _orig(q, k, *args, **kwargs)
            cos = args[0] if args else kwargs.get("cos")
            unsqueeze = kwargs.get("unsqueeze_dim", 1)
            inputs = {"q": _heads_first(q, cos, unsqueeze), "k": _heads_first(k, cos, unsqueeze)}
            for i, arg in enumerate(args[:2]):
                inputs[("cos", "sin")[i]] = arg
            outputs = [_heads_first(t, cos, unsqueeze) for t in out]
            recorder.record_function("apply_rotary_pos_emb", _orig, outputs, inputs, kind="rotary")
            return out

        wrapped._ekka_wrapped = True  # type: ignore[attr-defined]
        pymod.apply_rotary_pos_emb = wrapped  # type: ignore[attr-defined]
        originals.append((pymod, original))
    try:
        yield len(originals)
    finally:
        for pymod, original in originals:
            pymod.apply_rotary_pos_emb = original


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


def _header(spec: CaptureSpec, model: Any) -> dict[str, Any]:
    """The trace header of a transformers capture of `spec` with `model`."""
    import transformers

    return {
        "framework": "transformers",
        "framework_version": transformers.__version__,
        "framework_commit": None,
        "framework_path": str(Path(transformers.__file__).resolve().parent),
        "model": str(Path(spec.model).resolve()),
        "dtype": spec.dtype,
        "prompt": spec.prompt_text,
        "prompt_ids": list(spec.prompt_ids),
        "max_tokens": spec.max_tokens,
        "engine": {},
        "model_class": type(model).__name__,
        "model_config": _config_dict(spec.model),
    }


def load_model(model_dir: str, dtype: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # Ekka reports its own progress; no bar per reference load
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch_dtype, attn_implementation="eager"
    )
    model.eval()
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
    writer.close(generated_ids=generated, timings=timings)
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
) -> Any:
    import torch

    from ekka.tracer.trace import PassInfo

    recorder.begin_pass(step)
    writer.add_pass(
        PassInfo(
            index=recorder.pass_index, step=step, input_ids=tuple(feed), positions=tuple(positions)
        )
    )
    out = model(
        input_ids=torch.tensor([feed]),
        position_ids=torch.tensor([positions]),
        past_key_values=past,
        use_cache=cache or past is not None or step == 0,
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
        out = _forward(model, recorder, writer, feed, positions, step, past)
        past = out.past_key_values
        token = int(out.logits[0, -1].float().argmax().item())
        ids.append(token)
        generated.append(token)
    return generated


def _forced_pass(spec: CaptureSpec, model: Any, recorder: Any, writer: Any) -> list[int]:
    """Teacher forcing: one pass over prompt + forced ids, no cache; returns the greedy choices."""
    feed = list(spec.prompt_ids) + list(spec.forced_ids)
    out = _forward(model, recorder, writer, feed, list(range(len(feed))), 0, None)
    start = len(spec.prompt_ids) - 1
    return [int(t) for t in out.logits[0, start:].float().argmax(dim=-1).tolist()]


class ForcedReference:
    """A teacher-forced reference made in two phases around the target's generation.

    `ahead()` runs while the target generates (in another process): one traced pass over the
    prompt, whose KV cache is kept; untraced greedy steps on a copy of that cache guess the
    target's tokens; one traced pass continues over the guess. `follow(generated)` runs once
    the target's tokens are known: a right guess leaves nothing to do; otherwise the guessed
    pass is dropped and one traced pass continues from the prompt's cache over the target's
    tokens. `close()` writes the trace: pass 0 the prompt, pass 1 the target's generated
    tokens but the last, every position computed on the target's tokens, as teacher forcing
    needs. `follow` alone, without `ahead`, makes one pass over all of them (what `run` with
    `forced_ids` does).
    """

    def __init__(self, spec: CaptureSpec, *, model: Any = None) -> None:
        from dataclasses import replace

        from ekka.tracer.capture import validate
        from ekka.tracer.trace import TraceWriter

        validate(spec)
        spec = replace(
            spec, model=str(Path(spec.model).resolve()), out=str(Path(spec.out).resolve())
        )
        t_load = time.perf_counter()
        self.model = model if model is not None else load_model(spec.model, spec.dtype)
        self.spec = spec
        self.timings: dict[str, float] = {"load": time.perf_counter() - t_load}
        self.writer = TraceWriter(spec.out, _header(spec, self.model), shard_bytes=spec.shard_bytes)
        self.prompt_cache: Any = None  # the KV cache after the prompt, never extended
        self.first_choice: int | None = None  # the greedy choice after the prompt
        self.forced: list[int] | None = None  # what the continuation pass was fed
        self.choices: list[int] = []  # the greedy choices at the continuation's positions
        self.guess_right: bool | None = None
        self._scratch: Any = None  # warm_up's scratch trace (a TemporaryDirectory), while kept

    def warm_up(self) -> None:
        """Passes on other tokens that leave `follow` only the cost of a warm pass: the first
        traced pass of a model in a process cost 2-3 times a later one (20-40 ms against 10
        on a tiny model: the classes' source lines read, kernels chosen per shape, the hooks'
        first calls). One untraced pass as long as `follow`'s (the prompt and all but the
        last token), and one short pass traced into a scratch trace, which is kept (`scratch`)
        until `drop_scratch` or the closing: the caller may warm its analysis up on it. Its
        positions cover the target's traced warm-up request (`WARMUP_PROMPT_TOKENS` and one
        decode step). Meant for the time the target's engine starts."""
        import tempfile

        import torch

        from ekka.tracer.trace import TraceWriter

        started = time.perf_counter()
        vocab = self.model.get_input_embeddings().num_embeddings
        prompt = list(self.spec.prompt_ids)
        length = len(prompt) + max(self.spec.max_tokens - 1, 0)
        feed = [(t + 1) % vocab for t in (prompt * (length // len(prompt) + 1))[:length]]
        with torch.no_grad():
            self.model(input_ids=torch.tensor([feed]), use_cache=False)
        self.drop_scratch()
        self._scratch = tempfile.TemporaryDirectory(prefix="ekka-warmup-")
        writer = TraceWriter(self._scratch.name, _header(self.spec, self.model))
        try:
            self._traced_pass(feed[: WARMUP_PROMPT_TOKENS + 1], 0, 0, None, writer=writer)
        finally:
            writer.close(complete=False)
        self.timings["warm_up"] = time.perf_counter() - started

    @property
    def scratch(self) -> Path | None:
        """The folder of `warm_up`'s scratch trace, while it is kept."""
        return None if self._scratch is None else Path(self._scratch.name)

    def drop_scratch(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def prompt(self) -> None:
        """Trace the prompt alone (written at once), keeping its KV cache: `follow` then only
        continues over the target's tokens."""
        t = time.perf_counter()
        self._prompt_pass()
        self.writer.flush()
        self.timings["ahead"] = time.perf_counter() - t

    def ahead(self, guess: list[int] | None = None) -> list[int]:
        """Trace the prompt, guess the target's tokens (unless given `guess`, another reference's
        guess), trace on the guess; returns the guess."""
        import copy

        import torch

        t = time.perf_counter()
        self._prompt_pass()
        if guess is not None:
            self._continuation(list(guess[: self.spec.max_tokens - 1]), copy_cache=True)
            self.writer.flush()
            self.timings["ahead"] = time.perf_counter() - t
            return list(guess)
        guess = [self.first_choice]
        with torch.no_grad():
            cache = copy.deepcopy(self.prompt_cache)
            position = len(self.spec.prompt_ids)
            while len(guess) < self.spec.max_tokens - 1:
                out = self.model(
                    input_ids=torch.tensor([[guess[-1]]]),
                    position_ids=torch.tensor([[position]]),
                    past_key_values=cache,
                    use_cache=True,
                )
                cache = out.past_key_values
                guess.append(int(out.logits[0, -1].float().argmax()))
                position += 1
        self.timings["guess"] = time.perf_counter() - t
        self._continuation(guess[: self.spec.max_tokens - 1], copy_cache=True)
        # written now, before the target's tokens come; a wrong guess leaves its pass's tensors in the
        # shard, unreferenced once the pass is discarded
        self.writer.flush()
        self.timings["ahead"] = time.perf_counter() - t
        return list(guess)

    def follow(self, generated: list[int]) -> bool | None:
        """Make the trace cover the target's tokens; True when the guess was right (None: no
        guess; without `prompt` or `ahead` before it, one traced pass over the prompt and the
        target's tokens)."""
        t = time.perf_counter()
        wanted = list(generated[:-1])
        if self.prompt_cache is None:
            feed = list(self.spec.prompt_ids) + wanted
            out = self._traced_pass(feed, 0, 0, None)
            rows = out.logits[0, len(self.spec.prompt_ids) - 1 :].float().argmax(dim=-1).tolist()
            self.first_choice, self.choices = int(rows[0]), [int(r) for r in rows[1:]]
            self.forced = wanted
            self.timings["follow"] = time.perf_counter() - t
            return None
        self.guess_right = None if self.forced is None else self.forced == wanted
        if not self.guess_right:
            if self.forced is not None:
                self.writer.discard_passes(1)
            self._continuation(wanted, copy_cache=False)
        self.timings["follow"] = time.perf_counter() - t
        return self.guess_right

    def _prompt_pass(self) -> None:
        out = self._traced_pass(list(self.spec.prompt_ids), 0, 0, None)
        self.prompt_cache = out.past_key_values
        self.first_choice = int(out.logits[0, -1].float().argmax())

    def _continuation(self, feed: list[int], *, copy_cache: bool) -> None:
        import copy

        self.forced = list(feed)
        self.choices = []
        if not feed:
            return
        cache = copy.deepcopy(self.prompt_cache) if copy_cache else self.prompt_cache
        out = self._traced_pass(feed, 1, len(self.spec.prompt_ids), cache)
        self.choices = [int(t) for t in out.logits[0].float().argmax(dim=-1).tolist()]

    def _traced_pass(
        self, feed: list[int], pass_index: int, start: int, cache: Any, *, writer: Any = None
    ) -> Any:
        """One traced pass over `feed` from position `start`, into this reference's trace (or
        into `writer`)."""
        import torch

        from ekka.tracer.hooks import ModuleRecorder

        writer = writer or self.writer
        recorder = ModuleRecorder(
            writer, self.model, modules=self.spec.modules, steps=self.spec.steps
        )
        recorder.pass_index = pass_index - 1
        recorder.install()
        try:
            with torch.no_grad(), wrap_rotary(self.model, recorder):
                return _forward(
                    self.model,
                    recorder,
                    writer,
                    feed,
                    list(range(start, start + len(feed))),
                    0 if start == 0 else 1,
                    cache,
                    cache=True,
                )
        finally:
            recorder.remove()

    def close(self) -> Path:
        self.drop_scratch()
        t = time.perf_counter()
        self.writer.flush()
        self.timings["write"] = time.perf_counter() - t
        return self.writer.close(**self._closing_fields())

    def close_in_background(self) -> Any:
        """Close, the last shard and the manifest written by a thread: a `PendingTrace`, whose
        reader reads the trace at once (the manifest's `write_seconds` tells the writing's
        time)."""
        self.drop_scratch()
        return self.writer.close_in_background(**self._closing_fields())

    def _closing_fields(self) -> dict[str, Any]:
        choices = ([] if self.first_choice is None else [self.first_choice]) + self.choices
        return {
            "generated_ids": choices[: self.spec.max_tokens],
            "timings": dict(self.timings),
            "guess_right": self.guess_right,
        }

    def abandon(self) -> None:
        self.drop_scratch()
        self.writer.close(complete=False)


def main(argv: list[str]) -> int:
    spec = CaptureSpec.from_json(Path(argv[1]).read_text())
    run(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
