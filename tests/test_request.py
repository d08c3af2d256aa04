"""One request: the record, its one resolution (the scenario file read once), a job's stored
parameters (one versioned shape; older rows still read or refused clearly), and the
configurations composed from a request and an executor spec."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from ekka.compose import diagnose_config, full_config
from ekka.containers.spec import ExecutorSpec
from ekka.errors import UsageError
from ekka.request import JobParams, Request, ScenarioRef, resolve_request

SCENARIO = """
[run]
prompt_token_ids = [1, 5, 6, 8]
max_tokens = 3

[[run.before]]
prompt_token_ids = [1, 5, 6, 7]
max_tokens = 1

[run.engine]
enable_prefix_caching = true
block_size = 16
"""


def test_a_request_reads_back_as_stored():
    request = Request(
        model="/m",
        prompt_text="hi",
        prompt_ids=(1, 2),
        dtype="bfloat16",
        max_tokens=3,
        engine={"block_size": 32},
        scenario=ScenarioRef("/s.toml", "prefix"),
        framework="sglang",
    )
    assert Request.from_json(request.to_json()) == request
    with pytest.raises(UsageError, match="unknown field"):
        Request.from_json({**request.to_json(), "modle": "/m"})


def test_the_scenario_file_gives_the_traced_request_and_the_engine(tmp_path):
    (tmp_path / "s.toml").write_text(SCENARIO)
    ref = ScenarioRef(str(tmp_path / "s.toml"))
    resolved = resolve_request(
        Request(model="/unused", prompt_ids=(9, 9), engine={"block_size": 32}, scenario=ref)
    )
    assert resolved.request.prompt_ids == (1, 5, 6, 8) and resolved.request.max_tokens == 3
    assert resolved.request.engine == {"enable_prefix_caching": True, "block_size": 32}
    assert [r.prompt_ids for r in resolved.scenario.before] == [(1, 5, 6, 7)]
    # the CLI: a prompt beside a file that gives one is a mistake to drop
    with pytest.raises(UsageError, match=r"gives the traced request in \[run\]; drop --prompt"):
        resolve_request(Request(model="/unused", prompt_ids=(9, 9), scenario=ref), strict=True)


def test_without_a_file_the_ids_are_the_request(tmp_path):
    resolved = resolve_request(Request(model="/unused", prompt_ids=(3, 4)))
    assert resolved.request.prompt_ids == (3, 4) and resolved.scenario.empty
    with pytest.raises(UsageError, match="give exactly one of --prompt TEXT and --prompt-ids"):
        resolve_request(Request(model="/unused", prompt_text="x", prompt_ids=(3,)), strict=True)


def test_job_parameters_read_back_and_older_rows_still_load():
    params = JobParams(
        request=Request(model="/models/llama", prompt_ids=(1, 2), max_tokens=3),
        good="v1",
        bad="main",
        model_name="tiny-llama",
        executor=ExecutorSpec(kind="docker", memory="8g"),
        command="/ekka diagnose",
    )
    stored = params.to_json()
    assert stored["version"] == 1 and stored["model"] == "tiny-llama"
    assert JobParams.from_json(stored) == params
    old = {  # the worker's flat shape before the version
        "model": "tiny-llama",
        "model_path": "/models/llama",
        "prompt": "Hello",
        "prompt_ids": [],
        "dtype": "bfloat16",
        "max_tokens": 5,
        "engine": {"block_size": 16},
        "scenario": {"name": "prefix", "path": "/s.toml"},
        "good": "v1",
        "bad": "main",
        "command": "/ekka diagnose",
    }
    read = JobParams.from_json(old)
    assert read.executor is None  # the configuration's, as such a job ran
    assert read.request == Request(
        model="/models/llama",
        prompt_text="Hello",
        dtype="bfloat16",
        max_tokens=5,
        engine={"block_size": 16},
        scenario=ScenarioRef("/s.toml", "prefix"),
    )


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"good": "v1", "bad": "main", "model": "m"}, "without a version lack model_path"),
        ({"version": 7}, "of version 7: this Ekka reads version 1"),
    ],
)
def test_rows_it_cannot_read_say_so(row, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        JobParams.from_json(row)


def test_the_configurations_come_from_the_request_and_the_spec(tmp_path):
    (tmp_path / "s.toml").write_text(SCENARIO)
    request = Request(model="/m", scenario=ScenarioRef(str(tmp_path / "s.toml")), dtype="bfloat16")
    resolved = resolve_request(request)
    spec = ExecutorSpec.from_options(executor="docker", workers=3, timeout=60, memory="8g")
    full = full_config(resolved, spec, repo=tmp_path, good="v1", bad="main", workdir=tmp_path / "w")
    assert (full.executor, full.workers, full.timeout) == ("docker", 3, 60)
    assert full.limits is not None and full.limits.memory == "8g"
    assert full.prompt_ids == (1, 5, 6, 8) and full.dtype == "bfloat16"
    assert full.scenario == resolved.scenario and full.package_dir.endswith("vllm")
    local = diagnose_config(resolved, workdir=tmp_path / "w", threshold=5.0)
    assert (local.prompt_ids, local.engine, local.threshold) == (
        full.prompt_ids,
        full.engine,
        5.0,
    )
    from ekka.bisect.oracle import oracle_config

    assert oracle_config(full) == oracle_config(replace(local, threshold=None))
    assert oracle_config(local, with_scenario=False).scenario.empty
