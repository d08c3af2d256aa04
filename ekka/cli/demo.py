"""`ekka demo`: the main job on embedded defaults (a planted regression, found)."""

from __future__ import annotations

from pathlib import Path

import typer

from ekka.cli._app import console, out
from ekka.cli._full import run_full
from ekka.cli.zoo import build_with_progress
from ekka.errors import UsageError
from ekka.frameworks import framework

DEMO_PROMPT = (
    "The quick brown fox jumps over the lazy dog while seven small birds sing on an old "
    "wooden fence near the quiet river."
)
# `ekka demo --framework F --model M`: the regression planted in the history (ekka/data), its
# commit title, the prompt. gemma3-270m's is the real-weight bench case
# gemma3-local-rope-base-ignored; SGLang's llama the same regression as vLLM's, in SGLang's code.
DEMOS = {
    ("vllm", "llama"): (
        "demo-regression.patch",
        "[Model] Llama: build the decoder norms with RMSNorm defaults",
        DEMO_PROMPT,
    ),
    ("vllm", "gemma3-270m"): (
        "demo-regression-gemma3.patch",
        "[Model] Gemma 3: one RoPE table for every layer",
        "Gemma is a family of lightweight, open models. A small model is useful when it runs "
        "quickly on a laptop and still answers questions about history, science and cooking.",
    ),
    ("sglang", "llama"): (
        "demo-regression-sglang.patch",
        "[Model] Llama: build the decoder norms with RMSNorm defaults",
        DEMO_PROMPT,
    ),
}


def demo(
    workdir: Path = typer.Option(
        Path(".ekka/demo"), help="Where the repository, model, traces and reports go."
    ),
    db: str | None = typer.Option(
        None, help="Verdict cache URL (default: a SQLite file in --workdir)."
    ),
    model: str = typer.Option(
        "llama",
        help="llama (a tiny random-weight zoo model: fast) or gemma3-270m (real weights, from "
        "the `real` extra; prepared once, minutes).",
    ),
    framework_name: str = typer.Option(
        "vllm",
        "--framework",
        help="The framework whose history is searched: vllm or sglang (llama only; its own "
        "environment, made by `make venv`).",
    ),
) -> None:
    """The main job on embedded defaults: a local history of the installed framework release's
    Python sources with a regression among harmless commits, a model, the local executor;
    prints the root-cause report (which commit, which component)."""
    from importlib.resources import files

    from ekka.bench import base_repository
    from ekka.bisect.framework_repo import make_bug_history
    from ekka.compose import full_config
    from ekka.containers.spec import ExecutorSpec
    from ekka.request import Request, resolve_request
    from ekka.zoo import build_model

    fw = framework(framework_name)
    if (fw.name, model) not in DEMOS:
        models = [m for f, m in DEMOS if f == fw.name]
        raise UsageError(
            f"--model for {fw.title} must be one of {', '.join(models)}, got {model!r}."
        )
    patch_name, title, prompt = DEMOS[fw.name, model]
    workdir.mkdir(parents=True, exist_ok=True)
    if model == "llama":
        with console.status("building zoo model llama ..."):
            model_dir = build_model("llama", workdir / "model", overrides={"rms_norm_eps": 1e-5})
    else:
        model_dir = build_with_progress(model, workdir / f"model-{model}", "float32")
    patch = Path(str(files("ekka") / "data" / patch_name))
    with console.status(f"making a {fw.title} history: harmless commits around a regression ..."):
        history = make_bug_history(
            base_repository(workdir, fw.name),
            workdir / (f"{fw.name}-repo" if model == "llama" else f"{fw.name}-repo-{model}"),
            patch,
            title,
            framework_name=fw.name,
        )
    console.print(f"history: {len(history.commits)} commits after the release in {history.repo}")
    resolved = resolve_request(
        Request(model=str(model_dir), prompt_text=prompt, dtype="float32", framework=fw.name)
    )
    config = full_config(
        resolved,
        ExecutorSpec(),
        repo=history.repo,
        good=history.good,
        bad=history.bad,
        workdir=workdir / "diagnosis" / "traces",
        db_url=db or f"sqlite:///{(workdir / 'verdicts.db').resolve()}",
    )
    found = run_full(config, workdir / "diagnosis")
    ok = found == history.bug
    out.print(
        f"demo: the planted regression is {history.bug[:10]} (PR #{history.bug_pr}); "
        + ("Ekka found it." if ok else "Ekka did NOT find it.")
    )
    raise typer.Exit(0 if ok else 1)
