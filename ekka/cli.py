"""The `ekka` command. Thin: it parses arguments and calls the parts; heavy frameworks are
imported only inside the commands that need them.

Exit codes: 0 success (or "no divergence"), 1 a divergence found or a failure, 2 bad usage.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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
containers_app = typer.Typer(no_args_is_help=True, help="The docker executor's images.")
app.add_typer(containers_app, name="containers")

console = Console(stderr=True)
out = Console()


@zoo_app.command("list")
def zoo_list(
    as_json: bool = typer.Option(
        False, "--json", help="Print a JSON list of objects (name, family, ...) for scripts."
    ),
) -> None:
    """Show the zoo's architectures: the hand-written ones, then every other decoder-only
    architecture that the installed vLLM's registry and transformers both have (derived)."""
    from rich.table import Table

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
                "settings": dict(spec.defaults),
            }
            for spec in specs
        ]
        out.print_json(json.dumps(rows))
        return
    table = Table(title="Ekka zoo: tiny models that vLLM (CPU) and transformers both load")
    table.add_column("architecture")
    table.add_column("family")
    table.add_column("vLLM backend")
    table.add_column("zoo settings beyond the common base")
    for spec in specs:
        extra = {k: v for k, v in spec.defaults.items() if k not in _COMMON_BASE}
        settings = ", ".join(f"{k}={v}" for k, v in extra.items())
        if is_derived(spec):
            settings = "derived: class defaults scaled down" + (f"; {settings}" if settings else "")
        table.add_row(spec.name, spec.family, spec.vllm_backend, settings)
    out.print(table)


_COMMON_BASE = {
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings",
    "bos_token_id", "eos_token_id", "pad_token_id",
}  # fmt: skip


@zoo_app.command("build")
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
        path = _build_pretrained(arch, out_dir, dtype)
        out.print(f"built {arch} into {path}")
        return
    overrides = parse_set_values(set_)
    with console.status(f"building {arch} ..."):
        path = build_model(arch, out_dir, dtype=dtype, seed=seed, overrides=overrides)
    out.print(f"built {arch} into {path}")


def _build_pretrained(name: str, out_dir: Path, dtype: str) -> Path:
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


@app.command()
def trace(
    framework: str = typer.Option(..., help="vllm or transformers."),
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
        help="vLLM: a keyword argument for vllm.LLM(...) as KEY=VALUE (repeatable), as for `ekka diagnose`.",
    ),
    logits_only: bool = typer.Option(
        False,
        "--logits-only",
        help="vLLM: record only each step's logits and the tokens, as a bisection probe does.",
    ),
) -> None:
    """Capture every module's output of one prompt through one framework."""
    from ekka.tracer.capture import capture, resolve_prompt
    from ekka.tracer.protocol import CaptureSpec

    engine_args = parse_engine_args(engine)
    if framework != "vllm" and (engine_args or logits_only):
        raise UsageError("--engine and --logits-only are for --framework vllm.")
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
) -> None:
    """The main job on embedded defaults: a local history of the installed vLLM release's Python
    sources with a regression among harmless commits, a model, the local executor; prints the
    root-cause report (which commit, which component)."""
    from importlib.resources import files

    from ekka.bench import base_repository
    from ekka.bisect.framework_repo import make_bug_history
    from ekka.tracer.capture import resolve_prompt
    from ekka.zoo import build_model

    if model not in DEMOS:
        raise UsageError(f"--model must be one of {', '.join(DEMOS)}, got {model!r}.")
    patch_name, title, prompt = DEMOS[model]
    workdir.mkdir(parents=True, exist_ok=True)
    if model == "llama":
        with console.status("building zoo model llama ..."):
            model_dir = build_model("llama", workdir / "model", overrides={"rms_norm_eps": 1e-5})
    else:
        model_dir = _build_pretrained(model, workdir / f"model-{model}", "float32")
    patch = Path(str(files("ekka") / "data" / patch_name))
    with console.status("making a vLLM history: harmless commits around a regression ..."):
        history = make_bug_history(
            base_repository(workdir),
            workdir / ("vllm-repo" if model == "llama" else f"vllm-repo-{model}"),
            patch,
            title,
        )
    console.print(f"history: {len(history.commits)} commits after the release in {history.repo}")
    ids = resolve_prompt(model_dir, prompt, None)
    found = _full_diagnosis(
        repo=history.repo,
        good=history.good,
        bad=history.bad,
        model=model_dir,
        ids=ids,
        prompt=prompt,
        dtype="float32",
        max_tokens=4,
        threshold=None,
        out_dir=workdir / "diagnosis",
        workers=1,
        repeats=1,
        db=db or f"sqlite:///{(workdir / 'verdicts.db').resolve()}",
    )
    ok = found == history.bug
    out.print(
        f"demo: the planted regression is {history.bug[:10]} (PR #{history.bug_pr}); "
        + ("Ekka found it." if ok else "Ekka did NOT find it.")
    )
    raise typer.Exit(0 if ok else 1)


