"""The docker executor: each probe runs the tracer's capture in the commit's own image.

The image comes from `ImageStore` (reused, pulled, overlaid or built). The container gets the
GPUs asked for (device requests), a shared-memory size, memory and process limits, the model
folder read-only at /model, a fresh output folder at /out for the trace, no network, no
capabilities (the host user's ids), and an environment made only of an explicit allow-list (no token or other secret of the host enters
it). Past the time limit it is killed and the probe skips. The build's and the container's
logs are kept in the probe's folder and named in its record; the container is removed after.
The host then judges the trace with the same oracle as the local executor, so the bisection
cannot tell the two apart.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ekka.bisect.history import CommitInfo
from ekka.bisect.oracle import TracerOracle
from ekka.bisect.verdict import TRANSIENT, ProbeResult, Verdict
from ekka.containers import defaults
from ekka.containers.engine import Progress, tail
from ekka.containers.images import ImageSettings, ImageStore
from ekka.errors import ImageBuildError, TraceFormatError, UsageError
from ekka.tracer.trace import TraceReader

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.types import DeviceRequest

# Host variables a probe may see when set (nothing else of the host's environment enters).
DEFAULT_ENV_ALLOW = (
    "VLLM_CPU_KVCACHE_SPACE",
    "VLLM_CPU_OMP_THREADS_BIND",
    "VLLM_LOGGING_LEVEL",
    "OMP_NUM_THREADS",
    "NVIDIA_DRIVER_CAPABILITIES",
)
# Names that hold secrets by convention: refused in an allow-list, whatever it says.
SECRET = re.compile(r"TOKEN|SECRET|PASSW|PRIVATE|CREDENTIAL|(^|_)KEY($|_)|AUTH", re.IGNORECASE)
# Fixed for every probe: a writable home for caches, and nothing fetched from a model hub.
PROBE_ENV = {
    "HOME": "/tmp",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
}


@dataclass(frozen=True)
class ContainerLimits:
    """What a probe's container may use, and for how long."""

    gpus: str | None = None  # "all", a count ("2") or device ids ("0,1"); None: no GPU
    shm_size: str = defaults.SHM_SIZE
    memory: str | None = None  # e.g. "16g"; None: the engine's default (no limit)
    pids: int | None = defaults.PIDS_LIMIT
    cpus: float | None = None
    timeout: float = defaults.TIMEOUT  # seconds, then the container is killed and the probe skips
    env_allow: tuple[str, ...] = DEFAULT_ENV_ALLOW

    def __post_init__(self) -> None:
        secret = [name for name in self.env_allow if SECRET.search(name)]
        if secret:
            raise UsageError(
                f"the probe's environment allow-list names secrets ({', '.join(secret)}); "
                "code under test never gets a token, a key or a password."
            )


def device_requests(gpus: str | None) -> list[DeviceRequest]:
    """`gpus` as Docker device requests: "all", a count, or comma-separated device ids."""
    from docker.types import DeviceRequest

    if not gpus:
        return []
    if gpus == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if gpus.isdigit():
        return [DeviceRequest(count=int(gpus), capabilities=[["gpu"]])]
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    return [DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]


def probe_environment(allow: tuple[str, ...], host: dict[str, str] | None = None) -> dict[str, str]:
    """The container's environment: the fixed probe variables and the allowed host ones."""
    host = dict(os.environ) if host is None else host
    env = {name: host[name] for name in allow if name in host and not SECRET.search(name)}
    return {**env, **PROBE_ENV}


@dataclass(frozen=True)
class ContainerRun:
    """One container's end: its exit code (None when killed at the time limit) and log."""

    exit_code: int | None
    log: str
    seconds: float

    @property
    def timed_out(self) -> bool:
        return self.exit_code is None


