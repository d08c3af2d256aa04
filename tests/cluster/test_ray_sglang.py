"""A node runs either framework: one SGLang probe as a Ray task on the local cluster. The task
runs the node's local executor (a worktree of the commit, its python/sglang over the release of
SGLang's own environment) with SGLang's interpreter, against the driver's reference. The commit
is the demo's regression, which only the overlaid sources hold: bad, not the release's good."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest

from ekka.bench import base_repository
from ekka.bisect.framework_repo import make_bug_history
from ekka.bisect.history import commit_range
from ekka.bisect.oracle import OracleConfig, TracerOracle
from ekka.bisect.verdict import Verdict
from ekka.containers.ray import RayExecutor, RaySettings, TracerProbe
from tests.conftest import PROMPT_IDS
from tests.sglang.conftest import sglang_python

pytestmark = [pytest.mark.ray, pytest.mark.sglang]


def test_a_ray_task_probes_an_sglang_commit(cluster, zoo_model, tmp_path):
    sglang_python()
    patch = Path(str(files("ekka") / "data" / "demo-regression-sglang.patch"))
    history = make_bug_history(
        base_repository(tmp_path, "sglang"), tmp_path / "repo", patch,
        "[Model] Llama: build the decoder norms with RMSNorm defaults",
        before=0, after=0, framework_name="sglang",
    )  # fmt: skip
    config = OracleConfig(
        model=str(zoo_model("llama", rms_norm_eps=1e-5)),
        prompt_ids=PROMPT_IDS,
        max_tokens=2,
        framework="sglang",
    )
    oracle = TracerOracle(config, tmp_path / "driver")
    oracle.prepare()
    probe = TracerProbe(
        repo=str(history.repo),
        base=history.good,
        config=config,
        reference=oracle.prepared,
        framework="sglang",
    )
    bad = commit_range(history.repo, history.good, history.bad).bad
    result = RayExecutor(probe, RaySettings(cluster, trace_dir=str(tmp_path / "traces"))).probe(bad)
    assert result.verdict is Verdict.BAD, result.reason
    assert "ray" in result.details
