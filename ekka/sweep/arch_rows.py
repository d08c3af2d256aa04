"""The architecture sweep's settings and records: one row per (architecture, dtype), what kind
of row it is (`row_kind`: match, latent, diverges, alignment gap, fails with its cause), the
known findings (`ekka/data/arch-sweep-findings.json`: what a divergence on a pristine release
was found to be, classified) and a sweep's report with its summary.

Rows and findings name their framework (the target: vLLM today, SGLang next), so that a sweep
of another framework keeps its rows and findings apart."""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, ClassVar

from ekka.codec import JsonRecord
from ekka.errors import UsageError
from ekka.frameworks import framework as framework_named
from ekka.report.records import Latent

PROMPT_IDS = tuple([1] + [(7 * i + 11) % 500 + 3 for i in range(31)])  # 32 tokens
MAX_TOKENS = 3
TIMEOUT = 900.0  # an engine's start on a loaded machine (SGLang's took over 300 s at a load of 15)
# "vllm-failed" and `ArchRow.vllm_loads` are the target's, whichever framework it is (the names
# predate SGLang; rows are kept under them)
STATUSES = ("match", "diverges", "build-failed", "vllm-failed", "transformers-failed", "error",
            "not-run")  # fmt: skip
# on resume, done again: Ekka's own failure, a zoo setting (cheap), what depended on another row
RETRIED = ("error", "build-failed", "not-run")
FRAMEWORK = "vllm"  # the architecture sweep's default target (`--framework`)


class RowKind(str, enum.Enum):
    """What a row is, for a reader (`row_kind`)."""

    MATCH = "match"
    LATENT = "latent"  # a module differs; the output still matches on this prompt
    DIVERGES = "diverges"
    GAP = "alignment gap"  # a difference of definition Ekka knows and names
    UNEXPLAINED = "unexplained"  # above the threshold, fading, not confirmed and not named
    FAILS = "fails"
    NOT_RUN = "not-run"


class FailCause(str, enum.Enum):
    """Why a row does not load on both sides (`fail_cause`)."""

    TARGET = "target"  # the framework under test (vLLM, SGLang)
    REFERENCE = "transformers"
    KERNEL = "missing CPU kernel"  # the CPU build lacks what the architecture needs
    CONFIG = "Ekka's configuration"  # the derived tiny config lacks what real checkpoints carry
    EKKA = "Ekka"  # Ekka's own failure


# Failures of the CPU build: kernels and backends it does not have (the reason's text).
KERNEL_PATTERNS = (
    r"selective_scan_fwd",  # Mamba's CUDA scan
    r"not supported on CPU",  # sparse attention
    r"supported only for CUDA",
    r"requires BF16",  # CPU GDN attention
    r"no valid sparse MLA backend",
    r"is not supported by MLA",
    r"expect weight to be bfloat16",  # the CPU MLA kernel's dtypes
    r"(?i)triton",  # (SGLang's message says "Triton")
    r"_lib_fn_wrapper",  # a kernel library stand-in without the op
    r"torchvision::nms",
    r"Dimension out of range \(expected to be in range of \[-2, 1\]",  # CPU conv1d state
    # SGLang on a CPU: Ekka's stand-in for sgl_kernel lacks the op (no CPU build exists), or
    # a CUDA-only module
    r"'sgl_kernel' object has no attribute",
    r"not in Ekka's CPU stand-in for sgl_kernel",
    r"No module named 'cutlass'",
    r"active drivers \(\[\]\)\. There should only be one",  # Triton without a CPU driver
    r"Found no NVIDIA driver",  # a CUDA-only path (torch.cuda called)
    r"cannot import name 'causal_conv1d_fn'",
    r"No module named 'sgl_kernel\.mamba'",  # SGLang's Mamba layers: sgl_kernel's CUDA ops
    r"with arguments from the 'CPU' backend",  # a custom op registered for CUDA only
)
# Failures of a derived configuration: a key real checkpoints carry and vLLM reads.
CONFIG_PATTERNS = (
    r"'\w+Config' object has no attribute",
    r"not exist, ?please check config",
    r"validation error for ModelConfig",
    r"Class validation error",
)


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
    framework: str = FRAMEWORK  # the target
    # no change point: the components above the threshold whose error fades, with the replay's
    # verdict on each (`ekka.tracer.latent`)
    latent: tuple[Latent, ...] = ()
    evidence: str = ""  # the first suspect's evidence (the replay's verdict on it included)

    @property
    def loads_both(self) -> bool:
        return bool(self.vllm_loads and self.transformers_loads)


CLASSIFICATIONS = ("bug", "transformers bug", "convention difference", "ekka gap",
                   "alignment gap", "missing CPU kernel")  # fmt: skip


