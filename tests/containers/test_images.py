"""Per-commit images on a real Docker engine: overlay and full build, reuse, pull fallback,
least-recently-used pruning, and a failed build that becomes a skip."""

from __future__ import annotations

from pathlib import Path

import pytest

from ekka.bisect.history import commit_range
from ekka.bisect.oracle import OracleConfig, TracerOracle
from ekka.bisect.verdict import Verdict
from ekka.containers.docker import ContainerLimits, DockerExecutor
from ekka.containers.images import ImageSettings, ImageStore
from ekka.repo import git
from tests.containers.conftest import FULL_DOCKERFILE

pytestmark = pytest.mark.docker


def _repo(tmp_path: Path) -> tuple[Path, list[str]]:
    """A small framework history: release, a Python change, a compiled change."""
    repo = tmp_path / "fw"
    (repo / "vllm").mkdir(parents=True)
    (repo / "vllm" / "__init__.py").write_text("SCALE = 1.0\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "release")
    (repo / "vllm" / "__init__.py").write_text("SCALE = 1.5\n")
    git(repo, "commit", "-q", "-am", "Change the scale (#2)")
    (repo / "csrc").mkdir()
    (repo / "csrc" / "kernel.cpp").write_text("int kernel() { return 1; }\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "Add a kernel (#3)")
    shas = git(repo, "rev-list", "--reverse", "HEAD").split()
    return repo, shas


def _store(client, repo: Path, tmp_path: Path, **kw) -> ImageStore:
    # a tag repository per test, so tests (and sessions) never see each other's images
    settings = ImageSettings(
        tag_template=f"ekka-test/{tmp_path.name.lower()}:{{sha}}",
        state_dir=str(tmp_path / "state"),
        **kw,
    )
    shas = git(repo, "rev-list", "--reverse", "HEAD").split()
    return ImageStore(client, repo, settings, release=shas[0])


def _cleanup(client, store: ImageStore) -> None:
    for tag, _, _ in store.managed():
        client.images.remove(tag, force=True)


def test_overlay_then_reuse_and_full_build_for_compiled_changes(
    docker_client, base_image, tmp_path
):
    repo, (release, python_change, compiled_change) = _repo(tmp_path)
    dockerfile = tmp_path / "Dockerfile.full"
    dockerfile.write_text(FULL_DOCKERFILE)
    lines: list[str] = []
    store = _store(
        docker_client,
        repo,
        tmp_path,
        base_image=base_image,
        dockerfile=str(dockerfile),
        pull_template="localhost:1/ekka-nowhere:{sha}",  # no registry: falls through
    )
    try:
        first = store.ensure(python_change, lines.append)
        assert first.strategy == "overlay" and first.tag.endswith(python_change)
        assert "pull localhost:1/ekka-nowhere" in first.log and "compiled files" in first.log
        assert any("compiled files" in line for line in lines), "build output streams"
        again = store.ensure(python_change)
        assert again.strategy == "reused" and again.tag == first.tag
        assert again.seconds < first.seconds
        full = store.ensure(compiled_change)
        assert full.strategy == "build" and "compiled: kernel.cpp" in full.log
        # the overlay image holds the commit's sources on the release's compiled extensions
        executor = DockerExecutor(docker_client, store, oracle=None, workdir=tmp_path)  # type: ignore[arg-type]
        run = executor.run(
            first.tag,
            [
                "python",
                "-c",
                "import vllm, os; print(vllm.SCALE, vllm.__file__, "
                "any(f.endswith('.so') for f in os.listdir('/src/vllm')))",
            ],
            environment={"PYTHONPATH": "/src"},
        )
        assert run.exit_code == 0 and "1.5 /src/vllm/__init__.py True" in run.log
    finally:
        _cleanup(docker_client, store)


def test_prune_removes_the_least_recently_used(docker_client, base_image, tmp_path):
    repo, shas = _repo(tmp_path)
    store = _store(docker_client, repo, tmp_path, base_image=base_image)
    try:
        tags = [store.ensure(sha).tag for sha in shas[:2]]
        store.touch(tags[0])  # the release's image is now the most recently used
        sizes = {tag: size for tag, size, _ in store.managed()}
        assert set(sizes) == set(tags) and all(0 < s < 50e6 for s in sizes.values())
        removed = store.prune(budget_gb=sizes[tags[0]] / 1e9)
        assert removed == [tags[1]]
        assert [tag for tag, _, _ in store.managed()] == [tags[0]]
        assert store.prune(budget_gb=1.0) == []
    finally:
        _cleanup(docker_client, store)


def test_failed_build_or_missing_strategy_is_a_skip_with_the_log(
    docker_client, base_image, tmp_path
):
    repo, shas = _repo(tmp_path)
    dockerfile = tmp_path / "Dockerfile.broken"
    dockerfile.write_text(
        "ARG EKKA_BASE\nFROM ${EKKA_BASE}\nRUN echo 'kernel.cpp:1: error: no compiler' && exit 3\n"
    )
    oracle = TracerOracle(OracleConfig(model=str(tmp_path), prompt_ids=(1, 2)), tmp_path)
    commit = commit_range(repo, shas[0], shas[-1])[-1]
    broken = _store(
        docker_client, repo, tmp_path, base_image=base_image, dockerfile=str(dockerfile)
    )
    result = DockerExecutor(docker_client, broken, oracle, workdir=tmp_path / "w").probe(commit)
    assert result.verdict is Verdict.SKIP and not result.transient
    assert "returned a non-zero code: 3" in result.reason
    assert "no compiler" in result.details["log_tail"]
    assert Path(result.details["build_log"]).read_text().count("no compiler") >= 1
    # no Dockerfile for a compiled change: a skip that says so
    bare = _store(docker_client, repo, tmp_path, base_image=base_image)
    result = DockerExecutor(docker_client, bare, oracle, workdir=tmp_path / "w2").probe(commit)
    assert result.verdict is Verdict.SKIP and "csrc/kernel.cpp" in result.reason
    assert ContainerLimits().timeout == 600
