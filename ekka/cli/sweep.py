"""`ekka sweep`: the nightly sweep of a branch, or the sweep over architectures."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ekka.cli._app import console, out


def sweep(
    config: Path | None = typer.Option(
        None, "--config", help="Nightly sweep: the bot's TOML file with \\[\\[sweeps]] entries."
    ),
    sweep_name: str | None = typer.Option(
        None, "--sweep", help="Nightly sweep: which \\[\\[sweeps]] entry (default: the only one)."
    ),
    architectures: str | None = typer.Option(
        None, "--architectures", help="Architecture sweep: all, or NAME,NAME,... (ekka zoo list)."
    ),
    dtype: str = typer.Option(
        "float32", "--dtype", help="Architecture sweep: dtypes, e.g. float32,bfloat16."
    ),
    out_dir: Path = typer.Option(
        Path("ekka-sweep"), "--out", help="Architecture sweep: folder of the reports."
    ),
    db: str | None = typer.Option(
        None,
        "--db",
        help="Architecture sweep: database of finished rows (resume; default in --out).",
    ),
    json_file: Path | None = typer.Option(None, "--json", help="Also write the result as JSON."),
    report_only: bool = typer.Option(
        False, "--report-only", help="Architecture sweep: report the rows kept, run nothing."
    ),
    framework: str = typer.Option(
        "vllm",
        "--framework",
        help="Architecture sweep: the target framework, vllm or sglang (`all`: the zoo's architectures its model registry holds).",
    ),
    repo: Path | None = typer.Option(
        None,
        "--repo",
        help="Architecture sweep: a clone of the framework; with --commit, sweep that commit (its Python sources over the installed release's compiled extensions) instead of the installed release.",
    ),
    commit: str | None = typer.Option(
        None, "--commit", help="Architecture sweep: the commit of --repo to sweep."
    ),
) -> None:
    """Nightly regression sweep of a branch (--config: probe each model at the head, bisect and
    report what broke), or a sweep over architectures against transformers (--architectures)."""
    from ekka.modes import check_sweep_modes

    check_sweep_modes(
        config=config, architectures=architectures, repo=repo, commit=commit, framework=framework
    )
    if config is not None:
        from ekka.bot.config import load_config
        from ekka.sweep.nightly import run_nightly

        settings = load_config(config, secrets_required=False)
        outcome = run_nightly(
            settings,
            sweep_name,
            say=lambda m: console.print(m, markup=False, highlight=False),
        )
        for result in outcome.results:
            out.print(
                f"{result.model} {result.dtype} at {result.commit[:10]}: {result.verdict}"
                f" ({result.reason})",
                markup=False,
                highlight=False,
            )
        for action in outcome.actions:
            out.print(action, markup=False, highlight=False)
        out.print(f"reports: {outcome.folder}", markup=False, highlight=False)
        if json_file is not None:
            json_file.write_text(json.dumps(outcome.to_json(), indent=1) + "\n")
        raise typer.Exit(1 if outcome.regressed else 0)
    from ekka.sweep.architectures import run_cli

    assert architectures is not None
    code = run_cli(
        architectures, dtype, out_dir, db, json_file, out=out, console=console,
        report_only=report_only, repo=str(repo) if repo else None, commit=commit,
        framework=framework,
    )  # fmt: skip
    raise typer.Exit(code)
