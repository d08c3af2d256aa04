"""The bot's configuration: one TOML file for what is public, the environment for secrets.

Loaded once, when `ekka serve` or `ekka worker` starts (`load_config`), never at import time.
Everything is a frozen dataclass; a missing secret or a malformed file is a `ConfigError`
(exit 2) that names what is missing or wrong and where.

    [github]       api_url                      (EKKA_GITHUB_API_URL overrides)
    [server]       base_url, database_url, workdir (EKKA_DATABASE_URL overrides database_url)
    [executor]     kind = "local" | "docker" | "ray" | "command", command (kind "command"),
                   timeout, workers; docker: base_image, image_tag, pull_image, dockerfile,
                   build_args (a table), gpus, shm_size, memory, pids_limit, image_budget_gb;
                   ray: address, cpus, gpus, memory_gb, accelerator, resources (a table),
                   node_executor ("local" | "docker": then the docker keys apply on the nodes),
                   retries, trace_dir, task_timeout, queue_timeout
    [worker]       poll_seconds, lease_seconds, max_attempts
    [permissions]  allow = ["login", ...]       (start work without write access)
    [[repositories]] name, path, framework, good, bad
    [[models]]     name, path, dtype, prompt | prompt_ids, max_tokens
    [[scenarios]]  name, path (a scenario file: [run] with [[run.before]], [[run.alongside]],
                   [run.engine]; `/ekka diagnose scenario=NAME` runs it)
    [[sweeps]]     name, repository, branch, models, dtypes (`ekka sweep`: nightly sweeps)

Environment: EKKA_WEBHOOK_SECRET; EKKA_GITHUB_TOKEN, or EKKA_GITHUB_APP_ID with
EKKA_GITHUB_PRIVATE_KEY_PATH (a GitHub App); EKKA_GITHUB_API_URL; EKKA_DATABASE_URL;
EKKA_REPOSITORIES (comma-separated allow-list when the file lists no repositories); EKKA_CONFIG.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ekka.containers.ray import RaySettings, TaskResources
from ekka.errors import UsageError
from ekka.forge.settings import GitHubSettings

DEFAULT_API_URL = "https://api.github.com"
DEFAULT_DATABASE_URL = "sqlite:///ekka-bot.db"
EXECUTOR_KINDS = ("local", "docker", "ray", "command")
EXECUTOR_KEYS = ("kind", "command", "timeout", "workers", "base_image", "image_tag", "pull_image",
                 "dockerfile", "build_args", "gpus", "shm_size", "memory", "pids_limit",
                 "image_budget_gb", "address", "cpus", "memory_gb", "accelerator", "resources",
                 "node_executor", "retries", "trace_dir", "task_timeout",
                 "queue_timeout")  # fmt: skip
# kind "ray" only (`gpus` is shared: docker's device string, ray's GPUs per task).
RAY_KEYS = ("address", "cpus", "memory_gb", "accelerator", "resources", "node_executor",
            "retries", "trace_dir", "task_timeout", "queue_timeout")  # fmt: skip
DTYPES = ("float32", "bfloat16")


class ConfigError(UsageError):
    """Raised when the bot's configuration file is malformed or a secret it needs is missing
    from the environment (the message names which, and where)."""


@dataclass(frozen=True)
class Repository:
    """A GitHub repository the bot accepts commands on, and its local clone."""

    name: str  # owner/name on GitHub
    path: str | None = None  # a clone the bot fetches before each job (None: commands only)
    framework: str = "vllm"
    good: str | None = None  # default `good=` of `/ekka diagnose`
    bad: str | None = None  # default `bad=` (e.g. "main")


@dataclass(frozen=True)
class Model:
    """A model `/ekka diagnose model=NAME` may name: a local folder and its defaults."""

    name: str
    path: str
    dtype: str = "float32"
    prompt: str | None = None
    prompt_ids: tuple[int, ...] = ()
    max_tokens: int = 4


@dataclass(frozen=True)
class ScenarioFile:
    """A scenario `/ekka diagnose scenario=NAME` may name: its file (read when the bot starts,
    so that a mistake in it stops the bot with the file's error, not a job)."""

    name: str
    path: str


@dataclass(frozen=True)
class Sweep:
    """A nightly sweep (`ekka sweep --config`): each (model, dtype) probed at the branch head."""

    name: str
    repository: str  # a configured [[repositories]] name (it needs a path)
    branch: str = "main"
    models: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ("float32",)
    # configured [[scenarios]] names: each model is swept alone and in each of them
    scenarios: tuple[str, ...] = ()


@dataclass(frozen=True)
class Executor:
    """How a job probes commits: "local" is the full diagnosis (vLLM traced against
    transformers, each commit from a worktree); "docker" the same with each commit probed in
    its own image (`ekka.containers`: the image and container options below); "ray" the same
    with each commit probed by a task on a Ray cluster (`ray`: its address, the tasks'
    resources, the nodes' executor); "command" bisects with an operator's shell command as the
    oracle (exit 0 good, 125 skip, other bad), as `ekka bisect --cmd` does."""

    kind: str = "local"
    command: str | None = None
    timeout: float = 600.0
    workers: int = 1
    base_image: str | None = None  # docker: None builds the offline base image once
    image_tag: str = "ekka/{framework}:{sha}"
    pull_image: str | None = None
    dockerfile: str | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    gpus: str | None = None
    shm_size: str = "2g"
    memory: str | None = None
    pids_limit: int = 4096
    image_budget_gb: float | None = None
    ray: RaySettings | None = None  # kind "ray"


@dataclass(frozen=True)
class WorkerSettings:
    poll_seconds: float = 1.0
    lease_seconds: float = 120.0  # a running job whose heartbeat is older is resumed
    max_attempts: int = 3  # a job interrupted this many times ends failed


@dataclass(frozen=True)
class Secrets:
    """What comes from the environment only."""

    webhook_secret: str
    github_token: str | None = None
    app_id: str | None = None
    private_key: str | None = None  # the PEM text read from EKKA_GITHUB_PRIVATE_KEY_PATH

    def __repr__(self) -> str:  # never print a secret
        return "Secrets(...)"


@dataclass(frozen=True)
class BotConfig:
    secrets: Secrets
    api_url: str = DEFAULT_API_URL
    base_url: str | None = None
    throttle: bool = True  # pace GitHub calls as GitHub asks (off only for a local test server)
    database_url: str = DEFAULT_DATABASE_URL
    workdir: str = ".ekka/bot"
    executor: Executor = field(default_factory=Executor)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    allow: tuple[str, ...] = ()
    repositories: tuple[Repository, ...] = ()
    models: tuple[Model, ...] = ()
    scenarios: tuple[ScenarioFile, ...] = ()
    sweeps: tuple[Sweep, ...] = ()

    @property
    def github(self) -> GitHubSettings:
        """Where GitHub is and the credentials from the environment (`ekka.forge.client.connect`)."""
        return GitHubSettings(
            api_url=self.api_url,
            token=self.secrets.github_token,
            app_id=self.secrets.app_id,
            private_key=self.secrets.private_key,
            throttle=self.throttle,
        )

    def repository(self, name: str) -> Repository | None:
        """The configured repository of that name (GitHub names compare case-insensitively)."""
        return next((r for r in self.repositories if r.name.lower() == name.lower()), None)

    def model(self, name: str) -> Model | None:
        return next((m for m in self.models if m.name == name), None)

    def scenario(self, name: str) -> ScenarioFile | None:
        return next((s for s in self.scenarios if s.name == name), None)

    def sweep(self, name: str) -> Sweep | None:
        return next((s for s in self.sweeps if s.name == name), None)


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    secrets_required: bool = True,
) -> BotConfig:
    """The configuration from `path` (else $EKKA_CONFIG; no file is allowed when the
    environment says enough) and the environment (`env`, default os.environ).

    `secrets_required=False` (`ekka sweep`): no webhook secret needed, and no GitHub
    credentials either (the sweep then writes its reports locally)."""
    env = os.environ if env is None else env
    where = str(path) if path is not None else env.get("EKKA_CONFIG")
    data: dict[str, Any] = {}
    if where:
        file = Path(where)
        if not file.is_file():
            raise ConfigError(
                f"configuration file {file} does not exist (--config or EKKA_CONFIG)."
            )
        try:
            data = tomllib.loads(file.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"configuration file {file} is not valid TOML: {exc}") from None
        where = str(file)
    else:
        where = "the configuration"
    return from_mapping(data, env, where, secrets_required=secrets_required)


