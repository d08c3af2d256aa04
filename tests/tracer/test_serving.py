"""The serving metadata's checks against what the request implies (no framework needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ekka.errors import TraceFormatError
from ekka.tracer.metadata import AttentionMetadata, RequestSpan, ServingMetadata
from ekka.tracer.serving import ATTENTION, EMBEDDING, ROTARY, check_pass, check_passes
from ekka.tracer.trace import PassInfo, TraceManifest, TraceReader, TraceWriter

PROMPT = list(range(100, 120))  # 20 tokens
GENERATED = [7, 8, 9]
TOKENS = PROMPT + GENERATED
BLOCK = 16
BLOCKS = [5, 9]  # the request's KV-cache blocks (one group)


def pass_info(index: int, start: int, count: int, **given: Any) -> PassInfo:
    """A pass as a correct engine gives it, with `given` overriding what the model got."""
    end = start + count
    slots = [BLOCKS[p // BLOCK] * BLOCK + p % BLOCK for p in range(start, end)]
    attention = {
        "seq_lens": [end],
        "query_start_loc": [0, count],
        "slot_mapping": slots,
        "block_table": [BLOCKS[: -(-end // BLOCK)] + [0, 0]],
    }
    attention.update(given.pop("attention", {}))
    return PassInfo(
        index=index,
        step=max(0, end - len(PROMPT)),
        input_ids=tuple(given.pop("input_ids", TOKENS[start:end])),
        positions=tuple(range(start, end)),
        serving=ServingMetadata.from_json(
            {
                "given_positions": given.pop("positions", list(range(start, end))),
                "request": {
                    "request": "0",
                    "start": start,
                    "count": count,
                    "block_ids": [BLOCKS],
                    "block_sizes": [BLOCK],
                },
                "attention": {"0": attention},
            }
        ),
    )


def by_consumer(info: PassInfo) -> dict[str, Any]:
    return {c.consumer: c for c in check_pass(info, TOKENS)}


def test_a_correct_engine_matches_everywhere_chunks_and_decode_included():
    passes = [pass_info(0, 0, 12), pass_info(1, 12, 8), pass_info(2, 20, 1), pass_info(3, 21, 1)]
    checks = check_passes(passes, TOKENS)
    assert len(checks) == 12
    assert all(c.ok for c in checks), [c.describe() for c in checks if not c.ok]
    assert {c.consumer for c in checks} == {EMBEDDING, ROTARY, ATTENTION}
    assert "as expected" in checks[0].describe()


def test_shifted_chunk_positions_are_said_as_expected_and_given():
    found = by_consumer(pass_info(1, 12, 8, positions=list(range(24, 32))))
    assert not found[ROTARY].ok and found[EMBEDDING].ok and found[ATTENTION].ok
    assert found[ROTARY].describe() == (
        "pass 1 (step 0, positions 12..19): positions 12..19 expected, 24..31 given"
    )
    assert found[ROTARY].first_wrong == 12


def test_a_decode_position_one_too_far():
    found = by_consumer(pass_info(2, 20, 1, positions=[21]))
    assert found[ROTARY].mismatches == ("positions [20] expected, [21] given",)


def test_wrong_tokens_fed_are_a_finding_at_the_embedding():
    found = by_consumer(pass_info(3, 21, 1, input_ids=[7]))  # the token before, fed again
    assert found[EMBEDDING].mismatches == ("input ids [8] expected, [7] given",)
    assert found[EMBEDDING].first_wrong == 21


def test_attention_metadata_each_field():
    chunk = by_consumer(pass_info(1, 12, 8, attention={"seq_lens": [8]}))
    assert chunk[ATTENTION].mismatches == ("sequence length [20] expected, [8] given",)
    row = by_consumer(pass_info(3, 21, 1, attention={"block_table": [[9, 0]]}))
    assert row[ATTENTION].mismatches[0] == "block table [5, 9] expected, [9, 0] given"
    assert row[ATTENTION].first_wrong == 21  # the decode reads block 0's keys from a wrong block
    slots = by_consumer(pass_info(2, 20, 1, attention={"slot_mapping": [20]}))
    assert slots[ATTENTION].mismatches == ("slot mapping [148] expected, [20] given",)


def test_padding_after_the_span_is_allowed():
    found = by_consumer(
        pass_info(2, 20, 1, positions=[20, 0, 0, 0], attention={"slot_mapping": [148, -1, -1]})
    )
    assert all(c.ok for c in found.values())


def test_mrope_positions_check_every_section():
    good = by_consumer(pass_info(2, 20, 1, positions=[[20], [20], [20]]))
    assert good[ROTARY].ok
    bad = by_consumer(pass_info(2, 20, 1, positions=[[20], [21], [20]]))
    assert not bad[ROTARY].ok


def test_a_pass_placed_by_its_own_positions_is_not_checked():
    info = PassInfo(index=0, step=0, input_ids=(1, 2), positions=(0, 1))
    assert check_pass(info, TOKENS) == []


BATCHED = ServingMetadata(
    given_positions=((5, 3), (5, 3), (5, 3)),  # M-RoPE: one row per section
    request=RequestSpan("1-y", 3, 1, "traced", ((7,),), (4,), index=1, offset=1),
    attention={
        "0": AttentionMetadata(
            layer="model.layers.0.self_attn.attn",
            seq_lens=(6, 4),
            query_start_loc=(0, 1, 2),
            slot_mapping=(17, 31),
            block_table=((3, 4), (7, 0)),
        ),
        "1": AttentionMetadata(layer="model.layers.1.self_attn.attn", seq_lens=(6, 4)),
    },
    batch=(
        RequestSpan("0-x", 5, 1, "alongside 0", ((3, 4),), (4,)),
        RequestSpan("1-y", 3, 1, "traced", ((7,),), (4,), index=1, offset=1),
    ),
    batch_input_ids=(11, 42),
)


def test_serving_metadata_round_trips_through_json_and_the_trace(tmp_path):
    assert ServingMetadata.from_json(json.loads(json.dumps(BATCHED.to_json()))) == BATCHED
    info = PassInfo(index=2, step=1, input_ids=(42,), positions=(3,), serving=BATCHED)
    writer = TraceWriter(tmp_path / "t", TraceManifest("vllm"))
    writer.add_pass(info)
    writer.add_pass(PassInfo(index=3, step=2, input_ids=(1,), positions=(4,)))
    writer.close()
    assert TraceReader(tmp_path / "t").passes == [info, PassInfo(3, 2, (1,), (4,))]
    assert BATCHED.spans == BATCHED.batch and ServingMetadata().spans == ()


def test_a_version_1_pass_reads_its_extra_dict_as_serving_metadata():
    old = {
        "index": 0,
        "step": 0,
        "input_ids": [1, 2],
        "positions": [0, 1],
        "extra": {
            "given_positions": [0, 1],
            "request": {"request": "0", "label": None, "start": 0, "count": 2},
            "attention": {"0": {"layer": "a", "seq_lens": [2]}},
        },
    }
    info = PassInfo.from_json(old)
    assert info.serving is not None and info.serving.request == RequestSpan("0", 0, 2)
    assert info.serving.attention["0"] == AttentionMetadata("a", seq_lens=(2,))
    assert PassInfo.from_json({**old, "extra": {}}).serving is None


def test_a_malformed_pass_names_the_record_and_the_field():
    bad = {"index": 0, "step": 0, "input_ids": [], "positions": []}
    with pytest.raises(TraceFormatError) as caught:
        PassInfo.from_json(
            {**bad, "serving": {"request": {"request": "0", "start": "x", "count": 1}}}
        )
    assert str(caught.value) == (
        "malformed pass: at serving.request (RequestSpan): field 'start' is 'x', not int"
    )
    with pytest.raises(TraceFormatError, match="at serving.attention\\['0'\\] \\(Attention"):
        PassInfo.from_json({**bad, "serving": {"attention": {"0": {"seq_lens": [1.5]}}}})
