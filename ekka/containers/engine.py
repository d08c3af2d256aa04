"""The connection to the Docker engine: the one place that imports the `docker` package, so a
missing extra or a silent daemon is one clear message (ContainerEngineError), never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ekka.errors import ContainerEngineError

if TYPE_CHECKING:
    from docker import DockerClient

# Where a build's or a container's output goes as it comes (the user's progress display).
Progress = Callable[[str], None]

# What a client call may wait for; a build or a probe's `wait` set their own time limits.
API_TIMEOUT = 120


def connect(timeout: int = API_TIMEOUT) -> DockerClient:
    """A client of the engine that `DOCKER_HOST` (or the default socket) names, checked alive."""
    try:
        import docker
    except ImportError:
        raise ContainerEngineError(
            "the docker executor needs the `docker` package: pip install 'ekka[docker]' "
            "(`make venv` installs it)."
        ) from None
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        first = (str(exc).strip().splitlines() or ["no answer"])[0]
        raise ContainerEngineError(
            f"no Docker engine answers ({first}); start dockerd or set DOCKER_HOST."
        ) from None
    return client


def tail(text: str, lines: int = 15) -> str:
    """The last `lines` non-empty lines of a log: what a skip's reason quotes."""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def stream_lines(chunks: Iterable[dict[str, Any]], progress: Progress, log: list[str]) -> None:
    """Forward a build's JSON chunks to `progress` line by line and keep them in `log`.

    An `error` chunk is kept too (the build's failure); the caller decides what it means.
    """
    for chunk in chunks:
        text = chunk.get("stream") or chunk.get("status") or ""
        if "error" in chunk:
            text = f"ERROR: {chunk['error']}"
        for line in str(text).splitlines():
            if line.strip():
                log.append(line)
                progress(line)