def from_mapping(
    data: Mapping[str, Any],
    env: Mapping[str, str],
    where: str,
    *,
    secrets_required: bool = True,
) -> BotConfig:
    """A BotConfig from a parsed TOML document and the environment."""
    reader = _Reader(where)
    reader.known(data, "", ("github", "server", "executor", "worker", "permissions",
                            "repositories", "models", "scenarios", "sweeps"))  # fmt: skip
    github = reader.table(data, "github", ("api_url", "throttle"))
    server = reader.table(data, "server", ("base_url", "database_url", "workdir"))
    executor = reader.table(data, "executor", EXECUTOR_KEYS)
    worker = reader.table(data, "worker", ("poll_seconds", "lease_seconds", "max_attempts"))
    permissions = reader.table(data, "permissions", ("allow",))

    repositories = tuple(
        _repository(reader, i, r) for i, r in enumerate(reader.array(data, "repositories"))
    )
    if not repositories and env.get("EKKA_REPOSITORIES"):
        names = [n.strip() for n in env["EKKA_REPOSITORIES"].split(",") if n.strip()]
        repositories = tuple(Repository(name=_repo_name(n, "EKKA_REPOSITORIES")) for n in names)
    models = tuple(_model(reader, i, m) for i, m in enumerate(reader.array(data, "models")))
    _unique([r.name.lower() for r in repositories], "repository", where)
    _unique([m.name for m in models], "model", where)
    scenarios = tuple(
        _scenario(reader, i, s) for i, s in enumerate(reader.array(data, "scenarios"))
    )
    _unique([s.name for s in scenarios], "scenario", where)
    sweeps = tuple(_sweep(reader, i, s) for i, s in enumerate(reader.array(data, "sweeps")))
    _unique([s.name for s in sweeps], "sweep", where)
    for sweep in sweeps:
        _check_sweep(sweep, repositories, models, scenarios, where)

    kind = reader.string(executor, "executor.kind", "local")
    if kind not in EXECUTOR_KINDS:
        raise ConfigError(
            f"{where}: executor.kind {kind!r} is not one of {', '.join(EXECUTOR_KINDS)}."
        )
    command = reader.optional_string(executor, "executor.command")
    if kind == "command" and not command:
        raise ConfigError(f'{where}: executor.kind "command" needs executor.command (the oracle).')

    build_args = reader.get(executor, "executor.build_args", dict, {})
    if not all(isinstance(v, str) for v in build_args.values()):
        raise ConfigError(f"{where}: executor.build_args must map names to strings.")
    image_tag = reader.string(executor, "executor.image_tag", "ekka/{framework}:{sha}")
    if "{sha}" not in image_tag:
        raise ConfigError(f"{where}: executor.image_tag must hold {{sha}} (one image per commit).")
    budget = executor.get("image_budget_gb")
    ray = _ray_settings(reader, executor, where) if kind == "ray" else None
    if kind != "ray" and any(key in executor for key in RAY_KEYS):
        given = next(key for key in RAY_KEYS if key in executor)
        raise ConfigError(f'{where}: executor.{given} is for kind = "ray" (kind is {kind!r}).')

    secret = env.get("EKKA_WEBHOOK_SECRET", "")
    if not secret and secrets_required:
        raise ConfigError(
            "EKKA_WEBHOOK_SECRET is not set: the webhook secret comes from the environment only."
        )
    token = env.get("EKKA_GITHUB_TOKEN") or None
    app_id = env.get("EKKA_GITHUB_APP_ID") or None
    key_path = env.get("EKKA_GITHUB_PRIVATE_KEY_PATH") or None
    private_key = None
    if app_id or key_path:
        if not (app_id and key_path):
            missing = "EKKA_GITHUB_PRIVATE_KEY_PATH" if app_id else "EKKA_GITHUB_APP_ID"
            raise ConfigError(
                f"a GitHub App needs EKKA_GITHUB_APP_ID and EKKA_GITHUB_PRIVATE_KEY_PATH: {missing} is not set."
            )
        try:
            private_key = Path(key_path).read_text()
        except OSError as exc:
            raise ConfigError(f"EKKA_GITHUB_PRIVATE_KEY_PATH {key_path}: {exc.strerror}.") from None
    elif not token and secrets_required:
        raise ConfigError(
            "no GitHub credentials: set EKKA_GITHUB_TOKEN, or EKKA_GITHUB_APP_ID and "
            "EKKA_GITHUB_PRIVATE_KEY_PATH for a GitHub App."
        )

    allow = reader.get(permissions, "permissions.allow", list, [])
    if not all(isinstance(a, str) for a in allow):
        raise ConfigError(f"{where}: permissions.allow must be a list of GitHub logins.")
    return BotConfig(
        secrets=Secrets(secret, token, app_id, private_key),
        api_url=(
            env.get("EKKA_GITHUB_API_URL")
            or reader.string(github, "github.api_url", DEFAULT_API_URL)
        ).rstrip("/"),
        throttle=reader.get(github, "github.throttle", bool, True),
        base_url=(reader.optional_string(server, "server.base_url") or "").rstrip("/") or None,
        database_url=env.get("EKKA_DATABASE_URL")
        or reader.string(server, "server.database_url", DEFAULT_DATABASE_URL),
        workdir=reader.string(server, "server.workdir", ".ekka/bot"),
        executor=Executor(
            kind=kind,
            command=command,
            timeout=reader.number(executor, "executor.timeout", 600.0),
            workers=int(reader.number(executor, "executor.workers", 1, integer=True)),
            base_image=reader.optional_string(executor, "executor.base_image"),
            image_tag=image_tag,
            pull_image=reader.optional_string(executor, "executor.pull_image"),
            dockerfile=reader.optional_string(executor, "executor.dockerfile"),
            build_args=dict(build_args),
            gpus=None if ray else reader.optional_string(executor, "executor.gpus"),
            shm_size=reader.string(executor, "executor.shm_size", "2g"),
            memory=reader.optional_string(executor, "executor.memory"),
            pids_limit=int(reader.number(executor, "executor.pids_limit", 4096, integer=True)),
            image_budget_gb=None
            if budget is None
            else reader.number(executor, "executor.image_budget_gb", 0.0),
            ray=ray,
        ),
        worker=WorkerSettings(
            poll_seconds=reader.number(worker, "worker.poll_seconds", 1.0),
            lease_seconds=reader.number(worker, "worker.lease_seconds", 120.0),
            max_attempts=int(reader.number(worker, "worker.max_attempts", 3, integer=True)),
        ),
        allow=tuple(a.lower() for a in allow),
        repositories=repositories,
        models=models,
        scenarios=scenarios,
        sweeps=sweeps,
    )


