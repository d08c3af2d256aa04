"""`ekka diagnose --engine KEY=VALUE`: the keyword arguments for vllm.LLM(...), parsed once
(`parse_engine_args`), refused with a clear message (exit 2) when malformed, and handed to the
diagnosis' config in both modes. Nothing here starts vLLM: the diagnosis is replaced by a stub
that keeps its config."""

from __future__ import annotations

from typing import Any

import pytest

from ekka.cli import main
from ekka.errors import UsageError
from ekka.request import parse_engine_args
from tests.conftest import PROMPT_IDS

IDS = ",".join(map(str, PROMPT_IDS))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_values_are_json_where_they_parse_else_text():
    assert parse_engine_args(
        [
            "max_model_len=2048",
            "enable_chunked_prefill=true",
            "gpu_memory_utilization=0.5",
            "kv_cache_dtype=auto",
            "seed=null",
            "cuda_graph_sizes=[1, 2]",
            'tokenizer_mode="8"',
            'override_generation_config={"temperature": 0}',
            "hf_token=",
            "served_model_name=a=b",
            " tensor_parallel_size =2",
        ]
    ) == {
        "max_model_len": 2048,
        "enable_chunked_prefill": True,
        "gpu_memory_utilization": 0.5,
        "kv_cache_dtype": "auto",
        "seed": None,
        "cuda_graph_sizes": [1, 2],
        "tokenizer_mode": "8",
        "override_generation_config": {"temperature": 0},
        "hf_token": "",
        "served_model_name": "a=b",
        "tensor_parallel_size": 2,
    }
    assert parse_engine_args([]) == {}


@pytest.mark.parametrize(
    ("items", "says"),
    [
        (["max_model_len"], "'max_model_len' has no '='"),
        (["=2048"], "no key before '='"),
        (["  =1"], "no key before '='"),
        (["max-model-len=2048"], "(max_model_len=...)"),
        (["max model len=2048"], "KEY a Python name"),
        (
            ["max_model_len=2048", "enforce_eager=true", "max_model_len=4096"],
            "max_model_len is given twice (max_model_len=2048 and max_model_len=4096)",
        ),
    ],
)
def test_malformed_items_are_usage_errors_that_say_how_to_write_them(items, says):
    with pytest.raises(UsageError) as info:
        parse_engine_args(items)
    message = str(info.value)
    assert says in message and "--engine" in message
    if "twice" not in says:
        assert "e.g. --engine max_model_len=2048" in message


def test_the_option_name_in_the_message_follows_the_caller():
    with pytest.raises(UsageError, match="--set 'x' has no '='"):
        parse_engine_args(["x"], option="--set")


@pytest.mark.parametrize(
    ("engine", "says"),
    [
        ("max_model_len", "has no '='"),
        ("=8", "no key before '='"),
    ],
)
def test_diagnose_refuses_a_malformed_engine_argument_before_anything_runs(
    capsys, tmp_path, engine, says
):
    model = tmp_path / "no-model-needed"  # the engine arguments are checked first
    for extra in ([], ["--repo", str(tmp_path), "--good", "HEAD~1", "--bad", "HEAD"]):
        code, text = run(
            capsys,
            "diagnose",
            "--model",
            str(model),
            "--prompt-ids",
            IDS,
            "--engine",
            "enforce_eager=true",
            "--engine",
            engine,
            *extra,
        )
        assert code == 2, text
        assert says in text and "KEY=VALUE" in text and "Traceback" not in text


def test_diagnose_refuses_an_engine_key_given_twice(capsys, tmp_path):
    code, text = run(
        capsys,
        "diagnose",
        "--model",
        str(tmp_path),
        "--prompt-ids",
        IDS,
        "--engine",
        "max_model_len=64",
        "--engine",
        "max_model_len=128",
    )
    assert code == 2 and "given twice" in text


class Stop(UsageError):
    """Raised by the stub diagnosis once it has the config (exit 2, the message shown)."""


def test_the_engine_arguments_reach_the_localize_config(capsys, tmp_path, zoo_model, monkeypatch):
    import ekka.reduce

    seen: list[Any] = []

    def stub(config: Any, progress: Any = None) -> Any:
        seen.append(config)
        raise Stop("stub diagnosis: stopped")

    monkeypatch.setattr(ekka.reduce, "run_diagnosis", stub)
    code, text = run(
        capsys,
        "diagnose",
        "--model",
        str(zoo_model("llama")),
        "--prompt-ids",
        IDS,
        "--out",
        str(tmp_path / "out"),
        "--engine",
        "enable_chunked_prefill=true",
        "--engine",
        "max_num_batched_tokens=16",
        "--engine",
        "kv_cache_dtype=auto",
    )
    assert code == 2 and "stub diagnosis: stopped" in text, text
    assert dict(seen[0].engine) == {
        "enable_chunked_prefill": True,
        "max_num_batched_tokens": 16,
        "kv_cache_dtype": "auto",
    }


def test_the_engine_arguments_reach_the_full_config(capsys, tmp_path, zoo_model, monkeypatch):
    import ekka.full

    seen: list[Any] = []

    def stub(config: Any, **_: Any) -> Any:
        seen.append(config)
        raise Stop("stub full diagnosis: stopped")

    monkeypatch.setattr(ekka.full, "run_full_diagnosis", stub)
    code, text = run(
        capsys,
        "diagnose",
        "--model",
        str(zoo_model("llama")),
        "--prompt-ids",
        IDS,
        "--out",
        str(tmp_path / "out"),
        "--repo",
        str(tmp_path / "repo"),
        "--good",
        "v1",
        "--bad",
        "main",
        "--engine",
        "tensor_parallel_size=2",
    )
    assert code == 2 and "stub full diagnosis: stopped" in text, text
    assert dict(seen[0].engine) == {"tensor_parallel_size": 2}
    assert (seen[0].good, seen[0].bad) == ("v1", "main")
