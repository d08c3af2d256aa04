"""Scenarios: the traced request among other requests of the same engine.

Some silent errors of a serving engine show only when requests meet: a request that reuses
another's prefix cache, requests batched together, a request preempted and recomputed. A
scenario says which requests meet the traced one (the bench's case format, `[run]`):

    [run]                          # the traced request (the only one compared by default)
    prompt_token_ids = [1, 54, ...]   # or prompt = "..."
    max_tokens = 4

    [[run.before]]                 # runs to completion first, in the same engine, in order
    prompt_token_ids = [1, 54, ...]
    max_tokens = 1

    [[run.alongside]]              # submitted in the traced request's generate call, before
    prompt_token_ids = [1, 77, ...]   # it: the engine batches them
    max_tokens = 4

    [run.engine]                   # keyword arguments for vllm.LLM(...): a small KV cache
    num_gpu_blocks_override = 8    # forces preemption

`load_run` reads such a file (or a case's `[run]` table) into a `RunSpec`: the traced request,
its `Scenario` (the tracer's record, `ekka.tracer.scenario`) and the engine arguments, each a
frozen record; `scenario_toml` writes one back. Prompts given as text are
tokenized with the model's tokenizer by `RunSpec.resolve`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ekka.errors import UsageError
from ekka.tracer.protocol import ScenarioRequest
from ekka.tracer.scenario import Scenario

RUN_KEYS = {"prompt", "prompt_token_ids", "max_tokens", "before", "alongside", "engine"}
REQUEST_KEYS = {"prompt", "prompt_token_ids", "max_tokens"}


@dataclass(frozen=True)
class Prompt:
    """A request as a file gives it: token ids, or text to tokenize with the model's tokenizer."""

    text: str | None
    ids: tuple[int, ...] | None
    max_tokens: int

    def request(self, tokenize: Callable[[str], list[int]]) -> ScenarioRequest:
        ids = self.ids if self.ids is not None else tuple(tokenize(self.text or ""))
        return ScenarioRequest(prompt_ids=tuple(ids), max_tokens=self.max_tokens)


@dataclass(frozen=True)
class RunSpec:
    """A `[run]` table: the traced request, its scenario and the engine arguments."""

    prompt: Prompt
    before: tuple[Prompt, ...] = ()
    alongside: tuple[Prompt, ...] = ()
    engine: Mapping[str, Any] = field(default_factory=dict)

    @property
    def has_scenario(self) -> bool:
        return bool(self.before or self.alongside)

    def resolve(self, tokenize: Callable[[str], list[int]]) -> tuple[ScenarioRequest, Scenario]:
        """The traced request and its scenario, every prompt as token ids."""
        return self.prompt.request(tokenize), Scenario(
            before=tuple(p.request(tokenize) for p in self.before),
            alongside=tuple(p.request(tokenize) for p in self.alongside),
        )


def parse_run(run: Any, where: str, *, require_prompt: bool = True) -> RunSpec:
    """A `[run]` table as a RunSpec; any mistake is a UsageError naming `where` and the key."""
    if not isinstance(run, Mapping):
        raise UsageError(f"{where}: [run] must be a table (see bench/FORMAT.md, 'Scenarios').")
    unknown = sorted(set(run) - RUN_KEYS)
    if unknown:
        raise UsageError(
            f"{where}: unknown key(s) {', '.join(unknown)} in [run]; known: "
            f"{', '.join(sorted(RUN_KEYS))}."
        )
    engine = run.get("engine", {})
    if not isinstance(engine, Mapping):
        raise UsageError(f"{where}: [run.engine] must be a table of vllm.LLM(...) arguments.")
    return RunSpec(
        prompt=_prompt(run, f"{where} [run]", required=require_prompt),
        before=_requests(run, "before", where),
        alongside=_requests(run, "alongside", where),
        engine=dict(engine),
    )


def load_run(path: str | Path) -> RunSpec:
    """A scenario file (`[run]` with its `[[run.before]]`, `[[run.alongside]]`, `[run.engine]`)."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"scenario file {file} not found.")
    try:
        data = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{file}: not valid TOML ({exc}).") from None
    if "run" not in data:
        raise UsageError(f"{file}: no [run] table (see bench/FORMAT.md, 'Scenarios').")
    return parse_run(data["run"], str(file), require_prompt=False)


def _requests(run: Mapping[str, Any], key: str, where: str) -> tuple[Prompt, ...]:
    items = run.get(key, [])
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise UsageError(f"{where}: run.{key} must be an array of tables ([[run.{key}]]).")
    return tuple(
        _prompt(item, f"{where} [[run.{key}]] #{i + 1}", required=True)
        for i, item in enumerate(items)
    )


def _prompt(table: Mapping[str, Any], where: str, *, required: bool) -> Prompt:
    if "[[" in where:  # a request's table (the [run] table is checked above)
        unknown = sorted(set(table) - REQUEST_KEYS)
        if unknown:
            raise UsageError(
                f"{where}: unknown key(s) {', '.join(unknown)}; a request takes "
                f"{', '.join(sorted(REQUEST_KEYS))}."
            )
    text, ids = table.get("prompt"), table.get("prompt_token_ids")
    if text is not None and ids is not None:
        raise UsageError(f"{where}: give prompt or prompt_token_ids, not both.")
    if required and text is None and ids is None:
        raise UsageError(f'{where}: needs prompt = "..." or prompt_token_ids = [..].')
    if text is not None and (not isinstance(text, str) or not text):
        raise UsageError(f"{where}: prompt must be non-empty text.")
    if ids is not None and (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
    ):
        raise UsageError(f"{where}: prompt_token_ids must be a non-empty list of token ids.")
    max_tokens = table.get("max_tokens", 4)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise UsageError(f"{where}: max_tokens must be a whole number of at least 1.")
    return Prompt(text=text, ids=None if ids is None else tuple(ids), max_tokens=max_tokens)


def scenario_toml(traced: ScenarioRequest, scenario: Scenario, engine: Mapping[str, Any]) -> str:
    """A scenario file that `ekka diagnose --scenario` reads back (the reduced scenario)."""

    def request(header: str, r: ScenarioRequest) -> list[str]:
        return [
            header,
            f"prompt_token_ids = {list(r.prompt_ids)}",
            f"max_tokens = {r.max_tokens}",
            "",
        ]

    lines: list[str] = []
    for r in scenario.before:
        lines += request("[[run.before]]", r)
    for r in scenario.alongside:
        lines += request("[[run.alongside]]", r)
    lines += request("[run]", traced)
    if engine:
        lines.append("[run.engine]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in engine.items()]
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise UsageError(f"engine argument value {value!r} cannot be written to TOML.")
