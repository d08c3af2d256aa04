"""`ekka bench`: run the silent-error benchmark cases (format: bench/FORMAT.md) and score.

Per case: build the case's tiny model, copy the installed vLLM release's Python sources (the
compiled extensions are linked, not copied), apply `bug.patch` with `git apply -p1`, run the
diagnosis with that copy first on the target's PYTHONPATH, and score the suspects against
`truth.components`.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ekka.bisect.framework_repo import apply_patch
from ekka.errors import UsageError
from ekka.repo import installed_framework_dir
from ekka.scenario import RunSpec, parse_run
from ekka.tracer.scenario import Scenario
from ekka.tracer.session import target_python

if TYPE_CHECKING:
    from ekka.request import Resolved


@dataclass(frozen=True)
class Case:
    id: str
    path: Path
    summary: str
    architecture: str
    dtype: str
    seed: int
    config: dict[str, Any]
    prompt: str | None
    prompt_ids: tuple[int, ...] | None
    max_tokens: int
    engine: dict[str, Any]
    truth_components: tuple[str, ...]
    truth_files: tuple[str, ...]
    framework: str = "vllm"
    pretrained: str | None = None  # a pretrained zoo model (real weights) instead of random init
    # the requests around the traced one (bench/scenarios: [[run.before]], [[run.alongside]])
    run: RunSpec | None = None


@dataclass
class CaseResult:
    id: str
    top1: bool
    top5: bool
    suspects: list[str]
    seconds: float
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = {
            "id": self.id,
            "top1": self.top1,
            "top5": self.top5,
            "suspects": self.suspects,
            "seconds": round(self.seconds, 2),
        }
        if self.error:
            data["error"] = self.error
        data.update(self.extra)
        return data


def load_case(folder: Path) -> Case:
    toml = folder / "case.toml"
    if not toml.is_file():
        raise UsageError(f"{folder} has no case.toml (see bench/FORMAT.md).")
    if not (folder / "bug.patch").is_file():
        raise UsageError(f"{folder} has no bug.patch (see bench/FORMAT.md).")
    try:
        data = tomllib.loads(toml.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{toml}: not valid TOML ({exc}).") from None
    try:
        model, run, truth = data["model"], data["run"], data["truth"]
        pretrained = model.get("pretrained")
        if pretrained is not None:
            from ekka.zoo.pretrained import get_pretrained

            architecture = model.get("architecture") or get_pretrained(pretrained).architecture
        else:
            architecture = model["architecture"]
        return Case(
            id=data.get("id", folder.name),
            path=folder,
            summary=data.get("summary", ""),
            architecture=architecture,
            dtype=model.get("dtype", "float32"),
            seed=int(model.get("seed", 0)),
            config=dict(model.get("config", {})),
            prompt=run.get("prompt"),
            prompt_ids=tuple(run["prompt_token_ids"]) if "prompt_token_ids" in run else None,
            max_tokens=int(run.get("max_tokens", 4)),
            engine=dict(run.get("engine", {})),
            run=parse_run(run, str(toml)),
            truth_components=tuple(truth["components"]),
            truth_files=tuple(truth.get("files", ())),
            framework=data.get("framework", "vllm"),
            pretrained=pretrained,
        )
    except KeyError as exc:
        raise UsageError(f"{toml}: missing key {exc} (see bench/FORMAT.md).") from None


def find_cases(cases_dir: Path, only: Sequence[str] = ()) -> list[Case]:
    if not cases_dir.is_dir():
        raise UsageError(f"{cases_dir} is not a folder of bench cases.")
    folders = sorted(p for p in cases_dir.iterdir() if (p / "case.toml").is_file())
    if not folders:
        raise UsageError(f"{cases_dir} holds no case folders (each needs case.toml and bug.patch).")
    if only:
        known = {p.name for p in folders}
        missing = [c for c in only if c not in known]
        if missing:
            raise UsageError(
                f"unknown case(s) {', '.join(missing)}; known: {', '.join(sorted(known))}."
            )
        folders = [p for p in folders if p.name in only]
    return [load_case(p) for p in folders]


def matches_truth(component: str, patterns: Sequence[str]) -> bool:
    """True when a suspect (`model.layers.0.mlp.act_fn#1`: its call index dropped) matches one
    of the case's `truth.components` globs."""
    base = component.split("#", 1)[0]
    return any(fnmatch.fnmatchcase(base, p) for p in patterns)


def copy_sources(package_dir: Path, dest_root: Path) -> Path:
    """Copy a package's sources into `dest_root/<name>`; compiled `.so` files become symlinks.

    Byte-code caches are copied too (with the sources' times, so they stay valid for every file
    a patch does not touch): importing the copy then costs what importing the release does,
    not a compilation of every module. Python points the code at the copy's files on import.
    """
    dest = dest_root / package_dir.name
    if dest.exists():
        shutil.rmtree(dest)

    def copy(src: str, dst: str) -> None:
        if src.endswith(".so"):
            os.symlink(src, dst)
        else:
            shutil.copy2(src, dst)

    shutil.copytree(package_dir, dest, copy_function=copy)
    return dest