def _full_diagnosis(
    *,
    repo: Path,
    good: str,
    bad: str,
    model: Path,
    ids: list[int],
    prompt: str | None,
    dtype: str,
    max_tokens: int,
    threshold: float | None,
    out_dir: Path,
    workers: int,
    repeats: int,
    db: str | None,
    engine: Mapping[str, Any] | None = None,
    github: tuple[str, str, str | None] | None = None,
    executor: str = "local",
    timeout: float = 600,
    docker: tuple[Any, Any] | None = None,
    scenario: Any = None,
    ray: Any = None,
) -> str | None:
    """Run the full diagnosis with progress, print the root cause, write the reports; returns
    the first bad commit's sha (None when none was found)."""
    from dataclasses import replace

    from ekka.bisect.search import PrintObserver
    from ekka.full import FullConfig, run_full_diagnosis
    from ekka.repo import installed_framework_dir
    from ekka.report import suspects_table, write_reports

    config = FullConfig(
        repo=str(repo),
        good=good,
        bad=bad,
        model=str(model),
        prompt_ids=tuple(ids),
        workdir=str(out_dir / "traces"),
        package_dir=str(installed_framework_dir("vllm")),
        dtype=dtype,
        max_tokens=max_tokens,
        engine=dict(engine or {}),
        threshold=threshold,
        workers=workers,
        repeats=repeats,
        db_url=db,
        prompt_text=prompt,
        executor=executor,
        timeout=timeout,
        images=docker[0] if docker else None,
        limits=docker[1] if docker else None,
        ray=ray,
    )
    if scenario is not None:
        config = replace(config, scenario=scenario)
    if github:
        config = replace(
            config, github_repo=github[0], github_api=github[1], github_token=github[2]
        )
    with console.status("diagnosing ...") as status:
        diagnosis, result = run_full_diagnosis(
            config,
            progress=lambda msg: status.update(msg),
            observer=PrintObserver(lambda line: console.print(line, highlight=False)),
        )
    paths = write_reports(diagnosis, out_dir)
    suspects_table(diagnosis, out)
    if diagnosis.root_cause:
        out.print(f"[bold]root cause:[/] {escape_markup(diagnosis.root_cause.statement)}")
    else:
        out.print(
            f"bisection: {result.status.value}; candidates: {', '.join(c.short for c in result.candidates)}"
        )
    out.print(f"reports: {paths['md']}, {paths['json']}, {paths['html']}")
    return result.first_bad.sha if result.first_bad else None


