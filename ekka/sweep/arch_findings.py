"""A finding folder per finding of an architecture sweep, ready to report upstream:
`findings/<slug>/` with `report.md` (which side differs and why, the component, the ratios, the
replay, the code on both sides as file:line at the versions swept), `reproduce.py` (standalone:
torch and the two frameworks, no Ekka; `ekka/data/reproduce/<slug>.py`) and
`classification.json` (`FindingFolder`: the classification with its evidence).

A known finding (an entry of the findings file with a `slug`) gets its folder when one of its
rows is in the sweep; a new one (a divergence, a latent module or an unexplained ratio nobody
examined) gets `findings/new-<architecture>-<dtype>/` with the report and the classification
"unexamined": its standalone reproduction is written when it is examined."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from ekka.codec import JsonRecord
from ekka.frameworks import framework as framework_named
from ekka.sweep.arch_rows import ArchRow, Finding, SweepReport, confirmed_latent, shown

FOLDER = "findings"
EXCERPT_LINES = 24  # the most lines of code quoted per location
UNEXAMINED = "unexamined"


@dataclass(frozen=True)
class RowFigures(JsonRecord):
    """One row of a finding: where and how much."""

    architecture: str
    dtype: str
    kind: str
    ratio: float | None
    component: str | None  # the first divergence, or the latent owner
    evidence: str  # the replay's verdict


@dataclass(frozen=True)
class FindingFolder(JsonRecord):
    """A finding folder's `classification.json`."""

    slug: str
    framework: str
    versions: dict[str, str]
    architectures: tuple[str, ...]
    classification: str  # "<framework> bug", "transformers bug", "convention difference",
    # "ekka gap", or "unexamined"
    component: str | None
    side: str  # which side differs and why
    note: str
    evidence: str
    target_code: tuple[str, ...]
    reference_code: tuple[str, ...]
    rows: tuple[RowFigures, ...]
    reproduce: str | None  # the standalone script in the folder (None: not written yet)


def _figures(report: SweepReport, row: ArchRow) -> RowFigures:
    latent = confirmed_latent(row)
    evidence = row.evidence
    if latent is not None and not row.component:
        evidence = latent.statement()
    component = row.component or (latent.owner if latent is not None else None)
    return RowFigures(
        row.architecture, row.dtype, report.label(row), row.ratio, component, evidence
    )


def write_finding_folders(report: SweepReport, out: Path) -> dict[str, str]:
    """Every finding's folder under `out/findings/`; returns slug -> the folder relative to
    `out` (a new finding's slug: new-<architecture>-<dtype>)."""
    folders: dict[str, str] = {}
    shutil.rmtree(out / FOLDER, ignore_errors=True)  # written anew: a finding named since goes
    grouped: dict[str, tuple[Finding, list[ArchRow]]] = {}
    for row in report.rows:
        finding = report.finding(row)
        if finding is not None and finding.slug and row.status != "not-run":
            grouped.setdefault(finding.slug, (finding, []))[1].append(row)
    for slug, (finding, rows) in grouped.items():
        folder = out / FOLDER / slug
        folder.mkdir(parents=True, exist_ok=True)
        script = files("ekka") / "data" / "reproduce" / f"{slug}.py"
        reproduce = None
        if script.is_file():
            (folder / "reproduce.py").write_text(script.read_text())
            reproduce = "reproduce.py"
        record = FindingFolder(
            slug=slug,
            framework=finding.framework,
            versions=dict(report.versions),
            architectures=tuple(dict.fromkeys(r.architecture for r in rows)),
            classification=finding.classification,
            component=finding.component,
            side=finding.side,
            note=finding.note,
            evidence=finding.evidence,
            target_code=finding.target_code,
            reference_code=finding.reference_code,
            rows=tuple(_figures(report, r) for r in rows),
            reproduce=reproduce,
        )
        _write(folder, record, [r.command for r in rows])
        folders[slug] = f"{FOLDER}/{slug}"
    for row in report.rows:
        if not report.new(row):
            continue
        slug = f"new-{row.architecture}-{row.dtype}"
        folder = out / FOLDER / slug
        folder.mkdir(parents=True)
        figures = _figures(report, row)
        record = FindingFolder(
            slug=slug,
            framework=row.framework,
            versions=dict(report.versions),
            architectures=(row.architecture,),
            classification=UNEXAMINED,
            component=figures.component,
            side="",
            note=f"{report.label(row)}: {figures.evidence or row.reason}",
            evidence=row.reason,
            target_code=(),
            reference_code=(),
            rows=(figures,),
            reproduce=None,
        )
        _write(folder, record, [row.command])
        folders[slug] = f"{FOLDER}/{slug}"
    return folders


