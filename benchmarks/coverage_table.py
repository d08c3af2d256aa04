"""The coverage map per zoo architecture: how many target modules are compared, how many not, why.

For each of the zoo's hand-written architectures (or those given): build the tiny model, run
the localize-mode diagnosis of pristine vLLM in float32 with the request of the zoo's
no-false-alarm test (`tests/tracer/test_diagnose.py::test_unmodified_vllm_has_no_divergence`:
`run_diagnosis`, the 32-token prompt `tests/conftest.PROMPT_IDS`, 3 greedy tokens, so 3
passes) and count its coverage map (`Diagnosis.coverage`, built by `ekka/tracer/coverage.py`):
the modules compared in every pass they ran in, those compared in some passes only, and those
never compared, grouped by the map's reason and module class. Writes a Markdown table (and the
rows as JSON with `--json`). One engine start per architecture: run it with `nice`.

    .venv/bin/python benchmarks/coverage_table.py --out benchmarks/results/coverage.md \\
        [--arch LlamaForCausalLM ...] [--dtype float32] [--json coverage.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

# tests/conftest.PROMPT_IDS: 32 tokens, crosses the zoo's sliding windows of 8
PROMPT_IDS = tuple([1] + [(7 * i + 11) % 500 + 3 for i in range(31)])
MAX_TOKENS = 3


def run(arch: str, dtype: str, work: Path) -> dict[str, Any]:
    from ekka.tracer.diagnose import DiagnoseConfig, run_diagnosis
    from ekka.zoo import build_model, get_arch

    spec = get_arch(arch)
    model = work / spec.name / "model"
    if not (model / "config.json").exists():
        build_model(spec.name, model)
    start = time.perf_counter()
    try:
        diagnosis = run_diagnosis(
            DiagnoseConfig(
                model=str(model),
                prompt_ids=PROMPT_IDS,
                workdir=str(work / spec.name / dtype),
                dtype=dtype,
                max_tokens=MAX_TOKENS,
            )
        )
    except Exception as exc:  # report and go on
        return {"arch": spec.name, "dtype": dtype, "error": f"{type(exc).__name__}: {exc}"[:400]}
    coverage = diagnosis.coverage
    partial = [c for c in coverage if c.compared and c.not_compared]
    never = [c for c in coverage if not c.compared]
    why: Counter[str] = Counter(f"{c.reason} [{c.module_class}]" for c in partial + never)
    return {
        "arch": spec.name,
        "dtype": dtype,
        "passes": len({p for c in coverage for p in (*c.compared, *c.not_compared)}),
        "modules": len(coverage),
        "every_pass": sum(1 for c in coverage if c.complete and c.compared),
        "some_passes": len(partial),
        "never": len(never),
        "why": dict(sorted(why.items())),
        "not_compared": [c.component for c in partial + never],
        "diverged": diagnosis.diverged,
        "seconds": round(time.perf_counter() - start, 1),
    }


def markdown(rows: list[dict[str, Any]], dtype: str) -> str:
    lines = [
        "# Coverage per zoo architecture",
        "",
        f"Pristine vLLM against transformers, {dtype}, the 32-token prompt of the zoo's "
        f"no-false-alarm test and {MAX_TOKENS} tokens (a prefill and two decode steps); "
        "`benchmarks/coverage_table.py`. A module counts once (a repeated call `#k` is its own "
        "module); *every pass*: compared in each pass it ran in. *diverged*: the diagnosis "
        "found a divergence of pristine vLLM (Cohere2's is a known finding, "
        "`ekka/data/arch-sweep-findings.json`); its coverage counts all the same.",
        "",
        "| architecture | modules | compared in every pass | in some passes | never "
        "| not compared, why | diverged | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['arch']} | - | - | - | - | error: {r['error']} | - | - |")
            continue
        why = "; ".join(f"{n} × {reason}" for reason, n in r["why"].items()) or "-"
        lines.append(
            f"| {r['arch']} | {r['modules']} | {r['every_pass']} | {r['some_passes']} "
            f"| {r['never']} | {why} | {'yes' if r['diverged'] else 'no'} | {r['seconds']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    from ekka.zoo import list_architectures

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", action="append", default=[])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--work", type=Path, default=Path(".ekka/coverage-table"))
    parser.add_argument("--out", type=Path, required=True, help="the Markdown table")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    archs = args.arch or [a.name for a in list_architectures()]
    rows = []
    for arch in archs:
        row = run(arch, args.dtype, args.work)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "not_compared"}), flush=True)
        args.out.write_text(markdown(rows, args.dtype))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