def docker_options(
    *,
    base_image: str | None,
    image_tag: str,
    pull_image: str | None,
    dockerfile: str | None,
    build_arg: Sequence[str],
    gpus: str | None,
    shm_size: str,
    memory: str | None,
    pids_limit: int,
    image_budget: float | None,
) -> tuple[Any, Any]:
    """The docker executor's (ImageSettings, ContainerLimits) from the command's options."""
    from ekka.containers.docker import ContainerLimits
    from ekka.containers.images import ImageSettings

    args = {}
    for item in build_arg:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--build-arg {item!r} is not KEY=VALUE.")
        args[key] = value
    if "{sha}" not in image_tag:
        raise UsageError(f"--image-tag {image_tag!r} must hold {{sha}} (one image per commit).")
    images = ImageSettings(
        base_image=base_image,
        tag_template=image_tag,
        pull_template=pull_image,
        dockerfile=dockerfile,
        build_args=args,
        budget_gb=image_budget,
    )
    limits = ContainerLimits(gpus=gpus, shm_size=shm_size, memory=memory, pids=pids_limit)
    return images, limits


def ray_settings(
    *,
    address: str,
    cpus: float,
    gpus: float,
    memory: float | None,
    accelerator: str | None,
    resource: Sequence[str],
    node_executor: str,
    retries: int,
    trace_dir: str | None,
    task_timeout: float | None,
    queue_timeout: float,
) -> Any:
    """The ray executor's RaySettings from the command's options (each checked: UsageError)."""
    from ekka.containers.ray import RaySettings, TaskResources, parse_custom_resources

    resources = TaskResources(
        cpus=cpus,
        gpus=gpus,
        memory_gb=memory,
        accelerator=accelerator,
        custom=parse_custom_resources(resource),
    )
    return RaySettings(
        address=address,
        resources=resources,
        timeout=task_timeout,
        queue_timeout=queue_timeout,
        retries=retries,
        node_executor=node_executor,
        trace_dir=trace_dir,
    )


def parse_engine_args(items: Sequence[str], option: str = "--engine") -> dict[str, Any]:
    """`KEY=VALUE` items (as `--engine` gives them) as keyword arguments for `vllm.LLM(...)`.

    The value is read as JSON where it parses, else kept as text: `max_model_len=2048` -> 2048,
    `enable_chunked_prefill=true` -> True, `kv_cache_dtype=auto` -> "auto", `x=null` -> None,
    `x=[1,2]` -> [1, 2], `x="8"` -> "8". An item without '=', with an empty key or one that is
    not a Python name, or a key given twice is a UsageError saying how to write it.
    """
    example = f"{option} max_model_len=2048 {option} enable_chunked_prefill=true"
    engine: dict[str, Any] = {}
    given: dict[str, str] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise UsageError(f"{option} {item!r} has no '=': write KEY=VALUE, e.g. {example}.")
        if not key:
            raise UsageError(
                f"{option} {item!r} has no key before '=': write KEY=VALUE, e.g. {example}."
            )
        if not key.isidentifier():
            hint = key.replace("-", "_")
            raise UsageError(
                f"{option} {item!r}: the key {key!r} is not a keyword argument of vllm.LLM; "
                + (
                    f"write it as a Python name ({hint}=...), e.g. {example}."
                    if hint.isidentifier()
                    else f"write KEY=VALUE with KEY a Python name, e.g. {example}."
                )
            )
        if key in given:
            raise UsageError(
                f"{option} {key} is given twice ({key}={given[key]} and {item}); "
                "give each key once."
            )
        given[key] = raw
        try:
            engine[key] = json.loads(raw)
        except ValueError:
            engine[key] = raw
    return engine


def escape_markup(text: str) -> str:
    from rich.markup import escape

    return escape(text)