def _ray_settings(reader: _Reader, executor: Mapping[str, Any], where: str) -> RaySettings:
    """[executor] kind = "ray": the cluster's address and the tasks' settings, checked."""
    address = reader.optional_string(executor, "executor.address")
    if not address:
        raise ConfigError(
            f'{where}: executor.kind "ray" needs executor.address (the cluster\'s head, '
            "HOST:PORT or ray://HOST:10001)."
        )
    resources = reader.get(executor, "executor.resources", dict, {})
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in resources.values()):
        raise ConfigError(f"{where}: executor.resources must map resource names to amounts.")
    memory = executor.get("memory_gb")
    task_timeout = executor.get("task_timeout")
    try:
        return RaySettings(
            address=address,
            resources=TaskResources(
                cpus=reader.number(executor, "executor.cpus", 1.0),
                gpus=_ray_gpus(reader, executor),
                memory_gb=None
                if memory is None
                else reader.number(executor, "executor.memory_gb", 0.0),
                accelerator=reader.optional_string(executor, "executor.accelerator"),
                custom={str(k): float(v) for k, v in resources.items()},
            ),
            timeout=None
            if task_timeout is None
            else reader.number(executor, "executor.task_timeout", 0.0),
            queue_timeout=reader.number(executor, "executor.queue_timeout", 1800.0),
            retries=int(reader.number(executor, "executor.retries", 0, integer=True)),
            node_executor=reader.string(executor, "executor.node_executor", "local"),
            trace_dir=reader.optional_string(executor, "executor.trace_dir"),
        )
    except ConfigError:
        raise
    except UsageError as exc:
        raise ConfigError(f"{where}: [executor] {exc}") from None