@dataclass(frozen=True)
class Finding:
    """A row examined once: which versions, what it is, the evidence.

    `kind`: "<framework> bug" (e.g. "vllm bug"), "transformers bug", "convention difference"
    (the two sides follow different conventions; `side` says which differs from the training
    convention), "ekka gap" (Ekka's run of one side is not what it should be), "alignment
    gap" (a component the two sides define otherwise; the comparison of that component means
    nothing), or "missing CPU kernel" (a failure of the CPU build whose message does not say
    so, e.g. a bare assertion). `slug` names its reproduction (`ekka/data/reproduce/<slug>.py`) and finding
    folder; `target_code` / `reference_code`: file:line at the versions named."""

    architecture: str
    dtypes: tuple[str, ...]
    framework: str
    target_version: str
    transformers: str
    kind: str
    note: str
    component: str | None = None  # the first component that differs, where known
    slug: str | None = None
    side: str = ""  # which side differs and why
    evidence: str = ""
    target_code: tuple[str, ...] = ()
    reference_code: tuple[str, ...] = ()
    # False: the sweep's tiny config does not show it (OLMoE's keys hold the released values
    # there); its reproduction does
    shown_by_sweep: bool = True

    @property
    def classification(self) -> str:
        """vLLM bug / transformers bug / convention difference / Ekka gap (alignment gaps are
        Ekka's too: it compares what is defined otherwise)."""
        if self.kind == f"{self.framework} bug":
            return f"{self.framework} bug"
        return "ekka gap" if self.kind == "alignment gap" else self.kind

    @property
    def is_gap(self) -> bool:
        return self.kind in ("alignment gap", "ekka gap")


def shown(classification: str) -> str:
    """A classification as a reader writes it: "vLLM bug", "Ekka gap"."""
    for name, display in (("vllm", "vLLM"), ("sglang", "SGLang"), ("ekka", "Ekka")):
        classification = classification.replace(name, display)
    return classification


def parse_findings(text: str) -> list[Finding]:
    """The findings file's entries (UsageError naming an entry of an unknown kind)."""
    out = []
    for f in json.loads(text):
        framework = f.get("framework", FRAMEWORK)
        kind = f["kind"]
        if kind != f"{framework} bug" and kind not in CLASSIFICATIONS[1:]:
            raise UsageError(
                f"arch-sweep-findings.json: {f['architecture']}: kind {kind!r} is not "
                f"'{framework} bug' or one of {', '.join(CLASSIFICATIONS[1:])}."
            )
        out.append(
            Finding(
                f["architecture"],
                tuple(f["dtypes"]),
                framework,
                f[framework],
                f["transformers"],
                kind,
                f["note"],
                f.get("component"),
                f.get("slug"),
                f.get("side", ""),
                f.get("evidence", ""),
                tuple(f.get("target_code", ())),
                tuple(f.get("reference_code", ())),
                bool(f.get("shown_by_sweep", True)),
            )
        )
    return out


def load_findings() -> list[Finding]:
    return parse_findings((files("ekka") / "data" / "arch-sweep-findings.json").read_text())


def known_finding(
    findings: Sequence[Finding],
    architecture: str,
    dtype: str,
    versions: dict[str, str],
    framework: str = FRAMEWORK,
) -> Finding | None:
    """The finding examined for this architecture and dtype on these releases, if any."""
    for f in findings:
        if (
            f.architecture == architecture
            and f.framework == framework
            and dtype in f.dtypes
            and f.target_version == versions.get(framework)
            and f.transformers == versions["transformers"]
        ):
            return f
    return None


def note_for(findings: Sequence[Finding], row: ArchRow, versions: dict[str, str]) -> str | None:
    f = known_finding(findings, row.architecture, row.dtype, versions, row.framework)
    return f"{f.kind}: {f.note}" if f else None


def reproduce(architecture: str, dtype: str, framework: str = FRAMEWORK) -> str:
    folder = f"/tmp/ekka-{architecture.lower()}-{dtype}"
    ids = ",".join(map(str, PROMPT_IDS))
    target = "" if framework == FRAMEWORK else f" --framework {framework}"
    return (
        f"ekka zoo build {architecture} --out {folder} --dtype {dtype} && "
        f"ekka diagnose{target} --model {folder} --prompt-ids {ids} --dtype {dtype} "
        f"--max-tokens {MAX_TOKENS}"
    )


def transient(row: ArchRow) -> bool:
    """A match whose largest component ratio is above the dtype's threshold: that component's
    error does not persist downstream (the localization's rule) and the logits match. Never a
    label of its own: `row_kind` makes it latent, a named alignment gap, or unexplained."""
    from ekka.tracer.localize import threshold_for

    return row.status == "match" and row.ratio is not None and row.ratio > threshold_for(row.dtype)


