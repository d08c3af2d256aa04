"""A real Docker engine for the tests marked docker, and the base image built once per session.

Without an engine the tests skip, visibly; with EKKA_REQUIRE_DOCKER=1 (CI) they fail instead.
The base image is reused by its tag across sessions (`ekka containers base` in .ci/run builds it
first), so only the first session on a machine pays for it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ekka.errors import ContainerEngineError

# The tests' own full build: the commit's sources (compiled ones included) on Ekka's base.
FULL_DOCKERFILE = """\
ARG EKKA_BASE
FROM ${EKKA_BASE}
COPY vllm /src/vllm
COPY csrc /src/csrc
RUN python -m ekka.containers.overlay /src vllm && echo "compiled: $(ls /src/csrc)"
"""


def _unavailable(reason: str) -> None:
    if os.environ.get("EKKA_REQUIRE_DOCKER"):
        pytest.fail(f"EKKA_REQUIRE_DOCKER is set but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client():
    from ekka.containers.engine import connect

    try:
        return connect()
    except ContainerEngineError as exc:
        _unavailable(str(exc))


@pytest.fixture(scope="session")
def base_image(docker_client) -> str:
    from ekka.containers.base import ensure_base_image

    return ensure_base_image(docker_client).base


@pytest.fixture(scope="session")
def sglang_base_image(docker_client) -> str:
    """SGLang's base image (`ekka containers base --framework sglang`, which .ci/run builds
    after vLLM's, in the background while the tests run: this waits for that build through
    the base's lock, then reuses it): SGLang's environment's release, the stand-in sgl_kernel
    and Ekka."""
    from ekka.containers.base import ensure_base_image
    from tests.sglang.conftest import sglang_python

    sglang_python()
    return ensure_base_image(docker_client, framework="sglang").base


@pytest.fixture(scope="session")
def gpu_available() -> None:
    if shutil.which("nvidia-smi") is None or not Path("/dev/nvidiactl").exists():
        pytest.skip("no GPU here (nvidia-smi and /dev/nvidiactl missing)")