def _ray_gpus(reader: _Reader, executor: Mapping[str, Any]) -> float:
    """kind "ray": `gpus` is the GPUs per task, a number (docker's `gpus` is a device string)."""
    value = executor.get("gpus", 0)
    if isinstance(value, str):
        raise ConfigError(
            f"{reader.where}: executor.gpus must be a number of GPUs per task for kind "
            '"ray" (docker\'s device strings apply to kind "docker").'
        )
    return reader.number(executor, "executor.gpus", 0.0)


def _repository(reader: _Reader, index: int, data: Any) -> Repository:
    at = f"repositories[{index}]"
    if not isinstance(data, dict):
        raise ConfigError(f"{reader.where}: {at} is not a table ([[repositories]]).")
    reader.known(data, at, ("name", "path", "framework", "good", "bad"))
    name = _repo_name(reader.required_string(data, f"{at}.name"), f"{reader.where}: {at}.name")
    framework = reader.string(data, f"{at}.framework", "vllm")
    if framework != "vllm":
        raise ConfigError(f"{reader.where}: {at}.framework {framework!r}: only vllm is supported.")
    return Repository(
        name=name,
        path=reader.optional_string(data, f"{at}.path"),
        framework=framework,
        good=reader.optional_string(data, f"{at}.good"),
        bad=reader.optional_string(data, f"{at}.bad"),
    )


