"""The full diagnosis on SGLang: a local history of the installed release's sources in SGLang's
own layout (python/sglang/...) with a regression among harmless commits; localized at bad,
bisected with the local executor's overlay, attributed to SGLang's file and class. The same
regression as `ekka demo --framework sglang`, on the shortest history that still bisects."""

from __future__ import annotations

import json
import math

import pytest

from ekka.cli import main
from tests.conftest import PROMPT_IDS
from tests.sglang.conftest import demo_history, demo_model

pytestmark = [pytest.mark.sglang, pytest.mark.slow]


def test_full_diagnosis_over_sglangs_history_names_commit_file_and_component(
    tmp_path, zoo_model, capsys
):
    history = demo_history(tmp_path, before=2, after=2)
    assert (history.repo / "python" / "sglang" / "srt" / "models" / "llama.py").is_file()
    model = demo_model(zoo_model)
    code = main(
        [
            "diagnose", "--framework", "sglang", "--model", str(model),
            "--prompt-ids", ",".join(map(str, PROMPT_IDS)), "--max-tokens", "3",
            "--repo", str(history.repo), "--good", history.good, "--bad", history.bad,
            "--db", f"sqlite:///{tmp_path / 'verdicts.db'}", "--out", str(tmp_path / "report"),
        ]
    )  # fmt: skip
    assert code == 1, capsys.readouterr().out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    bisection, root = report["bisection"], report["root_cause"]
    assert bisection["status"] == "found" and bisection["first_bad"]["sha"] == history.bug
    assert bisection["first_bad"]["pr"] == history.bug_pr
    assert bisection["probes"] <= math.ceil(math.log2(len(history.commits))) + 2
    assert report["target"]["framework"] == "sglang"
    assert root["matched"] and root["component"] == "model.layers.0.input_layernorm"
    assert (
        "LlamaDecoderLayer.__init__" in root["statement"]
        and "python/sglang/srt/models/llama.py" in root["statement"]
    )
