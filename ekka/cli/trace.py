"""`ekka trace`: one framework's capture of one prompt."""

from __future__ import annotations

from pathlib import Path

import typer

from ekka.cli._app import console, out
from ekka.errors import UsageError


def trace(
    framework: str = typer.Option(..., help="vllm, sglang or transformers."),
    model: Path = typer.Option(..., help="Model folder (e.g. from `ekka zoo build`)."),
    prompt: str | None = typer.Option(
        None, help="Prompt text (tokenized with the model's tokenizer)."
    ),
    prompt_ids: str | None = typer.Option(None, help="Prompt token ids, comma-separated."),
    dtype: str = typer.Option("float32", help="float32 or bfloat16."),
    max_tokens: int = typer.Option(4, help="Greedy tokens to generate."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for the trace."),
    modules: list[str] = typer.Option(
        [], help="Record only modules matching this glob (repeatable)."
    ),
    steps: str = typer.Option("all", help="prefill, all, or step numbers like 0,1."),
    engine: list[str] = typer.Option(
        [],
        help="A keyword argument of the target's engine (vllm.LLM, sglang.Engine) as KEY=VALUE (repeatable), as for `ekka diagnose`.",
    ),
    logits_only: bool = typer.Option(
        False,
        "--logits-only",
        help="A target: record only each step's logits and the tokens, as a bisection probe does.",
    ),
) -> None:
    """Capture every module's output of one prompt through one framework."""
    from ekka.request import parse_engine_args
    from ekka.tracer.capture import capture, resolve_prompt
    from ekka.tracer.protocol import CaptureSpec

    engine_args = parse_engine_args(engine)
    if framework == "transformers" and (engine_args or logits_only):
        raise UsageError(
            "--engine and --logits-only are for --framework vllm or sglang (a target)."
        )
    ids = resolve_prompt(model, prompt, prompt_ids)
    spec = CaptureSpec(
        framework=framework,
        model=str(model),
        prompt_ids=tuple(ids),
        out=str(out_dir),
        dtype=dtype,
        max_tokens=max_tokens,
        modules=tuple(modules),
        steps=steps,
        prompt_text=prompt,
        engine=engine_args,
        logits_only=logits_only,
    )
    with console.status(
        f"capturing {framework} ({len(ids)} prompt tokens, {max_tokens} steps) ..."
    ):
        reader = capture(spec)
    size = sum(f.stat().st_size for f in out_dir.iterdir())
    out.print(
        f"{framework}: {len(reader)} records over {len(reader.passes)} forward passes, "
        f"generated {reader.generated_ids}, {size / 1e6:.1f} MB in {out_dir}"
    )