def build_case_model(case: Case, out: Path) -> Path:
    """The case's model: random weights from its config, or a pretrained zoo model (prepared
    once and cached) with `[model.config]` as runtime overrides."""
    from ekka.zoo import build_model

    if case.pretrained is not None:
        from ekka.zoo.pretrained import build_pretrained, set_runtime_config

        build_pretrained(case.pretrained, out)
        set_runtime_config(out, case.config)
        return out
    return build_model(
        case.architecture,
        out,
        dtype="float32",
        seed=case.seed,
        overrides=case.config,
        zoo_defaults=False,
    )


def case_request(case: Case, model_dir: Path) -> Resolved:
    """The case's request resolved (`ekka.request.resolve_request`): its `[run]` (read from
    case.toml, the one scenario resolution) on the built model."""
    from ekka.request import Request, ScenarioRef, resolve_request

    return resolve_request(
        Request(
            model=str(model_dir),
            prompt_text=case.prompt,
            prompt_ids=case.prompt_ids or (),
            dtype=case.dtype,
            max_tokens=case.max_tokens,
            engine=case.engine,
            scenario=None if case.run is None else ScenarioRef(str(case.path / "case.toml")),
            framework=case.framework,
        )
    )


def case_scenario(case: Case, model_dir: Path) -> Scenario:
    """The case's requests around the traced one (none for a case of one request)."""
    return case_request(case, model_dir).scenario


def case_prompt_ids(case: Case, model_dir: Path) -> list[int]:
    return list(case_request(case, model_dir).request.prompt_ids)


def base_repository(workdir: Path, framework: str = "vllm") -> Path:
    """One repository of the installed release's Python sources per bench folder (reused)."""
    from ekka.bisect.framework_repo import make_base_repo

    base = workdir / f"_{framework}-release"
    if not (base / ".git").is_dir():
        make_base_repo(base, installed_framework_dir(framework, target_python(framework)))
    return base


def run_case(
    case: Case,
    workdir: Path,
    *,
    bisect: bool = False,
    say: Callable[[str], None] = lambda _m: None,
    db_url: str | None = None,
) -> CaseResult:
    from ekka.compose import diagnose_config
    from ekka.reduce import diagnose_and_reduce
    from ekka.report import write_reports

    start = time.perf_counter()
    work = workdir / case.id
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    extra: dict[str, Any] = {}
    try:
        say("building the model")
        model_dir = build_case_model(case, work / "model")
        resolved = case_request(case, model_dir)
        if bisect:
            from ekka.bisect.framework_repo import make_bug_history
            from ekka.compose import full_config
            from ekka.containers.spec import ExecutorSpec
            from ekka.full import run_full_diagnosis

            say("making the history: harmless commits around the bug commit")
            history = make_bug_history(
                base_repository(workdir, case.framework),
                work / "repo",
                case.path / "bug.patch",
                case.summary[:60],
            )
            diagnosis, result = run_full_diagnosis(
                full_config(
                    resolved,
                    ExecutorSpec(),
                    repo=history.repo,
                    good=history.good,
                    bad=history.bad,
                    workdir=work / "traces",
                    db_url=db_url or f"sqlite:///{(work / 'verdicts.db').resolve()}",
                ),
                progress=say,
            )
            first_bad = result.first_bad.sha if result.first_bad else None
            extra = {
                "bisect": first_bad == history.bug,
                "probes": result.probes,
                "first_bad": first_bad,
                "bug_commit": history.bug,
                "commits": len(history.commits),
                "root_cause": diagnosis.root_cause.statement if diagnosis.root_cause else None,
            }
        else:
            say("copying and patching the framework's sources")
            src_root = work / "src"
            src_root.mkdir()
            copy_sources(
                installed_framework_dir(case.framework, target_python(case.framework)), src_root
            )
            apply_patch(case.path / "bug.patch", src_root)
            diagnosis = diagnose_and_reduce(
                diagnose_config(
                    resolved, workdir=work / "traces", target_pythonpath=(str(src_root),)
                ),
                progress=say,
            )
        write_reports(diagnosis, work / "report")
    except Exception as exc:  # a broken case is scored as a miss, and the run goes on
        failed = {"bisect": False, "probes": 0, "first_bad": None} if bisect else {}
        return CaseResult(
            case.id,
            False,
            False,
            [],
            time.perf_counter() - start,
            error=f"{type(exc).__name__}: {exc}"[:2000],
            extra=failed,
        )
    finally:
        shutil.rmtree(work / "src", ignore_errors=True)
    suspects = [s.component for s in diagnosis.localization.suspects]
    hits = [matches_truth(s, case.truth_components) for s in suspects]
    extra["verdict"] = diagnosis.verdict
    if diagnosis.reduction is not None:
        reduction = diagnosis.reduction
        extra["reduction"] = {
            "kept": list(reduction.kept),
            "statement": reduction.statement,
            "runs": reduction.runs,
            "seconds": round(reduction.seconds, 1),
        }
    return CaseResult(
        case.id,
        top1=bool(hits[:1] and hits[0]),
        top5=any(hits[:5]),
        suspects=suspects,
        seconds=time.perf_counter() - start,
        extra=extra,
    )


def summarize(results: Sequence[CaseResult]) -> dict[str, Any]:
    n = len(results) or 1
    summary: dict[str, Any] = {
        "cases": [r.to_json() for r in results],
        "top1": sum(r.top1 for r in results) / n,
        "top5": sum(r.top5 for r in results) / n,
    }
    if any("bisect" in r.extra for r in results):
        summary["bisect"] = sum(bool(r.extra.get("bisect")) for r in results) / n
    return summary
