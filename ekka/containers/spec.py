"""One executor spec: where each commit's probe runs, parsed once from the CLI's options and
once from TOML (`[executor]`), with the defaults in one place (`defaults`).

- "local": a worktree of the commit over the installed release (the embedded default);
- "docker": the commit's image (`images`: how it is obtained) in a container (`limits`);
- "ray": a task on a Ray cluster's node (`ray`), which runs the node's local or docker executor
  (then the docker settings apply there);
- "command" (the bot only): bisect with an operator's shell command as the oracle.

`ExecutorSpec.full_options()` gives the full diagnosis's executor fields; `to_json`/`from_json`
store a spec in a job's parameters. Nothing heavy is imported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ekka.containers import defaults
from ekka.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from ekka.containers.ray import RaySettings
    from ekka.toml_reader import TomlReader

DEFAULT_IMAGE_TAG = defaults.IMAGE_TAG
DEFAULT_SHM_SIZE = defaults.SHM_SIZE
DEFAULT_PIDS_LIMIT = defaults.PIDS_LIMIT
DEFAULT_TIMEOUT = defaults.TIMEOUT
DEFAULT_RAY_CPUS = defaults.RAY_CPUS
DEFAULT_RAY_GPUS = defaults.RAY_GPUS
DEFAULT_QUEUE_TIMEOUT = defaults.QUEUE_TIMEOUT
DEFAULT_NODE_EXECUTOR = defaults.NODE_EXECUTOR

KINDS = ("local", "docker", "ray", "command")
CLI_KINDS = ("local", "docker", "ray")  # `--executor`: "command" is `ekka bisect --cmd`
TOML_KEYS = ("kind", "command", "timeout", "workers", "base_image", "image_tag", "pull_image",
             "dockerfile", "build_args", "gpus", "shm_size", "memory", "pids_limit",
             "image_budget_gb", "address", "cpus", "memory_gb", "accelerator", "resources",
             "node_executor", "retries", "trace_dir", "task_timeout",
             "queue_timeout")  # fmt: skip
# kind "ray" only (`gpus` is shared: docker's device string, ray's GPUs per task).
RAY_KEYS = ("address", "cpus", "memory_gb", "accelerator", "resources", "node_executor",
            "retries", "trace_dir", "task_timeout", "queue_timeout")  # fmt: skip


@dataclass(frozen=True)
class ExecutorSpec:
    """How commits are probed: the kind, the probe's time limit, the workers, the docker
    executor's image and container settings, the ray executor's cluster settings."""

    kind: str = "local"
    command: str | None = None  # kind "command": the oracle
    timeout: float = DEFAULT_TIMEOUT
    workers: int = 1
    base_image: str | None = None  # docker: None builds the offline base image once
    image_tag: str = DEFAULT_IMAGE_TAG
    pull_image: str | None = None
    dockerfile: str | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    gpus: str | None = None  # docker's device string ("all", "2", "0,1")
    shm_size: str = DEFAULT_SHM_SIZE
    memory: str | None = None
    pids_limit: int = DEFAULT_PIDS_LIMIT
    image_budget_gb: float | None = None
    ray: RaySettings | None = None  # kind "ray"

    @property
    def uses_docker(self) -> bool:
        """The docker settings apply: kind "docker", or "ray" with docker on the nodes."""
        return self.kind == "docker" or (
            self.kind == "ray" and self.ray is not None and self.ray.node_executor == "docker"
        )

    def full_options(self, framework: str = "vllm") -> dict[str, Any]:
        """The full diagnosis's executor fields (`ekka.full.FullConfig`): executor, images
        (of `framework`), limits and ray; the docker ones only where docker runs the probes."""
        options: dict[str, Any] = {}
        if self.kind in ("docker", "ray"):
            options["executor"] = self.kind
        if self.kind == "ray":
            options["ray"] = self.ray
        if self.uses_docker:
            options.update(images=self.images(framework), limits=self.limits())
        return options

    def images(self, framework: str = "vllm") -> Any:
        """The docker executor's ImageSettings for the images of `framework`."""
        from ekka.containers.images import ImageSettings

        return ImageSettings(
            framework=framework,
            base_image=self.base_image,
            tag_template=self.image_tag,
            pull_template=self.pull_image,
            dockerfile=self.dockerfile,
            build_args=dict(self.build_args),
            budget_gb=self.image_budget_gb,
        )

    def limits(self) -> Any:
        """The docker executor's ContainerLimits (its timeout is the probe's, set later)."""
        from ekka.containers.docker import ContainerLimits

        return ContainerLimits(
            gpus=self.gpus, shm_size=self.shm_size, memory=self.memory, pids=self.pids_limit
        )

    # --- parsing -------------------------------------------------------------------------------

    @classmethod
    def from_options(
        cls,
        *,
        executor: str = "local",
        timeout: float = DEFAULT_TIMEOUT,
        workers: int = 1,
        base_image: str | None = None,
        image_tag: str = DEFAULT_IMAGE_TAG,
        pull_image: str | None = None,
        dockerfile: str | None = None,
        build_arg: Sequence[str] = (),
        gpus: str | None = None,
        shm_size: str = DEFAULT_SHM_SIZE,
        memory: str | None = None,
        pids_limit: int = DEFAULT_PIDS_LIMIT,
        image_budget: float | None = None,
        ray_address: str | None = None,
        ray_cpus: float = DEFAULT_RAY_CPUS,
        ray_gpus: float = DEFAULT_RAY_GPUS,
        ray_memory: float | None = None,
        ray_accelerator: str | None = None,
        ray_resource: Sequence[str] = (),
        ray_node_executor: str = DEFAULT_NODE_EXECUTOR,
        ray_retries: int = 0,
        ray_trace_dir: str | None = None,
        ray_task_timeout: float | None = None,
        ray_queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
    ) -> ExecutorSpec:
        """The spec from the command's options (`ekka diagnose`), each checked: a UsageError
        that names the option and how to write it. The docker options are checked only where
        docker runs the probes."""
        check_cli_kind(executor)
        if (executor == "ray") != (ray_address is not None):
            raise UsageError(
                "--executor ray needs --ray-address HOST:PORT (the cluster's head), and "
                "--ray-address is only for --executor ray."
            )
        ray = None
        if ray_address is not None:
            from ekka.containers.ray import RaySettings, TaskResources, parse_custom_resources

            ray = RaySettings(
                address=ray_address,
                resources=TaskResources(
                    cpus=ray_cpus,
                    gpus=ray_gpus,
                    memory_gb=ray_memory,
                    accelerator=ray_accelerator,
                    custom=parse_custom_resources(ray_resource),
                ),
                timeout=ray_task_timeout,
                queue_timeout=ray_queue_timeout,
                retries=ray_retries,
                node_executor=ray_node_executor,
                trace_dir=ray_trace_dir,
            )
        spec = cls(
            kind=executor,
            timeout=timeout,
            workers=workers,
            base_image=base_image,
            image_tag=image_tag,
            pull_image=pull_image,
            dockerfile=dockerfile,
            build_args=_build_args(build_arg),
            gpus=gpus,
            shm_size=shm_size,
            memory=memory,
            pids_limit=pids_limit,
            image_budget_gb=image_budget,
            ray=ray,
        )
        if spec.uses_docker and "{sha}" not in image_tag:
            raise UsageError(f"--image-tag {image_tag!r} must hold {{sha}} (one image per commit).")
        return spec

    @classmethod
    def from_toml(cls, table: Mapping[str, Any], reader: TomlReader) -> ExecutorSpec:
        """The spec from the `[executor]` table (its keys already checked against TOML_KEYS);
        a mistake is a ConfigError naming the file and the key."""
        where = reader.where
        kind = reader.string(table, "executor.kind", "local")
        if kind not in KINDS:
            raise ConfigError(f"{where}: executor.kind {kind!r} is not one of {', '.join(KINDS)}.")
        command = reader.optional_string(table, "executor.command")
        if kind == "command" and not command:
            raise ConfigError(
                f'{where}: executor.kind "command" needs executor.command (the oracle).'
            )
        build_args = reader.get(table, "executor.build_args", dict, {})
        if not all(isinstance(v, str) for v in build_args.values()):
            raise ConfigError(f"{where}: executor.build_args must map names to strings.")
        image_tag = reader.string(table, "executor.image_tag", DEFAULT_IMAGE_TAG)
        if "{sha}" not in image_tag:
            raise ConfigError(
                f"{where}: executor.image_tag must hold {{sha}} (one image per commit)."
            )
        ray = _ray_from_toml(table, reader) if kind == "ray" else None
        if kind != "ray" and any(key in table for key in RAY_KEYS):
            given = next(key for key in RAY_KEYS if key in table)
            raise ConfigError(f'{where}: executor.{given} is for kind = "ray" (kind is {kind!r}).')
        return cls(
            kind=kind,
            command=command,
            timeout=reader.number(table, "executor.timeout", DEFAULT_TIMEOUT),
            workers=int(reader.number(table, "executor.workers", 1, integer=True)),
            base_image=reader.optional_string(table, "executor.base_image"),
            image_tag=image_tag,
            pull_image=reader.optional_string(table, "executor.pull_image"),
            dockerfile=reader.optional_string(table, "executor.dockerfile"),
            build_args=dict(build_args),
            gpus=None if ray else reader.optional_string(table, "executor.gpus"),
            shm_size=reader.string(table, "executor.shm_size", DEFAULT_SHM_SIZE),
            memory=reader.optional_string(table, "executor.memory"),
            pids_limit=int(
                reader.number(table, "executor.pids_limit", DEFAULT_PIDS_LIMIT, integer=True)
            ),
            image_budget_gb=reader.optional_number(table, "executor.image_budget_gb"),
            ray=ray,
        )

    # --- the job's copy ------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Every field, the ray settings (and their resources) as nested objects."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExecutorSpec:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"an executor spec with unknown field(s) {', '.join(unknown)}.")
        fields = dict(data)
        ray = fields.pop("ray", None)
        if ray is not None:
            from ekka.containers.ray import RaySettings, TaskResources

            ray = dict(ray)
            ray["resources"] = TaskResources(**ray.get("resources", {}))
            ray = RaySettings(**ray)
        return cls(**fields, ray=ray)


