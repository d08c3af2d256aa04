"""Warm starts (`ekka.tracer.warm`): targets are forks of one process that imported the adapter,
each with its own pipes, log, folder and exit code; nothing outlives the session's process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ekka.errors import CaptureError
from ekka.tracer import warm
from ekka.tracer.protocol import Channel, Ready, Start
from tests.processes import descendants

ADAPTER = """
import os, sys, time
from ekka.tracer.protocol import Ready, Start
IMPORTED_BY = os.getpid()
if os.environ.get("FAKE_IMPORT_FAILS"):
    raise ImportError("the framework does not import here")


def serve(channel):
    start = channel.receive()
    assert isinstance(start, Start), start
    print("target of", start.spec.model, "imported by", IMPORTED_BY, flush=True)
    print("call", os.environ.get("PYTEST_CURRENT_TEST"), flush=True)
    if start.spec.model == "sleep":  # a framework's own process beside it (SGLang's scheduler)
        import subprocess
        helper = subprocess.Popen(["sleep", "600"])
        print("started", helper.pid, flush=True)
        time.sleep(600)
    channel.send(Ready("fake", "1", None, os.getcwd(), 0.0))
    while channel.receive() is not None:
        pass


def exit_at_once(code):
    sys.stdout.flush()
    os._exit(7 if code == 0 else code)
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """An adapter module `fake_adapter` on the path, and a Start for model `model`."""
    (tmp_path / "fake_adapter.py").write_text(textwrap.dedent(ADAPTER))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{Path.cwd()}"}
    yield env
    warm.retire_all()


def _session(env, tmp_path, name, model="m", shared=True):
    from ekka.tracer.protocol import CaptureSpec

    folder = tmp_path / name
    folder.mkdir()
    from_target, target_out = os.pipe()
    target_in, to_target = os.pipe()
    with open(folder / "log", "wb") as log:
        target = warm.fork_target(
            sys.executable,
            "fake_adapter",
            env,
            pipes=(target_in, target_out),
            log=log.fileno(),
            cwd=str(folder),
            shared=shared,
        )
    os.close(target_in)
    os.close(target_out)
    channel = Channel(from_target, to_target)
    channel.send(Start(CaptureSpec(framework="vllm", model=model, prompt_ids=(1,), out="x")))
    return target, channel, folder


def test_targets_are_forks_of_one_warm_process_each_with_its_pipes_log_folder_and_code(
    fake, tmp_path
):
    first, one, folder_one = _session(fake, tmp_path, "one")
    second, two, folder_two = _session(fake, tmp_path, "two")
    assert isinstance(one.receive(30), Ready) and isinstance(two.receive(30), Ready)
    assert _wait_for_pid(first) != _wait_for_pid(second) and first.warm is second.warm
    warm_pid = first.warm.process.pid
    for folder in (folder_one, folder_two):
        log = (folder / "log").read_text().splitlines()
        assert log[0] == f"target of m imported by {warm_pid}"
    assert ("ekka-target" in dict(descendants()).get(first.pid, "")) and first.poll() is None
    one.close()
    two.close()
    assert first.wait(30) == 7 and second.wait(30) == 7  # each target ends its own way
    assert first.warm.targets == 0 and first.warm.process.poll() is None  # the warm one stays


def test_a_value_that_changes_per_call_shares_the_warm_process_and_reaches_the_target(
    fake, tmp_path
):
    first, one, folder_one = _session({**fake, "PYTEST_CURRENT_TEST": "a"}, tmp_path, "one")
    second, two, folder_two = _session({**fake, "PYTEST_CURRENT_TEST": "b"}, tmp_path, "two")
    assert isinstance(one.receive(30), Ready) and isinstance(two.receive(30), Ready)
    assert first.warm is second.warm  # PER_CALL: not part of the warm process' key
    assert (folder_one / "log").read_text().splitlines()[1] == "call a"
    assert (folder_two / "log").read_text().splitlines()[1] == "call b"
    third, three, _ = _session({**fake, "OTHER_SETTING": "1"}, tmp_path, "three")
    assert isinstance(three.receive(30), Ready) and third.warm is not first.warm
    for channel in (one, two, three):
        channel.close()