def _model(reader: _Reader, index: int, data: Any) -> Model:
    at = f"models[{index}]"
    if not isinstance(data, dict):
        raise ConfigError(f"{reader.where}: {at} is not a table ([[models]]).")
    reader.known(data, at, ("name", "path", "dtype", "prompt", "prompt_ids", "max_tokens"))
    dtype = reader.string(data, f"{at}.dtype", "float32")
    if dtype not in DTYPES:
        raise ConfigError(
            f"{reader.where}: {at}.dtype {dtype!r} is not one of {', '.join(DTYPES)}."
        )
    ids = reader.get(data, f"{at}.prompt_ids", list, [])
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ConfigError(f"{reader.where}: {at}.prompt_ids must be a list of token ids.")
    prompt = reader.optional_string(data, f"{at}.prompt")
    if prompt and ids:
        raise ConfigError(f"{reader.where}: {at} gives both prompt and prompt_ids; give one.")
    max_tokens = int(reader.number(data, f"{at}.max_tokens", 4, integer=True))
    if max_tokens < 1:
        raise ConfigError(f"{reader.where}: {at}.max_tokens must be at least 1.")
    return Model(
        name=reader.required_string(data, f"{at}.name"),
        path=reader.required_string(data, f"{at}.path"),
        dtype=dtype,
        prompt=prompt,
        prompt_ids=tuple(ids),
        max_tokens=max_tokens,
    )


def _scenario(reader: _Reader, index: int, data: Any) -> ScenarioFile:
    from ekka.scenario import load_run

    at = f"scenarios[{index}]"
    if not isinstance(data, dict):
        raise ConfigError(f"{reader.where}: {at} is not a table ([[scenarios]]).")
    reader.known(data, at, ("name", "path"))
    path = reader.required_string(data, f"{at}.path")
    try:
        load_run(path)
    except UsageError as exc:
        raise ConfigError(f"{reader.where}: {at}.path: {exc}") from None
    return ScenarioFile(name=reader.required_string(data, f"{at}.name"), path=path)


def _sweep(reader: _Reader, index: int, data: Any) -> Sweep:
    at = f"sweeps[{index}]"
    if not isinstance(data, dict):
        raise ConfigError(f"{reader.where}: {at} is not a table ([[sweeps]]).")
    reader.known(data, at, ("name", "repository", "branch", "models", "dtypes", "scenarios"))
    models = reader.get(data, f"{at}.models", list, [])
    dtypes = reader.get(data, f"{at}.dtypes", list, ["float32"])
    scenarios = reader.get(data, f"{at}.scenarios", list, [])
    if not all(isinstance(s, str) for s in scenarios):
        raise ConfigError(
            f"{reader.where}: {at}.scenarios must list scenario names ([[scenarios]])."
        )
    if not models or not all(isinstance(m, str) for m in models):
        raise ConfigError(f"{reader.where}: {at}.models must list model names ([[models]]).")
    if not dtypes or not all(d in DTYPES for d in dtypes):
        raise ConfigError(
            f"{reader.where}: {at}.dtypes must list dtypes among {', '.join(DTYPES)}."
        )
    return Sweep(
        name=reader.required_string(data, f"{at}.name"),
        repository=reader.required_string(data, f"{at}.repository"),
        branch=reader.string(data, f"{at}.branch", "main"),
        models=tuple(dict.fromkeys(models)),
        dtypes=tuple(dict.fromkeys(dtypes)),
        scenarios=tuple(dict.fromkeys(scenarios)),
    )


