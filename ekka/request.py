"""One request: what a user asks Ekka to run and compare, however it arrives (the CLI's
options, a `/ekka diagnose` command, a nightly sweep's `[[models]]` and `[[scenarios]]`).

`Request` is the frozen record (model, prompt text or ids, dtype, max tokens, engine
arguments, scenario file, framework); `resolve_request` is the one place that reads its
scenario file and tokenizes its prompt, giving a `Resolved` (the traced request's ids, the
requests around it, the engine arguments with the command's over the file's). Nothing here
assumes a framework except through `Request.framework`.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ekka.containers.spec import ExecutorSpec
from ekka.errors import UsageError

if TYPE_CHECKING:
    from ekka.tracer.scenario import Scenario

DEFAULT_FRAMEWORK = "vllm"
DEFAULT_DTYPE = "float32"
DEFAULT_MAX_TOKENS = 4


def parse_engine_args(items: Sequence[str], option: str = "--engine") -> dict[str, Any]:
    """`KEY=VALUE` items (as `--engine` gives them) as keyword arguments for `vllm.LLM(...)`.

    The value is read as JSON where it parses, else kept as text: `max_model_len=2048` -> 2048,
    `enable_chunked_prefill=true` -> True, `kv_cache_dtype=auto` -> "auto", `x=null` -> None,
    `x=[1,2]` -> [1, 2], `x="8"` -> "8". An item without '=', with an empty key or one that is
    not a Python name, or a key given twice is a UsageError saying how to write it.
    """
    example = f"{option} max_model_len=2048 {option} enable_chunked_prefill=true"
    engine: dict[str, Any] = {}
    given: dict[str, str] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise UsageError(f"{option} {item!r} has no '=': write KEY=VALUE, e.g. {example}.")
        if not key:
            raise UsageError(
                f"{option} {item!r} has no key before '=': write KEY=VALUE, e.g. {example}."
            )
        if not key.isidentifier():
            hint = key.replace("-", "_")
            raise UsageError(
                f"{option} {item!r}: the key {key!r} is not a keyword argument of vllm.LLM; "
                + (
                    f"write it as a Python name ({hint}=...), e.g. {example}."
                    if hint.isidentifier()
                    else f"write KEY=VALUE with KEY a Python name, e.g. {example}."
                )
            )
        if key in given:
            raise UsageError(
                f"{option} {key} is given twice ({key}={given[key]} and {item}); "
                "give each key once."
            )
        given[key] = raw
        try:
            engine[key] = json.loads(raw)
        except ValueError:
            engine[key] = raw
    return engine


@dataclass(frozen=True)
class ScenarioRef:
    """A scenario file: `[run]` with `[[run.before]]`, `[[run.alongside]]`, `[run.engine]`
    (`ekka.scenario`); `name` where the configuration names it (`[[scenarios]]`)."""

    path: str
    name: str | None = None


@dataclass(frozen=True)
class Request:
    """What to run through the target and compare with the reference. `prompt_ids` win over
    `prompt_text` where both are given (the text then only labels the report)."""

    model: str  # the model's folder
    prompt_text: str | None = None
    prompt_ids: tuple[int, ...] = ()
    dtype: str = DEFAULT_DTYPE
    max_tokens: int = DEFAULT_MAX_TOKENS
    engine: Mapping[str, Any] = field(default_factory=dict)
    scenario: ScenarioRef | None = None
    framework: str = DEFAULT_FRAMEWORK

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt_text": self.prompt_text,
            "prompt_ids": list(self.prompt_ids),
            "dtype": self.dtype,
            "max_tokens": self.max_tokens,
            "engine": dict(self.engine),
            "scenario": None
            if self.scenario is None
            else {"path": self.scenario.path, "name": self.scenario.name},
            "framework": self.framework,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Request:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise UsageError(f"a request with unknown field(s) {', '.join(unknown)}.")
        scenario = data.get("scenario")
        return cls(
            model=str(data["model"]),
            prompt_text=data.get("prompt_text"),
            prompt_ids=tuple(int(i) for i in data.get("prompt_ids") or ()),
            dtype=str(data.get("dtype", DEFAULT_DTYPE)),
            max_tokens=int(data.get("max_tokens", DEFAULT_MAX_TOKENS)),
            engine=dict(data.get("engine") or {}),
            scenario=None if scenario is None else ScenarioRef(**scenario),
            framework=str(data.get("framework", DEFAULT_FRAMEWORK)),
        )


@dataclass(frozen=True)
class Resolved:
    """A request ready to run: `request.prompt_ids` is the traced request's (from the scenario
    file where it gives one), `request.engine` the file's `[run.engine]` under the request's
    own, and `scenario` the requests around the traced one (empty without a file)."""

    request: Request
    scenario: Scenario


def resolve_request(request: Request, *, strict: bool = False) -> Resolved:
    """Read the request's scenario file (once) and tokenize its prompt.

    `strict` (the CLI): a prompt given beside a file that gives the traced request is a
    UsageError; otherwise (the bot, the sweeps: a model's default prompt) the file's wins."""
    from ekka.scenario import load_run
    from ekka.tracer.capture import tokenize
    from ekka.tracer.scenario import Scenario

    if request.scenario is None:
        ids = _prompt_ids(request, strict)
        return Resolved(replace(request, prompt_ids=tuple(ids)), Scenario())
    file = request.scenario.path
    run = load_run(file)
    in_file = run.prompt.text is not None or run.prompt.ids is not None
    if in_file and strict and (request.prompt_text is not None or request.prompt_ids):
        raise UsageError(
            f"{file} gives the traced request in [run]; drop --prompt/--prompt-ids (or the "
            "file's prompt)."
        )
    traced, scenario = run.resolve(lambda text: tokenize(request.model, text))
    engine = {**run.engine, **request.engine}
    if in_file:
        resolved = replace(
            request,
            prompt_ids=tuple(traced.prompt_ids),
            prompt_text=run.prompt.text,
            max_tokens=traced.max_tokens,
            engine=engine,
        )
    else:
        resolved = replace(request, prompt_ids=tuple(_prompt_ids(request, strict)), engine=engine)
    return Resolved(resolved, scenario)


def _prompt_ids(request: Request, strict: bool) -> list[int]:
    """The traced prompt's ids: the request's ids, else its text tokenized; `strict`: exactly
    one of them given (the CLI's --prompt and --prompt-ids)."""
    from ekka.tracer.capture import resolve_prompt

    if strict:
        return resolve_prompt(request.model, request.prompt_text, request.prompt_ids or None)
    if request.prompt_ids:
        return list(request.prompt_ids)
    return resolve_prompt(request.model, request.prompt_text, None)


def check_request(resolved: Resolved, out: str | Path) -> None:
    """Everything a user can get wrong about the request before a framework starts (dtype,
    max tokens, shapes, prompt length and vocabulary, the scenario's requests): a UsageError."""
    from ekka.tracer.capture import validate
    from ekka.tracer.protocol import CaptureSpec

    request = resolved.request
    validate(
        CaptureSpec(
            framework=request.framework,
            model=request.model,
            prompt_ids=request.prompt_ids,
            out=str(out),
            dtype=request.dtype,
            max_tokens=request.max_tokens,
            engine=dict(request.engine),
            before=resolved.scenario.before,
            alongside=resolved.scenario.alongside,
        )
    )


PARAMS_VERSION = 1


@dataclass(frozen=True)
class JobParams:
    """A job's parameters as stored (one shape for the bot's jobs and the nightly sweep's
    regressions, `version`ed): the request, the executor spec it runs with (None: the
    configuration's, for rows written before the spec was stored), the range, and the
    configured model's name and the command for the reports."""

    request: Request
    good: str
    bad: str
    model_name: str
    executor: ExecutorSpec | None = None
    command: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": PARAMS_VERSION,
            "model": self.model_name,  # what the job list shows
            "good": self.good,
            "bad": self.bad,
            "command": self.command,
            "request": self.request.to_json(),
            "executor": None if self.executor is None else self.executor.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobParams:
        """A stored row; rows from before the version (the worker's flat shape) are read too.
        A row neither shape reads is a UsageError saying what it lacks."""
        version = data.get("version")
        if version is None:
            return cls._unversioned(data)
        if version != PARAMS_VERSION:
            raise UsageError(
                f"job parameters of version {version!r}: this Ekka reads version "
                f"{PARAMS_VERSION}; run the job again with `/ekka diagnose`."
            )
        executor = data.get("executor")
        return cls(
            request=Request.from_json(data["request"]),
            good=str(data["good"]),
            bad=str(data["bad"]),
            model_name=str(data["model"]),
            executor=None if executor is None else ExecutorSpec.from_json(executor),
            command=data.get("command"),
        )

    @classmethod
    def _unversioned(cls, data: Mapping[str, Any]) -> JobParams:
        missing = [k for k in ("model", "model_path", "good", "bad") if not data.get(k)]
        if missing:
            raise UsageError(
                f"job parameters without a version lack {', '.join(missing)}: a row older than "
                "this Ekka's queue; run the job again with `/ekka diagnose`."
            )
        scenario = data.get("scenario")
        return cls(
            request=Request(
                model=str(data["model_path"]),
                prompt_text=data.get("prompt"),
                prompt_ids=tuple(data.get("prompt_ids") or ()),
                dtype=str(data.get("dtype", DEFAULT_DTYPE)),
                max_tokens=int(data.get("max_tokens", DEFAULT_MAX_TOKENS)),
                engine=dict(data.get("engine") or {}),
                scenario=None
                if not scenario
                else ScenarioRef(path=scenario["path"], name=scenario.get("name")),
            ),
            good=str(data["good"]),
            bad=str(data["bad"]),
            model_name=str(data["model"]),
            command=data.get("command"),
        )


def reproduce_command(params: JobParams, good: str, bad: str) -> str:
    """The command that repeats a job between `good` and `bad` on a maintainer's machine (local
    paths as placeholders)."""
    request = params.request
    words = ["ekka diagnose", "--model /path/to/" + shlex.quote(params.model_name)]
    if request.framework != DEFAULT_FRAMEWORK:
        words.append(f"--framework {shlex.quote(request.framework)}")
    if request.prompt_ids:
        words.append("--prompt-ids " + ",".join(str(i) for i in request.prompt_ids))
    elif request.prompt_text:
        words.append("--prompt " + shlex.quote(request.prompt_text))
    words += [f"--dtype {shlex.quote(request.dtype)}", f"--max-tokens {int(request.max_tokens)}"]
    for key, value in sorted(request.engine.items()):
        words.append("--engine " + shlex.quote(f"{key}={json.dumps(value)}"))
    if request.scenario is not None and request.scenario.name:
        words.append("--scenario /path/to/" + shlex.quote(f"{request.scenario.name}.toml"))
    words += [f"--repo /path/to/{request.framework}", f"--good {good[:12]}", f"--bad {bad[:12]}"]
    return " \\\n    ".join(words)
