"""What goes wrong on a cluster ends as a skip with its reason (or a retry), never a hung probe:
a task that raises, one past its time limit, a worker that dies, a cancelled job; nothing is left
running afterwards (no probe process, no task holding CPUs, no worktree). Bad settings and an
unreachable cluster are one clear error each."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import threading
import time

import pytest

from ekka.bisect.history import commit_range
from ekka.bisect.oracle import OracleConfig, OracleReference
from ekka.bisect.verdict import Verdict
from ekka.cli import main
from ekka.containers.ray import (
    CommandProbe,
    RayExecutor,
    RaySettings,
    TaskResources,
    TracerProbe,
    _check_reachable,
    connect,
    parse_custom_resources,
)
from ekka.errors import RayClusterError, UsageError
from ekka.repo import git
from tests.cluster.conftest import LOGICAL_CPUS, make_history, worktrees

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    repo = tmp_path_factory.mktemp("ray-failures") / "repo"
    shas = make_history(repo, 4, 2)
    return repo, commit_range(repo, shas[0], shas[-1])


def sleeper() -> str:
    """A `sleep` no other process runs: its command line finds the probe's shell and sleep."""
    return f"sleep 300.{random.randrange(10**6):06d}"


def processes(marker: str) -> list[str]:
    """Processes whose command line holds `marker` (the probes' shell and its `sleep`): one
    line each, its id, parent, state and command."""
    out = subprocess.run(["ps", "-eo", "pid,ppid,stat,args"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if marker in line and "ps -eo" not in line]


def settle(repo, marker: str, seconds: float = 30) -> tuple[list[str], float, int]:
    """Wait until nothing of the probes runs; (processes left, free CPUs, worktrees)."""
    import ray

    deadline = time.monotonic() + seconds
    while True:
        left = processes(marker)
        free = ray.available_resources().get("CPU", 0)
        trees = len(worktrees(repo))
        if (not left and free == LOGICAL_CPUS and trees == 1) or time.monotonic() > deadline:
            return left, free, trees
        time.sleep(0.5)


def test_a_task_that_raises_is_a_skip_with_the_reason(cluster, history):
    repo, commits = history
    # a framework the node does not know: the probe's executor cannot be made there
    probe = TracerProbe(
        repo=str(repo),
        base=commits.good.sha,
        config=OracleConfig(model="/nonexistent", prompt_ids=(1, 2)),
        reference=OracleReference((), (), ()),
        framework="vllm_not_installed_here",
    )
    executor = RayExecutor(probe, RaySettings(cluster))
    result = executor.probe(commits[0])
    assert result.verdict is Verdict.SKIP and result.transient
    assert "the task raised UsageError" in result.reason
    assert "unknown framework 'vllm_not_installed_here'" in result.reason


def test_a_task_past_its_time_limit_is_a_skip_and_is_stopped(cluster, history):
    repo, commits = history
    marker = sleeper()
    settings = RaySettings(cluster, timeout=3)
    executor = RayExecutor(CommandProbe(str(repo), f"{marker}; true"), settings)
    start = time.monotonic()
    result = executor.probe(commits[0])
    assert time.monotonic() - start < 60
    assert result.verdict is Verdict.SKIP and result.transient
    assert result.reason.startswith("time limit of 3 s reached"), result.reason
    assert settle(repo, marker) == ([], LOGICAL_CPUS, 1)


def test_a_dead_worker_is_retried_then_skipped(cluster, tmp_path):
    # a repository of its own: a killed worker cannot remove its worktree (git keeps the entry
    # until `git worktree prune` finds the folder gone)
    shas = make_history(tmp_path / "repo", 2, 1)
    commits = commit_range(tmp_path / "repo", shas[0], shas[-1])
    repo = tmp_path / "repo"
    # the command kills the task's worker process (its parent): what a lost node looks like
    executor = RayExecutor(
        CommandProbe(str(repo), "kill -9 $PPID; sleep 30"), RaySettings(cluster, retries=1)
    )
    result = executor.probe(commits[0])
    assert result.verdict is Verdict.SKIP and result.transient
    assert "worker or node died" in result.reason
    assert executor.submitted == 2 and len(result.details["attempts"]) == 2
    # what the killed workers left: their worktrees' folders (removed here, then pruned)
    left = [line.split()[0] for line in worktrees(repo)[1:]]
    assert len(left) == 2
    for folder in left:
        shutil.rmtree(folder)
    git(repo, "worktree", "prune")


def test_a_cancelled_job_cancels_its_tasks_and_no_other(cluster, history):
    repo, commits = history
    marker = sleeper()
    job = RayExecutor(CommandProbe(str(repo), f"{marker}; true"), RaySettings(cluster))
    other = RayExecutor(
        CommandProbe(str(repo), "sleep 4; grep -qx good state"), RaySettings(cluster)
    )
    results = {}

    def probe(name, executor, commit):
        results[name] = executor.probe(commit)

    threads = [
        threading.Thread(target=probe, args=("job-0", job, commits[0])),
        threading.Thread(target=probe, args=("job-1", job, commits[1])),
        threading.Thread(target=probe, args=("other", other, commits[0])),
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(processes(marker)) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(processes(marker)) == 4, "both of the job's tasks run (a shell and its sleep)"
    job.cancel()
    for thread in threads:
        thread.join(60)
    assert results["job-0"].reason == results["job-1"].reason == "cancelled"
    assert all(
        results[n].verdict is Verdict.SKIP and results[n].transient for n in ("job-0", "job-1")
    )
    assert results["other"].verdict is Verdict.GOOD, results["other"]  # the other job's task ran on
    assert job.probe(commits[2]).reason == "cancelled" and job.submitted == 2  # none submitted
    assert settle(repo, marker) == ([], LOGICAL_CPUS, 1)


def test_bad_settings_and_no_cluster_are_clear_errors(cluster, tmp_path, capsys):
    with pytest.raises(UsageError, match="CPUs must be 0 or more"):
        TaskResources(cpus=-1)
    with pytest.raises(UsageError, match="some CPUs or GPUs"):
        TaskResources(cpus=0)
    with pytest.raises(UsageError, match="not NAME=AMOUNT"):
        parse_custom_resources(["gpu_h100"])
    with pytest.raises(UsageError, match="node executor 'k8s'"):
        RaySettings(cluster, node_executor="k8s")
    with pytest.raises(RayClusterError, match="no Ray cluster answers at 127.0.0.1:1"):
        _check_reachable("127.0.0.1:1")
    with pytest.raises(RayClusterError, match="not host:port"):
        _check_reachable("nowhere")
    with pytest.raises(RayClusterError, match="already uses the Ray cluster"):
        connect("127.0.0.1:1")
    base = ["diagnose", "--model", str(tmp_path), "--prompt-ids", "1,2"]
    base += ["--repo", ".", "--good", "a", "--bad", "b"]
    assert main([*base, "--executor", "ray"]) == 2
    assert "--executor ray needs --ray-address" in capsys.readouterr().err
    assert main([*base, "--executor", "ray", "--ray-address", cluster, "--ray-gpus", "-1"]) == 2
    assert "GPUs must be 0 or more" in capsys.readouterr().err
    # without the package, one line saying how to install it (a fresh interpreter: no ray)
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from ekka.containers.ray import connect\n"
        "from ekka.errors import RayClusterError\n"
        "try:\n    connect('127.0.0.1:1')\nexcept RayClusterError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'ekka[ray]'" in out.stdout
