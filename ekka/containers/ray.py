"""The ray executor: each probe is a task on a Ray cluster, run there by the node's own executor.

The driver (`ekka diagnose`, the bot's worker) holds the bisection, the verdict cache and the
oracle's reference; a cluster's nodes run the probes. One probe is one Ray task that asks for
the probe's resources (CPUs, GPUs, memory, a GPU type or any custom resource of the cluster)
and runs a `NodeProbe` on the node it lands on: `TracerProbe` (the tracer's oracle with the
node's local executor, a worktree overlaid on the node's installed release, or with the node's
Docker engine) or `CommandProbe` (a shell command in a worktree, `ekka bisect --cmd`). What
comes back is the verdict (`ProbeResult.to_json`) with the trace's summary (tokens, error
ratios, timings, the node and the trace's path there); the trace itself stays on the node, or
goes to `trace_dir` when that names a folder every node mounts. Nothing but the probe (with the
oracle's reference logits, once per job) and the verdict crosses Ray's object store.

A task is a streaming generator: it says when it starts on its node, then gives the verdict.
So the time a task waits for a node (`queue_timeout`) and the time it runs (`timeout`) are
bounded apart: several bisections share the cluster and wait their turn without timing out.
Any failure is a TRANSIENT skip with its reason (the task raised, its worker or node died, it
ran or queued past its limit), or another try first (`retries`); never a hung probe.
`cancel()` stops the running tasks: a reaper task on each one's node kills its probe's processes
(the probe then ends and removes its worktree itself), Ray's cancel follows, and a forced one
after `cancel_grace` for a task still running.

`connect` is the one place that imports `ray`: a missing extra or a silent address is one
clear RayClusterError before any work starts.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ekka.bisect.executor import Executor
from ekka.bisect.history import CommitInfo
from ekka.bisect.verdict import TRANSIENT, ProbeResult, Verdict
from ekka.containers import defaults
from ekka.errors import RayClusterError, UsageError

if TYPE_CHECKING:
    from ray import ObjectRef, ObjectRefGenerator

    from ekka.bisect.oracle import OracleConfig, OracleReference
    from ekka.containers.docker import ContainerLimits
    from ekka.containers.images import ImageSettings

Progress = Callable[[str], None]

NODE_EXECUTORS = ("local", "docker")
# Names Ray reserves for its own resources: they have options of their own, not `resources`.
RESERVED = ("CPU", "GPU", "memory", "object_store_memory")
CLEANUP_SECONDS = 20.0  # a cancelled probe's time to remove its worktree on its node
CONNECT_SECONDS = 5.0
DEFAULT_TASK_TIMEOUT = (
    1200.0  # a TCP connection to the address, before Ray's own (minutes of retries)
)


@dataclass(frozen=True)
class TaskResources:
    """What one probe's task asks the cluster for; Ray starts it on a node that has it free."""

    cpus: float = defaults.RAY_CPUS
    gpus: float = defaults.RAY_GPUS
    memory_gb: float | None = None  # None: no memory reservation
    accelerator: str | None = None  # a GPU type the node must have (Ray's accelerator_type)
    custom: Mapping[str, float] = field(default_factory=dict)  # the cluster's own resources

    def __post_init__(self) -> None:
        for name, value in (("CPUs", self.cpus), ("GPUs", self.gpus)):
            if not math.isfinite(value) or value < 0:
                raise UsageError(f"a probe's {name} must be 0 or more (got {value:g}).")
        if self.cpus == 0 and self.gpus == 0:
            raise UsageError("a probe needs some CPUs or GPUs (both are 0).")
        if self.memory_gb is not None and not (
            math.isfinite(self.memory_gb) and self.memory_gb > 0
        ):
            raise UsageError(f"a probe's memory must be positive GB (got {self.memory_gb:g}).")
        if self.accelerator is not None and not self.accelerator.strip():
            raise UsageError("the accelerator type is empty; name one (e.g. H100) or omit it.")
        for name, amount in self.custom.items():
            if not name or name in RESERVED:
                raise UsageError(
                    f"custom resource {name!r}: give a resource of the cluster by its name "
                    f"(not one of {', '.join(RESERVED)}, which have options of their own)."
                )
            if not (isinstance(amount, int | float) and math.isfinite(amount) and amount > 0):
                raise UsageError(f"custom resource {name}: the amount must be positive.")

    def options(self) -> dict[str, Any]:
        """Keyword arguments of Ray's `.options(...)` for the task."""
        options: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        if self.memory_gb is not None:
            options["memory"] = int(self.memory_gb * 1024**3)
        if self.accelerator:
            options["accelerator_type"] = self.accelerator
        if self.custom:
            options["resources"] = dict(self.custom)
        return options

    def describe(self) -> str:
        parts = [f"{self.cpus:g} CPU"]
        if self.gpus:
            parts.append(
                f"{self.gpus:g} GPU" + (f" ({self.accelerator})" if self.accelerator else "")
            )
        if self.memory_gb:
            parts.append(f"{self.memory_gb:g} GB")
        parts += [f"{amount:g} {name}" for name, amount in self.custom.items()]
        return ", ".join(parts)