class DockerExecutor:
    """Probes commits in containers of their images; an Executor (`ekka.bisect.executor`).

    Thread-safe: each probe has its own output folder and container; images are built once
    per tag. `cancel()` kills the running containers and makes later probes skip at once.
    """

    def __init__(
        self,
        client: DockerClient,
        images: ImageStore,
        oracle: TracerOracle,
        *,
        workdir: str | Path,
        limits: ContainerLimits = ContainerLimits(),
        progress: Progress = lambda _line: None,
    ) -> None:
        self.client = client
        self.images = images
        self.oracle = oracle
        self.workdir = Path(workdir)
        self.limits = limits
        self.progress = progress
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._running: set[str] = set()

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            running = list(self._running)
        for container_id in running:
            self._kill(container_id)

    def probe(self, commit: CommitInfo) -> ProbeResult:
        if self._cancelled.is_set():
            return ProbeResult(Verdict.SKIP, "cancelled", 0.0, {TRANSIENT: True})
        start = time.perf_counter()
        self.workdir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"probe-{commit.sha[:12]}-", dir=self.workdir))
        details: dict[str, Any] = {"probe_dir": str(folder)}
        import docker

        try:
            image = self.images.ensure(commit.sha, self.progress)
        except docker.errors.DockerException as exc:  # the engine failed, not the build
            return ProbeResult(
                Verdict.SKIP,
                f"the engine failed while getting the image: {_last_lines(str(exc))}",
                time.perf_counter() - start,
                {**details, TRANSIENT: True},
            )
        except ImageBuildError as exc:
            (folder / "build.log").write_text(exc.log or str(exc))
            return ProbeResult(
                Verdict.SKIP,
                f"no image: {_last_lines(str(exc))}",
                time.perf_counter() - start,
                {**details, "build_log": str(folder / "build.log"), "log_tail": tail(str(exc))},
            )
        (folder / "build.log").write_text(image.log + "\n")
        details.update(image=image.to_json(), build_log=str(folder / "build.log"))
        out = folder / "out"
        out.mkdir()
        spec = replace(self.oracle.spec("/out/trace"), model="/model")
        command = ["python", "-m", "ekka.containers.probe", json.dumps(spec.to_json())]
        try:
            with self.images.hold(image.tag):
                run = self.run(image.tag, command, model=Path(self.oracle.config.model), out=out)
        except (
            docker.errors.DockerException
        ) as exc:  # the engine refused: says nothing of the commit
            return ProbeResult(
                Verdict.SKIP,
                f"the probe's container did not start: {_last_lines(str(exc))}",
                time.perf_counter() - start,
                {**details, TRANSIENT: True},
            )
        (folder / "container.log").write_text(run.log)
        details.update(container_log=str(folder / "container.log"), container_seconds=run.seconds)
        seconds = time.perf_counter() - start
        if run.timed_out:
            return ProbeResult(
                Verdict.SKIP,
                f"time limit of {self.limits.timeout:g} s reached: the container was killed",
                seconds,
                {**details, TRANSIENT: True, "log_tail": tail(run.log)},
            )
        if self._cancelled.is_set():
            return ProbeResult(Verdict.SKIP, "cancelled", seconds, {**details, TRANSIENT: True})
        if run.exit_code != 0:
            return ProbeResult(
                Verdict.SKIP,
                f"the target did not run in the container (exit {run.exit_code}): "
                f"{_last_lines(run.log)}",
                seconds,
                {**details, "log_tail": tail(run.log)},
            )
        try:
            trace = TraceReader(out / "trace")
        except TraceFormatError as exc:
            return ProbeResult(
                Verdict.SKIP, f"the container wrote no trace: {exc}", seconds, details
            )
        result = self.oracle.judge(trace, seconds)
        result.details.update(details, timings=dict(trace.manifest.timings))
        return result

    def run(
        self,
        image: str,
        command: list[str],
        *,
        model: Path | None = None,
        out: Path | None = None,
        environment: dict[str, str] | None = None,
    ) -> ContainerRun:
        """Run `command` in a probe container of `image`, with the limits; always removed."""
        container = self.create(image, command, model=model, out=out, environment=environment)
        start = time.perf_counter()
        with self._lock:
            self._running.add(container.id)
        try:
            container.start()
            try:
                status = self.client.api.wait(
                    container.id, timeout=max(1, round(self.limits.timeout))
                )
                code: int | None = int(status["StatusCode"])
            except Exception:  # the HTTP wait timed out: the time limit is reached
                self._kill(container.id)
                code = None
            log = container.logs(stdout=True, stderr=True).decode(errors="replace")
            return ContainerRun(code, log, time.perf_counter() - start)
        finally:
            with self._lock:
                self._running.discard(container.id)
            container.remove(force=True)

    def create(
        self,
        image: str,
        command: list[str],
        *,
        model: Path | None = None,
        out: Path | None = None,
        environment: dict[str, str] | None = None,
    ) -> Any:
        """A created (not started) probe container: what `docker inspect` shows is the policy."""
        from docker.types import Mount

        mounts = []
        if model is not None:
            mounts.append(Mount("/model", str(model.resolve()), type="bind", read_only=True))
        if out is not None:
            mounts.append(Mount("/out", str(out.resolve()), type="bind"))
        limits = self.limits
        return self.client.containers.create(
            image,
            command,
            environment=environment or probe_environment(limits.env_allow),
            network_mode="none",
            mounts=mounts,
            # the host user's ids (the mounts are theirs) without any capability: even as
            # root inside, the code under test cannot override file permissions or escalate
            user=f"{os.getuid()}:{os.getgid()}",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            working_dir="/tmp",
            shm_size=limits.shm_size,
            mem_limit=limits.memory,
            pids_limit=limits.pids,
            nano_cpus=int(limits.cpus * 1e9) if limits.cpus else None,
            device_requests=device_requests(limits.gpus),
            labels={"ekka.probe": "1"},
        )

    def _kill(self, container_id: str) -> None:
        import docker

        try:
            self.client.api.kill(container_id)
        except docker.errors.APIError:
            pass  # already stopped


def _last_lines(text: str, count: int = 3) -> str:
    """A log's last lines on one line: a skip's reason."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-count:]) if lines else "no output"


def for_repository(
    client: DockerClient,
    repo: str | Path,
    oracle: TracerOracle,
    *,
    release: str,
    workdir: str | Path,
    images: ImageSettings | None = None,
    limits: ContainerLimits = ContainerLimits(),
    progress: Progress = lambda _line: None,
) -> DockerExecutor:
    """The docker executor for commits of `repo` on `release`: the base image built (or
    reused) when the settings name none. What `ekka.full` and a cluster's node both use."""
    from ekka.containers.base import ensure_base_image

    settings = images or ImageSettings()
    if settings.base_image is None:
        progress("docker: the base image (built once, then reused)")
        base = ensure_base_image(client, framework=settings.framework, progress=progress).base
        settings = replace(settings, base_image=base)
    store = ImageStore(client, str(repo), settings, release=release)
    return DockerExecutor(client, store, oracle, workdir=workdir, limits=limits, progress=progress)
