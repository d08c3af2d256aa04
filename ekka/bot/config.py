"""The bot's configuration: one TOML file for what is public, the environment for secrets.

Loaded once, when `ekka serve` or `ekka worker` starts (`load_config`), never at import time.
Everything is a frozen dataclass; a missing secret or a malformed file is a `ConfigError`
(exit 2) that names what is missing or wrong and where.

    [github]       api_url                      (EKKA_GITHUB_API_URL overrides)
    [server]       base_url, database_url, workdir (EKKA_DATABASE_URL overrides database_url)
    [executor]     (ekka.containers.spec.ExecutorSpec.from_toml)
                   kind = "local" | "docker" | "ray" | "command", command (kind "command"),
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

from ekka.containers.spec import TOML_KEYS as EXECUTOR_KEYS
from ekka.containers.spec import ExecutorSpec
from ekka.errors import ConfigError, UsageError
from ekka.forge.settings import GitHubSettings
from ekka.frameworks import FRAMEWORKS
from ekka.request import Request, ScenarioRef
from ekka.toml_reader import TomlReader

DEFAULT_API_URL = "https://api.github.com"
DEFAULT_DATABASE_URL = "sqlite:///ekka-bot.db"
DTYPES = ("float32", "bfloat16")


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

    def request(
        self,
        *,
        framework: str,
        prompt: str | None = None,
        dtype: str | None = None,
        max_tokens: int | None = None,
        engine: Mapping[str, Any] | None = None,
        scenario: ScenarioFile | None = None,
    ) -> Request:
        """The request of this model with its defaults, each overridden where given (a
        `prompt` replaces the model's prompt or ids); `scenario`: a configured file."""
        return Request(
            model=self.path,
            prompt_text=prompt if prompt is not None else self.prompt,
            prompt_ids=() if prompt is not None else self.prompt_ids,
            dtype=dtype if dtype is not None else self.dtype,
            max_tokens=max_tokens if max_tokens is not None else self.max_tokens,
            engine=dict(engine or {}),
            scenario=None if scenario is None else ScenarioRef(scenario.path, scenario.name),
            framework=framework,
        )


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
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
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
    reader = TomlReader(where)
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

    executor_spec = ExecutorSpec.from_toml(executor, reader)

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
        executor=executor_spec,
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


def _repository(reader: TomlReader, index: int, data: Any) -> Repository:
    at = f"repositories[{index}]"
    if not isinstance(data, dict):
        raise ConfigError(f"{reader.where}: {at} is not a table ([[repositories]]).")
    reader.known(data, at, ("name", "path", "framework", "good", "bad"))
    name = _repo_name(reader.required_string(data, f"{at}.name"), f"{reader.where}: {at}.name")
    framework = reader.string(data, f"{at}.framework", "vllm")
    if framework not in FRAMEWORKS:
        raise ConfigError(
            f"{reader.where}: {at}.framework {framework!r}: use one of {', '.join(FRAMEWORKS)}."
        )
    return Repository(
        name=name,
        path=reader.optional_string(data, f"{at}.path"),
        framework=framework,
        good=reader.optional_string(data, f"{at}.good"),
        bad=reader.optional_string(data, f"{at}.bad"),
    )


def _model(reader: TomlReader, index: int, data: Any) -> Model:
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


def _scenario(reader: TomlReader, index: int, data: Any) -> ScenarioFile:
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


def _sweep(reader: TomlReader, index: int, data: Any) -> Sweep:
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


__all__ = [
    "DTYPES", "BotConfig", "ConfigError", "ExecutorSpec", "Model", "Repository", "ScenarioFile",
    "Secrets", "Sweep", "WorkerSettings", "from_mapping", "load_config",
]  # fmt: skip
