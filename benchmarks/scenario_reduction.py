"""Scenario cases: the suspect named, the reduced scenario, and what the reduction cost.

For each scenario case (the public one in bench/scenarios, this repository's in
tests/fixtures/scenarios), localize mode of the bench (`ekka.bench.run_case`: the case's model,
its patch on a copy of the installed vLLM, the diagnosis with its scenario, then the reduction
of the diverging scenario). Prints one JSON line per case and writes them all to
benchmarks/results/scenario-reduction.json.

    nice -n 10 .venv/bin/python benchmarks/scenario_reduction.py [CASE_FOLDER ...]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from ekka.bench import find_cases, run_case

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = [
    ROOT / "bench" / "scenarios",
    ROOT / "tests" / "fixtures" / "scenarios",
]


def main(folders: list[Path]) -> None:
    rows = []
    work = Path(tempfile.mkdtemp(prefix="ekka-scenarios-"))
    try:
        for folder in folders:
            for case in find_cases(folder):
                result = run_case(case, work)
                reduction = result.extra.get("reduction") or {}
                row = {
                    "case": case.id,
                    "requests": {
                        "before": len(case.run.before) if case.run else 0,
                        "alongside": len(case.run.alongside) if case.run else 0,
                    },
                    "top1": result.top1,
                    "suspect": result.suspects[0] if result.suspects else None,
                    "kept": reduction.get("kept"),
                    "reduced": reduction.get("statement"),
                    "reduction_runs": reduction.get("runs"),
                    "reduction_seconds": reduction.get("seconds"),
                    "case_seconds": round(result.seconds, 1),
                    "error": result.error,
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
                shutil.rmtree(work / case.id, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = ROOT / "benchmarks" / "results" / "scenario-reduction.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1:]] or FOLDERS)
