"""The target session: the parent's one handle on the target's process.

    with TargetSession(spec, pythonpath=[patched_vllm]) as session:
        session.wait_ready()                 # the engine has started
        tokens = session.trace()             # the traced request's greedy tokens
        written = session.wait_written()     # its trace is on disk
        replayed = session.replay(reference_trace, ["model.layers.0.mlp.down_proj"])
    # leaving the block closes the session: the target's process ends at once

The target runs `ekka.tracer.adapters.<framework>`'s service in a process of its own: a fork of
a warm process that has imported the framework once (`ekka.tracer.warm`), with the framework's
own interpreter (`ekka.frameworks`: vLLM's is this one, SGLang's that
of its own environment, `.venv-sglang`, since the two pin different torch builds; the same seam
a container or a cluster node uses), with `pythonpath` first on its path (so that a patched
copy of the framework's sources is the one imported), and every message between the two is one
of `ekka.tracer.protocol`'s. Its
output goes to a log file whose last lines come with any error. `timeout` bounds the time
this side waits for the target, all waits together.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from ekka import frameworks
from ekka.errors import CaptureError, ProtocolError
from ekka.frameworks import CHECKOUT
from ekka.tracer import warm
from ekka.tracer.protocol import (
    CaptureSpec,
    Channel,
    Close,
    Failed,
    Message,
    Ready,
    Replay,
    Replayed,
    Start,
    Tokens,
    Trace,
    Written,
)

M = TypeVar("M")
# The engine in the target's own process, a small KV cache on the CPU build (a user's
# environment wins), and nothing fetched from a model hub.
TARGET_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_LOGGING_LEVEL": "WARNING",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
CLOSE_SECONDS = 30.0  # a closed target still running after this long is killed


def target_env(pythonpath: Sequence[str | Path] = (), framework: str = "vllm") -> dict[str, str]:
    """The target's environment: `pythonpath` first, then this Ekka, then the user's path."""
    env = dict(os.environ)
    parts = [str(Path(p).resolve()) for p in pythonpath] + [str(CHECKOUT)]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    for name, value in {**TARGET_ENV, **frameworks.framework(framework).env}.items():
        env.setdefault(name, value)
    return env


class TargetSession:
    """Start, wait until ready, trace the request, receive its tokens and the written trace,
    replay named modules on the reference's inputs, close. One request per session."""

    def __init__(
        self,
        spec: CaptureSpec,
        *,
        pythonpath: Sequence[str | Path] = (),
        timeout: float | None = None,
    ) -> None:
        if spec.framework not in frameworks.FRAMEWORKS:
            raise ValueError(f"no target session for {spec.framework!r}; it runs in this process")
        self.python = frameworks.python_for(spec.framework)
        self.spec = spec
        self.pythonpath = tuple(pythonpath)
        self.timeout = timeout
        self.ready: Ready | None = None
        self._waited = 0.0
        self._process: warm.Target | None = None
        self._channel: Channel | None = None
        self._folder: tempfile.TemporaryDirectory[str] | None = None

    # --- the session's steps -------------------------------------------------------------

    def start(self) -> None:
        """Start the target's process and tell it the spec; returns at once (its engine
        starts meanwhile: work that needs nothing from the target can run here)."""
        if self._process is not None:
            return
        self._folder = tempfile.TemporaryDirectory(prefix="ekka-target-")
        from_target, target_out = os.pipe()
        target_in, to_target = os.pipe()
        with open(self.log_path, "wb") as log:
            self._process = warm.fork_target(
                self.python,
                frameworks.framework(self.spec.framework).adapter,
                target_env(self.pythonpath, self.spec.framework),
                pipes=(target_in, target_out),
                log=log.fileno(),
                cwd=self._folder.name,
                shared=not self.pythonpath,
            )
        os.close(target_in)
        os.close(target_out)
        self._channel = Channel(from_target, to_target)
        self._send(Start(self.spec))

    def wait_ready(self) -> Ready:
        """Wait until the target's engine has started."""
        if self.ready is None:
            self.start()
            self.ready = self._receive(Ready, "start its engine")
        return self.ready

    def trace(self) -> Tokens:
        """Generate the spec's request, traced; returns its tokens as soon as the target has
        them (it writes its trace meanwhile: `wait_written`)."""
        self.wait_ready()
        self._send(Trace())
        return self._receive(Tokens, "generate")

    def wait_written(self) -> Written:
        """Wait until the traced request's trace is on disk."""
        return self._receive(Written, "write its trace")

    def replay(
        self,
        reference: str | Path,
        modules: Sequence[str] | None = None,
        names: Mapping[str, str] | None = None,
    ) -> Replayed:
        """Run `modules` (None: every replayable leaf) of the first pass alone on the inputs
        the reference trace recorded (`names`: a module's reference name where it differs);
        returns where the replay trace is."""
        wanted = None if modules is None else tuple(modules)
        self._send(Replay(str(reference), wanted, tuple(sorted((names or {}).items()))))
        return self._receive(Replayed, "replay its modules")

    def close(self) -> None:
        """Tell the target to end, and wait for its process (killed if it does not end)."""
        process, channel = self._process, self._channel
        if process is None or channel is None:
            return
        try:
            if process.poll() is None:
                channel.send(Close())
            process.wait(timeout=CLOSE_SECONDS)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            self.kill()
        finally:
            self._end()

    def kill(self) -> None:
        """End the target's process now."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._end()

    def __enter__(self) -> TargetSession:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.kill()

    # --- plumbing ----------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        if self._folder is None:
            raise RuntimeError("the session has not started")
        return Path(self._folder.name) / "target.log"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except (OSError, RuntimeError):
            return ""

    def _send(self, message: Message) -> None:
        if self._channel is None:
            raise RuntimeError("the session has not started")
        try:
            self._channel.send(message)
        except BrokenPipeError:
            self._fail("stopped before it was told to " + message.type)

    def _receive(self, expected: type[M], doing: str) -> M:
        """The next message, which must be `expected`: a Failed one, the target's end, a
        timeout or any other message is a CaptureError (the target is killed)."""
        if self._channel is None:
            raise RuntimeError("the session has not started")
        left = None if self.timeout is None else self.timeout - self._waited
        started = time.monotonic()
        try:
            message: Any = self._channel.receive(None if left is None else max(left, 0.0))
        except TimeoutError:
            limit = f"{self.timeout:.0f} s" if self.timeout is not None else "none"
            self._fail(f"did not {doing} within its time limit ({limit})", wait=False)
        except ProtocolError as exc:
            self.kill()
            raise ProtocolError(
                f"{exc}\n--- last lines of the target's log ---\n{self.log_tail()}"
            ) from None
        finally:
            self._waited += time.monotonic() - started
        if isinstance(message, expected):
            return message
        if message is None:
            self._fail(f"ended before it could {doing}")
        if isinstance(message, Failed):
            self._fail(f"failed: {message.error}", detail=message.detail)
        self.kill()
        raise ProtocolError(f"the target answered {message!r} while asked to {doing}")

    def _fail(self, what: str, detail: str = "", *, wait: bool = True) -> Any:
        """Raise a CaptureError for `what`, with the target's traceback and log (the process
        is given a moment to end, unless `wait` is False, and then killed)."""
        code = None
        if self._process is not None and wait:
            try:
                code = self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        tail = self.log_tail()
        if self._process is not None and not tail.strip():
            tail = self._process.why_not_started()
        self.kill()
        exit_note = "" if code is None else f" (exit code {code})"
        parts = [f"{self.spec.framework} target {what}{exit_note}"]
        if detail:
            parts.append(f"--- its traceback ---\n{detail.strip()[-4000:]}")
        if tail.strip():
            parts.append(f"--- last lines of its log ---\n{tail}")
        raise CaptureError("\n".join(parts))

    def _end(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None
