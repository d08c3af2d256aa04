"""Scenarios without an engine: the file format and its errors, the reduction's search, every
request traced in turn, the serving checks of a batch, the protocol round trip."""

from __future__ import annotations

import pytest

from ekka.errors import UsageError
from ekka.reduce import ddmin, describe
from ekka.scenario import load_run, parse_run, scenario_toml
from ekka.tracer.metadata import ServingMetadata
from ekka.tracer.protocol import CaptureSpec, ScenarioRequest, Start, decode, encode
from ekka.tracer.scenario import Scenario
from ekka.tracer.serving import check_pass
from ekka.tracer.trace import PassInfo

R = ScenarioRequest


def test_a_scenario_file_reads_back_as_records(tmp_path):
    file = tmp_path / "s.toml"
    file.write_text(
        """
[[run.before]]
prompt_token_ids = [1, 5, 6]
max_tokens = 1

[[run.alongside]]
prompt = "hello"

[run]
prompt_token_ids = [1, 5, 7]
max_tokens = 2

[run.engine]
block_size = 32
"""
    )
    run = load_run(file)
    traced, scenario = run.resolve(lambda text: [1, len(text)])
    assert traced == R((1, 5, 7), 2)
    assert scenario == Scenario(before=(R((1, 5, 6), 1),), alongside=(R((1, 5), 4),))
    assert run.engine == {"block_size": 32}
    # what the reduction writes reads back to the same scenario
    again = tmp_path / "again.toml"
    again.write_text(scenario_toml(traced, scenario, run.engine))
    assert load_run(again).resolve(lambda text: [])[1] == scenario


