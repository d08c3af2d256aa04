"""Attribution on a real git repository: the diff's classes and functions against the suspects."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from ekka.bisect.attribution import attribute, touched_symbols
from ekka.repo import git
from ekka.tracer.localize import Suspect
from ekka.tracer.trace import Record, TraceManifest

LAYERS = """
class RMSNorm:
    def __init__(self, size, eps=1e-6):
        self.eps = eps


class DecoderLayer:
    def __init__(self, config):
        self.input_layernorm = RMSNorm(config.hidden, eps=config.eps)

    def forward(self, x):
        return x
"""


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "layers.py").write_text(LAYERS)
    (repo / "pkg" / "other.py").write_text("def helper():\n    return 1\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    return repo


def _commit(repo: Path, path: str, old: str, new: str, message: str) -> str:
    file = repo / path
    file.write_text(file.read_text().replace(old, new))
    git(repo, "commit", "-q", "-am", message)
    return git(repo, "rev-parse", "HEAD")


@dataclass
class FakeTrace:
    records: list
    manifest: TraceManifest | None = None


def _record(name: str, cls: str, file: str) -> Record:
    return Record(
        index=0,
        name=name,
        module_class=cls,
        source_file=file,
        source_line=1,
        step=0,
        pass_index=0,
        call_index=0,
        outputs=(),
    )


TRACE = FakeTrace(
    [
        _record("model.layers.0", "DecoderLayer", "pkg/layers.py"),
        _record("model.layers.0.input_layernorm", "RMSNorm", "pkg/layers.py"),
    ]
)


def _suspect(component: str, cls: str, rank: int = 1) -> Suspect:
    return Suspect(
        rank=rank,
        component=component,
        module_class=cls,
        source_file="pkg/layers.py",
        source_line=2,
        ratio=123.0,
        jump=100.0,
        persistence=1.0,
        pass_index=0,
        step=0,
        position=3,
        evidence="",
    )


def test_touched_symbols_names_the_changed_method(tmp_path):
    repo = _repo(tmp_path)
    sha = _commit(repo, "pkg/layers.py", "eps=config.eps)", ")", "drop eps (#12)")
    touched = touched_symbols(repo, sha)
    assert [(t.file, t.qualname) for t in touched] == [("pkg/layers.py", "DecoderLayer.__init__")]


def test_owner_level_attribution(tmp_path):
    repo = _repo(tmp_path)
    sha = _commit(repo, "pkg/layers.py", "eps=config.eps)", ")", "drop eps (#12)")
    result = attribute(
        repo, sha, 12, [_suspect("model.layers.0.input_layernorm", "RMSNorm")], TRACE
    )
    assert result.matched and result.level == "owner"
    assert "DecoderLayer.__init__" in result.statement and "PR #12" in result.statement
    assert (
        "builds and owns the first component that diverges: model.layers.0.input_layernorm"
        in result.statement
    )


def test_class_level_attribution(tmp_path):
    repo = _repo(tmp_path)
    sha = _commit(repo, "pkg/layers.py", "self.eps = eps", "self.eps = 1e-6", "hard-code eps")
    result = attribute(
        repo, sha, None, [_suspect("model.layers.0.input_layernorm", "RMSNorm")], TRACE
    )
    assert (
        result.level == "class"
        and "changed RMSNorm.__init__ in pkg/layers.py, which is the first" in result.statement
    )


def test_nothing_intersects_lists_both(tmp_path):
    repo = _repo(tmp_path)
    sha = _commit(repo, "pkg/other.py", "return 1", "return 2", "tweak helper (#7)")
    result = attribute(repo, sha, 7, [_suspect("model.layers.0.input_layernorm", "RMSNorm")], TRACE)
    assert not result.matched and result.level == "none"
    assert (
        "helper in pkg/other.py" in result.statement
        and "model.layers.0.input_layernorm" in result.statement
    )


def test_git_is_real(tmp_path):
    repo = _repo(tmp_path)
    out = subprocess.run(
        ["git", "log", "--oneline"], cwd=repo, capture_output=True, text=True, check=True
    )
    assert "base" in out.stdout


def test_delegate_model_and_machinery_attribution(tmp_path):
    repo = _repo(tmp_path)
    (repo / "pkg" / "backend.py").write_text(
        "class Impl:\n    def __init__(self, w):\n        self.w = w\n"
    )
    (repo / "pkg" / "runner.py").write_text(
        "class Runner:\n    def update(self):\n        return 1\n"
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "add backend")
    trace = FakeTrace(
        [
            _record(f"model.layers.{i}.self_attn.attn", "Attention", "pkg/attention.py")
            for i in (0, 1)
        ],
        TraceManifest(
            "vllm",
            delegates={"model.layers.0.self_attn.attn": (("Impl", "pkg/backend.py", 1),)},
            model_class="DecoderLayer",
            model_source=("pkg/layers.py", 7),
        ),
    )
    attn = [_suspect("model.layers.1.self_attn.attn", "Attention")]
    sha = _commit(repo, "pkg/backend.py", "self.w = w", "self.w = w - 1", "window off by one (#3)")
    result = attribute(repo, sha, 3, attn, trace)
    assert (
        result.level == "class"
        and "Impl that model.layers.1.self_attn.attn delegates to" in result.statement
    )
    sha = _commit(repo, "pkg/layers.py", "return x", "return -x", "flip (#4)")
    result = attribute(repo, sha, 4, attn, trace)
    assert (
        result.level == "owner" and "DecoderLayer (the model) builds and owns" in result.statement
    )
    from ekka.bisect import attribution

    saved = attribution.MACHINERY["vllm"]["Attention"]
    attribution.MACHINERY["vllm"]["Attention"] = ("pkg/runner.py",)
    try:
        sha = _commit(repo, "pkg/runner.py", "return 1", "return 2", "rows (#5)")
        result = attribute(repo, sha, 5, attn, trace)
        assert result.level == "machinery" and "Runner.update" in result.statement
    finally:
        attribution.MACHINERY["vllm"]["Attention"] = saved


def test_a_package_under_a_source_root_is_attributed_by_the_traces_paths(tmp_path):
    """SGLang keeps its package under python/: the diff says python/sglang/..., the trace
    sglang/...; the class is still found, named by the repository's path (where a reader of
    the report finds it), and SGLang's serving machinery is its own."""
    repo = tmp_path / "repo"
    (repo / "python" / "sglang" / "srt" / "managers").mkdir(parents=True)
    (repo / "python" / "sglang" / "layers.py").write_text(LAYERS)
    runner = repo / "python" / "sglang" / "srt" / "managers" / "schedule_batch.py"
    runner.write_text("class ScheduleBatch:\n    def prepare(self):\n        return 1\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    trace = FakeTrace(
        [
            _record("model.layers.0.input_layernorm", "RMSNorm", "sglang/layers.py"),
            _record("model.layers.0.self_attn.attn", "RadixAttention", "sglang/attn.py"),
        ]
    )
    norm = _suspect("model.layers.0.input_layernorm", "RMSNorm")
    sha = _commit(repo, "python/sglang/layers.py", "self.eps = eps", "self.eps = 1e-6", "eps (#8)")
    result = attribute(repo, sha, 8, [norm], trace, "sglang")
    assert (
        result.level == "class"
        and "RMSNorm.__init__ in python/sglang/layers.py" in result.statement
    )
    assert [t.file for t in result.touched] == ["python/sglang/layers.py"]
    attn = _suspect("model.layers.0.self_attn.attn", "RadixAttention")
    sha = _commit(
        repo, "python/sglang/srt/managers/schedule_batch.py", "return 1", "return 2", "rows (#9)"
    )
    result = attribute(repo, sha, 9, [attn], trace, "sglang")
    assert result.level == "machinery" and "ScheduleBatch.prepare" in result.statement
    assert not attribute(repo, sha, 9, [attn], trace, "vllm").matched, (
        "vLLM's machinery folders are not SGLang's"
    )
