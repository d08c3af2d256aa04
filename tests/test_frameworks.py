"""The frameworks as data: names, where each package sits in its repository, each one's
interpreter, and the errors a user gets when one is unknown or its environment is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ekka.bisect.framework_repo import make_base_repo, make_bug_history
from ekka.errors import UsageError
from ekka.frameworks import FRAMEWORKS, framework, installed_package_dir, python_for
from ekka.repo import git


def test_unknown_framework_is_a_usage_error_that_lists_the_known_ones():
    with pytest.raises(UsageError, match="unknown framework 'tgi'; use one of vllm, sglang"):
        framework("tgi")


def test_vllm_runs_with_ekkas_interpreter_and_is_found_there():
    assert python_for("vllm") == sys.executable
    assert (installed_package_dir("vllm") / "__init__.py").is_file()


def test_a_missing_environment_says_how_to_make_it(monkeypatch, tmp_path):
    monkeypatch.setenv("EKKA_SGLANG_PYTHON", str(tmp_path / "nowhere" / "python"))
    with pytest.raises(UsageError) as err:
        python_for("sglang")
    message = str(err.value)
    assert "SGLang's environment is not installed" in message and "make venv" in message
    assert "EKKA_SGLANG_PYTHON" in message


def test_another_interpreter_is_asked_where_its_package_is(monkeypatch, tmp_path):
    """The framework's own interpreter answers (here: this one, under another name), and a
    package it lacks is a usage error, not a traceback."""
    python = tmp_path / "python"
    python.symlink_to(sys.executable)
    monkeypatch.setenv("EKKA_SGLANG_PYTHON", str(python))
    monkeypatch.setitem(FRAMEWORKS, "sglang", FRAMEWORKS["sglang"].__class__(
        **{**FRAMEWORKS["sglang"].__dict__, "package": "json"}
    ))  # fmt: skip
    assert installed_package_dir("sglang") == Path(__import__("json").__file__).resolve().parent
    monkeypatch.setitem(FRAMEWORKS, "sglang", FRAMEWORKS["sglang"].__class__(
        **{**FRAMEWORKS["sglang"].__dict__, "package": "no_such_package_anywhere"}
    ))  # fmt: skip
    with pytest.raises(UsageError, match="SGLang is not installed in its environment"):
        installed_package_dir("sglang")


def test_sglang_histories_keep_the_package_under_python(tmp_path):
    """A local SGLang history has SGLang's layout (python/sglang/...): a patch written against
    the package (a/sglang/...) applies there, and the harmless commits touch python/ files."""
    pkg = tmp_path / "site" / "sglang"
    (pkg / "srt" / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "srt" / "models" / "llama.py").write_text("def eps():\n    return 1e-5\n")
    (pkg / "srt" / "_rust.so").write_bytes(b"\x7fELF")
    base = make_base_repo(tmp_path / "base", pkg, framework_name="sglang")
    assert (base / "python" / "sglang" / "srt" / "models" / "llama.py").is_file()
    assert not (base / "sglang").exists() and not (base / "python/sglang/srt/_rust.so").exists()
    patch = tmp_path / "bug.patch"
    patch.write_text(
        "diff --git a/sglang/srt/models/llama.py b/sglang/srt/models/llama.py\n"
        "--- a/sglang/srt/models/llama.py\n+++ b/sglang/srt/models/llama.py\n"
        "@@ -1,2 +1,2 @@\n def eps():\n-    return 1e-5\n+    return 1e-6\n"
    )
    history = make_bug_history(
        base,
        tmp_path / "repo",
        patch,
        "eps",
        before=2,
        after=1,
        extra_files=("sglang/__init__.py",),
        framework_name="sglang",
    )
    shown = git(history.repo, "show", f"{history.bad}:python/sglang/srt/models/llama.py")
    assert "return 1e-6" in shown
    for sha in history.commits:
        files = git(history.repo, "show", "--name-only", "--format=", sha).split()
        assert files and all(f.startswith("python/sglang/") for f in files)
    assert framework("sglang").sources(history.repo) == history.repo / "python"


def test_verdicts_of_two_frameworks_never_share_a_key(tmp_path):
    """The oracle's configuration names the framework, so SGLang's verdicts are cached apart
    from vLLM's; vLLM's keys are those from before SGLang (kept verdicts still hit)."""
    from ekka.bisect.oracle import OracleConfig

    (tmp_path / "config.json").write_text("{}")
    vllm = OracleConfig(model=str(tmp_path), prompt_ids=(1, 2, 3))
    sglang = OracleConfig(model=str(tmp_path), prompt_ids=(1, 2, 3), framework="sglang")
    assert "framework" not in vllm.to_json() and sglang.to_json()["framework"] == "sglang"
    assert vllm.digest() != sglang.digest()