def parse_custom_resources(
    items: Sequence[str], option: str = "--ray-resource"
) -> dict[str, float]:
    """`NAME=AMOUNT` items as a custom-resource mapping; a malformed one is a UsageError."""
    custom: dict[str, float] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        try:
            amount = float(raw) if sep and name else float("nan")
        except ValueError:
            amount = float("nan")
        if not math.isfinite(amount):
            raise UsageError(f"{option} {item!r} is not NAME=AMOUNT (e.g. {option} gpu_h100=1).")
        if name in custom:
            raise UsageError(f"{option} {name} is given twice; give each resource once.")
        custom[name] = amount
    return custom


@dataclass(frozen=True)
class RaySettings:
    """Where the cluster is and how its probes run."""

    address: str  # host:port of the head (GCS), ray://host:10001 (Ray Client), auto, or local
    resources: TaskResources = field(default_factory=TaskResources)
    timeout: float | None = None  # seconds a task may run on its node, then it is cancelled:
    # a skip (None: DEFAULT_TASK_TIMEOUT; `ekka.full` makes it the probe's timeout plus slack)
    queue_timeout: float = (
        defaults.QUEUE_TIMEOUT
    )  # seconds a task may wait for a node with its resources
    retries: int = 0  # a failed task (raised, node lost, past a limit) is tried again, then skips
    node_executor: str = (
        defaults.NODE_EXECUTOR
    )  # what runs the probe on its node: local (worktree) or docker
    trace_dir: str | None = None  # a folder every node mounts; None: each node's temp folder
    cancel_grace: float = 10.0  # seconds a cancelled task has to clean up, then it is killed

    def __post_init__(self) -> None:
        if not self.address.strip():
            raise UsageError(
                "the Ray address is empty: give host:port, ray://host:port, auto or local."
            )
        for name, value in (
            ("task timeout", DEFAULT_TASK_TIMEOUT if self.timeout is None else self.timeout),
            ("queue timeout", self.queue_timeout),
            ("cancel grace", self.cancel_grace),
        ):
            if not (math.isfinite(value) and value > 0):
                raise UsageError(
                    f"the ray executor's {name} must be positive seconds (got {value:g})."
                )
        if self.retries < 0:
            raise UsageError(f"the ray executor's retries must be 0 or more (got {self.retries}).")
        if self.node_executor not in NODE_EXECUTORS:
            raise UsageError(
                f"node executor {self.node_executor!r}: use {' or '.join(NODE_EXECUTORS)}."
            )


# --- the connection ---------------------------------------------------------------------------

_connect_lock = threading.Lock()


def connect(address: str) -> str:
    """Join the cluster at `address` (once per process; later calls reuse the connection) and
    return the address of the cluster joined. "local" starts a cluster of this machine (its
    CPUs); "auto" joins the one `ray start` left running here."""
    try:
        import ray
    except ImportError:
        raise RayClusterError(
            "the ray executor needs the `ray` package: pip install 'ekka[ray]' "
            "(`make venv` installs it)."
        ) from None
    with _connect_lock:
        if ray.is_initialized():
            current = str(ray.get_runtime_context().gcs_address)
            if address in ("auto", "local", current):
                return current
            raise RayClusterError(
                f"this process already uses the Ray cluster at {current}; it cannot also use "
                f"{address} (one cluster per process)."
            )
        _check_reachable(address)
        try:
            ray.init(
                address=None if address == "local" else address,
                namespace="ekka",
                logging_level=logging.WARNING,
                log_to_driver=False,
                include_dashboard=False if address == "local" else None,
            )
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError...
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RayClusterError(
                f"no Ray cluster answers at {address} ({first}); start one (`ray start --head`, "
                "or the RayCluster of deploy/) or check --ray-address."
            ) from None
        return str(ray.get_runtime_context().gcs_address)


