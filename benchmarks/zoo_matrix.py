"""Which zoo architectures load and match between vLLM (CPU) and transformers, per dtype.

For every zoo architecture and dtype: build the tiny model (float32 checkpoint), run the
localize-mode diagnosis on unmodified vLLM (32-token prompt that crosses the sliding windows,
4 greedy tokens) and record the verdict, the largest relative error and ratio per decoder
layer, and the logits error. Unmodified vLLM must come out "no divergence" everywhere except
Cohere2 (vLLM widens the sliding window by one; see bench/ARCHS.md).

    .venv/bin/python benchmarks/zoo_matrix.py [--arch llama ...] [--dtype float32 ...] --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

PROMPT_IDS = tuple([1] + [(7 * i + 11) % 500 + 3 for i in range(31)])


def run(arch: str, dtype: str, work: Path) -> dict:
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
                max_tokens=4,
            )
        )
    except Exception as exc:  # report and go on
        return {
            "arch": spec.name,
            "dtype": dtype,
            "loads": False,
            "error": f"{type(exc).__name__}: {exc}"[:400],
        }
    comps = diagnosis.comparisons
    layers = {}
    for c in comps:
        parts = c.target.split(".")
        if len(parts) == 3 and parts[1] == "layers":
            layers[c.target] = max(layers.get(c.target, 0.0), c.error)
    logits = [c.error for c in comps if c.target == "logits_processor"]
    finite = [c.ratio for c in comps if math.isfinite(c.ratio)]
    worst = max(comps, key=lambda c: c.ratio) if comps else None
    return {
        "arch": spec.name,
        "dtype": dtype,
        "loads": True,
        "verdict": diagnosis.verdict,
        "suspects": [s.component for s in diagnosis.localization.suspects],
        "max_layer_error": max(layers.values()) if layers else None,
        "layer_errors": layers,
        "logits_error": max(logits) if logits else None,
        "max_ratio": max(finite) if finite else None,
        "max_ratio_at": worst.target if worst else None,
        "greedy_equal": diagnosis.target_tokens == diagnosis.reference_tokens,
        "aligned": len(comps),
        "unmapped": sorted(diagnosis.unmapped),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    from ekka.zoo import list_architectures

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", action="append", default=[])
    parser.add_argument("--dtype", action="append", default=[])
    parser.add_argument("--work", type=Path, default=Path(".ekka/zoo-matrix"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    archs = args.arch or [a.name for a in list_architectures()]
    dtypes = args.dtype or ["float32", "bfloat16"]
    rows = []
    for arch in archs:
        for dtype in dtypes:
            row = run(arch, dtype, args.work)
            rows.append(row)
            print(
                json.dumps({k: v for k, v in row.items() if k not in ("layer_errors", "unmapped")}),
                flush=True,
            )
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
