"""`ekka zoo list` and `ekka zoo build`: the tiny models built locally."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ekka.cli._app import console, out
from ekka.errors import UsageError


def zoo_list(
    as_json: bool = typer.Option(
        False, "--json", help="Print a JSON list of objects (name, family, ...) for scripts."
    ),
) -> None:
    """Show the zoo's architectures: the hand-written ones, then every other decoder-only
    architecture that an installed framework's registry (vLLM's, SGLang's) and transformers both
    have (derived), with the frameworks whose registry holds each."""
    from rich.table import Table

    from ekka.frameworks import framework
    from ekka.zoo import list_architectures
    from ekka.zoo.derive import is_derived

    specs = list_architectures(derived=True)
    if as_json:
        rows = [
            {
                "name": spec.name,
                "family": spec.family,
                "config_class": spec.config_class,
                "vllm_backend": spec.vllm_backend,
                "derived": is_derived(spec),
                "frameworks": list(spec.frameworks),
                "settings": dict(spec.defaults),
            }
            for spec in specs
        ]
        out.print_json(json.dumps(rows))
        return
    table = Table(
        title="Ekka zoo: tiny models of the frameworks' architectures that transformers has"
    )
    table.add_column("architecture", no_wrap=True)
    table.add_column("family")
    table.add_column("registries")
    table.add_column("vLLM backend")
    table.add_column("zoo settings beyond the common base")
    for spec in specs:
        extra = {k: v for k, v in spec.defaults.items() if k not in _COMMON_BASE}
        settings = ", ".join(f"{k}={v}" for k, v in extra.items())
        if is_derived(spec):
            settings = "derived: class defaults scaled down" + (f"; {settings}" if settings else "")
        registries = ", ".join(framework(name).title for name in spec.frameworks)
        table.add_row(spec.name, spec.family, registries, spec.vllm_backend, settings)
    out.print(table)


_COMMON_BASE = {
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings",
    "bos_token_id", "eos_token_id", "pad_token_id",
}  # fmt: skip


def zoo_build(
    arch: str = typer.Argument(
        ..., help="Architecture (class name or alias; see `ekka zoo list`)."
    ),
    out_dir: Path = typer.Option(..., "--out", help="Folder to write the model into."),
    dtype: str = typer.Option("float32", help="Weight dtype: float32 or bfloat16."),
    seed: int = typer.Option(0, help="torch.manual_seed before random init."),
    set_: list[str] = typer.Option([], "--set", help="Config override key=value (repeatable)."),
) -> None:
    """Write a tiny random-weight model and a locally trained tokenizer into --out, or a
    pretrained zoo model (`gemma3-270m`: real weights, from the `real` extra) prepared once and
    cached."""
    from ekka.zoo import build_model, parse_set_values
    from ekka.zoo.pretrained import is_pretrained

    if is_pretrained(arch):
        if set_ or seed:
            raise UsageError(
                f"{arch} is a pretrained model: --set and --seed apply to random-weight models only."
            )
        path = build_with_progress(arch, out_dir, dtype)
        out.print(f"built {arch} into {path}")
        return
    overrides = parse_set_values(set_)
    with console.status(f"building {arch} ..."):
        path = build_model(arch, out_dir, dtype=dtype, seed=seed, overrides=overrides)
    out.print(f"built {arch} into {path}")


def build_with_progress(name: str, out_dir: Path, dtype: str) -> Path:
    """A pretrained zoo model into `out_dir`, with a progress bar while it is first prepared."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ekka.zoo.pretrained import build_pretrained

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"{name}: cached?", total=None)

        def step(number: int, steps: int, what: str) -> None:
            bar.update(task, total=steps, completed=number - 1, description=f"{name}: {what}")

        path = build_pretrained(name, out_dir, dtype=dtype, progress=step)
    return path
