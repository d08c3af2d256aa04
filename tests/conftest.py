"""Shared fixtures: zoo models built once per session, captures cached per (framework, arch, dtype),
diagnoses of pristine vLLM cached per request (one engine start for every test that reads one)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.parallel import is_worker

if TYPE_CHECKING:
    from ekka.report import Diagnosis
    from ekka.tracer.trace import TraceReader

# Each test's duration and what it starts, into the file EKKA_TEST_TIMES names (.ci/run); the
# work units that keep tests sharing a fixture or a resource on one xdist worker (`make test`).
pytest_plugins = ("tests.parallel", "tests.timing")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
# The public benchmark, in the repository (bench/FORMAT.md): the tests read it from here only.
BENCH = REPO / "bench"

PROMPT_IDS = tuple([1] + [(7 * i + 11) % 500 + 3 for i in range(31)])  # 32 tokens, crosses window 8
# 37 tokens: with 16 tokens a step (max_num_batched_tokens=16), the prefill runs in chunks of
# 16, 16 and 5
LONG_PROMPT_IDS = tuple([1] + [(5 * i + 7) % 480 + 16 for i in range(36)])


def arch_name(arch: str) -> str:
    """The architecture's class name for a short alias ("llama" -> "LlamaForCausalLM"): the
    session caches key on it, so that a test asking for "llama" and one asking for
    "LlamaForCausalLM" share one model, capture or diagnosis."""
    from ekka.zoo import get_arch

    return get_arch(arch).name


@pytest.fixture(scope="session")
def zoo_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Build (once per session) a zoo model: zoo_model("llama", dtype="float32", **overrides)."""
    from ekka.zoo import build_model

    cache: dict[tuple, Path] = {}

    def build(arch: str, dtype: str = "float32", **overrides: object) -> Path:
        key = (arch_name(arch), dtype, tuple(sorted(overrides.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"zoo-{arch}")
            cache[key] = build_model(arch, out, dtype=dtype, overrides=overrides or None)
        return cache[key]

    return build


@pytest.fixture(scope="session")
def captured(
    tmp_path_factory: pytest.TempPathFactory, zoo_model: Callable[..., Path]
) -> Callable[..., object]:
    """Capture (once per session) a trace: captured("vllm", "llama", dtype="float32", max_tokens=3)."""
    from ekka.tracer.capture import CaptureSpec, capture

    cache: dict[tuple, object] = {}

    def run(
        framework: str, arch: str, dtype: str = "float32", max_tokens: int = 3, **kw: object
    ) -> object:
        key = (
            framework,
            arch_name(arch),
            dtype,
            max_tokens,
            tuple(sorted((k, str(v)) for k, v in kw.items())),
        )
        if key not in cache:
            out = tmp_path_factory.mktemp(f"trace-{framework}-{arch}")
            spec = CaptureSpec(
                framework=framework,
                model=str(zoo_model(arch)),
                prompt_ids=kw.pop("prompt_ids", PROMPT_IDS),  # type: ignore[arg-type]
                out=str(out),
                dtype=dtype,
                max_tokens=max_tokens,
                **kw,  # type: ignore[arg-type]
            )
            cache[key] = capture(spec)
        return cache[key]

    return run


@dataclass(frozen=True)
class Diagnosed:
    """One localize-mode diagnosis (`run_diagnosis`) and the folder of its traces."""

    diagnosis: Diagnosis
    workdir: Path

    @property
    def target(self) -> TraceReader:
        """The target's trace: vLLM's capture of the request, as `capture` writes it."""
        from ekka.tracer.trace import TraceReader

        return TraceReader(self.workdir / "target")


@pytest.fixture(scope="session")
def diagnosed(
    tmp_path_factory: pytest.TempPathFactory, zoo_model: Callable[..., Path]
) -> Callable[..., Diagnosed]:
    """Diagnose (once per session) pristine vLLM against transformers on a zoo model:
    diagnosed("llama", dtype="bfloat16", prompt_ids=..., max_tokens=3, engine={...}).

    Tests that assert on the same diagnosis, or on its target's trace (the vLLM capture of the
    same request: same spec, same session, same writer), share it: one engine start for all
    of them. Tests about a start of their own (a session's steps, a failing start, a patched
    copy) run their own."""
    from ekka.tracer.diagnose import DiagnoseConfig, run_diagnosis

    cache: dict[tuple[Any, ...], Diagnosed] = {}

    def run(
        arch: str,
        dtype: str = "float32",
        prompt_ids: tuple[int, ...] = PROMPT_IDS,
        max_tokens: int = 3,
        engine: Mapping[str, Any] | None = None,
    ) -> Diagnosed:
        engine = dict(engine or {})
        key = (arch_name(arch), dtype, tuple(prompt_ids), max_tokens, tuple(sorted(engine.items())))
        if key not in cache:
            workdir = tmp_path_factory.mktemp(f"diagnosis-{arch_name(arch)}-{dtype}")
            diagnosis = run_diagnosis(
                DiagnoseConfig(
                    model=str(zoo_model(arch)),
                    prompt_ids=tuple(prompt_ids),
                    workdir=str(workdir),
                    dtype=dtype,
                    max_tokens=max_tokens,
                    engine=engine,
                )
            )
            cache[key] = Diagnosed(diagnosis, workdir)
        return cache[key]

    return run


@pytest.fixture(scope="session")
def real_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pretrained Gemma 3 270M (real weights), prepared once into Ekka's cache (minutes the
    first time) and linked into a session folder. Needs the `real` extra: without it the tests
    skip, except in CI, which installs it (a skip there would hide the tests)."""
    from ekka.zoo.pretrained import build_pretrained, get_pretrained, missing_packages

    missing = missing_packages(get_pretrained("gemma3-270m"))
    if missing:
        message = f"the `real` extra is not installed (missing: {', '.join(missing)})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return build_pretrained("gemma3-270m", tmp_path_factory.mktemp("gemma3-270m"))


# ------------------------------------------------------------------ the working tree stays clean


def tree_state(root: Path) -> frozenset[str] | None:
    """`git status --porcelain` of the checkout at `root` (untracked files one by one, ignored
    ones left out), or None where that cannot be known: no git, or not a git checkout."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=all"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return frozenset(line for line in done.stdout.splitlines() if line.strip())


_TREE_AT_START = pytest.StashKey[frozenset[str] | None]()


def pytest_sessionstart(session: pytest.Session) -> None:
    if not is_worker(session.config):
        session.stash[_TREE_AT_START] = tree_state(REPO)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No test writes into the working tree (a test once committed a 2 MB model as `unused/`):
    files that `git status` shows now and did not at the start fail the run. Under xdist the
    controller checks, once, before the first worker starts and after the last one ends."""
    if is_worker(session.config):
        return
    before = session.stash.get(_TREE_AT_START, None)
    after = tree_state(REPO)
    if before is None or after is None:
        return
    new = sorted(after - before)
    if not new:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [
        "the tests left these in the working tree (write under tmp_path instead; or they changed "
        "while the tests ran):",
        *(f"  {line}" for line in new),
    ]
    if reporter is not None:
        reporter.write_sep("=", "working tree changed by the tests", red=True)
        for line in lines:
            reporter.write_line(line)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