@app.command()
def diagnose(
    model: Path = typer.Option(..., help="Model folder (e.g. from `ekka zoo build`)."),
    prompt: str | None = typer.Option(
        None, help="Prompt text (tokenized with the model's tokenizer)."
    ),
    prompt_ids: str | None = typer.Option(None, help="Prompt token ids, comma-separated."),
    dtype: str = typer.Option("float32", help="Serving dtype: float32 or bfloat16."),
    max_tokens: int = typer.Option(4, help="Greedy tokens the target generates."),
    threshold: float | None = typer.Option(
        None,
        help="Error-ratio threshold of the change point (default: the dtype's calibrated one, "
        "float32 4, bfloat16 6).",
    ),
    out_dir: Path = typer.Option(
        Path(".ekka/diagnosis"), "--out", help="Folder for traces and reports."
    ),
    target_path: list[Path] = typer.Option(
        [], help="Put this folder first on the target's PYTHONPATH (a patched copy of vLLM)."
    ),
    engine: list[str] = typer.Option(
        [],
        help="A keyword argument for vllm.LLM(...) as KEY=VALUE (repeatable), the value read as JSON where it parses, else as text: --engine enable_chunked_prefill=true --engine max_num_batched_tokens=64.",
    ),
    repo: Path | None = typer.Option(
        None, help="Full mode: the framework's git repository (vllm/ at its top)."
    ),
    good: str | None = typer.Option(None, help="Full mode: a commit known good."),
    bad: str | None = typer.Option(None, help="Full mode: a commit known bad."),
    workers: int = typer.Option(1, help="Full mode: probes per round (multisection)."),
    repeats: int = typer.Option(
        1, help="Full mode: probes per commit, decided by majority (flaky oracles)."
    ),
    db: str | None = typer.Option(
        None, help="Full mode: verdict cache URL (default ~/.cache/ekka/ekka.db)."
    ),
    github_repo: str | None = typer.Option(
        None,
        help="Full mode: OWNER/NAME on GitHub, to map commits to PRs through its API (token: $GITHUB_TOKEN).",
    ),
    github_api: str = typer.Option(
        "https://api.github.com", help="Full mode: GitHub API base URL."
    ),
    executor: str = typer.Option(
        "local",
        help="Full mode: where each commit runs: local (a worktree on the installed release), docker (the commit's image) or ray (a task on a Ray cluster's node, --ray-address).",
    ),
    timeout: float = typer.Option(600, help="Full mode: seconds per probe, then it skips."),
    base_image: str | None = typer.Option(
        None,
        help="Docker: the overlay's base image (the release's compiled extensions and Ekka); default: built offline once (`ekka containers base`).",
    ),
    image_tag: str = typer.Option(
        "ekka/{framework}:{sha}", help="Docker: the per-commit image's tag template."
    ),
    pull_image: str | None = typer.Option(
        None,
        help="Docker: a published per-commit image to pull first, e.g. REGISTRY/vllm-ci-postmerge-repo:{sha}.",
    ),
    dockerfile: str | None = typer.Option(
        None,
        help="Docker: the full build's Dockerfile, a path in the repository (docker/Dockerfile.cpu) or on the host.",
    ),
    build_arg: list[str] = typer.Option(
        [], help="Docker: KEY=VALUE for the full build (repeatable)."
    ),
    gpus: str | None = typer.Option(
        None, help="Docker: GPUs per probe: all, a count (2) or device ids (0,1)."
    ),
    shm_size: str = typer.Option("2g", help="Docker: the probe's shared memory."),
    memory: str | None = typer.Option(None, help="Docker: the probe's memory limit (16g)."),
    pids_limit: int = typer.Option(4096, help="Docker: the probe's process limit."),
    image_budget: float | None = typer.Option(
        None, help="Docker: GB of per-commit images kept; the least recently used are pruned."
    ),
    scenario: Path | None = typer.Option(
        None,
        help="A scenario file: the traced request's \\[run] with \\[\\[run.before]], \\[\\[run.alongside]] and \\[run.engine] (bench/FORMAT.md, 'Scenarios'); a diverging scenario is reduced to the requests it needs.",
    ),
    compare: str = typer.Option(
        "traced",
        help="With --scenario: traced (the traced request) or all (every request of the scenario in turn).",
    ),
    ray_address: str | None = typer.Option(
        None,
        help="Ray: the cluster's head, HOST:PORT (its GCS), ray://HOST:10001 (Ray Client), auto (the one `ray start` runs here) or local (start one on this machine).",
    ),
    ray_cpus: float = typer.Option(1.0, help="Ray: CPUs each probe's task asks for."),
    ray_gpus: float = typer.Option(0.0, help="Ray: GPUs each probe's task asks for."),
    ray_memory: float | None = typer.Option(
        None, help="Ray: GB of memory each probe's task reserves."
    ),
    ray_accelerator: str | None = typer.Option(
        None, help="Ray: the GPU type a probe's node must have (e.g. H100, A10G)."
    ),
    ray_resource: list[str] = typer.Option(
        [], help="Ray: a custom resource of the cluster per task, NAME=AMOUNT (repeatable)."
    ),
    ray_node_executor: str = typer.Option(
        "local",
        help="Ray: what runs the probe on its node: local (a worktree on the node's release) or docker (the node's engine; the Docker options apply there).",
    ),
    ray_retries: int = typer.Option(
        0,
        help="Ray: tries again a task that failed (raised, lost its node, ran past its limit) before it skips.",
    ),
    ray_trace_dir: str | None = typer.Option(
        None,
        help="Ray: a folder every node mounts for the probes' traces (default: each node's temp folder).",
    ),
    ray_task_timeout: float | None = typer.Option(
        None,
        help="Ray: seconds a task may run on its node (default: --timeout plus 600 for the worktree or image).",
    ),
    ray_queue_timeout: float = typer.Option(
        1800.0, help="Ray: seconds a task may wait for a node with its resources, then it skips."
    ),
) -> None:
    """Localize (and with --repo/--good/--bad: bisect and attribute) a silent error."""
    engine_args = parse_engine_args(engine)
    if compare not in ("traced", "all"):
        raise UsageError(f"--compare {compare!r}: use traced or all.")
    if compare == "all" and scenario is None:
        raise UsageError("--compare all is for a --scenario (every request of it in turn).")
    if threshold is not None and threshold <= 0:
        raise UsageError("--threshold must be positive (default: the dtype's calibrated one).")

    from ekka.report import suspects_table, write_reports
    from ekka.tracer.capture import resolve_prompt, validate
    from ekka.tracer.diagnose import DiagnoseConfig, run_diagnosis
    from ekka.tracer.protocol import CaptureSpec

    full = [x is not None for x in (repo, good, bad)]
    if any(full) and not all(full):
        raise UsageError(
            "full mode needs all of --repo, --good and --bad (or none of them for localize mode)."
        )
    if executor not in ("local", "docker", "ray"):
        raise UsageError(f"--executor {executor!r}: use local, docker or ray.")
    if executor != "local" and not all(full):
        raise UsageError("--executor is for full mode (--repo, --good and --bad).")
    if (executor == "ray") != (ray_address is not None):
        raise UsageError(
            "--executor ray needs --ray-address HOST:PORT (the cluster's head), and --ray-address "
            "is only for --executor ray."
        )
    ray = (
        ray_settings(
            address=ray_address,
            cpus=ray_cpus,
            gpus=ray_gpus,
            memory=ray_memory,
            accelerator=ray_accelerator,
            resource=ray_resource,
            node_executor=ray_node_executor,
            retries=ray_retries,
            trace_dir=ray_trace_dir,
            task_timeout=ray_task_timeout,
            queue_timeout=ray_queue_timeout,
        )
        if ray_address is not None
        else None
    )
    if all(full) and target_path:
        raise UsageError(
            "--target-path is for localize mode; full mode runs the target from the repository's commits."
        )
    from ekka.scenario import Scenario

    scene = Scenario()
    if scenario is not None:
        ids, prompt, max_tokens, scene, engine_args = _scenario_run(
            model, scenario, prompt, prompt_ids, max_tokens, engine_args
        )
    else:
        ids = resolve_prompt(model, prompt, prompt_ids)
    validate(
        CaptureSpec(
            framework="vllm",
            model=str(model),
            prompt_ids=tuple(ids),
            out=str(out_dir / "traces" / "target"),
            dtype=dtype,
            max_tokens=max_tokens,
            engine=engine_args,
            before=scene.before,
            alongside=scene.alongside,
        )
    )
    if compare == "all" and all(full):
        raise UsageError("--compare all is for localize mode (no --repo/--good/--bad).")
    if all(full):
        assert repo is not None and good is not None and bad is not None
        import os

        found = _full_diagnosis(
            repo=repo,
            good=good,
            bad=bad,
            model=model,
            ids=ids,
            prompt=prompt,
            dtype=dtype,
            max_tokens=max_tokens,
            threshold=threshold,
            engine=engine_args,
            out_dir=out_dir,
            workers=workers,
            repeats=repeats,
            db=db,
            github=(github_repo, github_api, os.environ.get("GITHUB_TOKEN"))
            if github_repo
            else None,
            executor=executor,
            timeout=timeout,
            docker=docker_options(
                base_image=base_image,
                image_tag=image_tag,
                pull_image=pull_image,
                dockerfile=dockerfile,
                build_arg=build_arg,
                gpus=gpus,
                shm_size=shm_size,
                memory=memory,
                pids_limit=pids_limit,
                image_budget=image_budget,
            )
            if executor == "docker" or (executor == "ray" and ray_node_executor == "docker")
            else None,
            scenario=scene,
            ray=ray,
        )
        raise typer.Exit(1 if found else 0)
    config = DiagnoseConfig(
        model=str(model),
        prompt_ids=tuple(ids),
        workdir=str(out_dir / "traces"),
        dtype=dtype,
        max_tokens=max_tokens,
        threshold=threshold,
        prompt_text=prompt,
        target_pythonpath=tuple(str(p) for p in target_path),
        engine=engine_args,
        scenario=scene,
    )
    if compare == "all":
        raise typer.Exit(_compare_all(config, out_dir))
    with console.status("diagnosing ...") as status:
        diagnosis = run_diagnosis(config, progress=lambda msg: status.update(msg))
    paths = write_reports(diagnosis, out_dir)
    suspects_table(diagnosis, out)
    out.print(f"{diagnosis.verdict}\nreports: {paths['md']}, {paths['json']}, {paths['html']}")
    if diagnosis.reduction is not None:
        out.print(
            f"reduced scenario: {escape_markup(diagnosis.reduction.statement)}\n"
            f"reproduce: {escape_markup(diagnosis.reduction.command)}"
        )
    raise typer.Exit(1 if diagnosis.diverged else 0)


