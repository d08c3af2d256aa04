"""The full diagnosis of a public bench case with the ray executor: each probe a Ray task that
runs real vLLM (CPU) in a worktree on its node (the local cluster), two at a time; the same
first bad commit and suspect as the local executor finds on this case (tests/bisect/
test_full_diagnosis.py: the same patch), the traces in the configured shared folder."""

from __future__ import annotations

import json
from fnmatch import fnmatch

import pytest

from ekka.bench import base_repository, build_case_model, case_prompt_ids, find_cases
from ekka.bisect.framework_repo import make_bug_history
from ekka.cli import main
from tests.cluster.conftest import worktrees
from tests.conftest import BENCH

pytestmark = [pytest.mark.ray, pytest.mark.vllm]

CASES = BENCH / "cases"
CASE = "llama-rmsnorm-eps-ignored"


@pytest.fixture(scope="session")
def bench_case(tmp_path_factory):
    """The case's model and a short history around its bug commit (built once): release,
    harmless, bug, harmless; with two workers, the endpoints and then one round of two probes."""
    (case,) = find_cases(CASES, [CASE])
    work = tmp_path_factory.mktemp("ray-bench")
    model = build_case_model(case, work / "model")
    history = make_bug_history(
        base_repository(work), work / "repo", case.path / "bug.patch", case.summary[:60],
        before=1, after=1,
    )  # fmt: skip
    return case, model, case_prompt_ids(case, model)[:16], history


def test_full_diagnosis_through_ray_finds_the_commit_and_suspect(
    cluster, bench_case, tmp_path, capsys
):
    case, model, ids, history = bench_case
    traces = tmp_path / "shared-traces"
    code = main(
        [
            "diagnose",
            "--model", str(model),
            "--prompt-ids", ",".join(map(str, ids)),
            "--max-tokens", "3",
            "--repo", str(history.repo),
            "--good", history.good,
            "--bad", history.bad,
            "--db", f"sqlite:///{tmp_path / 'verdicts.db'}",
            "--out", str(tmp_path / "report"),
            "--workers", "2",
            "--executor", "ray",
            "--ray-address", cluster,
            "--ray-cpus", "1",
            "--ray-trace-dir", str(traces),
        ]
    )  # fmt: skip
    printed = capsys.readouterr()
    assert code == 1, printed.out + printed.err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    bisection, root = report["bisection"], report["root_cause"]
    assert bisection["status"] == "found" and bisection["first_bad"]["sha"] == history.bug
    assert root["matched"] and root["component"] == "model.layers.0.input_layernorm"
    assert any(fnmatch(root["component"], p) for p in case.truth_components)
    # every probe ran as a task, two at a time; its trace stayed in the shared folder
    assert bisection["probes"] == 4 and bisection["rounds"] == 1
    probed = {step["commit"][:12] for step in bisection["steps"] if not step["cached"]}
    written = {folder.name.removeprefix("probe-") for folder in traces.glob("*/probe-*")}
    assert written == probed and all(
        (f / "manifest.json").is_file() for f in traces.glob("*/probe-*")
    )
    assert len(worktrees(history.repo)) == 1
