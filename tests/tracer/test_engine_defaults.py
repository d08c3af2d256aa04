"""Engine defaults that fit: where the engine arguments shrink the KV cache, the default
`max_model_len` is what the cache holds (or what the scenario's longest request needs), so
that vLLM starts; an explicit `max_model_len` still wins."""

from __future__ import annotations

import pytest

from ekka.scenario import Scenario
from ekka.tracer.adapters.vllm import (
    ENGINE_DEFAULTS,
    cache_capacity,
    engine_arguments,
    longest_request,
)
from ekka.tracer.diagnose import DiagnoseConfig, run_diagnosis
from ekka.tracer.protocol import CaptureSpec, ScenarioRequest
from tests.conftest import PROMPT_IDS

SMALL_CACHE = {"block_size": 32, "num_gpu_blocks_override": 5}  # 4 usable blocks: 128 tokens


def test_without_a_small_cache_the_default_is_the_models_context() -> None:
    assert engine_arguments({}, 256, longest=40) == {**ENGINE_DEFAULTS, "max_model_len": 256}
    assert engine_arguments({"block_size": 32}, 8192, longest=40)["max_model_len"] == 4096


def test_a_small_cache_sets_the_default_to_what_it_holds() -> None:
    assert cache_capacity(SMALL_CACHE) == 128  # the null block is held back
    assert engine_arguments(SMALL_CACHE, 256, longest=40)["max_model_len"] == 128
    # never above the model's context
    assert engine_arguments(SMALL_CACHE, 64, longest=40)["max_model_len"] == 64
    # the block size unknown (its default is the platform's): what the longest request needs
    blocks_only = {"num_gpu_blocks_override": 5}
    assert cache_capacity(blocks_only) is None
    assert engine_arguments(blocks_only, 256, longest=40)["max_model_len"] == 40
    # a request longer than the cache holds: its own length (vLLM then says the cache is short)
    assert engine_arguments(SMALL_CACHE, 256, longest=200)["max_model_len"] == 200


def test_an_explicit_max_model_len_wins() -> None:
    chosen = engine_arguments({**SMALL_CACHE, "max_model_len": 96}, 256, longest=40)
    assert chosen["max_model_len"] == 96


def test_the_longest_request_counts_every_request_of_the_scenario() -> None:
    spec = CaptureSpec(
        framework="vllm",
        model="m",
        prompt_ids=(1, 2, 3),
        out="o",
        max_tokens=4,
        before=(ScenarioRequest((1,) * 50, 1),),
        alongside=(ScenarioRequest((1,) * 10, 60),),
    )
    assert longest_request(spec) == 70
    assert longest_request(CaptureSpec("vllm", "m", (1, 2, 3), "o", max_tokens=4)) == 7


@pytest.mark.vllm
def test_vllm_starts_on_a_scenario_that_shrinks_the_cache(zoo_model, tmp_path) -> None:
    """The zoo llama's context is 256 tokens; 5 blocks of 32 hold 128. With the model's
    context as the default, vLLM refused to start; now the scenario runs, and matches."""
    diagnosis = run_diagnosis(
        DiagnoseConfig(
            model=str(zoo_model("llama")),
            prompt_ids=PROMPT_IDS,
            workdir=str(tmp_path),
            max_tokens=3,
            engine=dict(SMALL_CACHE),
            scenario=Scenario(before=(ScenarioRequest(PROMPT_IDS[:20], 2),)),
        )
    )
    assert not diagnosis.diverged, diagnosis.verdict
    assert len(diagnosis.target_tokens) == 3


def test_the_context_is_read_under_each_family_s_key() -> None:
    from ekka.tracer.model_config import context_length

    assert context_length({"max_position_embeddings": 256}) == 256
    assert context_length({"n_positions": 1024}) == 1024
    # DBRX: without it vLLM refuses the default max_model_len (4096) above its 2048
    assert context_length({"max_seq_len": 2048}) == 2048
    assert context_length({}) is None