def check_cli_kind(kind: str) -> None:
    """`--executor KIND` names one the CLI runs (a UsageError listing them otherwise)."""
    if kind not in CLI_KINDS:
        choices = f"{', '.join(CLI_KINDS[:-1])} or {CLI_KINDS[-1]}"
        raise UsageError(f"--executor {kind!r}: use {choices}.")


def _build_args(items: Sequence[str]) -> dict[str, str]:
    args = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--build-arg {item!r} is not KEY=VALUE.")
        args[key] = value
    return args


def _ray_from_toml(table: Mapping[str, Any], reader: TomlReader) -> RaySettings:
    """[executor] kind = "ray": the cluster's address and the tasks' settings, checked."""
    from ekka.containers.ray import RaySettings, TaskResources

    where = reader.where
    address = reader.optional_string(table, "executor.address")
    if not address:
        raise ConfigError(
            f'{where}: executor.kind "ray" needs executor.address (the cluster\'s head, '
            "HOST:PORT or ray://HOST:10001)."
        )
    resources = reader.get(table, "executor.resources", dict, {})
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in resources.values()):
        raise ConfigError(f"{where}: executor.resources must map resource names to amounts.")
    gpus = table.get("gpus", 0)
    if isinstance(gpus, str):  # docker's device strings are kind "docker"'s
        raise ConfigError(
            f"{where}: executor.gpus must be a number of GPUs per task for kind "
            '"ray" (docker\'s device strings apply to kind "docker").'
        )
    try:
        return RaySettings(
            address=address,
            resources=TaskResources(
                cpus=reader.number(table, "executor.cpus", DEFAULT_RAY_CPUS),
                gpus=reader.number(table, "executor.gpus", DEFAULT_RAY_GPUS),
                memory_gb=reader.optional_number(table, "executor.memory_gb"),
                accelerator=reader.optional_string(table, "executor.accelerator"),
                custom={str(k): float(v) for k, v in resources.items()},
            ),
            timeout=reader.optional_number(table, "executor.task_timeout"),
            queue_timeout=reader.number(table, "executor.queue_timeout", DEFAULT_QUEUE_TIMEOUT),
            retries=int(reader.number(table, "executor.retries", 0, integer=True)),
            node_executor=reader.string(table, "executor.node_executor", DEFAULT_NODE_EXECUTOR),
            trace_dir=reader.optional_string(table, "executor.trace_dir"),
        )
    except ConfigError:
        raise
    except UsageError as exc:
        raise ConfigError(f"{where}: [executor] {exc}") from None
