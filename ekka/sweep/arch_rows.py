"""The architecture sweep's settings and records: one row per (architecture, dtype), the
known findings (`ekka/data/arch-sweep-findings.json`: what a divergence on a pristine release
was found to be) and a sweep's report with its summary."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, ClassVar

from ekka.codec import JsonRecord
from ekka.errors import UsageError

PROMPT_IDS = tuple([1] + [(7 * i + 11) % 500 + 3 for i in range(31)])  # 32 tokens
MAX_TOKENS = 3
TIMEOUT = 300.0
STATUSES = ("match", "diverges", "build-failed", "vllm-failed", "transformers-failed", "error",
            "not-run")  # fmt: skip
# on resume, done again: Ekka's own failure, a zoo setting (cheap), what depended on another row
RETRIED = ("error", "build-failed", "not-run")


@dataclass(frozen=True)
class ArchRow(JsonRecord):
    """One architecture in one dtype (kept as its JSON in the sweep's store)."""

    JSON_ERROR: ClassVar[type[Exception]] = UsageError

    architecture: str
    dtype: str
    status: str  # one of STATUSES
    builds: bool
    vllm_loads: bool | None  # None: not tried
    transformers_loads: bool | None
    reason: str  # the verdict, or why it does not build or load
    ratio: float | None = None  # the largest error ratio (components and logits)
    component: str | None = None  # where the divergence starts
    suspects: tuple[str, ...] = ()
    command: str = ""
    note: str | None = None  # a known finding's note (None: new, or no divergence)
    seconds: float = 0.0

    @property
    def loads_both(self) -> bool:
        return bool(self.vllm_loads and self.transformers_loads)


@dataclass(frozen=True)
class Finding:
    """A divergence examined once: which versions, what it is."""

    architecture: str
    dtypes: tuple[str, ...]
    vllm: str
    transformers: str
    kind: str  # "vllm bug", "transformers bug", "alignment gap"
    note: str
    component: str | None = None  # the first component that diverges (suspect 1), where known


def load_findings() -> list[Finding]:
    text = (files("ekka") / "data" / "arch-sweep-findings.json").read_text()
    return [
        Finding(
            f["architecture"],
            tuple(f["dtypes"]),
            f["vllm"],
            f["transformers"],
            f["kind"],
            f["note"],
            f.get("component"),
        )
        for f in json.loads(text)
    ]


def known_finding(
    findings: Sequence[Finding], architecture: str, dtype: str, versions: dict[str, str]
) -> Finding | None:
    """The finding examined for this architecture and dtype on these releases, if any."""
    for f in findings:
        if (
            f.architecture == architecture
            and dtype in f.dtypes
            and f.vllm == versions["vllm"]
            and f.transformers == versions["transformers"]
        ):
            return f
    return None


def note_for(findings: Sequence[Finding], row: ArchRow, versions: dict[str, str]) -> str | None:
    f = known_finding(findings, row.architecture, row.dtype, versions)
    return f"{f.kind}: {f.note}" if f else None


def reproduce(architecture: str, dtype: str) -> str:
    folder = f"/tmp/ekka-{architecture.lower()}-{dtype}"
    ids = ",".join(map(str, PROMPT_IDS))
    return (
        f"ekka zoo build {architecture} --out {folder} --dtype {dtype} && "
        f"ekka diagnose --model {folder} --prompt-ids {ids} --dtype {dtype} "
        f"--max-tokens {MAX_TOKENS}"
    )


def transient(row: ArchRow) -> bool:
    """A match whose largest component ratio is above the dtype's threshold: that component's
    error does not persist downstream (the localization's rule) and the logits match; often a
    component whose output the two frameworks define otherwise (an alignment gap)."""
    from ekka.tracer.localize import threshold_for

    return row.status == "match" and row.ratio is not None and row.ratio > threshold_for(row.dtype)


@dataclass(frozen=True)
class SweepReport:
    versions: dict[str, str]
    rows: tuple[ArchRow, ...]
    seconds: float
    resumed: int  # rows taken from an earlier, interrupted sweep

    def summary(self) -> dict[str, Any]:
        archs = sorted({r.architecture for r in self.rows})
        both = [a for a in archs if all(r.loads_both for r in self.rows if r.architecture == a)]
        out: dict[str, Any] = {
            "architectures": len(archs),
            "load_both": len(both),
            "seconds": round(self.seconds, 1),
            "resumed": self.resumed,
        }
        for dtype in sorted({r.dtype for r in self.rows}):
            rows = [r for r in self.rows if r.dtype == dtype]
            out[dtype] = {s: sum(1 for r in rows if r.status == s) for s in STATUSES}
        out["new_findings"] = sum(1 for r in self.rows if r.status == "diverges" and not r.note)
        out["match_with_transient_ratio"] = sum(1 for r in self.rows if transient(r))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "versions": self.versions,
            "prompt_ids": list(PROMPT_IDS),
            "max_tokens": MAX_TOKENS,
            "summary": self.summary(),
            "rows": [r.to_json() for r in self.rows],
        }
