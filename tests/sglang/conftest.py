"""SGLang as the target: its environment, and diagnoses shared per session.

The tests marked `sglang` run SGLang's engine from its own environment (`.venv-sglang`, or
EKKA_SGLANG_PYTHON). Without it they skip, visibly; with EKKA_REQUIRE_SGLANG=1 (CI, which
installs it) they fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

from ekka.bench import base_repository
from ekka.bisect.framework_repo import BugHistory, make_bug_history
from ekka.errors import UsageError
from tests.conftest import PROMPT_IDS, Diagnosed, arch_name


def sglang_python() -> str:
    """SGLang's interpreter, or a skip (a failure under EKKA_REQUIRE_SGLANG) when it is missing."""
    from ekka.frameworks import python_for

    try:
        return python_for("sglang")
    except UsageError as exc:
        if os.environ.get("EKKA_REQUIRE_SGLANG"):
            pytest.fail(f"EKKA_REQUIRE_SGLANG is set but {exc}")
        pytest.skip(str(exc))


def demo_history(root: Path, *, before: int, after: int) -> BugHistory:
    """A local history of SGLang's release sources (python/sglang/...) under `root`: the
    release, `before` harmless commits, the regression of `ekka demo --framework sglang`
    (Llama's decoder norms built with RMSNorm's default eps), `after` harmless commits. Its
    model is `demo_model`, whose eps differs from that default."""
    sglang_python()
    patch = Path(str(files("ekka") / "data" / "demo-regression-sglang.patch"))
    return make_bug_history(
        base_repository(root, "sglang"), root / "repo", patch,
        "[Model] Llama: build the decoder norms with RMSNorm defaults",
        before=before, after=after, framework_name="sglang",
    )  # fmt: skip


def demo_model(zoo_model: Callable[..., Path]) -> Path:
    """The zoo's Llama with rms_norm_eps 1e-5: the demo's regression changes its output."""
    return zoo_model("llama", rms_norm_eps=1e-5)


@pytest.fixture(scope="session")
def sglang_diagnosed(
    tmp_path_factory: pytest.TempPathFactory, zoo_model: Callable[..., Path]
) -> Callable[..., Diagnosed]:
    """Diagnose (once per session) pristine SGLang against transformers on a zoo model:
    sglang_diagnosed("llama", dtype="bfloat16", engine={...}); tests on the same diagnosis
    share its engine start."""
    from ekka.tracer.diagnose import DiagnoseConfig, run_diagnosis

    cache: dict[tuple[Any, ...], Diagnosed] = {}

    def run(
        arch: str,
        dtype: str = "float32",
        prompt_ids: tuple[int, ...] = PROMPT_IDS,
        max_tokens: int = 3,
        engine: Mapping[str, Any] | None = None,
    ) -> Diagnosed:
        sglang_python()
        engine = dict(engine or {})
        key = (arch_name(arch), dtype, tuple(prompt_ids), max_tokens, tuple(sorted(engine.items())))
        if key not in cache:
            workdir = tmp_path_factory.mktemp(f"sglang-{arch_name(arch)}-{dtype}")
            diagnosis = run_diagnosis(
                DiagnoseConfig(
                    model=str(zoo_model(arch)),
                    prompt_ids=tuple(prompt_ids),
                    workdir=str(workdir),
                    dtype=dtype,
                    max_tokens=max_tokens,
                    engine=engine,
                    framework="sglang",
                )
            )
            cache[key] = Diagnosed(diagnosis, workdir)
        return cache[key]

    return run
