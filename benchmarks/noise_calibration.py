"""How pristine error ratios distribute, per component kind and dtype, and how far the planted
bugs stand above them: the figures behind the change point's threshold (issue 22).

`run`: for every model, dtype and prompt length, one pristine diagnosis from outside the
product (`python -m ekka.cli diagnose --model M --prompt-ids ... --dtype D`, the installed vLLM
release unpatched); every comparison's ratio and token ratio is kept by component kind (the
module name without its layer number: `attn`, `o_proj`, `post_attention_layernorm`, `layer`
for a decoder layer's output, `layer input`, ...) and by pass shape (`prefill`, the pass of the
prompt, or `decode`, one row). Models: the pretrained `gemma3-270m` (real weights; `ekka zoo
build gemma3-270m`, needs the `real` extra) and zoo architectures (random weights,
`max_position_embeddings` raised to hold the longest prompt). Prompts: the first N tokens of
an English text (the "execmodel" topic of Python's own documentation, `pydoc_data`), so the
same tokens every run.

`planted`: the ratio (and worst token's ratio) of the change point of each planted bug's
diagnosis (the reports a bench run wrote: `ekka bench CASES --no-bisect --workdir W` keeps
`W/<case>/report/report.json`); a serving-metadata change point is `inf`.

`report`: the distributions (median, 99th percentile, max per dtype, and the largest per kind),
the smallest planted ratio and the margin (smallest planted / largest pristine).

    .venv/bin/python benchmarks/noise_calibration.py run --out benchmarks/results/noise.json
    .venv/bin/python benchmarks/noise_calibration.py run --models gemma3-270m --lengths 64,600
    .venv/bin/python benchmarks/noise_calibration.py planted .ekka/bench --out planted.json
    .venv/bin/python benchmarks/noise_calibration.py report benchmarks/results/noise.json \
        --planted planted.json

`--ekka-root` runs another checkout's ekka (first on PYTHONPATH), for a before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ZOO = ["llama", "qwen2", "gemma3", "mistral", "qwen3moe", "phi3"]
LENGTHS = [64, 256, 600, 1000]
DTYPES = ["float32", "bfloat16"]


def kind_of(name: str, kind: str) -> str:
    """`model.layers.3.self_attn.o_proj` -> `o_proj`; a decoder layer -> `layer` (its output)
    or `layer input`; `model` stays."""
    parts = name.split("#", 1)[0].split(".")
    last = "layer" if parts[-1].isdigit() else parts[-1]
    if kind == "input":
        return f"{last} input"
    return last


def prompt_ids(model: Path, length: int, python: str, env: dict[str, str]) -> list[int]:
    code = (
        "import sys, json\n"
        "from pydoc_data.topics import topics\n"
        "from transformers import AutoTokenizer\n"
        f"tok = AutoTokenizer.from_pretrained({str(model)!r})\n"
        "text = topics['execmodel'] + topics['naming'] + topics['exceptions']\n"
        f"ids = tok(text).input_ids[:{length}]\n"
        "print(json.dumps(ids))\n"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, check=True)
    ids: list[int] = json.loads(out.stdout.strip().splitlines()[-1])
    if len(ids) < length:
        raise SystemExit(f"the text gives only {len(ids)} tokens with {model}'s tokenizer")
    return ids


def build(name: str, folder: Path, python: str, env: dict[str, str], longest: int) -> Path:
    cmd = [python, "-m", "ekka.cli", "zoo", "build", name, "--out", str(folder)]
    if name != "gemma3-270m":
        cmd += ["--set", f"max_position_embeddings={max(256, longest + 64)}"]
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return folder


def diagnose(
    model: Path, ids: list[int], dtype: str, out: Path, python: str, env: dict[str, str]
) -> dict[str, Any]:
    # `python -m` puts the working directory first on sys.path: run from the checkout whose
    # ekka is meant (PYTHONPATH's first entry), not from this one.
    cwd = env.get("PYTHONPATH", "").split(os.pathsep)[0] or str(ROOT)
    cmd = [python, "-m", "ekka.cli", "diagnose", "--model", str(model)]
    cmd += ["--prompt-ids", ",".join(map(str, ids)), "--max-tokens", "4", "--dtype", dtype]
    cmd += ["--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd)
    seconds = time.perf_counter() - start
    report = out / "report.json"
    if not report.is_file():
        raise SystemExit(f"diagnose failed ({done.returncode}):\n{done.stderr[-3000:]}")
    data = json.loads(report.read_text())
    ratios: dict[str, dict[str, list[float]]] = {}
    tokens: dict[str, dict[str, list[float]]] = {}
    for c in data["comparisons"]:
        if c["kind"] == "metadata":
            continue
        shape = "prefill" if c["pass_index"] == 0 else "decode"
        k = kind_of(c["target"], c["kind"])
        ratios.setdefault(shape, {}).setdefault(k, []).append(_num(c["ratio"]))
        tokens.setdefault(shape, {}).setdefault(k, []).append(_num(c["token_ratio"]))
    return {
        "seconds": round(seconds, 1),
        "diverged": data["diverged"],
        "verdict": data["verdict"],
        "output_worst_ratio": (data.get("output") or {}).get("worst_ratio"),
        "ratios": ratios,
        "token_ratios": tokens,
    }


def _num(x: Any) -> float:
    return float("inf") if isinstance(x, str) else float(x)


def run(args: argparse.Namespace) -> None:
    python = sys.executable
    env = dict(os.environ)
    if args.ekka_root:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.ekka_root, env.get("PYTHONPATH")]))
    lengths = [int(x) for x in args.lengths.split(",")]
    results: list[dict[str, Any]] = []
    if args.out.is_file() and args.resume:
        results = json.loads(args.out.read_text())["runs"]
    done = {(r["model"], r["dtype"], r["length"]) for r in results}
    with tempfile.TemporaryDirectory(prefix="ekka-noise-") as tmp:
        for name in args.models.split(","):
            model = build(name, Path(tmp) / name, python, dict(os.environ), max(lengths))
            model_lengths = lengths if name == "gemma3-270m" else lengths[: args.zoo_lengths]
            for length in model_lengths:
                ids = prompt_ids(model, length, python, env)
                for dtype in args.dtypes.split(","):
                    if (name, dtype, length) in done:
                        continue
                    out = Path(tmp) / "diagnosis"
                    found = diagnose(model, ids, dtype, out, python, env)
                    shutil.rmtree(out, ignore_errors=True)
                    found.update(model=name, dtype=dtype, length=length)
                    results.append(found)
                    flat = [r for rs in found["ratios"].values() for v in rs.values() for r in v]
                    print(
                        f"{name:12s} {dtype:8s} {length:5d} tokens: {found['seconds']:6.1f} s, "
                        f"max ratio {max(flat):.3g}, {found['verdict'][:60]}",
                        flush=True,
                    )
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps({"runs": results}, indent=1) + "\n")
            shutil.rmtree(model, ignore_errors=True)


def planted(args: argparse.Namespace) -> None:
    rows = []
    for report in sorted(args.bench.glob("*/report/report.json")):
        data = json.loads(report.read_text())
        cp = data.get("change_point") or {}
        ratio = _num(cp.get("ratio", "nan")) if cp else float("nan")
        rows.append(
            {
                "case": report.parent.parent.name,
                "dtype": data["dtype"],
                "change_point": cp.get("target"),
                "kind": cp.get("kind"),
                "ratio": ratio,
                "token_ratio": _num(cp.get("token_ratio", "nan")) if cp else float("nan"),
                "rows": cp.get("rows"),
            }
        )
        print(f"{rows[-1]['case']:48s} {data['dtype']:8s} {cp.get('target')} {ratio:.3g}")
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


def report(args: argparse.Namespace) -> None:
    runs = json.loads(args.results.read_text())["runs"]
    print("pristine error ratios (every comparison; `decode` = one-row passes)")
    header = f"{'models':10s} {'dtype':9s} {'shape':8s} {'n':>6s} {'median':>7s} {'p99':>7s} {'max':>7s}  largest kind"
    print(header)
    largest: dict[str, float] = {}
    for real in (True, False):
        for dtype in DTYPES:
            for shape in ("prefill", "decode", "all"):
                picked = [
                    r for r in runs if (r["model"] == "gemma3-270m") == real and r["dtype"] == dtype
                ]
                values: list[float] = []
                by_kind: dict[str, float] = {}
                for r in picked:
                    for s, kinds in r["ratios"].items():
                        if shape not in ("all", s):
                            continue
                        for k, v in kinds.items():
                            values += v
                            by_kind[k] = max(by_kind.get(k, 0.0), max(v))
                if not values:
                    continue
                a = np.array(values)
                top = max(by_kind, key=lambda k: by_kind[k])
                label = "real" if real else "zoo"
                print(
                    f"{label:10s} {dtype:9s} {shape:8s} {len(a):6d} {np.median(a):7.3g} "
                    f"{np.percentile(a, 99):7.3g} {a.max():7.3g}  {top} ({by_kind[top]:.3g})"
                )
                if shape == "all":
                    largest[f"{label} {dtype}"] = float(a.max())
    print("by prompt length (max ratio):")
    for r in runs:
        flat = [x for kinds in r["ratios"].values() for v in kinds.values() for x in v]
        print(
            f"  {r['model']:12s} {r['dtype']:9s} {r['length']:5d}: max {max(flat):.3g}, "
            f"{r['seconds']} s, diverged {r['diverged']}"
        )
    if not args.planted:
        return
    rows = json.loads(args.planted.read_text())
    for dtype in DTYPES:
        worst = max(v for k, v in largest.items() if k.endswith(dtype))
        finite = [r for r in rows if r["dtype"] == dtype and np.isfinite(r["ratio"])]
        line = f"{dtype}: largest pristine ratio {worst:.3g}"
        if finite:
            low = min(finite, key=lambda r: r["ratio"])
            line += (
                f", smallest planted {low['ratio']:.3g} ({low['case']}, {low['change_point']}; "
                f"{len(finite)} finite of {sum(r['dtype'] == dtype for r in rows)}): "
                f"margin {low['ratio'] / worst:.3g}x"
            )
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("--models", default=",".join(["gemma3-270m", *ZOO]))
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    p.add_argument("--zoo-lengths", type=int, default=2, help="the zoo runs the first K lengths")
    p.add_argument("--dtypes", default=",".join(DTYPES))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/noise.json")
    p.add_argument("--resume", action="store_true", help="keep the runs already in --out")
    p.add_argument("--ekka-root", default=None)
    p = sub.add_parser("planted")
    p.add_argument("bench", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("report")
    p.add_argument("results", type=Path)
    p.add_argument("--planted", type=Path, default=None)
    args = parser.parse_args()
    {"run": run, "planted": planted, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