@pytest.mark.parametrize(
    ("run", "message"),
    [
        ({"prompt": "a", "prompt_token_ids": [1]}, "not both"),
        ({"prompt_token_ids": [1], "befor": []}, "unknown key(s) befor"),
        ({"prompt_token_ids": [1], "before": {"prompt": "x"}}, "array of tables"),
        ({"prompt_token_ids": [1], "before": [{"max_tokens": 1}]}, "[[run.before]] #1: needs"),
        ({"prompt_token_ids": [1], "alongside": [{"prompt": "x", "seed": 1}]}, "unknown key"),
        ({"prompt_token_ids": [1], "alongside": [{"prompt_token_ids": [-1]}]}, "token ids"),
        ({"prompt_token_ids": [1], "max_tokens": 0}, "at least 1"),
        ({"prompt_token_ids": [1], "engine": 3}, "[run.engine] must be a table"),
    ],
)
def test_scenario_mistakes_are_one_line_errors(run, message):
    with pytest.raises(UsageError) as info:
        parse_run(run, "case.toml")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_missing_or_broken_file_is_named(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_run(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("[run\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_run(tmp_path / "bad.toml")
    (tmp_path / "norun.toml").write_text("[model]\n")
    with pytest.raises(UsageError, match=r"no \[run\] table"):
        load_run(tmp_path / "norun.toml")


def test_ddmin_finds_the_requests_a_divergence_needs():
    runs: list[tuple[str, ...]] = []

    def needs(*wanted: str):
        def fails(kept):
            runs.append(tuple(kept))
            return all(w in kept for w in wanted)

        return fails

    labels = [f"before {i}" for i in range(4)] + [f"alongside {i}" for i in range(4)]
    assert ddmin(labels, needs("alongside 2")) == ["alongside 2"]
    assert len(runs) <= 8  # halves first: log2(8) levels of two tries each, not 8 singles
    assert ddmin(labels, needs("before 1", "alongside 3")) == ["before 1", "alongside 3"]
    assert ddmin(["before 0"], needs("before 0")) == ["before 0"]


def test_keeping_a_subset_keeps_the_traced_request_in_its_place():
    a, b, c = R((1, 2), 1), R((1, 3), 1), R((1, 4), 1)
    scenario = Scenario(before=(a,), alongside=(b, c), traced_at=1)  # call: b, traced, c
    assert scenario.keeping({"alongside 1"}) == Scenario(alongside=(c,), traced_at=0)
    assert scenario.keeping({"alongside 0", "before 0"}) == Scenario(
        before=(a,), alongside=(b,), traced_at=1
    )
    assert Scenario(alongside=(b, c)).keeping({"alongside 1"}) == Scenario(alongside=(c,))


def test_each_request_traced_in_turn():
    a, b, c, t = R((1, 2), 1), R((1, 3), 1), R((1, 4), 1), R((1, 5), 2)
    turns = Scenario(before=(a,), alongside=(b, c)).each_traced(t)
    assert [label for label, _, _ in turns] == ["traced", "before 0", "alongside 0", "alongside 1"]
    assert turns[1][1:] == (a, Scenario())  # a request before runs with those before it only
    # a request alongside keeps its place in the call: b, c, traced
    assert turns[2][1:] == (b, Scenario(before=(a,), alongside=(c, t), traced_at=0))
    assert turns[3][1:] == (c, Scenario(before=(a,), alongside=(b, t), traced_at=1))


def test_the_reduced_scenario_in_a_sentence():
    traced = R(tuple(range(1, 101)), 4)
    before = R(tuple(range(1, 65)) + (500,) * 10, 1)
    batched = R((1, 9, 9), 3)
    scenario = Scenario(before=(before,), alongside=(batched,))
    assert describe(traced, scenario, ["before 0"], {"block_size": 32}) == (
        "diverges only when the request before it (before 0, run first) shares its first 2 "
        "blocks (64 tokens) (engine: block_size=32)"
    )
    assert "batched with request alongside 0 (3 prompt tokens, 3 generated)" in describe(
        traced, scenario, ["alongside 0"], {}
    )
    assert describe(traced, scenario, [], {}).startswith("the traced request diverges alone")


def test_a_capture_spec_with_a_scenario_crosses_the_process_boundary():
    spec = CaptureSpec(
        framework="vllm",
        model="m",
        prompt_ids=(1, 2),
        out="o",
        before=(R((1, 3), 1),),
        alongside=(R((1, 4), 2), R((1, 5), 3)),
        traced_at=1,
    )
    assert decode(encode(Start(spec))) == Start(spec)


def _batch_pass(slot_mapping: list[int], logits_rows: int = 2) -> PassInfo:
    """A decode pass of two requests: alongside 0 at position 5 (block 3), the traced one at
    position 3 (block 7), block size 4."""
    other = {"request": "0-x", "label": "alongside 0", "start": 5, "count": 1}
    traced = {"request": "1-y", "label": "traced", "start": 3, "count": 1}
    blocks = {"block_sizes": [4]}
    batch = [
        {**other, **blocks, "block_ids": [[3, 4]], "index": 0, "offset": 0},
        {**traced, **blocks, "block_ids": [[7]], "index": 1, "offset": 1},
    ]
    return PassInfo(
        index=2,
        step=1,
        input_ids=(42,),
        positions=(3,),
        serving=ServingMetadata.from_json(
            {
                "request": batch[1],
                "batch": batch,
                "batch_input_ids": [11, 42],
                "given_positions": [5, 3],
                "attention": {
                    "0": {
                        "seq_lens": [6, 4],
                        "query_start_loc": [0, 1, 2],
                        "slot_mapping": slot_mapping,
                        "block_table": [[3, 4], [7, 0]],
                    }
                },
            }
        ),
    )


def test_the_serving_checks_cover_every_request_of_a_batch():
    tokens = [1, 2, 3, 42]  # the traced request's prompt (3) and its first token
    others = {"alongside 0": [1, 2, 3, 4, 5, 11]}
    checks = check_pass(_batch_pass([4 * 4 + 1, 7 * 4 + 3]), tokens, others)
    assert [c.ok for c in checks] == [True, True, True], [c.describe() for c in checks]
    # the other request's slot written into the traced request's block: named, with whose
    checks = check_pass(_batch_pass([7 * 4 + 1, 7 * 4 + 3]), tokens, others)
    wrong = [c for c in checks if not c.ok]
    assert len(wrong) == 1 and wrong[0].consumer == "attention"
    assert wrong[0].mismatches == ("slot mapping of request alongside 0 [17] expected, [29] given",)
    assert wrong[0].first_wrong == 3  # placed at the traced request's span


def _span_pass(index: int, start: int, count: int, blocks: list[int], batch: int = 1) -> PassInfo:
    span = {"request": "1-a", "label": "traced", "start": start, "count": count}
    span["block_ids"] = [blocks]
    others = [
        {"request": f"{i}-b", "label": f"alongside {i}", "start": 0, "count": 1}
        for i in range(batch - 1)
    ]
    extra = {"request": span, **({"batch": others + [span]} if batch > 1 else {})}
    serving = ServingMetadata.from_json(extra)
    return PassInfo(index, 0, (), tuple(range(start, start + count)), serving)


def test_what_the_traced_request_met_is_said_from_its_spans():
    from ekka.tracer.serving import scenario_events

    prefix_then_preempted = [
        _span_pass(0, 32, 8, [1, 2], batch=3),
        _span_pass(1, 40, 1, [1, 2]),
        _span_pass(2, 32, 10, [1, 2, 5]),  # recomputed after the prefix-cache hit
    ]
    events = scenario_events(prefix_then_preempted, 40)
    assert events[0].startswith("the traced request took its first 32 prompt tokens (of 40)")
    assert (
        "1 of its 3 passes were batched with other requests (alongside 0, alongside 1)" in events[1]
    )
    assert "pass 2 starts again at position 32 after position 40" in events[2]
    resumed_in_place = [_span_pass(0, 0, 8, [1]), _span_pass(1, 8, 1, [4])]
    assert "resumed at position 8 without recomputing" in scenario_events(resumed_in_place, 8)[0]
    assert scenario_events([_span_pass(0, 0, 8, [1]), _span_pass(1, 8, 1, [1, 2])], 8) == []


def test_diagnose_scenario_mistakes_exit_2_with_one_line(tmp_path, capsys):
    from ekka.cli import main

    (tmp_path / "s.toml").write_text("[run]\nprompt_token_ids = [1, 2]\nalongside = 3\n")
    base = ["diagnose", "--model", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main([*base, "--scenario", str(tmp_path / "s.toml")]) == 2
    assert "run.alongside must be an array of tables" in capsys.readouterr().err
    assert main([*base, "--prompt-ids", "1,2", "--compare", "all"]) == 2
    assert "--compare all is for a --scenario" in capsys.readouterr().err
    (tmp_path / "ok.toml").write_text("[run]\nprompt_token_ids = [1, 2]\n")
    assert main([*base, "--scenario", str(tmp_path / "ok.toml"), "--prompt-ids", "1,2"]) == 2
    assert "drop --prompt/--prompt-ids" in capsys.readouterr().err