def _check_reachable(address: str) -> None:
    """A TCP connection to host:port first: Ray itself retries an unreachable one for minutes."""
    if address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RayClusterError(
            f"--ray-address {address!r} is not host:port, ray://host:port, auto or local."
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise RayClusterError(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one "
            "(`ray start --head`, or the RayCluster of deploy/) or check --ray-address."
        ) from None


def cluster_summary() -> str:
    """One line: the cluster's live nodes and their CPUs and GPUs."""
    nodes = [n for n in _ray_untyped().nodes() if n.get("Alive")]
    total = _ray_untyped().cluster_resources()
    return f"{len(nodes)} node(s), {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs"


def fits_some_node(resources: TaskResources) -> bool:
    """True when some live node has the resources a task asks for (free or not)."""
    wanted = {"CPU": resources.cpus, "GPU": resources.gpus, **resources.custom}
    if resources.memory_gb is not None:
        wanted["memory"] = resources.memory_gb * 1024**3
    if resources.accelerator:
        wanted[f"accelerator_type:{resources.accelerator}"] = 0.001
    for node in _ray_untyped().nodes():
        have = node.get("Resources", {})
        if node.get("Alive") and all(have.get(k, 0) >= v for k, v in wanted.items() if v):
            return True
    return False


def _ray_untyped() -> Any:
    """`ray` for its calls that carry no annotations (`nodes`, `cluster_resources`)."""
    import ray

    return ray


# --- what runs on a node ----------------------------------------------------------------------


class NodeProbe(Protocol):
    """What a task runs on its node: the node's executor, its traces under `workdir`.

    A frozen dataclass, pickled to the node: paths in it (the repository, the model) are the
    node's, which the deployment makes the same as the driver's (a shared mount, the image)."""

    def executor(self, workdir: Path) -> Executor: ...


@dataclass(frozen=True)
class TracerProbe:
    """The tracer's oracle on a node: the node's local executor (a worktree of the commit on
    the node's installed release) or its Docker engine, judged against the driver's reference."""

    repo: str
    base: str  # the release commit (the local executor's compiled-changes check; docker's base)
    config: OracleConfig
    reference: OracleReference
    kind: str = "local"  # the node's executor: local or docker
    timeout: float = 600.0  # the node executor's own limit (the task's is RaySettings.timeout)
    framework: str = "vllm"
    images: ImageSettings | None = None  # docker
    limits: ContainerLimits | None = None  # docker

    def executor(self, workdir: Path) -> Executor:
        from ekka.bisect.oracle import TracerOracle

        oracle = TracerOracle.with_reference(self.config, workdir, self.reference)
        if self.kind == "docker":
            from ekka.containers.docker import ContainerLimits, for_repository
            from ekka.containers.engine import connect as docker_connect

            limits = replace(self.limits or ContainerLimits(), timeout=self.timeout)
            if limits.gpus is None:  # the GPUs Ray gave this task, handed to its container
                import ray

                ids = ray.get_gpu_ids()
                limits = replace(limits, gpus=",".join(map(str, ids)) if ids else None)
            return for_repository(
                docker_connect(),
                self.repo,
                oracle,
                release=self.base,
                workdir=workdir,
                images=self.images,
                limits=limits,
            )
        from ekka.containers.local import LocalExecutor
        from ekka.frameworks import installed_package_dir

        package_dir = installed_package_dir(self.framework)
        workdir.mkdir(parents=True, exist_ok=True)
        return LocalExecutor(
            self.repo,
            oracle,
            package_dir=package_dir,
            base=self.base,
            workdir=workdir,
            timeout=self.timeout,
        )


@dataclass(frozen=True)
class CommandProbe:
    """A shell command in a worktree of the commit on the node (`ekka bisect --cmd`)."""

    repo: str
    command: str
    timeout: float | None = None

    def executor(self, workdir: Path) -> Executor:
        from ekka.bisect.command import CommandOracle

        return CommandOracle(self.repo, self.command, self.timeout)


def node_task(probe: NodeProbe, commit: dict[str, Any], workdir: str) -> Iterator[dict[str, Any]]:
    """The task's body on its node: first where and when it started, then the verdict.

    The probe runs in a thread of its own while this one waits: Ray's cancel (a
    KeyboardInterrupt here) then reaches a waiting loop, never a blocked system call, and the
    probe is stopped (its executor cancelled, this worker's child processes killed) and given
    CLEANUP_SECONDS to remove its worktree before the task ends cancelled."""
    import ray

    node = {
        "node": platform.node(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
    }
    started = time.time()
    yield {"started": started, **node}
    executor = probe.executor(Path(workdir))
    outcome: list[ProbeResult | BaseException] = []

    def work() -> None:
        try:
            outcome.append(executor.probe(CommitInfo.from_json(commit)))
        except BaseException as exc:  # handed to the task's thread, which raises it
            outcome.append(exc)

    thread = threading.Thread(target=work, name="ekka-node-probe", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)
    except KeyboardInterrupt:  # cancelled: stop the probe, let it clean up, end cancelled
        executor.cancel()
        kill_descendants(os.getpid())
        thread.join(CLEANUP_SECONDS)
        raise
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    result = outcome[0]
    summary = {**node, "started": started, "ended": time.time()}
    yield replace(result, details={**result.details, "ray": summary}).to_json()


def kill_descendants(pid: int) -> list[int]:
    """SIGKILL every process below `pid` (read from /proc); returns their ids."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, stack = [], list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    for child in found:
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:
            pass
    return found


_remote_lock = threading.Lock()
_remote: Any = None


def _remote_task() -> Any:
    """`node_task` as a Ray remote function (made once, after `ray` is imported)."""
    global _remote
    with _remote_lock:
        if _remote is None:
            import ray

            _remote = ray.remote(num_returns="streaming", max_retries=0)(node_task)
        return _remote


# --- the driver's side ------------------------------------------------------------------------


class RayExecutor:
    """Probes commits as tasks on a Ray cluster; an Executor (`ekka.bisect.executor`).

    Thread-safe: each `probe` submits its own task and waits for it; the bisection's `workers`
    threads keep that many tasks in the cluster at once. Several executors (several jobs) may
    share one cluster and one process; each cancels only its own tasks.
    """

    def __init__(
        self,
        probe: NodeProbe,
        settings: RaySettings,
        *,
        job: str | None = None,
        progress: Progress = lambda _line: None,
    ) -> None:
        import ray

        connect(settings.address)
        self.settings = settings
        self.job = f"{job}-{uuid.uuid4().hex[:8]}" if job else uuid.uuid4().hex[:12]
        self.task_timeout = DEFAULT_TASK_TIMEOUT if settings.timeout is None else settings.timeout
        self.progress = progress
        self.submitted = 0  # tasks submitted (tries included): what the cache saved shows here
        root = settings.trace_dir or str(Path(tempfile.gettempdir()) / "ekka-ray")
        self.workdir = str(Path(root) / self.job)
        self._probe_ref: ObjectRef[Any] = ray.put(probe)  # once per job, not once per task
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._running: set[ObjectRefGenerator[Any]] = set()
        self._where: dict[ObjectRefGenerator[Any], dict[str, Any]] = {}  # node and worker pid

    def probe(self, commit: CommitInfo) -> ProbeResult:
        attempts: list[str] = []
        while True:
            if self._cancelled.is_set():
                return _skip("cancelled", 0.0, attempts)
            result = self._try(commit)
            if not result.transient or self._cancelled.is_set():
                break
            if len(attempts) >= self.settings.retries:
                break
            attempts.append(result.reason)
            self.progress(f"ray: {commit.short} failed ({result.reason}); trying again")
        if attempts:
            result = replace(
                result, details={**result.details, "attempts": [*attempts, result.reason]}
            )
        return result

    def cancel(self) -> None:
        """Cancel this executor's tasks: politely at once (the probe stops and cleans up on its
        node), by force `cancel_grace` seconds later where one still runs."""
        self._cancelled.set()
        with self._lock:
            running = list(self._running)
        for task in running:
            self._stop(task)

    def running(self) -> int:
        """Tasks of this executor submitted and not yet ended."""
        with self._lock:
            return len(self._running)

    def _try(self, commit: CommitInfo) -> ProbeResult:
        """One task for `commit`: submitted, waited for (queue, then run), always ended."""
        import ray

        settings = self.settings
        start = time.monotonic()
        task = (
            _remote_task()
            .options(name=f"ekka-probe-{commit.short}", **settings.resources.options())
            .remote(self._probe_ref, commit.to_json(), self.workdir)
        )
        with self._lock:
            self._running.add(task)
            self.submitted += 1
        try:
            if not _ready(task, settings.queue_timeout):
                self._stop(task)
                return _skip(
                    f"no node of the cluster gave the task {settings.resources.describe()} "
                    f"within {settings.queue_timeout:g} s",
                    time.monotonic() - start,
                )
            started = ray.get(next(task))
            with self._lock:
                self._where[task] = started
            self.progress(f"ray: {commit.short} running on {started['node']}")
            if not _ready(task, self.task_timeout):
                self._stop(task)
                return _skip(
                    f"time limit of {self.task_timeout:g} s reached on {started['node']}: "
                    "the task was cancelled",
                    time.monotonic() - start,
                )
            verdict = ray.get(next(task))
            if self._cancelled.is_set():  # its probe was stopped: what it says is no verdict
                return _skip("cancelled", time.monotonic() - start)
            return ProbeResult.from_json(verdict)
        except StopIteration:  # the stream ended with no verdict: it was cancelled meanwhile
            reason = "cancelled" if self._cancelled.is_set() else "the task ended without a verdict"
            return _skip(reason, time.monotonic() - start)
        except ray.exceptions.TaskCancelledError:
            return _skip("cancelled", time.monotonic() - start)
        except (
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError,
            ray.exceptions.LocalRayletDiedError,
            ray.exceptions.ObjectLostError,
        ) as exc:
            return _skip(
                f"the task's worker or node died ({type(exc).__name__})", time.monotonic() - start
            )
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, ray.exceptions.TaskCancelledError):
                return _skip("cancelled", time.monotonic() - start)
            cause = exc.cause if exc.cause is not None else exc
            first = (str(cause).strip().splitlines() or [""])[0][:300]
            return _skip(
                f"the task raised {type(cause).__name__}: {first}", time.monotonic() - start
            )
        except ray.exceptions.RayError as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            return _skip(
                f"the task failed ({type(exc).__name__}: {first})", time.monotonic() - start
            )
        finally:
            with self._lock:
                self._running.discard(task)
                self._where.pop(task, None)

    def _stop(self, task: ObjectRefGenerator[Any]) -> None:
        """End a task: kill its probe's processes on its node (a reaper task there: the probe
        then ends and removes its worktree itself), cancel it (Ray's polite cancel: the driver
        sees it cancelled at once), and force it `cancel_grace` seconds later where it still
        runs (a no-op for a task that has ended: it kills no other task's worker)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        with self._lock:
            where = self._where.get(task)
        if where is not None:
            reaper = ray.remote(num_cpus=0, max_retries=0)(kill_descendants).options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(where["node_id"], soft=False)
            )
            try:
                ray.get(reaper.remote(where["pid"]), timeout=self.settings.cancel_grace)
            except Exception:  # noqa: BLE001 - the node is gone or slow: the forced cancel follows
                pass
        ray.cancel(task)
        timer = threading.Timer(self.settings.cancel_grace, _force_cancel, (task,))
        timer.daemon = True
        timer.start()


def _ready(task: ObjectRefGenerator[Any], timeout: float) -> bool:
    """True when the task's next item (or its end) came within `timeout` seconds."""
    import ray

    done, _ = ray.wait([task], num_returns=1, timeout=timeout)
    return bool(done)


def _force_cancel(task: ObjectRefGenerator[Any]) -> None:
    import ray

    try:
        ray.cancel(task, force=True)
    except Exception:  # noqa: BLE001 - already ended: nothing to kill
        pass


def _skip(reason: str, seconds: float, attempts: Sequence[str] = ()) -> ProbeResult:
    details: dict[str, Any] = {TRANSIENT: True}
    if attempts:
        details["attempts"] = list(attempts)
    return ProbeResult(Verdict.SKIP, reason, seconds, details)