def test_idle_warm_processes_beyond_max_idle_are_retired(fake, tmp_path):
    targets = []
    for index in range(warm.MAX_IDLE + 2):
        target, channel, _ = _session({**fake, "SETTING": str(index)}, tmp_path, f"s{index}")
        assert isinstance(channel.receive(30), Ready)
        channel.close()
        assert target.wait(30) == 7
        targets.append(target)
    alive = [t.warm.process.poll() is None for t in targets]
    assert alive == [False] + [True] * (warm.MAX_IDLE + 1), alive  # the oldest idle retired


def test_a_patched_frameworks_target_has_a_warm_process_of_its_own_ended_with_it(fake, tmp_path):
    first, one, _ = _session(fake, tmp_path, "one", shared=False)
    second, two, _ = _session(fake, tmp_path, "two", shared=False)
    assert isinstance(one.receive(30), Ready) and isinstance(two.receive(30), Ready)
    assert first.warm is not second.warm
    one.close()
    assert first.wait(30) == 7 and first.warm.process.poll() is not None
    assert second.poll() is None and second.warm.process.poll() is None
    two.close()
    assert second.wait(30) == 7 and second.warm.process.poll() is not None


def test_a_killed_target_before_and_after_its_fork_and_a_gone_session(fake, tmp_path):
    target, channel, _ = _session(fake, tmp_path, "one", model="sleep")
    target.kill()  # before the fork (the warm process is still importing): the warm one goes
    assert target.wait(30) == -signal.SIGKILL
    target, channel, folder = _session(fake, tmp_path, "two", model="sleep")
    deadline = time.monotonic() + 60
    while "target of" not in (folder / "log").read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    started = _started(folder)
    target.kill()  # forked: the target and what it started, not the warm process
    assert target.wait(30) == -signal.SIGKILL and target.warm.process.poll() is None
    _wait_gone(started)
    target, channel, folder = _session(fake, tmp_path, "three", model="sleep")
    pid = _wait_for_pid(target)
    started = _started(folder)
    target.connection.close()  # the session is gone: so is its target, and what it started
    _wait_gone(pid)
    _wait_gone(started)


def test_nothing_outlives_the_sessions_process(fake, tmp_path):
    script = f"""
import sys, time
sys.path.insert(0, {str(tmp_path)!r})
from tests.tracer.test_warm import _session
import os
from tests.tracer.test_warm import _started
target, channel, folder = _session(os.environ, __import__("pathlib").Path({str(tmp_path)!r}), "s", "sleep")
while target.pid is None:
    target.poll(); time.sleep(0.05)
print(target.warm.process.pid, target.pid, _started(folder), flush=True)
time.sleep(600)
"""
    process = subprocess.Popen(
        [sys.executable, "-c", script], env=fake, stdout=subprocess.PIPE, text=True
    )
    line = process.stdout.readline()  # type: ignore[union-attr]
    warm_pid, target_pid, started = map(int, line.split())
    process.kill()
    process.wait()
    _wait_gone(warm_pid)
    _wait_gone(target_pid)
    _wait_gone(started)


def test_a_framework_that_does_not_import_is_a_capture_error_with_the_warm_log(
    fake, tmp_path, monkeypatch
):
    from ekka import frameworks
    from ekka.tracer.protocol import CaptureSpec
    from ekka.tracer.session import TargetSession

    monkeypatch.setenv("FAKE_IMPORT_FAILS", "1")
    monkeypatch.setenv("PYTHONPATH", fake["PYTHONPATH"])
    vllm = frameworks.FRAMEWORKS["vllm"]
    monkeypatch.setitem(frameworks.FRAMEWORKS, "vllm", replace(vllm, adapter="fake_adapter"))
    spec = CaptureSpec(framework="vllm", model="m", prompt_ids=(1,), out=str(tmp_path / "t"))
    with pytest.raises(CaptureError, match="does not import here"):
        with TargetSession(spec, timeout=60) as session:
            session.wait_ready()


def _wait_for_pid(target: warm.Target) -> int:
    deadline = time.monotonic() + 60
    while target.pid is None and time.monotonic() < deadline:
        target.poll()
        time.sleep(0.05)
    assert target.pid is not None
    return target.pid


def _started(folder: Path) -> int:
    """The pid of the process the fake target started (its log says it)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in (folder / "log").read_text().splitlines():
            if line.startswith("started "):
                return int(line.split()[1])
        time.sleep(0.05)
    raise AssertionError("the target started nothing")


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state == "Z":
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still runs")
