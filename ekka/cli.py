"""The `ekka` command. Thin: it parses arguments and calls the parts; heavy frameworks are
imported only inside the commands that need them.

Exit codes: 0 success (or "no divergence"), 1 a divergence found or a failure, 2 bad usage.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import typer
from rich.console import Console

from ekka.errors import EkkaError, UsageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Ekka finds silent errors in LLM serving frameworks: which commit, which component.",
)
zoo_app = typer.Typer(no_args_is_help=True, help="Tiny random-weight models built locally.")
app.add_typer(zoo_app, name="zoo")

console = Console(stderr=True)
out = Console()


@zoo_app.command("list")
def zoo_list() -> None:
    """Show the zoo's architectures."""
    from rich.table import Table

    from ekka.zoo import list_architectures

    table = Table(title="Ekka zoo: tiny models that vLLM (CPU) and transformers both load")
    table.add_column("architecture")
    table.add_column("family")
    table.add_column("vLLM backend")
    table.add_column("zoo settings beyond the common base")
    for spec in list_architectures():
        extra = {k: v for k, v in spec.defaults.items() if k not in _COMMON_BASE}
        table.add_row(spec.name, spec.family, spec.vllm_backend, ", ".join(f"{k}={v}" for k, v in extra.items()))
    out.print(table)


_COMMON_BASE = {
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings",
    "bos_token_id", "eos_token_id", "pad_token_id",
}  # fmt: skip


@zoo_app.command("build")
def zoo_build(
    arch: str = typer.Argument(..., help="Architecture (class name or alias; see `ekka zoo list`)."),
    out_dir: Path = typer.Option(..., "--out", help="Folder to write the model into."),
    dtype: str = typer.Option("float32", help="Weight dtype: float32 or bfloat16."),
    seed: int = typer.Option(0, help="torch.manual_seed before random init."),
    set_: list[str] = typer.Option([], "--set", help="Config override key=value (repeatable)."),
) -> None:
    """Write a tiny random-weight model and a locally trained tokenizer into --out."""
    from ekka.zoo import build_model, parse_set_values

    overrides = parse_set_values(set_)
    with console.status(f"building {arch} ..."):
        path = build_model(arch, out_dir, dtype=dtype, seed=seed, overrides=overrides)
    out.print(f"built {arch} into {path}")


@app.command()
def trace(
    framework: str = typer.Option(..., help="vllm or transformers."),
    model: Path = typer.Option(..., help="Model folder (e.g. from `ekka zoo build`)."),
    prompt: str | None = typer.Option(None, help="Prompt text (tokenized with the model's tokenizer)."),
    prompt_ids: str | None = typer.Option(None, help="Prompt token ids, comma-separated."),
    dtype: str = typer.Option("float32", help="float32 or bfloat16."),
    max_tokens: int = typer.Option(4, help="Greedy tokens to generate."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for the trace."),
    modules: list[str] = typer.Option([], help="Record only modules matching this glob (repeatable)."),
    steps: str = typer.Option("all", help="prefill, all, or step numbers like 0,1."),
) -> None:
    """Capture every module's output of one prompt through one framework."""
    from ekka.tracer.capture import CaptureSpec, capture, resolve_prompt

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
    )
    with console.status(f"capturing {framework} ({len(ids)} prompt tokens, {max_tokens} steps) ..."):
        reader = capture(spec)
    size = sum(f.stat().st_size for f in out_dir.iterdir())
    out.print(
        f"{framework}: {len(reader)} records over {len(reader.passes)} forward passes, "
        f"generated {reader.generated_ids}, {size / 1e6:.1f} MB in {out_dir}"
    )


@app.command()
def compare(
    target: Path = typer.Argument(..., help="Target trace folder (vLLM)."),
    reference: Path = typer.Argument(..., help="Reference trace folder (transformers)."),
    step: int | None = typer.Option(None, help="Only this step (0 = prefill)."),
) -> None:
    """Print the layer-by-layer relative error of two traces of the same prompt."""
    from ekka.tracer.compare import compare_traces, print_comparison
    from ekka.tracer.trace import TraceReader

    rows = compare_traces(TraceReader(target), TraceReader(reference), step=step)
    print_comparison(rows, out)


@app.command()
def demo(
    arch: str = typer.Option("llama", help="Zoo architecture to run."),
    workdir: Path = typer.Option(Path(".ekka/demo"), help="Where the model and traces go."),
    dtype: str = typer.Option("float32", help="float32 or bfloat16."),
    max_tokens: int = typer.Option(4, help="Greedy tokens to generate."),
) -> None:
    """The main job on embedded defaults: zoo model, vLLM and transformers traces, comparison."""
    from ekka.tracer.capture import CaptureSpec, capture, resolve_prompt
    from ekka.tracer.compare import compare_traces, print_comparison
    from ekka.zoo import build_model

    model_dir = workdir / "model"
    with console.status(f"building zoo model {arch} ..."):
        build_model(arch, model_dir)
    ids = resolve_prompt(model_dir, DEMO_PROMPT, None)
    readers = {}
    for framework in ("vllm", "transformers"):
        spec = CaptureSpec(
            framework=framework,
            model=str(model_dir),
            prompt_ids=tuple(ids),
            out=str(workdir / f"trace-{framework}"),
            dtype=dtype,
            max_tokens=max_tokens,
            prompt_text=DEMO_PROMPT,
        )
        with console.status(f"capturing {framework} ..."):
            readers[framework] = capture(spec)
        console.print(f"captured {framework}: {len(readers[framework])} records")
    rows = compare_traces(readers["vllm"], readers["transformers"])
    print_comparison(rows, out)


