"""A scenario: the requests of the target's engine around the traced one (requests before it,
requests batched with it). The tracer runs it (`DiagnoseConfig.scenario`, the capture spec's
`before`/`alongside`/`traced_at`); the reference runs the traced request alone. Scenario files
(the bench's `[run]` format) are read by `ekka.scenario`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ekka.tracer.protocol import ScenarioRequest


@dataclass(frozen=True)
class Scenario:
    """The requests around the traced one. Empty: the traced request alone in a fresh engine."""

    before: tuple[ScenarioRequest, ...] = ()
    alongside: tuple[ScenarioRequest, ...] = ()
    traced_at: int | None = None  # the traced request's index in its generate call (None: last)

    @property
    def empty(self) -> bool:
        return not self.before and not self.alongside

    def labelled(self) -> list[tuple[str, ScenarioRequest]]:
        """Every other request with its label ("before 0", "alongside 1"), in scenario order."""
        return [(f"before {i}", r) for i, r in enumerate(self.before)] + [
            (f"alongside {i}", r) for i, r in enumerate(self.alongside)
        ]

    def keeping(self, labels: set[str]) -> Scenario:
        """The scenario with only the requests of `labels` (the traced one keeps its place
        among the alongside requests that stay)."""
        at = len(self.alongside) if self.traced_at is None else self.traced_at
        alongside = [(i, r) for i, r in enumerate(self.alongside) if f"alongside {i}" in labels]
        return Scenario(
            before=tuple(r for i, r in enumerate(self.before) if f"before {i}" in labels),
            alongside=tuple(r for _, r in alongside),
            traced_at=None if self.traced_at is None else sum(1 for i, _ in alongside if i < at),
        )

    def each_traced(self, traced: ScenarioRequest) -> list[tuple[str, ScenarioRequest, Scenario]]:
        """Every request of the scenario as the traced one, in turn (`--compare all`): its
        label, the request, and the scenario around it. A request before the traced one has
        only the requests before it around it (the later ones run after it has finished); one
        alongside keeps its place in the generate call."""
        out: list[tuple[str, ScenarioRequest, Scenario]] = [("traced", traced, self)]
        for i, request in enumerate(self.before):
            out.append((f"before {i}", request, Scenario(before=self.before[:i])))
        at = len(self.alongside) if self.traced_at is None else self.traced_at
        call = list(self.alongside[:at]) + [traced] + list(self.alongside[at:])
        for i, request in enumerate(self.alongside):
            index = i if i < at else i + 1  # its place in the call
            out.append(
                (
                    f"alongside {i}",
                    request,
                    Scenario(
                        before=self.before,
                        alongside=tuple(call[:index] + call[index + 1 :]),
                        traced_at=index,
                    ),
                )
            )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "before": [_request_json(r) for r in self.before],
            "alongside": [_request_json(r) for r in self.alongside],
            "traced_at": self.traced_at,
        }


def _request_json(request: ScenarioRequest) -> dict[str, Any]:
    return {"prompt_token_ids": list(request.prompt_ids), "max_tokens": request.max_tokens}
