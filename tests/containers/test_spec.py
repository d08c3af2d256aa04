"""One executor spec: the CLI's options and the `[executor]` table give the same record, with
the same defaults, and a job stores it and reads it back unchanged."""

from __future__ import annotations

import pytest

from ekka.containers.spec import ExecutorSpec
from ekka.errors import ConfigError, UsageError
from ekka.toml_reader import TomlReader


def from_toml(**table: object) -> ExecutorSpec:
    return ExecutorSpec.from_toml(table, TomlReader("ekka.toml"))


def test_the_defaults_are_the_same_through_every_door():
    assert ExecutorSpec.from_options() == ExecutorSpec() == from_toml()
    spec = ExecutorSpec()
    assert (spec.image_tag, spec.shm_size, spec.pids_limit) == (
        "ekka/{framework}:{sha}",
        "2g",
        4096,
    )


def test_docker_options_and_the_toml_table_give_one_spec():
    options = ExecutorSpec.from_options(
        executor="docker",
        timeout=120,
        workers=2,
        base_image="ekka/base:1",
        pull_image="reg/vllm:{sha}",
        build_arg=["MAX_JOBS=2"],
        gpus="0,1",
        memory="32g",
        image_budget=200,
    )
    table = from_toml(
        kind="docker",
        timeout=120,
        workers=2,
        base_image="ekka/base:1",
        pull_image="reg/vllm:{sha}",
        build_args={"MAX_JOBS": "2"},
        gpus="0,1",
        memory="32g",
        image_budget_gb=200,
    )
    assert options == table
    images, limits = options.images(), options.limits()
    assert images.tag_template == "ekka/{framework}:{sha}" and images.build_args == {
        "MAX_JOBS": "2"
    }
    assert (limits.gpus, limits.shm_size, limits.memory, limits.pids) == ("0,1", "2g", "32g", 4096)
    assert set(options.full_options()) == {"executor", "images", "limits"}


def test_ray_options_and_the_toml_table_give_one_spec():
    options = ExecutorSpec.from_options(
        executor="ray",
        ray_address="head:6379",
        ray_cpus=4,
        ray_gpus=1,
        ray_memory=24,
        ray_resource=["nvme=1"],
        ray_node_executor="docker",
        ray_retries=2,
    )
    table = from_toml(
        kind="ray",
        address="head:6379",
        cpus=4,
        gpus=1,
        memory_gb=24,
        resources={"nvme": 1},
        node_executor="docker",
        retries=2,
    )
    assert options == table and options.ray is not None
    assert options.ray.resources.options()["num_gpus"] == 1.0
    # the nodes run docker: the docker settings go with the ray ones
    assert set(options.full_options()) == {"executor", "ray", "images", "limits"}
    local = ExecutorSpec.from_options(executor="ray", ray_address="head:6379")
    assert local.full_options() == {"executor": "ray", "ray": local.ray}
    assert ExecutorSpec().full_options() == {}


@pytest.mark.parametrize(
    "spec",
    [
        ExecutorSpec(),
        ExecutorSpec(kind="command", command="./oracle.sh", timeout=60),
        ExecutorSpec.from_options(executor="docker", build_arg=["A=1"], memory="8g"),
        ExecutorSpec.from_options(
            executor="ray", ray_address="ray://h:10001", ray_resource=["x=2"], ray_task_timeout=9
        ),
    ],
)
def test_a_spec_reads_back_as_stored(spec):
    assert ExecutorSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"executor": "kubernetes"}, "--executor 'kubernetes': use local, docker or ray."),
        ({"executor": "docker", "build_arg": ["X"]}, "--build-arg 'X' is not KEY=VALUE."),
        ({"executor": "docker", "image_tag": "ekka:latest"}, "must hold {sha}"),
        ({"executor": "ray"}, "--executor ray needs --ray-address"),
        ({"ray_address": "h:1"}, "--ray-address is only for --executor ray"),
    ],
)
def test_bad_options_say_what_is_wrong(options, message):
    with pytest.raises(UsageError, match=__import__("re").escape(message)):
        ExecutorSpec.from_options(**options)


def test_the_image_tag_of_an_unused_docker_executor_is_not_checked():
    assert ExecutorSpec.from_options(image_tag="no-sha").kind == "local"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"kind": "k8s"}, "executor.kind 'k8s' is not one of local, docker, ray, command."),
        ({"kind": "command"}, 'executor.kind "command" needs executor.command'),
        ({"image_tag": "x"}, "executor.image_tag must hold {sha}"),
        ({"kind": "ray"}, 'executor.kind "ray" needs executor.address'),
        ({"kind": "ray", "address": "h:1", "gpus": "all"}, "executor.gpus must be a number"),
        ({"cpus": 2}, 'executor.cpus is for kind = "ray"'),
    ],
)
def test_a_bad_table_names_the_file_and_the_key(table, message):
    with pytest.raises(ConfigError, match=__import__("re").escape(f"ekka.toml: {message}")):
        from_toml(**table)


def test_the_images_are_the_requests_frameworks():
    images = ExecutorSpec(kind="docker").full_options("sglang")["images"]
    assert images.tag("abc123") == "ekka/sglang:abc123"
    assert ExecutorSpec(kind="docker").images().tag("abc123") == "ekka/vllm:abc123"
