"""One image per (framework, commit), obtained by the cheapest strategy valid for the commit,
reused by tag, and pruned least-recently-used under a disk budget.

Strategies, in order:

1. **reuse**: an image with the commit's tag (`ekka/vllm:<sha>`) exists: never rebuilt (unless
   Ekka built it on another base image: another Ekka or release inside, so another image).
2. **pull**: a per-commit image published by the project (`pull_template`, e.g. vLLM's
   post-merge images), retagged with the commit's tag. A failed pull falls through.
3. **overlay**: `FROM` the base image (the release's compiled extensions and Ekka), the
   commit's framework package copied to /src from `git archive` (no worktree) and the base's
   compiled files linked into it, as the local executor does. Valid only when the commit
   changes no compiled source relative to the base's release.
4. **build**: the repository's own Dockerfile (`dockerfile`, a path in the repository) or one
   on the host, with the whole commit as context and `build_args` (plus `EKKA_BASE` and
   `EKKA_COMMIT`). The image must hold Ekka (a Dockerfile `FROM ${EKKA_BASE}` does).

Build output goes to the caller's progress as it comes and is returned with the image. The
last use of each image is recorded in a small JSON file (image labels cannot change after a
build), which `prune` reads to remove the least recently used beyond the budget.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ekka.containers import defaults
from ekka.containers.base import _add_bytes, default_cache_dir, image_exists
from ekka.containers.engine import Progress, stream_lines, tail
from ekka.containers.overlay import compiled_changes
from ekka.errors import ImageBuildError, UsageError
from ekka.frameworks import framework
from ekka.repo import git

if TYPE_CHECKING:
    from docker import DockerClient

MANAGED = "ekka.managed"  # label: "commit" on every per-commit image Ekka builds
OVERLAY_DOCKERFILE = """\
ARG EKKA_BASE
FROM ${{EKKA_BASE}}
COPY {path} /src/{package}
RUN python -m ekka.containers.overlay /src {package}
"""
HOST_DOCKERFILE = ".ekka.Dockerfile"  # where a Dockerfile from the host goes in the context


@dataclass(frozen=True)
class ImageSettings:
    """How per-commit images are named and obtained."""

    framework: str = "vllm"
    base_image: str | None = None  # the overlay's base; None: no overlay strategy
    tag_template: str = defaults.IMAGE_TAG
    pull_template: str | None = None  # e.g. "public.ecr.aws/q9t5s3a7/vllm-ci-postmerge-repo:{sha}"
    dockerfile: str | None = None  # a path in the repository, or a file on the host
    build_args: Mapping[str, str] = field(default_factory=dict)
    budget_gb: float | None = None  # per-commit images beyond it are pruned, oldest use first
    state_dir: str | None = None  # where the last-use record lives (default ~/.cache/ekka/images)

    def tag(self, sha: str) -> str:
        return self.tag_template.format(framework=self.framework, sha=sha)


@dataclass(frozen=True)
class CommitImage:
    """The image a probe of one commit runs: its tag, how it was obtained, the build's log."""

    tag: str
    strategy: str  # "reused", "pull", "overlay" or "build"
    seconds: float
    log: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"tag": self.tag, "strategy": self.strategy, "seconds": self.seconds}


