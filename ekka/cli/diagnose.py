"""`ekka diagnose`: localize a silent error (and with --repo/--good/--bad: bisect and
attribute it). The options are parsed here; the modes are checked by `ekka.modes`, the
request and executor spec composed by `ekka.request`, `ekka.containers.spec` and
`ekka.compose`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ekka.cli._app import console, escape_markup, out
from ekka.cli._full import run_full
from ekka.containers.spec import (
    DEFAULT_IMAGE_TAG,
    DEFAULT_NODE_EXECUTOR,
    DEFAULT_PIDS_LIMIT,
    DEFAULT_QUEUE_TIMEOUT,
    DEFAULT_RAY_CPUS,
    DEFAULT_RAY_GPUS,
    DEFAULT_SHM_SIZE,
    DEFAULT_TIMEOUT,
)

if TYPE_CHECKING:
    from ekka.tracer.diagnose import DiagnoseConfig


def diagnose(
    model: Path = typer.Option(..., help="Model folder (e.g. from `ekka zoo build`)."),
    framework: str = typer.Option(
        "vllm", help="The target: vllm, or sglang (run from its own environment, .venv-sglang)."
    ),
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
    timeout: float = typer.Option(
        DEFAULT_TIMEOUT, help="Full mode: seconds per probe, then it skips."
    ),
    base_image: str | None = typer.Option(
        None,
        help="Docker: the overlay's base image (the release's compiled extensions and Ekka); default: built offline once (`ekka containers base`).",
    ),
    image_tag: str = typer.Option(
        DEFAULT_IMAGE_TAG, help="Docker: the per-commit image's tag template."
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
    shm_size: str = typer.Option(DEFAULT_SHM_SIZE, help="Docker: the probe's shared memory."),
    memory: str | None = typer.Option(None, help="Docker: the probe's memory limit (16g)."),
    pids_limit: int = typer.Option(DEFAULT_PIDS_LIMIT, help="Docker: the probe's process limit."),
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
    ray_cpus: float = typer.Option(DEFAULT_RAY_CPUS, help="Ray: CPUs each probe's task asks for."),
    ray_gpus: float = typer.Option(DEFAULT_RAY_GPUS, help="Ray: GPUs each probe's task asks for."),
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
        DEFAULT_NODE_EXECUTOR,
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
        DEFAULT_QUEUE_TIMEOUT,
        help="Ray: seconds a task may wait for a node with its resources, then it skips.",
    ),
) -> None:
    """Localize (and with --repo/--good/--bad: bisect and attribute) a silent error."""
    import os

    from ekka.compose import diagnose_config, full_config
    from ekka.containers.spec import ExecutorSpec
    from ekka.modes import check_modes
    from ekka.request import (
        Request,
        ScenarioRef,
        check_request,
        parse_engine_args,
        resolve_request,
    )
    from ekka.tracer.capture import parse_prompt_ids

    engine_args = parse_engine_args(engine)
    commits = check_modes(
        repo=None if repo is None else str(repo),
        good=good,
        bad=bad,
        executor=executor,
        target_path=target_path,
        compare=compare,
        scenario=scenario,
        threshold=threshold,
    )
    spec = ExecutorSpec.from_options(
        executor=executor, timeout=timeout, workers=workers,
        base_image=base_image, image_tag=image_tag, pull_image=pull_image,
        dockerfile=dockerfile, build_arg=build_arg, gpus=gpus, shm_size=shm_size,
        memory=memory, pids_limit=pids_limit, image_budget=image_budget,
        ray_address=ray_address, ray_cpus=ray_cpus, ray_gpus=ray_gpus, ray_memory=ray_memory,
        ray_accelerator=ray_accelerator, ray_resource=ray_resource,
        ray_node_executor=ray_node_executor, ray_retries=ray_retries,
        ray_trace_dir=ray_trace_dir, ray_task_timeout=ray_task_timeout,
        ray_queue_timeout=ray_queue_timeout,
    )  # fmt: skip
    request = Request(
        model=str(model),
        prompt_text=prompt,
        prompt_ids=tuple(parse_prompt_ids(prompt_ids)) if prompt_ids is not None else (),
        dtype=dtype,
        max_tokens=max_tokens,
        engine=engine_args,
        scenario=None if scenario is None else ScenarioRef(str(scenario)),
        framework=framework,
    )
    resolved = resolve_request(request, strict=True)
    check_request(resolved, out_dir / "traces" / "target")
    if commits is not None:
        full = full_config(
            resolved,
            spec,
            repo=commits.repo,
            good=commits.good,
            bad=commits.bad,
            workdir=out_dir / "traces",
            threshold=threshold,
            repeats=repeats,
            db_url=db,
            github_repo=github_repo,
            github_api=github_api,
            github_token=os.environ.get("GITHUB_TOKEN") if github_repo else None,
        )
        raise typer.Exit(1 if run_full(full, out_dir) else 0)
    config = diagnose_config(
        resolved,
        workdir=out_dir / "traces",
        threshold=threshold,
        target_pythonpath=[str(p) for p in target_path],
    )
    raise typer.Exit(
        compare_all(config, out_dir) if compare == "all" else localize(config, out_dir)
    )


def localize(config: DiagnoseConfig, out_dir: Path) -> int:
    """The localize-mode diagnosis with progress; its verdict and reports printed. 1 when
    it diverges."""
    from ekka.reduce import diagnose_and_reduce
    from ekka.report import suspects_table, write_reports

    with console.status("diagnosing ...") as status:
        diagnosis = diagnose_and_reduce(config, progress=lambda msg: status.update(msg))
    paths = write_reports(diagnosis, out_dir)
    suspects_table(diagnosis, out)
    out.print(f"{diagnosis.verdict}\nreports: {paths['md']}, {paths['json']}, {paths['html']}")
    if diagnosis.reduction is not None:
        out.print(
            f"reduced scenario: {escape_markup(diagnosis.reduction.statement)}\n"
            f"reproduce: {escape_markup(diagnosis.reduction.command)}"
        )
    return 1 if diagnosis.diverged else 0


def compare_all(config: DiagnoseConfig, out_dir: Path) -> int:
    """Every request of the scenario traced in turn; a report per request under `out_dir`.
    1 when any diverges."""
    from dataclasses import replace

    from ekka.reduce import diagnose_and_reduce
    from ekka.report import write_reports
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
            diagnosis = diagnose_and_reduce(each, progress=lambda msg: status.update(msg))
        paths = write_reports(diagnosis, folder)
        diverged = diverged or diagnosis.diverged
        out.print(f"{label}: {escape_markup(diagnosis.verdict)} ({paths['md']})")
        if diagnosis.reduction is not None:
            out.print(f"  reduced: {escape_markup(diagnosis.reduction.statement)}")
    return 1 if diverged else 0