def _check_sweep(
    sweep: Sweep,
    repositories: tuple[Repository, ...],
    models: tuple[Model, ...],
    scenarios: tuple[ScenarioFile, ...],
    where: str,
) -> None:
    """A sweep names a configured repository with a clone, configured models and scenarios."""
    repo = next((r for r in repositories if r.name.lower() == sweep.repository.lower()), None)
    if repo is None or repo.path is None:
        raise ConfigError(
            f"{where}: sweep {sweep.name!r} names repository {sweep.repository!r}, which has no "
            "[[repositories]] entry with a path (the clone the sweep probes)."
        )
    known = {m.name for m in models}
    for name in sweep.models:
        if name not in known:
            raise ConfigError(
                f"{where}: sweep {sweep.name!r} names model {name!r}, which no [[models]] entry "
                f"defines (known: {', '.join(sorted(known)) or 'none'})."
            )
    named = {s.name for s in scenarios}
    for name in sweep.scenarios:
        if name not in named:
            raise ConfigError(
                f"{where}: sweep {sweep.name!r} names scenario {name!r}, which no [[scenarios]] "
                f"entry defines (known: {', '.join(sorted(named)) or 'none'})."
            )


def _repo_name(name: str, where: str) -> str:
    owner, sep, repo = name.partition("/")
    if not sep or not owner or not repo or "/" in repo:
        raise ConfigError(f"{where}: repository {name!r}: write it as OWNER/NAME, e.g. acme/vllm.")
    return name


def _unique(names: list[str], what: str, where: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{where}: the {what} {name!r} is configured twice.")
        seen.add(name)


class _Reader:
    """Typed reads from the parsed TOML with errors that name the file and the key."""

    def __init__(self, where: str) -> None:
        self.where = where

    def known(self, data: Mapping[str, Any], at: str, keys: tuple[str, ...]) -> None:
        unknown = sorted(set(data) - set(keys))
        if unknown:
            place = f" in [{at}]" if at else ""
            raise ConfigError(
                f"{self.where}: unknown key {unknown[0]!r}{place}; the keys are {', '.join(keys)}."
            )

    def table(self, data: Mapping[str, Any], name: str, keys: tuple[str, ...]) -> Mapping[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.where}: [{name}] must be a table.")
        self.known(value, name, keys)
        return value

    def array(self, data: Mapping[str, Any], name: str) -> list[Any]:
        value = data.get(name, [])
        if not isinstance(value, list):
            raise ConfigError(f"{self.where}: {name} must be an array of tables ([[{name}]]).")
        return value

    def get(self, data: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
        value = data.get(key.rsplit(".", 1)[-1], default)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise ConfigError(f"{self.where}: {key} must be a {kind.__name__}, not {value!r}.")
        return value

    def string(self, data: Mapping[str, Any], key: str, default: str) -> str:
        value: str = self.get(data, key, str, default)
        return value

    def optional_string(self, data: Mapping[str, Any], key: str) -> str | None:
        value = data.get(key.rsplit(".", 1)[-1])
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{self.where}: {key} must be a string, not {value!r}.")
        return value

    def required_string(self, data: Mapping[str, Any], key: str) -> str:
        value = self.optional_string(data, key)
        if not value:
            raise ConfigError(f"{self.where}: {key} is missing.")
        return value

    def number(
        self, data: Mapping[str, Any], key: str, default: float, *, integer: bool = False
    ) -> float:
        value = data.get(key.rsplit(".", 1)[-1], default)
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value < 0:
            what = "a non-negative integer" if integer else "a non-negative number"
            raise ConfigError(f"{self.where}: {key} must be {what}, not {value!r}.")
        return float(value)