def _scenario_run(
    model: Path,
    file: Path,
    prompt: str | None,
    prompt_ids: str | None,
    max_tokens: int,
    engine: dict[str, Any],
) -> tuple[list[int], str | None, int, Any, dict[str, Any]]:
    """The traced request (from the file's [run], or from --prompt/--prompt-ids), its
    scenario, and the engine arguments (--engine over the file's [run.engine])."""
    from ekka.scenario import load_run
    from ekka.tracer.capture import resolve_prompt, tokenize

    run = load_run(file)
    in_file = run.prompt.text is not None or run.prompt.ids is not None
    if in_file and (prompt is not None or prompt_ids is not None):
        raise UsageError(
            f"{file} gives the traced request in [run]; drop --prompt/--prompt-ids (or the "
            "file's prompt)."
        )
    traced, scene = run.resolve(lambda text: tokenize(model, text))
    if in_file:
        ids, prompt, max_tokens = list(traced.prompt_ids), run.prompt.text, traced.max_tokens
    else:
        ids = resolve_prompt(model, prompt, prompt_ids)
    return ids, prompt, max_tokens, scene, {**run.engine, **engine}


def _compare_all(config: Any, out_dir: Path) -> int:
    """Every request of the scenario traced in turn; a report per request under `out_dir`.
    1 when any diverges."""
    from dataclasses import replace

    from ekka.report import write_reports
    from ekka.tracer.diagnose import run_diagnosis
    from ekka.tracer.protocol import ScenarioRequest

    diverged = False
    traced = ScenarioRequest(config.prompt_ids, config.max_tokens)
    for label, request, scene in config.scenario.each_traced(traced):
        folder = out_dir / label.replace(" ", "-")
        each = replace(
            config,
            prompt_ids=request.prompt_ids,
            max_tokens=request.max_tokens,
            prompt_text=config.prompt_text if label == "traced" else None,
            workdir=str(folder / "traces"),
            scenario=scene,
        )
        with console.status(f"diagnosing {label} ...") as status:
            diagnosis = run_diagnosis(each, progress=lambda msg: status.update(msg))
        paths = write_reports(diagnosis, folder)
        diverged = diverged or diagnosis.diverged
        out.print(f"{label}: {escape_markup(diagnosis.verdict)} ({paths['md']})")
        if diagnosis.reduction is not None:
            out.print(f"  reduced: {escape_markup(diagnosis.reduction.statement)}")
    return 1 if diverged else 0