class ImageStore:
    """Per-commit images of one repository. Thread-safe: one build per tag at a time."""

    def __init__(
        self, client: DockerClient, repo: str | Path, settings: ImageSettings, *, release: str
    ) -> None:
        self.client = client
        self.repo = Path(repo)
        self.settings = settings
        self.release = release  # the commit whose compiled extensions the base image holds
        self.state = Path(settings.state_dir or default_cache_dir()) / "last-use.json"
        self._lock = threading.Lock()
        self._tag_locks: dict[str, threading.Lock] = {}
        self.in_use: dict[str, int] = {}  # tags that running probes hold: never pruned

    def ensure(self, sha: str, progress: Progress = lambda _line: None) -> CommitImage:
        """The commit's image, obtained by the first valid strategy; ImageBuildError if none."""
        tag = self.settings.tag(sha)
        with self._lock:
            tag_lock = self._tag_locks.setdefault(tag, threading.Lock())
        with tag_lock:
            start = time.perf_counter()
            log: list[str] = []
            if image_exists(self.client, tag):
                built_on = (self.client.images.get(tag).labels or {}).get("ekka.base")
                if not built_on or built_on == self.settings.base_image:
                    self.touch(tag)
                    return CommitImage(tag, "reused", time.perf_counter() - start)
                # built on another base (another Ekka or release): that image is not this one
                log.append(f"{tag} was built on {built_on}, not {self.settings.base_image}")
            strategy = self._obtain(sha, tag, progress, log)
            self.touch(tag)
        image = CommitImage(tag, strategy, time.perf_counter() - start, "\n".join(log))
        if self.settings.budget_gb is not None:
            self.prune(self.settings.budget_gb, progress)
        return image

    def _obtain(self, sha: str, tag: str, progress: Progress, log: list[str]) -> str:
        s = self.settings
        if s.pull_template and self._pull(s.pull_template.format(sha=sha), tag, progress, log):
            return "pull"
        changed = compiled_changes(self.repo, self.release, sha)
        if s.base_image and not changed:
            self._build(
                self._overlay_context(sha),
                tag,
                sha,
                "overlay",
                progress,
                log,
                dockerfile="Dockerfile",
                network="none",
            )
            return "overlay"
        if s.dockerfile:
            context, dockerfile = self._full_context(sha, s.dockerfile)
            self._build(context, tag, sha, "build", progress, log, dockerfile=dockerfile)
            return "build"
        why = (
            f"it changes compiled sources ({', '.join(changed[:3])})"
            if changed
            else "no base image is configured"
        )
        raise ImageBuildError(
            f"no image for {sha[:10]}: {why} and no Dockerfile is configured for a full build",
            commit=sha,
        )

    def _pull(self, ref: str, tag: str, progress: Progress, log: list[str]) -> bool:
        import docker

        progress(f"pulling {ref}")
        try:
            repository, _, name = ref.rpartition(":")
            image = self.client.images.pull(repository, tag=name)
        except docker.errors.DockerException as exc:
            line = f"pull {ref} failed, trying the next strategy: {str(exc).splitlines()[0]}"
            log.append(line)
            progress(line)
            return False
        repository, _, name = tag.rpartition(":")
        image.tag(repository, name)
        log.append(f"pulled {ref} as {tag}")
        return True

    def _overlay_context(self, sha: str) -> io.BytesIO:
        fw = framework(self.settings.framework)
        package = fw.package
        path = f"{fw.source_root}/{package}" if fw.source_root else package
        names = git(self.repo, "ls-tree", "--name-only", sha, path).splitlines()
        if not names:
            raise UsageError(
                f"the repository has no {path}/ folder at {sha[:10]}: it is not the "
                f"{fw.title} repository (or not its Python sources)."
            )
        context = self._archive(sha, path)
        with tarfile.open(fileobj=context, mode="a") as tar:
            dockerfile = OVERLAY_DOCKERFILE.format(path=path, package=package)
            _add_bytes(tar, "Dockerfile", dockerfile.encode())
        context.seek(0)
        return context

    def _full_context(self, sha: str, dockerfile: str) -> tuple[io.BytesIO, str]:
        context = self._archive(sha)
        host = Path(dockerfile)
        if host.is_absolute() and host.is_file():
            with tarfile.open(fileobj=context, mode="a") as tar:
                _add_bytes(tar, HOST_DOCKERFILE, host.read_bytes())
            dockerfile = HOST_DOCKERFILE
        context.seek(0)
        return context, dockerfile

    def _archive(self, sha: str, *paths: str) -> io.BytesIO:
        """`git archive` of the commit (or of `paths` in it) as an uncompressed tar."""
        import subprocess

        proc = subprocess.run(
            ["git", "archive", "--format=tar", sha, *paths],
            cwd=self.repo,
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ImageBuildError(
                f"git archive {sha[:10]} failed: {proc.stderr.decode(errors='replace').strip()}",
                commit=sha,
            )
        return io.BytesIO(proc.stdout)

    def _build(
        self,
        context: io.BytesIO,
        tag: str,
        sha: str,
        strategy: str,
        progress: Progress,
        log: list[str],
        *,
        dockerfile: str,
        network: str | None = None,
    ) -> None:
        s = self.settings
        args = {**s.build_args, "EKKA_BASE": s.base_image or "", "EKKA_COMMIT": sha}
        labels = {
            MANAGED: "commit",
            "ekka.framework": s.framework,
            "ekka.commit": sha,
            "ekka.strategy": strategy,
            "ekka.base": s.base_image or "",
        }
        progress(f"building {tag} ({strategy})")
        chunks = self.client.api.build(
            fileobj=context,
            custom_context=True,
            tag=tag,
            dockerfile=dockerfile,
            buildargs=args,
            labels=labels,
            network_mode=network,
            rm=True,
            forcerm=True,
            decode=True,
        )
        stream_lines(chunks, progress, log)
        if not image_exists(self.client, tag):
            raise ImageBuildError(
                f"the {strategy} build of {sha[:10]} failed:\n{tail(chr(10).join(log))}",
                commit=sha,
                log="\n".join(log),
            )

    @contextmanager
    def hold(self, tag: str) -> Iterator[None]:
        """Mark `tag` in use while a probe runs (pruning leaves it), and its use after."""
        with self._lock:
            self.in_use[tag] = self.in_use.get(tag, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self.in_use[tag] -= 1
                if not self.in_use[tag]:
                    del self.in_use[tag]
            self.touch(tag)

    # -- last use and pruning -----------------------------------------------------------

    def touch(self, tag: str) -> None:
        """Record `tag`'s use now (atomically: a rename of the whole small file)."""
        with self._lock:
            uses = self._uses()
            uses[tag] = time.time()
            self.state.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(uses, indent=0, sort_keys=True))
            tmp.replace(self.state)

    def _uses(self) -> dict[str, float]:
        try:
            data = json.loads(self.state.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def managed(self) -> list[tuple[str, int, float]]:
        """(tag, own size in bytes, last use) of every per-commit image, oldest use first.

        The own size leaves out the base image's layers, which every overlay image shares.
        """
        uses = self._uses()
        base_size = 0
        if self.settings.base_image and image_exists(self.client, self.settings.base_image):
            base_size = int(self.client.images.get(self.settings.base_image).attrs["Size"])
        repository = self.settings.tag("SHA").rpartition(":")[0]
        rows = []
        for image in self.client.images.list(name=repository):
            size = int(image.attrs["Size"])
            labels = image.labels or {}
            if labels.get("ekka.base") == self.settings.base_image and base_size:
                size = max(size - base_size, 0)
            for tag in image.tags:
                if tag.rpartition(":")[0] == repository:
                    rows.append((tag, size, uses.get(tag, 0.0)))
        return sorted(rows, key=lambda row: row[2])

    def prune(self, budget_gb: float, progress: Progress = lambda _line: None) -> list[str]:
        """Remove the least recently used per-commit images until the rest fit the budget."""
        import docker

        rows = self.managed()
        total = sum(size for _, size, _ in rows)
        budget = budget_gb * 1e9
        removed = []
        for tag, size, _ in rows:
            if total <= budget:
                break
            if tag in self.in_use:
                continue
            try:
                self.client.images.remove(tag)
            except docker.errors.APIError as exc:  # e.g. a container still uses it
                progress(f"could not prune {tag}: {str(exc).splitlines()[0]}")
                continue
            total -= size
            removed.append(tag)
            progress(f"pruned {tag} ({size / 1e6:.0f} MB; least recently used)")
        return removed