def _write(folder: Path, record: FindingFolder, commands: list[str]) -> None:
    (folder / "classification.json").write_text(json.dumps(record.to_json(), indent=1) + "\n")
    (folder / "report.md").write_text(render_finding(record, commands))


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def render_finding(record: FindingFolder, commands: list[str]) -> str:
    """The finding's report.md."""
    v = record.versions
    target = framework_named(record.framework).title
    lines = [
        f"# {', '.join(record.architectures)}: {shown(record.classification)}",
        "",
        f"{target} {v.get(record.framework, '?')}, transformers {v.get('transformers', '?')}. "
        f"Component: `{record.component or '-'}`.",
        "",
        "## What differs",
        "",
        record.note,
    ]
    if record.side:
        lines += ["", "## Which side differs, and why", "", record.side]
    lines += [
        "",
        "## The sweep's figures",
        "",
        "| architecture | dtype | kind | largest ratio | where | replay / evidence |",
        "|---|---|---|---|---|---|",
    ]
    for r in record.rows:
        evidence = r.evidence.replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {r.architecture} | {r.dtype} | {r.kind} | {_fmt(r.ratio)} | "
            f"{r.component or '-'} | {evidence or '-'} |"
        )
    if record.evidence:
        lines += ["", "## Evidence", "", record.evidence]
    for side, refs in ((target, record.target_code), ("transformers", record.reference_code)):
        if refs:
            lines += ["", f"## The code: {side}", ""]
            for ref in refs:
                lines += [f"`{ref}`", ""]
                excerpt = code_excerpt(ref)
                if excerpt:
                    lines += ["```python", excerpt, "```", ""]
    lines += ["", "## Reproduce", ""]
    if record.reproduce:
        lines += [
            f"`python {record.reproduce}`: torch, {target} and transformers only (no Ekka); it "
            "prints the difference.",
            "",
        ]
    else:
        lines += ["No standalone reproduction yet (written when the finding is examined).", ""]
    lines += ["With Ekka:", ""] + [f"    {c}" for c in dict.fromkeys(commands)]
    return "\n".join(lines) + "\n"


def code_excerpt(ref: str) -> str | None:
    """The installed lines of `package/path.py:a-b` (or `:a`), numbered; None where the file
    is not installed or the reference does not parse."""
    found = re.fullmatch(r"([\w.]+)/([\w/.]+\.py):(\d+)(?:-(\d+))?", ref)
    if found is None:
        return None
    package, path, first, last = found.groups()
    root = _package_dir(package)
    if root is None or not (root / path).is_file():
        return None
    start, end = int(first), int(last or first)
    text = (root / path).read_text().splitlines()
    end = min(end, start + EXCERPT_LINES - 1, len(text))
    return "\n".join(f"{n:5d}  {text[n - 1]}" for n in range(start, end + 1))


def _package_dir(package: str) -> Path | None:
    """The installed package's folder; a framework's as its own interpreter finds it (SGLang's
    is not importable in Ekka's process)."""
    from ekka.errors import UsageError
    from ekka.frameworks import FRAMEWORKS, installed_package_dir

    if package in FRAMEWORKS:
        try:
            return installed_package_dir(package)
        except UsageError:
            return None
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


__all__ = ["FindingFolder", "RowFigures", "code_excerpt", "render_finding", "write_finding_folders"]
