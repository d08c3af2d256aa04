"""The ray executor's multisection and its cost, on a local Ray cluster of this machine.

    .venv/bin/python benchmarks/ray_multisection.py rounds [--commits 64] [--sleep 2]
    .venv/bin/python benchmarks/ray_multisection.py diagnosis [--workers 2]

`rounds`: a real repository of N commits (the first bad one a worst case of the search), each
probe a Ray task that sleeps `--sleep` seconds in a worktree of its commit and then reads it;
with k = 1, 2, 4, 8 workers, the rounds (the endpoints' round included) against the formula
ceil(log_(k+1) N) + 1, the probes, and the wall time against rounds x sleep. The cluster has 8
logical CPUs (probes that sleep need no core each). Results: benchmarks/results/ray_multisection.json.

`diagnosis`: the full diagnosis of the public bench case llama-rmsnorm-eps-ignored (real vLLM,
CPU) over a short history, once with the local executor and once with the ray executor
(`--workers` probes at once in both), each with a fresh verdict cache; the wall time of each
phase and which commit and suspect each found. Results: benchmarks/results/ray_diagnosis.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CASES = Path(__file__).resolve().parents[1] / "bench" / "cases"
CASE = "llama-rmsnorm-eps-ignored"


def formula_rounds(commits: int, workers: int) -> int:
    """ceil(log_(k+1) N) + 1: the search's rounds at most, and the endpoints' round."""
    rounds = 0
    while (workers + 1) ** rounds < commits:
        rounds += 1
    return rounds + 1


def start_cluster(cpus: int = 8) -> str:
    import ray

    ray.init(
        num_cpus=cpus,
        object_store_memory=100 * 1024**2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    return str(ray.get_runtime_context().gcs_address)


def rounds(args: argparse.Namespace) -> None:
    from ekka.bisect.history import commit_range
    from ekka.bisect.search import Bisector
    from ekka.containers.ray import CommandProbe, RayExecutor, RaySettings
    from ekka.repo import git

    work = Path(tempfile.mkdtemp(prefix="ekka-ray-bench-"))
    repo = work / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    first_bad = 5  # a worst case for every k here: each round of the formula is needed
    shas = []
    for i in range(args.commits + 1):
        (repo / "state").write_text("bad\n" if i >= first_bad else "good\n")
        (repo / "counter").write_text(f"{i}\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"change {i}")
        shas.append(git(repo, "rev-parse", "HEAD"))
    commits = commit_range(repo, shas[0], shas[-1])
    address = start_cluster()
    oracle = f"sleep {args.sleep:g}; grep -qx good state"
    rows = []
    for workers in (1, 2, 4, 8):
        executor = RayExecutor(CommandProbe(str(repo), oracle), RaySettings(address))
        start = time.perf_counter()
        result = Bisector(executor, workers=workers).run(commits)
        wall = time.perf_counter() - start
        assert result.first_bad is not None and result.first_bad.sha == shas[first_bad]
        row = {
            "workers": workers,
            "rounds": result.rounds + 1,
            "formula": formula_rounds(args.commits, workers),
            "probes": result.probes,
            "tasks": executor.submitted,
            "wall_s": round(wall, 2),
            "rounds_x_sleep_s": round((result.rounds + 1) * args.sleep, 2),
        }
        rows.append(row)
        print(
            f"k={workers}: {row['rounds']} rounds (formula {row['formula']}), "
            f"{row['probes']} probes, {row['wall_s']} s (rounds x sleep {row['rounds_x_sleep_s']} s)",
            flush=True,
        )
    out = {"commits": args.commits, "sleep_s": args.sleep, "cluster_cpus": 8, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_multisection.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


def diagnosis(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from ekka.bench import base_repository, build_case_model, case_prompt_ids, find_cases
    from ekka.bisect.framework_repo import make_bug_history
    from ekka.containers.ray import RaySettings
    from ekka.frameworks import installed_package_dir
    from ekka.full import FullConfig, run_full_diagnosis

    (case,) = find_cases(CASES, [CASE])
    work = Path(tempfile.mkdtemp(prefix="ekka-ray-diag-"))
    model = build_case_model(case, work / "model")
    ids = case_prompt_ids(case, model)[:16]
    history = make_bug_history(
        base_repository(work),
        work / "repo",
        case.path / "bug.patch",
        case.summary[:60],
        before=args.before,
        after=args.after,
    )
    address = start_cluster(cpus=args.workers)
    base = FullConfig(
        repo=str(history.repo),
        good=history.good,
        bad=history.bad,
        model=str(model),
        prompt_ids=tuple(ids),
        workdir="",
        package_dir=str(installed_package_dir("vllm")),
        max_tokens=3,
        workers=args.workers,
    )
    figures = {}
    for name in ("local", "ray"):
        config = replace(
            base,
            workdir=str(work / name / "traces"),
            db_url=f"sqlite:///{work / name / 'verdicts.db'}",
            executor=name,
            ray=RaySettings(address, trace_dir=str(work / name / "ray-traces"))
            if name == "ray"
            else None,
        )
        start = time.perf_counter()
        report, result = run_full_diagnosis(config)
        wall = time.perf_counter() - start
        suspects = [s.component for s in report.localization.suspects]
        figures[name] = {
            "wall_s": round(wall, 1),
            "localize_s": round(report.timings.get("localize_at_bad", 0.0), 1),
            "bisect_s": round(report.timings.get("bisect", 0.0), 1),
            "probes": result.probes,
            "rounds": result.rounds + 1,
            "first_bad_is_bug": result.first_bad is not None
            and result.first_bad.sha == history.bug,
            "suspect": suspects[0] if suspects else None,
        }
        print(name, figures[name], flush=True)
    out = {
        "case": CASE,
        "commits": len(history.commits),
        "workers": args.workers,
        "max_tokens": 3,
        "prompt_tokens": len(ids),
        **figures,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_diagnosis.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    r = sub.add_parser("rounds")
    r.add_argument("--commits", type=int, default=64)
    r.add_argument("--sleep", type=float, default=2.0)
    d = sub.add_parser("diagnosis")
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--before", type=int, default=3)
    d.add_argument("--after", type=int, default=2)
    args = parser.parse_args()
    rounds(args) if args.what == "rounds" else diagnosis(args)


if __name__ == "__main__":
    main()
