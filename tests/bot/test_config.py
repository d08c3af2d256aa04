"""The configuration: TOML for what is public, the environment for secrets, exit 2 when wrong."""

from __future__ import annotations

import json
from dataclasses import replace
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
    """The bot's jobs and the nightly sweep hand `[executor] kind = "ray"` to the full diagnosis
    as its executor (and the docker keys too where the nodes use docker)."""
    text = TOML.replace('kind = "local"', 'kind = "ray"\naddress = "head:6379"\ngpus = 1')
    config = load_config(write(tmp_path, text), ENV)
    options = config.executor.full_options()
    assert options == {"executor": "ray", "ray": config.executor.ray}
    docker = text.replace(
        'address = "head:6379"', 'address = "head:6379"\nnode_executor = "docker"'
    )
    options = load_config(write(tmp_path, docker), ENV).executor.full_options()
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


SCENARIO = """
[[run.before]]
prompt_token_ids = [1, 5, 6, 7]
max_tokens = 1

[run]
prompt_token_ids = [1, 5, 6, 8]

[run.engine]
enable_prefix_caching = true
"""


def test_scenarios_name_their_files_and_a_job_runs_the_one_it_names(tmp_path):
    from ekka.request import Request, ScenarioRef, resolve_request

    (tmp_path / "prefix.toml").write_text(SCENARIO)
    text = TOML + f'[[scenarios]]\nname = "prefix-hit"\npath = "{tmp_path / "prefix.toml"}"\n'
    config = load_config(write(tmp_path, text), ENV)
    found = config.scenario("prefix-hit")
    assert found is not None and config.scenario("other") is None
    request = Request(
        model="unused: the file gives token ids",
        prompt_text="the model's prompt: the file's wins",
        engine={"block_size": 32},
        scenario=ScenarioRef(found.path, found.name),
    )
    resolved = resolve_request(request)
    assert [r.prompt_ids for r in resolved.scenario.before] == [(1, 5, 6, 7)]
    assert resolved.request.engine == {"enable_prefix_caching": True, "block_size": 32}
    assert resolved.request.prompt_ids == (1, 5, 6, 8)


def test_a_broken_scenario_file_stops_the_bot_with_its_error(tmp_path):
    (tmp_path / "bad.toml").write_text("[run]\nprompt_token_ids = [1]\nbefor = 2\n")
    text = TOML + f'[[scenarios]]\nname = "x"\npath = "{tmp_path / "bad.toml"}"\n'
    with pytest.raises(ConfigError, match=r"scenarios\[0\].path: .*unknown key\(s\) befor"):
        load_config(write(tmp_path, text), ENV)


SWEEP_BASE = """
[[repositories]]
name = "acme/vllm"
path = "/srv/vllm"
[[models]]
name = "tiny-llama"
path = "/models/llama"
"""


def test_sweeps_are_read_and_need_no_secrets(tmp_path):
    text = (
        SWEEP_BASE
        + """
[[sweeps]]
name = "nightly"
repository = "acme/vllm"
models = ["tiny-llama"]
dtypes = ["float32", "bfloat16"]
"""
    )
    config = load_config(write(tmp_path, text), {}, secrets_required=False)
    [sweep] = config.sweeps
    assert sweep.branch == "main" and sweep.dtypes == ("float32", "bfloat16")
    assert config.sweep("nightly") is sweep and config.secrets.github_token is None
    with pytest.raises(ConfigError, match="EKKA_WEBHOOK_SECRET"):
        load_config(write(tmp_path, text), {})  # the server still needs its secrets


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[sweeps]]\nname = 's'\nrepository = 'acme/other'\nmodels = ['tiny-llama']\n",
         "no \\[\\[repositories\\]\\] entry with a path"),
        ("[[sweeps]]\nname = 's'\nrepository = 'acme/vllm'\nmodels = ['gpt']\n",
         "model 'gpt', which no"),
        ("[[sweeps]]\nname = 's'\nrepository = 'acme/vllm'\nmodels = []\n", "models must list"),
        ("[[sweeps]]\nname = 's'\nrepository = 'acme/vllm'\nmodels = ['tiny-llama']\n"
         "dtypes = ['int4']\n", "dtypes must list"),
        ("[[sweeps]]\nname = 's'\nrepository = 'acme/vllm'\nmodels = ['tiny-llama']\nevery = 1\n",
         "unknown key 'every'"),
        ("[[sweeps]]\nname = 's'\nrepository = 'acme/vllm'\nmodels = ['tiny-llama']\n"
         "scenarios = ['prefix']\n", "scenario 'prefix', which no \\[\\[scenarios\\]\\] entry"),
    ],
)  # fmt: skip
def test_malformed_sweeps_say_what(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, SWEEP_BASE + text), {}, secrets_required=False)


def test_a_sweep_lists_scenarios_beside_models(tmp_path):
    from ekka.sweep.nightly import subject

    (tmp_path / "prefix.toml").write_text(SCENARIO)
    text = SWEEP_BASE + (
        f'[[scenarios]]\nname = "prefix-hit"\npath = "{tmp_path / "prefix.toml"}"\n'
        '[[sweeps]]\nname = "nightly"\nrepository = "acme/vllm"\nmodels = ["tiny-llama"]\n'
        'scenarios = ["prefix-hit"]\n'
    )
    config = load_config(write(tmp_path, text), {}, secrets_required=False)
    [sweep] = config.sweeps
    assert sweep.scenarios == ("prefix-hit",)
    model = config.model("tiny-llama")
    assert model is not None
    alone = subject(replace(model, prompt_ids=(1, 2, 3)))
    assert alone.name == "tiny-llama" and alone.prompt_ids == (1, 2, 3) and alone.scenario.empty
    found = config.scenario("prefix-hit")
    within = subject(replace(model, prompt_ids=(1, 2, 3)), found)
    # the file's traced request, the request before it and its engine; its own results' key
    assert within.name == "tiny-llama+prefix-hit"
    assert within.prompt_ids == (1, 5, 6, 8)
    assert [r.prompt_ids for r in within.scenario.before] == [(1, 5, 6, 7)]
    assert within.engine == {"enable_prefix_caching": True}
