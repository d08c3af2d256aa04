"""The probe container's limits, for real: time limit, no network, no secrets, a read-only
model, GPU device requests in the container's configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ekka.bisect.history import commit_range
from ekka.bisect.oracle import OracleConfig, TracerOracle
from ekka.bisect.verdict import Verdict
from ekka.containers.docker import ContainerLimits, DockerExecutor, probe_environment
from ekka.containers.images import ImageSettings, ImageStore
from ekka.errors import UsageError
from ekka.repo import git

pytestmark = pytest.mark.docker


def gpu_here() -> bool:
    return Path("/dev/nvidiactl").exists()


def _executor(client, image: str, tmp_path: Path, **limits) -> DockerExecutor:
    store = ImageStore(
        client, tmp_path, ImageSettings(base_image=image, state_dir=str(tmp_path)), release="HEAD"
    )
    return DockerExecutor(
        client, store, oracle=None, workdir=tmp_path / "w", limits=ContainerLimits(**limits)
    )  # type: ignore[arg-type]


def test_no_network_no_secret_read_only_model(docker_client, base_image, tmp_path, monkeypatch):
    monkeypatch.setenv("EKKA_GITHUB_TOKEN", "ghp_must_not_leak")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # on the allow-list: passes
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    out = tmp_path / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    script = """
import os, socket
print("token:", "EKKA_GITHUB_TOKEN" in os.environ, "omp:", os.environ.get("OMP_NUM_THREADS"))
print("secrets:", sorted(k for k in os.environ if "TOKEN" in k or "SECRET" in k))
try:
    socket.create_connection(("1.1.1.1", 80), timeout=3)
    print("network: open")
except OSError as exc:
    print("network: closed", type(exc).__name__)
try:
    open("/model/written", "w")
    print("model: writable")
except OSError as exc:
    print("model: read-only", exc.errno)
open("/out/written", "w").write("ok")
print("uid:", os.getuid())
"""
    run = _executor(docker_client, base_image, tmp_path).run(
        base_image, ["python", "-c", script], model=model, out=out
    )
    assert run.exit_code == 0, run.log
    assert "token: False omp: 2" in run.log and "secrets: []" in run.log
    assert "network: closed" in run.log
    assert "model: read-only 30" in run.log  # EROFS
    assert (out / "written").read_text() == "ok" and not (model / "written").exists()
    assert f"uid: {os.getuid()}" in run.log
    assert "EKKA_GITHUB_TOKEN" not in probe_environment(("EKKA_GITHUB_TOKEN",))


def test_secret_names_are_refused_on_the_allow_list():
    with pytest.raises(UsageError, match="GITHUB_TOKEN"):
        ContainerLimits(env_allow=("OMP_NUM_THREADS", "GITHUB_TOKEN"))


def test_time_limit_kills_the_container(docker_client, base_image, tmp_path):
    executor = _executor(docker_client, base_image, tmp_path, timeout=2)
    run = executor.run(base_image, ["sleep", "60"])
    assert run.timed_out and run.seconds < 30
    assert not docker_client.containers.list(all=True, filters={"label": "ekka.probe"})


def test_probe_past_its_time_limit_skips(docker_client, base_image, tmp_path, zoo_model):
    """The real probe, on a commit whose framework hangs at import, is killed and skips."""
    repo = tmp_path / "fw"
    (repo / "vllm").mkdir(parents=True)
    (repo / "vllm" / "__init__.py").write_text("import time\n\ntime.sleep(600)  # a hang\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "release")
    git(repo, "commit", "-q", "--allow-empty", "-m", "next (#2)")
    commit = commit_range(repo, "HEAD~1", "HEAD")[-1]
    store = ImageStore(
        docker_client,
        repo,
        ImageSettings(
            base_image=base_image,
            tag_template=f"ekka-test/{tmp_path.name.lower()}:{{sha}}",
            state_dir=str(tmp_path),
        ),
        release="HEAD~1",
    )
    oracle = TracerOracle(
        OracleConfig(model=str(zoo_model("llama")), prompt_ids=(1, 5, 9)), tmp_path
    )
    executor = DockerExecutor(
        docker_client, store, oracle, workdir=tmp_path / "w", limits=ContainerLimits(timeout=3)
    )
    no_gpu = DockerExecutor(
        docker_client, store, oracle, workdir=tmp_path / "g", limits=ContainerLimits(gpus="all")
    )
    try:
        result = executor.probe(commit)
        unstarted = no_gpu.probe(commit) if not gpu_here() else None
    finally:
        for tag, _, _ in store.managed():
            docker_client.images.remove(tag, force=True)
    assert result.verdict is Verdict.SKIP and result.transient
    assert "time limit of 3 s" in result.reason
    assert Path(result.details["container_log"]).is_file()
    if unstarted is not None:  # no GPU runtime here: the container cannot start, a skip
        assert unstarted.verdict is Verdict.SKIP and unstarted.transient
        assert "did not start" in unstarted.reason and "gpu" in unstarted.reason


@pytest.mark.parametrize(
    "gpus, expected",
    [
        ("all", {"Count": -1, "DeviceIDs": []}),
        ("2", {"Count": 2, "DeviceIDs": []}),
        ("0,1", {"Count": 0, "DeviceIDs": ["0", "1"]}),
    ],
)
def test_gpu_requests_in_the_container_configuration(
    docker_client, base_image, tmp_path, gpus, expected
):
    executor = _executor(
        docker_client, base_image, tmp_path, gpus=gpus, memory="1g", pids=256, shm_size="256m"
    )
    container = executor.create(base_image, ["true"])
    try:
        host = docker_client.api.inspect_container(container.id)["HostConfig"]
    finally:
        container.remove(force=True)
    (request,) = host["DeviceRequests"]
    assert request["Capabilities"] == [["gpu"]]
    assert {k: request[k] for k in expected} == expected
    assert host["NetworkMode"] == "none" and host["Memory"] == 1 << 30
    assert host["PidsLimit"] == 256 and host["ShmSize"] == 256 << 20


@pytest.mark.gpu
def test_gpu_probe_container_sees_the_gpu(docker_client, base_image, tmp_path, gpu_available):
    run = _executor(docker_client, base_image, tmp_path, gpus="all").run(
        base_image, ["nvidia-smi", "-L"]
    )
    assert run.exit_code == 0 and "GPU 0" in run.log