@containers_app.command("base")
def containers_base(
    mirror: str = typer.Option(
        "http://deb.debian.org/debian", help="Debian mirror for debootstrap."
    ),
) -> None:
    """Build (or reuse) the docker executor's base image offline and print its tag."""
    import time

    from ekka.containers.base import ensure_base_image
    from ekka.containers.engine import connect

    start = time.perf_counter()
    image = ensure_base_image(
        connect(),
        progress=lambda line: console.print(line, markup=False, highlight=False),
        mirror=mirror,
    )
    debian, runtime, base = image.seconds
    console.print(
        f"layers: {image.debian} {debian:.0f} s, {image.runtime} {runtime:.0f} s, "
        f"{image.base} {base:.0f} s; total {time.perf_counter() - start:.0f} s",
        highlight=False,
    )
    out.print(image.base, highlight=False)


@app.command()
def bench(
    cases_dir: Path = typer.Argument(..., help="Folder of bench cases (bench/cases)."),
    case: list[str] = typer.Option([], help="Run only this case id (repeatable)."),
    json_file: Path | None = typer.Option(None, "--json", help="Write the results as JSON here."),
    no_bisect: bool = typer.Option(False, "--no-bisect", help="Localize only (no bisection)."),
    workdir: Path = typer.Option(Path(".ekka/bench"), help="Where models, traces and reports go."),
) -> None:
    """Run the silent-error benchmark and score top-1 / top-5 component accuracy."""
    from rich.progress import Progress
    from rich.table import Table

    from ekka.bench import find_cases, run_case, summarize

    cases = find_cases(cases_dir, case)
    results = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("bench", total=len(cases))
        for c in cases:
            progress.update(task, description=f"{c.id}")

            def say(message: str, case_id: str = c.id) -> None:
                progress.update(task, description=f"{case_id}: {message}")

            result = run_case(c, workdir, bisect=not no_bisect, say=say)
            results.append(result)
            progress.advance(task)
            mark = "ok" if result.top1 else ("top-5" if result.top5 else "MISS")
            if not no_bisect:
                mark += f", bisect {'ok' if result.extra.get('bisect') else 'MISS'} in {result.extra.get('probes')} probes"
            console.print(f"{c.id}: {mark} ({result.seconds:.0f} s) {result.error or ''}")
            if result.extra.get("reduction"):
                reduced = result.extra["reduction"]
                console.print(f"  reduced scenario: {escape_markup(reduced['statement'])}")
    summary = summarize(results)
    title = f"ekka bench: top-1 {summary['top1']:.0%}, top-5 {summary['top5']:.0%}"
    if "bisect" in summary:
        title += f", bisection {summary['bisect']:.0%}"
    table = Table(title=f"{title} ({len(results)} cases)")
    columns = ["case", "top-1", "top-5", "first suspects", "seconds"] + (
        [] if no_bisect else ["bisect", "probes"]
    )
    for col in columns:
        table.add_column(col, overflow="fold")
    for r in results:
        row = [
            r.id,
            "yes" if r.top1 else "no",
            "yes" if r.top5 else "no",
            ", ".join(r.suspects[:3]) or (r.error or "-"),
            f"{r.seconds:.0f}",
        ]
        if not no_bisect:
            row += ["yes" if r.extra.get("bisect") else "no", str(r.extra.get("probes", "-"))]
        table.add_row(*row)
    out.print(table)
    if json_file:
        json_file.write_text(json.dumps(summary, indent=1))
        out.print(f"results: {json_file}")


