"""The serving metadata's checks against what the request implies (no framework needed)."""

from __future__ import annotations

from typing import Any

from ekka.tracer.serving import ATTENTION, EMBEDDING, ROTARY, check_pass, check_passes
from ekka.tracer.trace import PassInfo

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
        extra={
            "given_positions": given.pop("positions", list(range(start, end))),
            "request": {
                "request": "0",
                "start": start,
                "count": count,
                "block_ids": [BLOCKS],
                "block_sizes": [BLOCK],
            },
            "attention": {"0": attention},
        },
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
    info = PassInfo(index=0, step=0, input_ids=(1, 2), positions=(0, 1), extra={})
    assert check_pass(info, TOKENS) == []
