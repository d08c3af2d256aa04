"""Verdicts: `git bisect run` exit-code semantics and JSON round trips."""

from __future__ import annotations

import json

import pytest

from ekka.bisect.verdict import ProbeResult, Verdict, verdict_from_exit_code


@pytest.mark.parametrize(
    ("code", "verdict", "reason"),
    [
        (0, Verdict.GOOD, "exit 0"),
        (1, Verdict.BAD, "exit 1"),
        (124, Verdict.BAD, "exit 124"),
        (125, Verdict.SKIP, "exit 125"),
        (126, Verdict.BAD, "exit 126"),
        (127, Verdict.BAD, "exit 127"),
        (128, Verdict.SKIP, "outside"),
        (137, Verdict.SKIP, "SIGKILL"),
        (255, Verdict.SKIP, "outside"),
        (-9, Verdict.SKIP, "killed by signal SIGKILL"),
        (-15, Verdict.SKIP, "SIGTERM"),
    ],
)
def test_exit_codes_follow_git_bisect_run(code, verdict, reason):
    got, why = verdict_from_exit_code(code)
    assert got is verdict
    assert reason in why


def test_verdict_is_a_str_enum():
    assert Verdict("skip") is Verdict.SKIP
    assert Verdict.BAD == "bad" and Verdict.GOOD.value == "good"


def test_probe_result_round_trips_through_json():
    result = ProbeResult(
        Verdict.BAD, "exit 1: ratio 37.5", 2.5, {"exit_code": 1, "ratios": [1.0, 37.5]}
    )
    again = ProbeResult.from_json(json.loads(json.dumps(result.to_json())))
    assert again == result
    assert not again.transient and not again.cannot_start
    assert ProbeResult(Verdict.SKIP, "t", details={"transient": True}).transient