def _shown(finding: Finding | None) -> Finding | None:
    """The finding where the sweep's config shows it (None otherwise: it explains no row)."""
    return finding if finding is not None and finding.shown_by_sweep else None


def confirmed_latent(row: ArchRow) -> Latent | None:
    """The first latent component the replay confirmed (None: none)."""
    return next((x for x in row.latent if x.confirmed), None)


def row_kind(row: ArchRow, finding: Finding | None) -> RowKind:
    """match, latent, diverges, alignment gap (named by a finding), unexplained (a transient
    ratio neither confirmed nor named), fails, not-run."""
    finding = _shown(finding)
    if row.status == "not-run":
        return RowKind.NOT_RUN
    if row.status not in ("match", "diverges"):
        return RowKind.FAILS
    if finding is not None and finding.is_gap and (row.status == "diverges" or transient(row)):
        return RowKind.GAP
    if row.status == "diverges":
        return RowKind.DIVERGES
    if not transient(row):
        return RowKind.MATCH
    return RowKind.LATENT if confirmed_latent(row) is not None else RowKind.UNEXPLAINED


def fail_cause(row: ArchRow, finding: Finding | None) -> FailCause | None:
    """Why a failed row fails (None: it did not fail). A finding names the side; else the
    reason's text: a kernel the CPU build lacks, a key the derived config lacks."""
    finding = _shown(finding)
    if row.status in ("match", "diverges", "not-run"):
        return None
    if row.status == "error":
        return FailCause.EKKA
    if row.status == "build-failed":
        return FailCause.CONFIG
    if row.status == "transformers-failed":
        return FailCause.REFERENCE
    if finding is not None and finding.kind == f"{finding.framework} bug":
        return FailCause.TARGET  # a bug that fails loudly (Falcon's MLP width)
    if finding is not None and finding.kind == "transformers bug":
        return FailCause.REFERENCE
    if finding is not None and finding.kind == FailCause.KERNEL.value:
        return FailCause.KERNEL  # a path the CPU build lacks, named where its message does not
    if finding is not None and finding.kind == "ekka gap":  # a failure examined: Ekka's config
        return FailCause.CONFIG
    if any(re.search(p, row.reason) for p in KERNEL_PATTERNS):
        return FailCause.KERNEL
    if any(re.search(p, row.reason) for p in CONFIG_PATTERNS):
        return FailCause.CONFIG
    return FailCause.TARGET


def row_label(row: ArchRow, finding: Finding | None) -> str:
    """The kind as a report shows it: "fails (missing CPU kernel)", "alignment gap", ..."""
    kind = row_kind(row, finding)
    if kind is RowKind.FAILS:
        cause = fail_cause(row, finding)
        if cause is FailCause.TARGET:
            return f"fails ({framework_named(row.framework).title})"
        return f"fails ({cause.value if cause else '?'})"
    return str(kind.value)


def is_new(row: ArchRow, finding: Finding | None) -> bool:
    """A finding nobody examined yet: a divergence, a latent module or an unexplained transient
    ratio without an entry in the findings file."""
    kind = row_kind(row, finding)
    return _shown(finding) is None and kind in (
        RowKind.DIVERGES,
        RowKind.LATENT,
        RowKind.UNEXPLAINED,
    )


@dataclass(frozen=True)
class SweepReport:
    versions: dict[str, str]
    rows: tuple[ArchRow, ...]
    seconds: float
    resumed: int  # rows taken from an earlier, interrupted sweep
    findings: tuple[Finding, ...] = ()  # the findings file's entries (every version)
    notes: tuple[str, ...] = ()  # how the target ran ("SGLang's torch-native paths; ...")

    def finding(self, row: ArchRow) -> Finding | None:
        """The known finding of this row at this sweep's versions."""
        return known_finding(
            self.findings, row.architecture, row.dtype, self.versions, row.framework
        )

    def kind(self, row: ArchRow) -> RowKind:
        return row_kind(row, self.finding(row))

    def label(self, row: ArchRow) -> str:
        return row_label(row, self.finding(row))

    def new(self, row: ArchRow) -> bool:
        return is_new(row, self.finding(row))

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
            labels = [self.label(r) for r in rows]
            out[f"{dtype} kinds"] = {k: labels.count(k) for k in dict.fromkeys(sorted(labels))}
        out["new_findings"] = sum(1 for r in self.rows if self.new(r))
        out["match_with_transient_ratio"] = sum(1 for r in self.rows if transient(r))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "versions": self.versions,
            "prompt_ids": list(PROMPT_IDS),
            "max_tokens": MAX_TOKENS,
            "notes": list(self.notes),
            "summary": self.summary(),
            "rows": [{**r.to_json(), "kind": self.label(r)} for r in self.rows],
        }