@app.command()
def diagnose(
    model: Path = typer.Option(..., help="Model folder (e.g. from `ekka zoo build`)."),
    prompt: str | None = typer.Option(None, help="Prompt text (tokenized with the model's tokenizer)."),
    prompt_ids: str | None = typer.Option(None, help="Prompt token ids, comma-separated."),
    dtype: str = typer.Option("float32", help="Serving dtype: float32 or bfloat16."),
    max_tokens: int = typer.Option(4, help="Greedy tokens the target generates."),
    threshold: float = typer.Option(2.0, help="Error-ratio threshold of the change point."),
    out_dir: Path = typer.Option(Path(".ekka/diagnosis"), "--out", help="Folder for traces and reports."),
    target_path: list[Path] = typer.Option([], help="Put this folder first on the target's PYTHONPATH (a patched copy of vLLM)."),
) -> None:
    """Localize: run target and reference, name the first component that diverges."""
    from ekka.tracer.capture import CaptureSpec, resolve_prompt, validate
    from ekka.tracer.diagnose import DiagnoseConfig, run_diagnosis, suspects_table, write_reports

    if threshold <= 0:
        raise UsageError("--threshold must be positive (default 2).")
    ids = resolve_prompt(model, prompt, prompt_ids)
    validate(CaptureSpec(framework="vllm", model=str(model), prompt_ids=tuple(ids), out=str(out_dir / "traces" / "target"),
                         dtype=dtype, max_tokens=max_tokens))
    config = DiagnoseConfig(
        model=str(model), prompt_ids=tuple(ids), workdir=str(out_dir / "traces"), dtype=dtype,
        max_tokens=max_tokens, threshold=threshold, prompt_text=prompt,
        target_pythonpath=tuple(str(p) for p in target_path),
    )
    with console.status("diagnosing ...") as status:
        diagnosis = run_diagnosis(config, progress=lambda msg: status.update(msg))
    paths = write_reports(diagnosis, out_dir)
    suspects_table(diagnosis, out)
    out.print(f"{diagnosis.verdict}\nreports: {paths['md']}, {paths['json']}, {paths['html']}")
    raise typer.Exit(1 if diagnosis.diverged else 0)


@app.command()
def bench(
    cases_dir: Path = typer.Argument(..., help="Folder of bench cases (shared/bench/cases)."),
    case: list[str] = typer.Option([], help="Run only this case id (repeatable)."),
    json_file: Path | None = typer.Option(None, "--json", help="Write the results as JSON here."),
    no_bisect: bool = typer.Option(False, "--no-bisect", help="Localize only (no bisection)."),
    workdir: Path = typer.Option(Path(".ekka/bench"), help="Where models, traces and reports go."),
) -> None:
    """Run the silent-error benchmark and score top-1 / top-5 component accuracy."""
    import json

    from rich.progress import Progress
    from rich.table import Table

    from ekka.bench import find_cases, run_case, summarize

    cases = find_cases(cases_dir, case)
    results = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("bench", total=len(cases))
        for c in cases:
            progress.update(task, description=f"{c.id}")
            result = run_case(c, workdir, say=lambda m, c=c: progress.update(task, description=f"{c.id}: {m}"))
            results.append(result)
            progress.advance(task)
            mark = "ok" if result.top1 else ("top-5" if result.top5 else "MISS")
            console.print(f"{c.id}: {mark} ({result.seconds:.0f} s) {result.error or ''}")
    summary = summarize(results)
    table = Table(title=f"ekka bench: top-1 {summary['top1']:.0%}, top-5 {summary['top5']:.0%} ({len(results)} cases)")
    for col in ("case", "top-1", "top-5", "first suspects", "seconds"):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(r.id, "yes" if r.top1 else "no", "yes" if r.top5 else "no",
                      ", ".join(r.suspects[:3]) or (r.error or "-"), f"{r.seconds:.0f}")
    out.print(table)
    if json_file:
        json_file.write_text(json.dumps(summary, indent=1))
        out.print(f"results: {json_file}")


DEMO_PROMPT = (
    "The quick brown fox jumps over the lazy dog while seven small birds sing on an old "
    "wooden fence near the quiet river."
)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: runs the app and turns Ekka's errors into messages and exit codes."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="ekka", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return 2
    except click.exceptions.Abort:
        console.print("aborted")
        return 130
    except EkkaError as exc:
        from rich.markup import escape

        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    return int(result) if isinstance(result, int) else 0


__all__ = ["app", "main", "UsageError"]

if __name__ == "__main__":
    sys.exit(main())
