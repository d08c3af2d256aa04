"""The full diagnosis with the docker executor on real vLLM (CPU) in containers, against the
local executor on the same history. The history holds a commit that changes a compiled source
(and its revert): the local executor skips it (and its neighbour, whose tree still differs from
the release in csrc/), the docker executor builds its image with the test's own Dockerfile and
probes it; both find the same first bad commit.

    good (release) - C (adds csrc/) - R (reverts C) - B (the bug) = bad

After both endpoints, binary search probes C (docker: a full build, good), then R. The local
executor skips C (and would skip every commit whose tree still has csrc/ changes against the
release), then probes R. Kept this short on purpose: each probe starts vLLM (~30 s on 2 cores).
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest

from ekka.bench import base_repository
from ekka.bisect.framework_repo import apply_patch_commit, clone
from ekka.bisect.history import commit_range
from ekka.bisect.oracle import OracleConfig, TracerOracle
from ekka.bisect.search import Bisector
from ekka.cli import main
from ekka.containers.local import LocalExecutor
from ekka.frameworks import installed_package_dir
from ekka.repo import git
from tests.conftest import PROMPT_IDS
from tests.containers.conftest import FULL_DOCKERFILE

pytestmark = [pytest.mark.docker, pytest.mark.vllm]

PROMPT = PROMPT_IDS[:12]


def _remove_images(client, repository: str) -> None:
    for image in client.images.list(name=repository):
        for tag in image.tags:
            client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    work = tmp_path_factory.mktemp("docker-full")
    repo = clone(base_repository(work), work / "repo")
    good = git(repo, "rev-parse", "HEAD")
    (repo / "csrc").mkdir()
    (repo / "csrc" / "fused_norm.cpp").write_text("// a new kernel, not yet used\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "[Kernel] Add a fused norm kernel (#9101)")
    compiled = git(repo, "rev-parse", "HEAD")
    git(repo, "rm", "-q", "-r", "csrc")
    git(repo, "commit", "-q", "-m", "Revert [Kernel] Add a fused norm kernel (#9102)")
    patch = Path(str(files("ekka") / "data" / "demo-regression.patch"))
    bug = apply_patch_commit(repo, patch, "[Model] Llama norms use defaults", 9103)
    return repo, good, compiled, bug


def test_docker_full_diagnosis_builds_the_compiled_commit_and_agrees_with_local(
    history, zoo_model, tmp_path, capsys, request, docker_client, base_image
):
    repo, good, compiled, bug = history
    model = zoo_model("llama", rms_norm_eps=1e-5)
    dockerfile = tmp_path / "Dockerfile.full"
    dockerfile.write_text(FULL_DOCKERFILE)
    tag = f"ekka-test/{tmp_path.name.lower()}:{{sha}}"
    request.addfinalizer(lambda: _remove_images(docker_client, tag.rpartition(":")[0]))
    code = main(
        [
            "diagnose",
            "--model",
            str(model),
            "--prompt-ids",
            ",".join(map(str, PROMPT)),
            "--max-tokens",
            "2",
            "--repo",
            str(repo),
            "--good",
            good,
            "--bad",
            "HEAD",
            "--db",
            f"sqlite:///{tmp_path / 'docker.db'}",
            "--out",
            str(tmp_path / "docker"),
            "--executor",
            "docker",
            "--image-tag",
            tag,
            "--dockerfile",
            str(dockerfile),
            "--memory",
            "12g",
            "--base-image",
            base_image,
        ]
    )
    printed = capsys.readouterr()
    assert code == 1, printed.out + printed.err
    report = json.loads((tmp_path / "docker" / "report.json").read_text())
    bisection = report["bisection"]
    assert bisection["status"] == "found" and bisection["first_bad"]["sha"] == bug
    steps = {s["commit"]: s for s in bisection["steps"]}
    assert steps[compiled]["verdict"] == "good", steps[compiled]
    # each probe's folder keeps the build's and the container's logs
    (folder,) = (tmp_path / "docker" / "traces" / "bisect").glob(f"probe-{compiled[:12]}-*")
    assert "compiled: fused_norm.cpp" in (folder / "build.log").read_text()
    assert (folder / "container.log").is_file()
    (folder,) = (tmp_path / "docker" / "traces" / "bisect").glob(f"probe-{bug[:12]}-*")
    assert "ekka.containers.overlay" in (folder / "build.log").read_text(), "reverted: overlay"

    # the local executor on the same history: skips the compiled commit, same first bad
    config = OracleConfig(model=str(model), prompt_ids=PROMPT, max_tokens=2)
    oracle = TracerOracle(config, tmp_path / "local")
    oracle.prepare()
    local = Bisector(
        LocalExecutor(
            repo,
            oracle,
            package_dir=installed_package_dir("vllm"),
            base=good,
            workdir=tmp_path / "local",
        )
    ).run(commit_range(repo, good, "HEAD"))
    assert local.first_bad is not None and local.first_bad.sha == bug
    assert compiled in local.skipped
