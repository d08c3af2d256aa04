"""`ekka bisect`: the first bad commit with a command as the oracle."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ekka.cli._app import console, out
from ekka.errors import UsageError


def bisect(
    repo: Path = typer.Option(Path("."), "--repo", help="The git repository's top folder."),
    good: str = typer.Option(
        ..., help="A commit, branch or tag where the output is right (older)."
    ),
    bad: str = typer.Option(..., help="A commit, branch or tag where it is wrong (newer)."),
    cmd: str | None = typer.Option(
        None,
        "--cmd",
        help="Oracle: a shell command run in a worktree of each commit (EKKA_COMMIT "
        "is set); exit 0 good, 125 skip, 1-127 bad.",
    ),
    # The tracer-based oracle's options (model, prompt, dtype, threshold) go here; exactly one
    # oracle is given, and each builds a probe (commit -> ProbeResult) and its config dict below.
    workers: int = typer.Option(1, help="Commits probed at once (k-way multisection)."),
    repeats: int = typer.Option(
        1, help="Probes per commit, decided by strict majority (flaky oracles)."
    ),
    timeout: float | None = typer.Option(
        None, help="Seconds per probe; a probe that runs longer is a skip."
    ),
    db: str | None = typer.Option(
        None,
        "--db",
        help="Cache verdicts in this database (sqlite:///path/ekka.db or postgresql://...). "
        "Off by default for --cmd, whose outcome may depend on files outside the repository.",
    ),
    json_file: Path | None = typer.Option(None, "--json", help="Write the result as JSON here."),
) -> None:
    """Find the first bad commit between --good and --bad (first-parent history) with an oracle."""
    from ekka.bisect import (
        Bisector,
        CommandOracle,
        PrintObserver,
        VerdictCache,
        commit_range,
        config_hash,
    )

    if cmd is None:
        raise UsageError(
            "give an oracle: --cmd 'shell command' (exit 0 good, 125 skip, 1-127 bad)."
        )
    commits = commit_range(repo, good, bad)
    probe = CommandOracle(repo, cmd, timeout)
    config = {"oracle": "command", "cmd": cmd, "repeats": repeats}
    observer = PrintObserver(
        lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True),
        lambda text: out.print(text, markup=False, highlight=False, soft_wrap=True),
    )
    cache = VerdictCache(db) if db else None
    try:
        bisector = Bisector(
            probe,
            workers=workers,
            repeats=repeats,
            observer=observer,
            cache=cache,
            repo_key=str(repo.resolve()),
            config_hash=config_hash(config),
        )
        result = bisector.run(commits)
    finally:
        if cache is not None:
            cache.close()
    if json_file:
        json_file.write_text(json.dumps(result.to_json(), indent=1))
        out.print(f"result: {json_file}", markup=False, highlight=False)
    raise typer.Exit(0 if result else 1)
