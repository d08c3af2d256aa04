"""Without the docker package or an engine, the docker executor says so in one line."""

from __future__ import annotations

import sys

import pytest

from ekka.cli import main
from ekka.containers.docker import ContainerLimits, device_requests, probe_environment
from ekka.containers.engine import connect, tail
from ekka.errors import ContainerEngineError


def test_no_engine_is_one_clear_message(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(ContainerEngineError, match="no Docker engine answers .*start dockerd"):
        connect(timeout=5)


def test_no_docker_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "docker", None)
    with pytest.raises(ContainerEngineError, match=r"pip install 'ekka\[docker\]'"):
        connect()


def test_cli_without_an_engine_exits_2_with_the_message(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    from ekka.full import FullConfig, run_full_diagnosis

    config = FullConfig(
        repo=str(tmp_path),
        good="a",
        bad="b",
        model=str(tmp_path),
        prompt_ids=(1,),
        workdir=str(tmp_path / "w"),
        package_dir=str(tmp_path),
        executor="docker",
    )
    with pytest.raises(ContainerEngineError):
        run_full_diagnosis(config)
    assert main(["containers", "base"]) == 2
    err = capsys.readouterr().err
    assert "no Docker engine answers" in err and "Traceback" not in err


def test_options_policy_without_an_engine():
    assert probe_environment(
        ("OMP_NUM_THREADS", "PATH"), {"OMP_NUM_THREADS": "4", "PATH": "/x"}
    ) == {
        "OMP_NUM_THREADS": "4",
        "PATH": "/x",
        "HOME": "/tmp",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    assert probe_environment(("OMP_NUM_THREADS",), {"GITHUB_TOKEN": "x"}) == probe_environment(())
    with pytest.raises(Exception, match="secrets"):
        ContainerLimits(env_allow=("AWS_SECRET_ACCESS_KEY",))
    assert device_requests(None) == []
    assert device_requests("0,1")[0]["DeviceIDs"] == ["0", "1"]
    assert tail("a\n\nb\nc\n", 2) == "b\nc"


def test_executor_option_is_checked(tmp_path, capsys):
    base = ["diagnose", "--model", str(tmp_path), "--prompt-ids", "1,2"]
    assert main(base + ["--executor", "slurm"]) == 2
    assert "use local, docker or ray" in capsys.readouterr().err
    assert main(base + ["--executor", "docker"]) == 2
    assert "--executor is for full mode" in capsys.readouterr().err
