"""What every target process does around its framework: answer the session's messages until it
closes, in a warm process' fork (`ekka.tracer.warm`; a failure is sent to the session as
`Failed`, with its traceback). Each adapter brings its target: how it
generates the traced request, writes the trace and replays modules.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from ekka.tracer.protocol import (
    Channel,
    Close,
    Failed,
    Replay,
    Replayed,
    Tokens,
    Trace,
    Written,
)


class Target(Protocol):
    def generate(self) -> Sequence[int]: ...
    def write(self) -> Path: ...


def answer(channel: Channel, target: Target, replay: Callable[[Replay], tuple[Path, int]]) -> None:
    """After `Ready`: trace, replay, until the session closes (or is gone)."""
    while True:
        message = channel.receive()
        if message is None or isinstance(message, Close):
            return
        if isinstance(message, Trace):
            channel.send(Tokens(tuple(target.generate())))
            started = time.perf_counter()
            path = target.write()
            channel.send(Written(str(path), time.perf_counter() - started))
        elif isinstance(message, Replay):
            path, count = replay(message)
            channel.send(Replayed(str(path), count))
        else:
            raise RuntimeError(f"the session sent {message!r}, which a target does not take")


def serve_channel(channel: Channel, serve: Callable[[Channel], None]) -> int:
    """Serve the session on `channel` (a process of its own, or a warm process' fork: see
    `ekka.tracer.warm`); a failure is sent as `Failed` with its traceback. The exit code."""
    try:
        serve(channel)
    except BaseException as exc:
        detail = traceback.format_exc()
        print(detail, file=sys.stderr)
        try:
            channel.send(Failed(f"{type(exc).__name__}: {exc}".splitlines()[0], detail))
        except OSError:
            pass
        return 1
    return 0
