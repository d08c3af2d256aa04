"""The bisection's probes of SGLang with the docker executor: each a container of the commit's
overlay image (the commit's python/sglang over SGLang's base image: the release of SGLang's own
environment, the stand-in sgl_kernel, Ekka), on the shortest history that bisects: the release
(good), the regression of `ekka demo --framework sglang`, one harmless commit (bad). Three
probes (both endpoints, then the bug), each starting SGLang in a container. The full diagnosis
around them (the localization at bad, attribution) is the local executor's, tested in
tests/sglang/test_full.py; `--executor docker` reaches this executor through compose
(tests/sglang/test_environment.py)."""

from __future__ import annotations

import pytest

from ekka.bisect.history import commit_range
from ekka.bisect.oracle import OracleConfig, TracerOracle
from ekka.bisect.search import Bisector
from ekka.bisect.verdict import Verdict
from ekka.containers.docker import for_repository
from ekka.containers.images import ImageSettings
from tests.conftest import PROMPT_IDS
from tests.sglang.conftest import demo_history, demo_model

pytestmark = [pytest.mark.docker, pytest.mark.sglang, pytest.mark.slow]


def _remove_images(client, repository: str) -> None:
    for image in client.images.list(name=repository):
        for tag in image.tags:
            client.images.remove(tag, force=True)


def test_docker_probes_of_sglang_find_the_commit_in_overlay_images(
    zoo_model, tmp_path, request, docker_client, sglang_base_image
):
    history = demo_history(tmp_path, before=0, after=1)
    config = OracleConfig(
        model=str(demo_model(zoo_model)),
        prompt_ids=PROMPT_IDS,
        max_tokens=2,
        framework="sglang",
    )
    oracle = TracerOracle(config, tmp_path / "bisect")
    oracle.prepare()
    tag = f"ekka-test/{tmp_path.name.lower()}:{{sha}}"
    request.addfinalizer(lambda: _remove_images(docker_client, tag.rpartition(":")[0]))
    images = ImageSettings("sglang", sglang_base_image, tag_template=tag)
    executor = for_repository(
        docker_client, history.repo, oracle, release=history.good,
        workdir=tmp_path / "bisect", images=images,
    )  # fmt: skip
    result = Bisector(executor).run(commit_range(history.repo, history.good, history.bad))
    assert result.first_bad is not None and result.first_bad.sha == history.bug
    verdicts = {s.commit.sha: s.verdict for s in result.steps}
    assert verdicts == {
        history.good: Verdict.GOOD,
        history.bug: Verdict.BAD,
        history.bad: Verdict.BAD,
    }
    # every probe ran SGLang in its commit's overlay image: python/sglang over the base's release
    for sha in verdicts:
        (folder,) = (tmp_path / "bisect").glob(f"probe-{sha[:12]}-*")
        built = (folder / "build.log").read_text()
        assert "COPY python/sglang /src/sglang" in built, built
        assert "ekka.containers.overlay /src sglang" in built, built
        assert "ekka probe: trace written" in (folder / "container.log").read_text()
