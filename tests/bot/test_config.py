"""The configuration: TOML for what is public, the environment for secrets, exit 2 when wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ekka.bot.config import ConfigError, load_config

pytestmark = pytest.mark.bot

TOML = """
[github]
api_url = "https://github.example.org/api/v3"
[server]
base_url = "https://ekka.example.org/"
database_url = "sqlite:///ekka.db"
[executor]
kind = "local"
[permissions]
allow = ["Alice"]
[[repositories]]
name = "acme/vllm"
path = "/srv/ekka/vllm"
framework = "vllm"
good = "v0.11.0"
bad = "main"
[[models]]
name = "tiny-llama"
path = "/srv/models/tiny-llama"
dtype = "float32"
prompt = "The quick brown fox"
max_tokens = 6
"""
ENV = {"EKKA_WEBHOOK_SECRET": "s3cret", "EKKA_GITHUB_TOKEN": "t0k"}


def write(tmp_path, text=TOML):
    path = tmp_path / "ekka.toml"
    path.write_text(text)
    return path


def test_the_issue_example_loads(tmp_path):
    config = load_config(write(tmp_path), ENV)
    assert config.api_url == "https://github.example.org/api/v3"
    assert config.base_url == "https://ekka.example.org"
    assert config.repository("ACME/vllm").path == "/srv/ekka/vllm"
    assert config.model("tiny-llama").max_tokens == 6
    assert config.allow == ("alice",)
    assert config.secrets.webhook_secret == "s3cret" and "s3cret" not in repr(config)


def test_the_docker_executor_and_its_options(tmp_path):
    text = TOML.replace(
        'kind = "local"',
        'kind = "docker"\nbase_image = "ekka/base:1"\npull_image = "reg/vllm:{sha}"\n'
        'dockerfile = "docker/Dockerfile.cpu"\nbuild_args = {MAX_JOBS = "2"}\ngpus = "0,1"\n'
        'memory = "32g"\nimage_budget_gb = 200',
    )
    executor = load_config(write(tmp_path, text), ENV).executor
    assert executor.kind == "docker" and executor.base_image == "ekka/base:1"
    assert (
        executor.image_tag == "ekka/{framework}:{sha}" and executor.pull_image == "reg/vllm:{sha}"
    )
    assert executor.build_args == {"MAX_JOBS": "2"} and executor.gpus == "0,1"
    assert executor.memory == "32g" and executor.image_budget_gb == 200
    assert executor.shm_size == "2g" and executor.pids_limit == 4096


def test_the_ray_executor_and_its_options(tmp_path):
    text = TOML.replace(
        'kind = "local"',
        'kind = "ray"\naddress = "ray-head.ekka.svc:6379"\ncpus = 4\ngpus = 1\nmemory_gb = 24\n'
        'accelerator = "H100"\nresources = {nvme = 1}\nretries = 2\n'
        'trace_dir = "/mnt/ekka/traces"\nnode_executor = "docker"\nqueue_timeout = 600',
    )
    executor = load_config(write(tmp_path, text), ENV).executor
    ray = executor.ray
    assert executor.kind == "ray" and ray is not None
    assert ray.address == "ray-head.ekka.svc:6379" and ray.node_executor == "docker"
    assert ray.resources.options() == {
        "num_cpus": 4.0,
        "num_gpus": 1.0,
        "memory": 24 * 1024**3,
        "accelerator_type": "H100",
        "resources": {"nvme": 1.0},
    }
    assert ray.retries == 2 and ray.trace_dir == "/mnt/ekka/traces"
    assert ray.queue_timeout == 600 and ray.timeout is None and executor.gpus is None


def test_a_ray_job_runs_the_full_diagnosis_on_the_cluster(tmp_path):
    """The bot's job hands `[executor] kind = "ray"` to the full diagnosis as its executor (and
    the docker keys too where the nodes use docker)."""
    from ekka.bot.jobs import JobRunner

    text = TOML.replace('kind = "local"', 'kind = "ray"\naddress = "head:6379"\ngpus = 1')
    config = load_config(write(tmp_path, text), ENV)
    options = JobRunner(config, None, None, "w1")._executor_options()  # type: ignore[arg-type]
    assert options == {"executor": "ray", "ray": config.executor.ray}
    docker = text.replace(
        'address = "head:6379"', 'address = "head:6379"\nnode_executor = "docker"'
    )
    options = JobRunner(
        load_config(write(tmp_path, docker), ENV), None, None, "w1"
    )._executor_options()  # type: ignore[arg-type]
    assert options["executor"] == "ray" and options["limits"].gpus is None and options["images"]


def test_the_deploy_example_loads_and_names_the_clusters_resources():
    """deploy/ekka.toml (the bot on KubeRay) loads, and asks for what deploy/raycluster.yaml's
    GPU workers offer."""
    import yaml

    deploy = Path(__file__).resolve().parents[2] / "deploy"
    ray = load_config(deploy / "ekka.toml", ENV).executor.ray
    assert ray is not None and ray.address.startswith("ekka-ray-head-svc.ekka.svc")
    cluster = yaml.safe_load((deploy / "raycluster.yaml").read_text())
    assert (
        cluster["kind"] == "RayCluster"
        and cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    )
    (workers,) = cluster["spec"]["workerGroupSpecs"]
    offered = json.loads(json.loads(workers["rayStartParams"]["resources"]))
    assert set(ray.resources.custom) <= set(offered)
    assert float(workers["rayStartParams"]["num-gpus"]) >= ray.resources.gpus


def test_the_environment_overrides(tmp_path):
    env = {
        **ENV,
        "EKKA_GITHUB_API_URL": "http://127.0.0.1:9/",
        "EKKA_DATABASE_URL": "postgresql+psycopg://x@y/z",
        "EKKA_CONFIG": str(write(tmp_path)),
    }
    config = load_config(None, env)
    assert config.api_url == "http://127.0.0.1:9" and config.database_url.startswith("postgresql")


def test_repositories_from_the_environment_when_the_file_lists_none():
    config = load_config(None, {**ENV, "EKKA_REPOSITORIES": "acme/vllm, acme/other"})
    assert [r.name for r in config.repositories] == ["acme/vllm", "acme/other"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EKKA_GITHUB_TOKEN": "t"}, "EKKA_WEBHOOK_SECRET is not set"),
        ({"EKKA_WEBHOOK_SECRET": "s"}, "no GitHub credentials"),
        ({"EKKA_WEBHOOK_SECRET": "s", "EKKA_GITHUB_APP_ID": "1"}, "EKKA_GITHUB_PRIVATE_KEY_PATH"),
        (
            {
                "EKKA_WEBHOOK_SECRET": "s",
                "EKKA_GITHUB_APP_ID": "1",
                "EKKA_GITHUB_PRIVATE_KEY_PATH": "/nope",
            },
            "/nope",
        ),
    ],
)
def test_missing_secrets_are_named(tmp_path, env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path), env)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[github\n", "not valid TOML"),
        ("[server]\nport = 3\n", "unknown key 'port' in \\[server\\]"),
        ("[executor]\nkind = 'slurm'\n", "executor.kind 'slurm'"),
        ("[executor]\nkind = 'ray'\n", "needs executor.address"),
        ("[executor]\nkind = 'ray'\naddress = 'h:1'\ncpus = 0\n", "some CPUs or GPUs"),
        ("[executor]\nkind = 'ray'\naddress = 'h:1'\ngpus = 'all'\n", "number of GPUs per task"),
        ("[executor]\nkind = 'ray'\naddress = 'h:1'\nnode_executor = 'k8s'\n", "use local or"),
        ("[executor]\nkind = 'ray'\naddress = 'h:1'\nresources = {GPU = 1}\n", "custom resource"),
        ("[executor]\nkind = 'local'\naddress = 'h:1'\n", 'address is for kind = "ray"'),
        ("[executor]\nkind = 'docker'\nimage_tag = 'x:latest'\n", "must hold \\{sha\\}"),
        ("[executor]\nkind = 'docker'\nbuild_args = {JOBS = 2}\n", "build_args must map"),
        ("[executor]\nkind = 'command'\n", "needs executor.command"),
        ("[[repositories]]\nname = 'vllm'\n", "OWNER/NAME"),
        ("[[models]]\nname = 'm'\n", "models\\[0\\].path is missing"),
        ("[[models]]\nname = 'm'\npath = 'p'\ndtype = 'int8'\n", "dtype 'int8'"),
        ("[[models]]\nname = 'm'\npath = 'p'\nmax_tokens = 'six'\n", "max_tokens must be"),
        ("[worker]\nlease_seconds = true\n", "lease_seconds must be"),
    ],
)
def test_malformed_files_say_where(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), ENV)