@app.command()
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


@app.command()
def serve(
    config: Path | None = typer.Option(
        None, "--config", help="The bot's TOML file (default: $EKKA_CONFIG)."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    no_worker: bool = typer.Option(
        False, "--no-worker", help="Run no worker in this process (run `ekka worker` apart)."
    ),
) -> None:
    """The GitHub bot: the webhook server (POST /webhook, GET /healthz, /jobs/ID, /) with a
    worker in the same process; secrets from the environment (docs/bot.md)."""
    import logging

    from ekka.bot.app import serve as run_server
    from ekka.bot.config import load_config

    settings = load_config(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_server(settings, host, port, with_worker=not no_worker)


@app.command()
def worker(
    config: Path | None = typer.Option(
        None, "--config", help="The bot's TOML file (default: $EKKA_CONFIG)."
    ),
) -> None:
    """The GitHub bot's worker apart from the server: answers queued commands and runs jobs."""
    import logging

    from ekka.bot.config import load_config
    from ekka.bot.worker import run_worker

    settings = load_config(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_worker(settings)


@app.command()
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
    repo: Path | None = typer.Option(
        None,
        "--repo",
        help="Architecture sweep: a vLLM clone; with --commit, sweep that commit (its Python sources over the installed release's compiled extensions) instead of the installed release.",
    ),
    commit: str | None = typer.Option(
        None, "--commit", help="Architecture sweep: the commit of --repo to sweep."
    ),
) -> None:
    """Nightly regression sweep of a branch (--config: probe each model at the head, bisect and
    report what broke), or a sweep over architectures against transformers (--architectures)."""
    if (config is None) == (architectures is None):
        raise UsageError(
            "give --config ekka.toml (the nightly sweep) or --architectures all|NAME,... "
            "(the architecture sweep), one of them."
        )
    if config is not None and (repo is not None or commit is not None):
        raise UsageError(
            "--repo and --commit are the architecture sweep's; the nightly sweep takes its "
            "repository from the configuration's [[sweeps]] entry."
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
    if (repo is None) != (commit is None):
        raise UsageError("--repo and --commit go together: the clone, and the commit to sweep.")
    code = run_cli(
        architectures, dtype, out_dir, db, json_file, out=out, console=console,
        report_only=report_only, repo=str(repo) if repo else None, commit=commit,
    )  # fmt: skip
    raise typer.Exit(code)


DEMO_PROMPT = (
    "The quick brown fox jumps over the lazy dog while seven small birds sing on an old "
    "wooden fence near the quiet river."
)
# `ekka demo --model M`: the regression planted in the history (ekka/data), its commit title,
# the prompt. gemma3-270m's is the real-weight bench case gemma3-local-rope-base-ignored.
DEMOS = {
    "llama": (
        "demo-regression.patch",
        "[Model] Llama: build the decoder norms with RMSNorm defaults",
        DEMO_PROMPT,
    ),
    "gemma3-270m": (
        "demo-regression-gemma3.patch",
        "[Model] Gemma 3: one RoPE table for every layer",
        "Gemma is a family of lightweight, open models. A small model is useful when it runs "
        "quickly on a laptop and still answers questions about history, science and cooking.",
    ),
}


def main(argv: list[str] | None = None) -> int:
    """Console entry point: runs the app and turns Ekka's errors into messages and exit codes."""
    command = typer.main.get_command(app)
    # typer vendors its own click; catch both its exceptions and those of the click package.
    from typer._click import exceptions as typer_click

    exits = tuple({click.exceptions.Exit, typer.Exit})
    usage = tuple({click.ClickException, typer_click.ClickException})
    aborts = tuple({click.exceptions.Abort, typer.Abort})
    try:
        result = command.main(args=argv, prog_name="ekka", standalone_mode=False)
    except exits as exc:
        return int(getattr(exc, "exit_code", 0))
    except usage as exc:
        assert isinstance(exc, (click.ClickException, typer_click.ClickException))
        exc.show()
        return 2
    except aborts:
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
