"""The coverage map: which of the target's modules were compared in which passes, and which
were not and why.

A module is left out of a pass for one of three reasons, each said with what it is here:
- no reference counterpart: no mapping rule and no reference component of fitting values (or
  it records no tensor, or computes nothing of its own);
- a definition that differs: it has a counterpart, but the two tensors do not fit (shapes);
- a pass without a span: the reference computed none, or not all, of the pass's positions.

A module with a counterpart missing from a pass for any other reason is a defect of the
alignment; the tests walk the zoo's architectures and hold every such module compared.
"""

from __future__ import annotations

from collections.abc import Iterable

from ekka.report.records import Comparison, Coverage
from ekka.tracer.align import SKIP_CLASSES, ComponentMap
from ekka.tracer.trace import TraceReader

NO_COUNTERPART = "no reference counterpart"
DIFFERS = "a definition that differs"
NO_SPAN = "a pass without a span"


def coverage_map(
    target: TraceReader,
    reference: TraceReader,
    mapping: ComponentMap,
    comparisons: Iterable[Comparison],
) -> tuple[Coverage, ...]:
    """One entry per target module that ran in a pass, in the order of their first call."""
    compared: dict[str, set[int]] = {}
    for c in comparisons:
        if c.kind != "metadata":
            compared.setdefault(c.target, set()).add(c.pass_index)
    ran: dict[str, tuple[str, set[int]]] = {}
    for record in target.records:
        if record.kind in ("logits", "replay"):
            continue
        ran.setdefault(record.name, (record.module_class, set()))[1].add(record.pass_index)
    spans = {p.index: p.positions for p in target.passes}
    computed = {pos for p in reference.passes for pos in p.positions}
    entries = []
    for name, (cls, passes) in ran.items():
        done = compared.get(name, set())
        missing = sorted(passes - done)
        reason = ""
        if missing:
            reason = _reason(name, cls, missing, mapping, spans, computed)
        entries.append(Coverage(name, cls, tuple(sorted(done & passes)), tuple(missing), reason))
    return tuple(entries)


def _reason(
    name: str,
    cls: str,
    missing: list[int],
    mapping: ComponentMap,
    spans: dict[int, tuple[int, ...]],
    computed: set[int],
) -> str:
    if cls in SKIP_CLASSES:
        return f"{NO_COUNTERPART}: a {cls} computes nothing of its own"
    unmapped = mapping.unmapped.get(name)
    if unmapped is not None:
        return f"{NO_COUNTERPART}: {unmapped.reason}"
    plan = mapping.plans.get(name)
    if plan is None:
        return f"{NO_COUNTERPART}: no mapping rule, and no reference component of that name"
    unspanned = [p for p in missing if p not in spans or not set(spans[p]) <= computed]
    if unspanned:
        return f"{NO_SPAN}: the reference did not compute the positions of pass " + ", ".join(
            str(p) for p in unspanned
        )
    return f"{DIFFERS}: the target's and the reference's tensors do not fit ({plan.describe()})"


__all__ = ["DIFFERS", "NO_COUNTERPART", "NO_SPAN", "coverage_map"]
