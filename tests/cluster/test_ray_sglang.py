"""A node runs either framework: one SGLang probe as a Ray task on the local cluster. The task
runs the node's local executor (a worktree of the commit, its python/sglang over the release of
SGLang's own environment) with SGLang's interpreter, against the driver's reference. The commit
is the demo's regression, which only the overlaid sources hold: bad, not the release's good."""

from __future__ import annotations

import pytest

from ekka.bisect.history import commit_range
from ekka.bisect.oracle import OracleConfig, TracerOracle
from ekka.bisect.verdict import Verdict
from ekka.containers.ray import RayExecutor, RaySettings, TracerProbe
from tests.conftest import PROMPT_IDS
from tests.sglang.conftest import demo_history, demo_model

pytestmark = [pytest.mark.ray, pytest.mark.sglang]


def test_a_ray_task_probes_an_sglang_commit(cluster, zoo_model, tmp_path):
    history = demo_history(tmp_path, before=0, after=0)
    config = OracleConfig(
        model=str(demo_model(zoo_model)),
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
