"""Warm starts: the framework imported once, each target a fork of the process that imported it.

A target process spends about half of its start importing its framework (vLLM or SGLang:
5-8 s of CPU on the machines Ekka is tested on), and a sweep, a bench or a test suite starts a
target per model, case or request against the same installed release. So the session does not
start `python -m ekka.tracer.adapters.<framework>` itself: it asks a *warm process* (started
once per interpreter, adapter and environment, with `python -m ekka.tracer.warm ADAPTER
LISTEN_FD LIFELINE_FD`) which has imported the adapter and its framework (the adapter's
`preload()`) and forks one child per session. The child is what a target process was: it
serves the session's messages on the session's pipes, with its log as stdout and stderr, in the
session's folder, and ends its own way (`exit_at_once`). Nothing of an engine exists before
the fork (only imports), so every target still starts its engine from nothing.

The session's side (`fork_target`, in the session's process) holds one connection per target:
it sends the pipes and the log (file descriptors over a Unix socket) and the folder; the warm
process answers the child's pid, then its exit code when it has reaped it. A connection the
session closes first is a kill (the warm process kills the child), and the warm process ends
with its lifeline: a pipe whose other end only the session's process holds, so no warm process
or target outlives the process that started it. Each target leads a process group of its own,
and a kill is the group's: what the target started (SGLang's scheduler and detokenizer) goes
with it. A warm process unused for `IDLE_SECONDS` with
no child is retired by the next `fork_target`. A session with a patched copy of the
framework's sources first on its path (a bisection's commit, a bench case) gets a warm process
of its own, ended with its target: the same folder may hold another commit's sources next.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IDLE_SECONDS = 300.0
MAX_IDLE = 2  # warm processes kept without a target beyond the one asked for
TARGET_NAME = b"ekka-target"  # the forked target's name in /proc (`ps`, `top`)
WARM_NAME = b"ekka-warm"
# Variables that change from one call to the next and that no framework reads at import: a
# warm process is shared across their values (its targets get the session's own).
PER_CALL = frozenset({"PYTEST_CURRENT_TEST"})
FORK_EVENT = "ekka.tracer.warm.fork"  # sys.audit's event for each target: (adapter, python)


# --- the session's side --------------------------------------------------------------------


@dataclass
class WarmProcess:
    """One warm process: its process, the socket path it accepts forks on, its lifeline."""

    process: subprocess.Popen[bytes]
    path: str
    lifeline: int
    log: str
    folder: tempfile.TemporaryDirectory[str]
    last_used: float = field(default_factory=time.monotonic)
    targets: int = 0
    shared: bool = True

    def retire(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.lifeline)
        self.folder.cleanup()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return Path(self.log).read_text(errors="replace")[-chars:]
        except OSError:
            return ""


_lock = threading.Lock()
_warm: dict[tuple[str, str, tuple[tuple[str, str], ...]], WarmProcess] = {}


def fork_target(
    python: str,
    adapter: str,
    env: Mapping[str, str],
    *,
    pipes: tuple[int, int],
    log: int,
    cwd: str,
    shared: bool = True,
) -> Target:
    """A target for one session: a child of the warm process of (python, adapter, env), which
    is started here if there is none yet. `pipes` (the target's read and write ends) and `log`
    are this process's descriptors, sent to the warm process (the caller still closes them).
    Not `shared`: a warm process of its own, ended with its target (a patched copy of the
    framework's sources, whose folder may hold other sources by the next session)."""
    sys.audit(FORK_EVENT, adapter, python)  # an audit hook may watch target starts
    key = (python, adapter, tuple(sorted((k, v) for k, v in env.items() if k not in PER_CALL)))
    with _lock:
        _retire_idle(keep=key)
        warm = _warm.get(key) if shared else None
        if warm is None or warm.process.poll() is not None:
            if warm is not None:
                _warm.pop(key).retire()
            warm = _start_warm(python, adapter, env)
            warm.shared = shared
            if shared:
                _warm[key] = warm
        warm.targets += 1
        warm.last_used = time.monotonic()
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(warm.path)
        request = json.dumps({"cwd": cwd, "env": dict(env)}).encode()
        socket.send_fds(connection, [request], [pipes[0], pipes[1], log])
    except OSError:  # the warm process is gone: the target ends before it started
        connection.close()
    return Target(warm, connection)


def _start_warm(python: str, adapter: str, env: Mapping[str, str]) -> WarmProcess:
    folder = tempfile.TemporaryDirectory(prefix="ekka-warm-")
    path = str(Path(folder.name) / "fork.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    life_read, life_write = os.pipe()
    log = str(Path(folder.name) / "warm.log")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [python, "-m", "ekka.tracer.warm", adapter, str(listener.fileno()), str(life_read)],
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=folder.name,
            pass_fds=(listener.fileno(), life_read),
        )
    listener.close()
    os.close(life_read)
    os.set_inheritable(life_write, False)
    return WarmProcess(process, path, life_write, log, folder)


def _retire_idle(keep: tuple[str, str, tuple[tuple[str, str], ...]]) -> None:
    """Retire the warm processes without a target that were unused for IDLE_SECONDS, and the
    least recently used beyond MAX_IDLE (each holds its framework's imports: most of a GB)."""
    now = time.monotonic()
    idle = sorted(
        ((w.last_used, k) for k, w in _warm.items() if k != keep and w.targets == 0),
        reverse=True,
    )
    for rank, (last_used, key) in enumerate(idle):
        if rank >= MAX_IDLE or now - last_used > IDLE_SECONDS:
            _warm.pop(key).retire()


def retire_all() -> None:
    """End every warm process of this process (their targets are killed with them)."""
    with _lock:
        for key in list(_warm):
            _warm.pop(key).retire()


class Target:
    """The session's handle on one forked target, with `subprocess.Popen`'s `poll`, `wait` and
    `kill`: its pid and exit code come over the connection from the warm process."""

    def __init__(self, warm: WarmProcess, connection: socket.socket) -> None:
        self.warm = warm
        self.connection = connection
        self.pid: int | None = None
        self.returncode: int | None = None
        self._buffer = b""
        self._done = False

    def poll(self) -> int | None:
        self._read(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired("ekka target", timeout or 0.0)
            self._read(left)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        """Kill the target; before the warm process has forked it (still importing, or hung),
        kill the warm process (no other target waits on a fork that never came)."""
        if self._done:
            return
        self._read(0.0)
        if self.pid is not None:
            kill_group(self.pid)
        elif self.warm.process.poll() is None:
            self.warm.process.kill()
            self.warm.process.wait()  # gone before the next target could be sent to it

    def why_not_started(self) -> str:
        """The warm process' log when it never forked this target (its import failed)."""
        self._read(0.0)
        return "" if self.pid is not None else self.warm.log_tail()

    def _read(self, timeout: float | None) -> None:
        """Take what the warm process said, waiting up to `timeout` for something."""
        if self._done:
            return
        if self.connection.fileno() < 0:
            return self._ended()
        ready, _, _ = select.select([self.connection], [], [], timeout)
        if not ready:
            return
        try:
            data = self.connection.recv(4096)
        except OSError:  # the warm process died with the connection unread
            data = b""
        if not data:
            return self._ended()
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if self.pid is None:
                self.pid = int(line)
            else:
                self.returncode = int(line)
                self._finish()

    def _ended(self) -> None:
        """The warm process ended before it said the target's exit code."""
        code = self.warm.process.poll()
        self.returncode = code if code is not None and code != 0 else -signal.SIGKILL
        self._finish()

    def _finish(self) -> None:
        self._done = True
        self.connection.close()
        with _lock:
            self.warm.targets -= 1
            self.warm.last_used = time.monotonic()
        if not self.warm.shared:
            self.warm.retire()


# --- the warm process ----------------------------------------------------------------------


def serve_forks(adapter: str, listener: socket.socket, lifeline: int) -> int:
    """Import the adapter and its framework, then fork a target per connection until the
    lifeline closes."""
    _name(WARM_NAME)
    module = importlib.import_module(adapter)
    preload = getattr(module, "preload", None)
    if preload is not None:
        preload()
    print(f"ekka warm process: {adapter} imported, pid {os.getpid()}", flush=True)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: dict[int, socket.socket] = {}
    while True:
        waiting: list[Any] = [listener, lifeline, wake_read, *children.values()]
        ready, _, _ = select.select(waiting, [], [])
        if lifeline in ready:
            for pid in children:
                kill_group(pid)
            return 0
        if wake_read in ready:
            os.read(wake_read, 4096)
            _reap(children)
        if listener in ready:
            connection, _ = listener.accept()
            forked = _fork(module, connection, [listener, *children.values()], lifeline, wake_read)
            if forked is None:
                connection.close()
            else:
                children[forked] = connection
        for pid, connection in list(children.items()):
            if connection in ready and pid in children:
                if not connection.recv(4096):  # the session is gone: so is its target
                    kill_group(pid)


def _fork(
    module: object,
    connection: socket.socket,
    others: Sequence[socket.socket],
    lifeline: int,
    wake_read: int,
) -> int | None:
    try:
        request, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
        message = json.loads(request)
        cwd, env = str(message["cwd"]), {str(k): str(v) for k, v in message["env"].items()}
        read_fd, write_fd, log = fds
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        print(f"ekka warm process: a bad fork request: {exc}", flush=True)
        return None
    pid = os.fork()
    if pid == 0:
        _child(module, connection, others, lifeline, wake_read, (read_fd, write_fd, log), cwd, env)
    _own_group(pid)  # here too, so that no kill can come before the child's own call
    for fd in fds:
        os.close(fd)
    connection.sendall(f"{pid}\n".encode())
    return pid


def _child(
    module: object,
    connection: socket.socket,
    others: Sequence[socket.socket],
    lifeline: int,
    wake_read: int,
    fds: tuple[int, int, int],
    cwd: str,
    env: Mapping[str, str],
) -> None:
    """In the forked target: the session's pipes and log, its folder, then the adapter's
    service and its own way to end. Never returns."""
    code = 1
    try:
        _own_group(0)
        _end_with_parent()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for sock in (connection, *others):
            sock.close()
        os.close(lifeline)
        os.close(wake_read)
        read_fd, write_fd, log = fds
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.chdir(cwd)
        os.environ.clear()  # the session's environment, exactly (PER_CALL ones may differ)
        os.environ.update(env)
        _name(TARGET_NAME)
        from ekka.tracer.adapters.loop import serve_channel
        from ekka.tracer.protocol import Channel

        code = serve_channel(Channel(read_fd, write_fd), module.serve)  # type: ignore[attr-defined]
        module.exit_at_once(code)  # type: ignore[attr-defined]
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        _run_exit_handlers()
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run_exit_handlers() -> None:
    """What `sys.exit` would run (an engine in a process of its own is shut down this way)."""
    import atexit

    atexit._run_exitfuncs()


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        connection = children.pop(pid, None)
        if connection is not None:
            try:
                connection.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
            except OSError:
                pass
            connection.close()


def _own_group(pid: int) -> None:
    """Make the target (`pid`, 0: this process) the leader of a process group of its own: what
    it starts (SGLang's scheduler and detokenizer, multiprocessing's resource tracker) is in
    that group, and ends with it (`kill_group`)."""
    try:
        os.setpgid(pid, pid)
    except OSError:  # the child has already done it, or is gone
        pass


def kill_group(pid: int) -> None:
    """Kill a target and what it started (its process group): a target killed alone, or ended
    by its parent-death signal, leaves its framework's processes behind, which no one ends."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # no group of its own yet: the process
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _end_with_parent() -> None:
    """The target is killed when its warm process dies (Linux's parent-death signal; the warm
    process has one thread, the one that forked)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the warm process died before the signal was set
        os._exit(1)


def _name(name: bytes) -> None:
    try:
        Path("/proc/self/comm").write_bytes(name)
    except OSError:
        pass


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: python -m ekka.tracer.warm ADAPTER LISTEN_FD LIFELINE_FD", file=sys.stderr)
        return 2
    listener = socket.socket(fileno=int(argv[2]))
    return serve_forks(argv[1], listener, int(argv[3]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
