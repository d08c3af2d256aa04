"""The full diagnosis of SGLang with the docker executor: each probe a container of the
commit's overlay image (the commit's python/sglang over SGLang's base image: the release of
SGLang's own environment, the stand-in sgl_kernel, Ekka), on the shortest history that
bisects: the release (good), the regression of `ekka demo --framework sglang`, one harmless
commit (bad). Three probes (both endpoints, then the bug), each starting SGLang in a container.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest

from ekka.bench import base_repository
from ekka.bisect.framework_repo import make_bug_history
from ekka.cli import main
from tests.conftest import PROMPT_IDS

pytestmark = [pytest.mark.docker, pytest.mark.sglang, pytest.mark.slow]


def _remove_images(client, repository: str) -> None:
    for image in client.images.list(name=repository):
        for tag in image.tags:
            client.images.remove(tag, force=True)


def test_docker_full_diagnosis_of_sglang_finds_the_commit_in_overlay_images(
    zoo_model, tmp_path, capsys, request, docker_client, sglang_base_image
):
    patch = Path(str(files("ekka") / "data" / "demo-regression-sglang.patch"))
    history = make_bug_history(
        base_repository(tmp_path, "sglang"), tmp_path / "repo", patch,
        "[Model] Llama: build the decoder norms with RMSNorm defaults",
        before=0, after=1, framework_name="sglang",
    )  # fmt: skip
    model = zoo_model("llama", rms_norm_eps=1e-5)
    tag = f"ekka-test/{tmp_path.name.lower()}:{{sha}}"
    request.addfinalizer(lambda: _remove_images(docker_client, tag.rpartition(":")[0]))
    code = main(
        [
            "diagnose", "--framework", "sglang", "--model", str(model),
            "--prompt-ids", ",".join(map(str, PROMPT_IDS)), "--max-tokens", "2",
            "--repo", str(history.repo), "--good", history.good, "--bad", history.bad,
            "--db", f"sqlite:///{tmp_path / 'verdicts.db'}", "--out", str(tmp_path / "report"),
            "--executor", "docker", "--image-tag", tag, "--base-image", sglang_base_image,
        ]
    )  # fmt: skip
    printed = capsys.readouterr()
    assert code == 1, printed.out + printed.err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    bisection, root = report["bisection"], report["root_cause"]
    assert bisection["status"] == "found" and bisection["first_bad"]["sha"] == history.bug
    verdicts = {s["commit"]: s["verdict"] for s in bisection["steps"]}
    assert verdicts == {history.good: "good", history.bug: "bad", history.bad: "bad"}
    assert root["matched"] and root["component"] == "model.layers.0.input_layernorm"
    assert "sglang/srt/models/llama.py" in root["statement"]
    # every probe ran in its commit's overlay image: python/sglang laid over the base's release
    for sha in verdicts:
        (folder,) = (tmp_path / "report" / "traces" / "bisect").glob(f"probe-{sha[:12]}-*")
        built = (folder / "build.log").read_text()
        assert "COPY python/sglang /src/sglang" in built, built
        assert "ekka.containers.overlay /src sglang" in built, built
        assert (folder / "container.log").is_file()
