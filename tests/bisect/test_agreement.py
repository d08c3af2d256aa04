"""The full mode says so when the localization at the bad commit and the oracle's verdict on
that commit disagree (no framework needed)."""

from __future__ import annotations

from dataclasses import replace

from ekka.full import agreement_notes
from ekka.report import Localization
from tests.report.test_records import BISECTION, diagnosis


def test_agreement_adds_no_note() -> None:
    assert agreement_notes(diagnosis(), BISECTION) == ()


def test_an_oracle_bad_commit_without_a_diverging_component_is_noted() -> None:
    (note,) = agreement_notes(diagnosis(localization=Localization(2.0)), BISECTION)
    assert note.startswith("the bisection's oracle judged the bad commit 2222222222 bad")
    assert "(logits diverge)" in note and "no traced component crosses the threshold" in note


def test_a_component_divergence_at_a_commit_the_oracle_found_good_is_noted() -> None:
    steps = tuple(
        replace(s, verdict="good", reason="logits match") if s.commit == "2" * 40 else s
        for s in BISECTION.steps
    )
    (note,) = agreement_notes(diagnosis(), replace(BISECTION, steps=steps))
    assert "judged that commit good (logits match)" in note
