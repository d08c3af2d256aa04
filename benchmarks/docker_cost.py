"""Cost of the docker executor, measured from outside: the base image, a commit's first image,
the same image reused, and one probe's wall time in a container against the local executor.

    .venv/bin/python benchmarks/docker_cost.py [--fresh-base] [--runs 2] [--model DIR]

- The base image: `ensure_base_image` (debootstrap + docker import, the release copied from
  this environment's site-packages, Ekka's package). `--fresh-base` removes the three layers' tags first, so the figure
  is a first build; without it an existing base is reused and the figure is the lookup.
- A first per-commit image: the overlay of the installed release's sources (a repository made
  here, one commit) on the base; then the same request again (reuse).
- One probe of that commit, `--runs` times each, alternating: the local executor (a worktree,
  the probe's subprocess) and the docker executor (a container of the image). Wall time of
  `probe()` as the bisection sees it (the image already exists).

Prints one line per figure and a JSON line with all of them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from ekka.bench import base_repository
from ekka.bisect.history import commit_range
from ekka.bisect.oracle import OracleConfig, TracerOracle
from ekka.containers.base import ensure_base_image
from ekka.containers.docker import DockerExecutor
from ekka.containers.engine import connect
from ekka.containers.images import ImageSettings, ImageStore
from ekka.containers.local import LocalExecutor
from ekka.frameworks import installed_package_dir
from ekka.repo import git
from ekka.zoo import build_model

PROMPT = tuple([1] + [(7 * i + 11) % 500 + 3 for i in range(11)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh-base", action="store_true")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--model", type=Path)
    args = parser.parse_args()
    client = connect()
    figures: dict[str, object] = {}
    if args.fresh_base:
        for repo in ("ekka/base", "ekka/runtime", "ekka/debian"):
            for image in client.images.list(name=repo):
                for tag in image.tags:
                    client.images.remove(tag, force=True)
    t0 = time.perf_counter()
    base = ensure_base_image(client)
    figures["base_image_s"] = round(time.perf_counter() - t0, 1)
    figures["base_layers_s"] = [round(s, 1) for s in base.seconds]
    print(
        f"base image {base.base}: {figures['base_image_s']} s (layers {figures['base_layers_s']})"
    )

    with tempfile.TemporaryDirectory(prefix="ekka-docker-cost-") as tmp:
        work = Path(tmp)
        repo = base_repository(work)
        sha = git(repo, "rev-parse", "HEAD")
        git(repo, "commit", "-q", "--allow-empty", "-m", "next (#2)")
        commit = commit_range(repo, sha, "HEAD")[-1]
        settings = ImageSettings(
            base_image=base.base,
            tag_template="ekka-cost/vllm:{sha}",
            state_dir=str(work / "state"),
        )
        store = ImageStore(client, repo, settings, release=sha)
        try:
            first = store.ensure(commit.sha)
            again = store.ensure(commit.sha)
            figures["first_image_s"] = round(first.seconds, 1)
            figures["reused_image_s"] = round(again.seconds, 3)
            print(f"first image ({first.strategy}): {first.seconds:.1f} s")
            print(f"same image again ({again.strategy}): {again.seconds:.3f} s")

            model = args.model or build_model("llama", work / "model")
            oracle = TracerOracle(OracleConfig(model=str(model), prompt_ids=PROMPT), work / "o")
            oracle.prepare()
            local = LocalExecutor(
                repo,
                oracle,
                package_dir=installed_package_dir("vllm"),
                base=sha,
                workdir=work / "l",
            )
            docker = DockerExecutor(client, store, oracle, workdir=work / "d")
            times: dict[str, list[float]] = {"local": [], "docker": []}
            for _ in range(args.runs):
                for name, executor in (("local", local), ("docker", docker)):
                    t = time.perf_counter()
                    result = executor.probe(commit)
                    times[name].append(time.perf_counter() - t)
                    print(f"probe {name}: {times[name][-1]:.1f} s, {result.verdict.value}")
            for name, values in times.items():
                figures[f"probe_{name}_s"] = round(statistics.median(values), 1)
        finally:
            for image in client.images.list(name="ekka-cost/vllm"):
                for tag in image.tags:
                    client.images.remove(tag, force=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
