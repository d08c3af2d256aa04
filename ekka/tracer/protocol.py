"""What crosses the process boundary between the parent and the target's process.

The parent (`ekka.tracer.session.TargetSession`) drives the target's process (the framework at
some commit, `ekka.tracer.adapters.vllm` in a warm process' fork) with these messages, each a frozen
dataclass sent as one JSON line with a discriminating `type` field:

    parent                                   target's process
    Start(spec)            ──────────────>   starts its engine
                           <──────────────   Ready(framework, version, commit, ...)
    Trace()                ──────────────>   generates, traced
                           <──────────────   Tokens(generated_ids)      (before writing)
                           <──────────────   Written(path, seconds)     (trace on disk)
    Replay(reference, modules) ───────────>  replays those modules on the reference's inputs
                           <──────────────   Replayed(path, count)
    Close()                ──────────────>   exits at once (its work is on disk)

    any time:              <──────────────   Failed(error, detail), then it exits

An unknown or malformed message is a `ProtocolError` that quotes the message, never a misread.
This module is shared by both sides and imports nothing else of Ekka but its errors and its
codec (`ekka.codec`, which checks every field against its annotation).
"""

from __future__ import annotations

import json
import os
import select
import time
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

from ekka import codec
from ekka.errors import ProtocolError

FRAMEWORKS = ("vllm", "sglang", "transformers")
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class ScenarioRequest:
    """A request of a scenario besides the traced one: its prompt's token ids and how many
    tokens it generates (greedy)."""

    prompt_ids: tuple[int, ...]
    max_tokens: int = 4


@dataclass(frozen=True)
class CaptureSpec:
    """Everything one capture needs: which framework runs which model on which prompt, what
    to record and where the trace goes."""

    framework: str
    model: str
    prompt_ids: tuple[int, ...]
    out: str
    dtype: str = "float32"
    max_tokens: int = 4
    # glob patterns of the module names to record (empty: every module)
    modules: tuple[str, ...] = ()
    # "prefill", "all" or step numbers like "0,1"
    steps: str = "all"
    prompt_text: str | None = None
    # keyword arguments of the engine (`vllm.LLM(...)`), as a user gives them
    engine: Mapping[str, Any] = field(default_factory=dict)
    shard_bytes: int = 256 * 1024 * 1024
    # vLLM: no module hooks at all, only each step's logits and the tokens (a bisection probe)
    logits_only: bool = False
    # transformers: teacher forcing, one forward pass over the prompt and these tokens (the
    # tokens the target generated, but the last), so that every target pass can be compared
    # at the same positions
    forced_ids: tuple[int, ...] = ()
    # vLLM: the scenario around the traced request (`ekka.scenario`): requests that run to
    # completion first, one generate call each, in order; requests submitted in the traced
    # request's generate call (the engine batches them), the traced one at index `traced_at`
    # of that call (None: after them all)
    before: tuple[ScenarioRequest, ...] = ()
    alongside: tuple[ScenarioRequest, ...] = ()
    traced_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        return typing.cast(dict[str, Any], codec.encode(self))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CaptureSpec:
        return codec.decode(cls, data, error=ProtocolError, what="capture spec")


# --- messages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Parent: start the engine for `spec`."""

    type: ClassVar[str] = "start"
    spec: CaptureSpec


@dataclass(frozen=True)
class Ready:
    """Target: the engine has started; what runs."""

    type: ClassVar[str] = "ready"
    framework: str
    version: str
    commit: str | None
    path: str
    seconds: float
    # what a report must say about how the framework ran ("SGLang's torch-native paths; no
    # sgl_kernel")
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Trace:
    """Parent: generate the spec's request, traced."""

    type: ClassVar[str] = "trace"


@dataclass(frozen=True)
class Tokens:
    """Target: the greedy tokens of the traced request (its trace is being written)."""

    type: ClassVar[str] = "tokens"
    generated_ids: tuple[int, ...]


@dataclass(frozen=True)
class Written:
    """Target: the trace is complete on disk, in `path`."""

    type: ClassVar[str] = "written"
    path: str
    seconds: float


@dataclass(frozen=True)
class Replay:
    """Parent: run `modules` (None: every replayable leaf) of the traced request's first pass
    alone on the inputs recorded in the reference trace `reference`."""

    type: ClassVar[str] = "replay"
    reference: str
    modules: tuple[str, ...] | None
    # (target name, reference name) of a module whose reference counterpart is named otherwise
    # (vLLM's `model.self_decoder.x`, transformers' `model.x`): where its input is recorded
    names: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Replayed:
    """Target: the replay trace is on disk in `path`, with `count` modules replayed."""

    type: ClassVar[str] = "replayed"
    path: str
    count: int


@dataclass(frozen=True)
class Close:
    """Parent: nothing more; end the process."""

    type: ClassVar[str] = "close"


@dataclass(frozen=True)
class Failed:
    """Target: it failed (`error`: one line; `detail`: the traceback), and exits."""

    type: ClassVar[str] = "failed"
    error: str
    detail: str


Message = Union[Start, Ready, Trace, Tokens, Written, Replay, Replayed, Close, Failed]
MESSAGES: dict[str, type[Any]] = {
    cls.type: cls for cls in (Start, Ready, Trace, Tokens, Written, Replay, Replayed, Close, Failed)
}


def encode(message: Message) -> bytes:
    """One JSON line: the message's fields and its `type`."""
    data = {"type": message.type, **codec.encode(message)}
    return (json.dumps(data) + "\n").encode()


def decode(line: bytes | str) -> Message:
    """The message in one JSON line; a ProtocolError (quoting it) when it is not one."""
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    try:
        data = json.loads(text)
    except ValueError:
        raise ProtocolError(f"not a message (not JSON): {_quote(text)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError(f"not a message (no `type`): {_quote(text)}")
    cls = MESSAGES.get(data["type"])
    if cls is None:
        known = ", ".join(sorted(MESSAGES))
        raise ProtocolError(
            f"unknown message type {data['type']!r} (known: {known}): {_quote(text)}"
        )
    fields_ = {k: v for k, v in data.items() if k != "type"}
    return typing.cast(
        Message,
        codec.decode(
            cls, fields_, error=ProtocolError, what=f"{data['type']!r} message", quote=_quote(text)
        ),
    )


def _quote(text: str) -> str:
    text = text.strip()
    return repr(text if len(text) <= 300 else text[:300] + "...")


class Channel:
    """Messages over a pair of pipes: `send` writes one line, `receive` reads the next."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._data = b""

    def send(self, message: Message) -> None:
        """Send `message`; a BrokenPipeError when the other side is gone."""
        data = encode(message)
        while data:
            data = data[os.write(self.write_fd, data) :]

    def receive(self, timeout: float | None = None) -> Message | None:
        """The next message; None when the other side has closed its end (it is gone).
        TimeoutError when none came within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._data:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if not ready:
                raise TimeoutError(f"no message within {timeout:.0f} s")
            chunk = os.read(self.read_fd, 65536)
            if not chunk:
                return None
            self._data += chunk
        line, self._data = self._data.split(b"\n", 1)
        return decode(line)

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
