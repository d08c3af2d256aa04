"""Cost of localization against one untraced vLLM run plus one untraced transformers run.

Target (issue): localization of a bench case costs at most 2x the time of one untraced vLLM run
plus one transformers run of the same prompt, engine start excluded.

Two baselines, each round:

- paired (the figure): the untraced vLLM request that the target's own process makes just
  before its traced one (the fastest of four, as long as the traced one, other tokens; the
  manifest's `untraced_generate`), plus an untraced transformers greedy loop in this process
  just after the diagnosis (the fastest of three on one thread and three on every thread).
  The fastest, not the median: the smaller baseline, the stricter figure. Measured a moment
  apart from the localization, with the same process and warmth as the traced request: on
  this machine, whose speed drifts by 1.5-2x within seconds, a baseline taken in another
  process half a minute earlier moved single rounds' ratios between 1.3x and 4x.
- separate (printed too): in a process of its own right before the diagnosis, start the vLLM
  engine (excluded), time greedy generation of the case's prompt six times (the first
  request, then the median of five warm ones, each with its tokens shifted so that vLLM's
  prefix cache cannot serve it); load the transformers model (excluded), time its greedy
  loop the same way.

The target is the case's bug: the installed release's Python sources copied and `bug.patch`
applied (as `ekka bench` does), first on PYTHONPATH for the baseline's vLLM and the diagnosis'
target alike, so that the suspects found are the case's and their replay is measured too.

Localization: `run_diagnosis` on the same model and prompt, `--runs` times in this process. Its
cost is wall time: from the moment the target's process starts its traced request to the moment
both its replays are written and this process's analysis is done (they overlap; all three are
`time.monotonic()` readings, one clock for every process of the machine), plus the replay
verdicts worked out here after that. In that window: the traced generation, the trace's
writing, the reference's work that needed the target's tokens (a traced pass over them, only
where the reference's guess of them was wrong), the analysis and the replay. Excluded, as the
issue says: the engine start, which in a capture includes warm-up requests (a two-token
untraced one, a two-token one traced into a scratch trace, the four timed untraced ones: so
the traced request is a warm one, like the baselines), and what this process does meanwhile:
the reference models' loading and warm-up, the analysis' warm-up (on the target's scratch
trace, while the target waits before its timed requests), with `--ahead prompt` (the
default below four cores) the reference's traced pass over the prompt (it needs nothing from
the target; it runs there too, while the target waits), with `--ahead guess` (the default on
four cores or more) also its greedy guess of the target's tokens and a traced pass over the
guess, during the engine's start. `work`
adds up every part's own time, the reference's passes made ahead included, as if nothing
overlapped: it is printed too, with its ratio, so that work moved out of the window is not
hidden; and `wall_with_process_and_engine_start` tells whether that work slowed the engine's
start by more than it saved (compare it with `--ahead off`). Also excluded: the processes'
start and exit. `ekka diagnose`
makes one localization per process: the first round is the one a user gets, later rounds run
in a warm process (both are in the rounds' figures). Each round measures a fresh separate
baseline, then one localization with its paired baseline; the figure is the median over
rounds of localization / (paired vLLM + paired transformers); the same with the separate
baseline and its first-request figures are printed too. Prints one line per round, then
one JSON line.

    .venv/bin/python benchmarks/localize_cost.py [--case llama-rmsnorm-eps-ignored] [--runs 7] [--ahead auto|off|prompt|guess]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BASELINE = r"""
import json, os, statistics, sys, time
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"; os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
import torch
from vllm import LLM, SamplingParams
model, ids, n, dtype = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
llm = LLM(model=model, skip_tokenizer_init=True, enforce_eager=True, gpu_memory_utilization=0.3, dtype=dtype, max_model_len=256, seed=0)
params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
vocab = json.load(open(os.path.join(model, "config.json")))["vocab_size"]
vllm_runs = []
for k in range(6):
    # every run a prompt of its own (same length, every token shifted): vLLM's prefix cache
    # would otherwise serve the repeated prompt's prefill from the first run's blocks
    prompt = [(t + 7 * k) % vocab for t in ids]
    t = time.perf_counter(); llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False); vllm_runs.append(time.perf_counter() - t)
from transformers import AutoModelForCausalLM
hf = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype), attn_implementation="eager").eval()
sys.path.insert(0, sys.argv[5])
from localize_cost import greedy_seconds
hf_runs = [greedy_seconds(hf, ids, n) for _ in range(6)]
print(json.dumps({"vllm": statistics.median(vllm_runs[1:]), "transformers": statistics.median(hf_runs[1:]),
                  "vllm_first": vllm_runs[0], "transformers_first": hf_runs[0]}))
"""


def main() -> None:
    from ekka.bench import (
        build_case_model,
        case_prompt_ids,
        copy_sources,
        find_cases,
        matches_truth,
    )
    from ekka.bisect.framework_repo import apply_patch
    from ekka.repo import installed_framework_dir
    from ekka.tracer.diagnose import DiagnoseConfig, run_diagnosis
    from ekka.tracer.trace import TraceReader, is_trace

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cases",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared" / "bench" / "cases",
    )
    parser.add_argument("--case", default="llama-rmsnorm-eps-ignored")
    parser.add_argument("--runs", type=int, default=7, help="rounds (baseline + localization each)")
    parser.add_argument("--work", type=Path, default=Path(".ekka/localize-cost"))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="model config override key=value (a larger model)",
    )
    parser.add_argument(
        "--ahead",
        choices=("auto", "off", "prompt", "guess"),
        default="auto",
        help="what the reference traces before the target's tokens (auto: guess on 4 cores or more, else prompt)",
    )
    args = parser.parse_args()
    case = find_cases(args.cases, [args.case])[0]
    if args.set:
        from dataclasses import replace

        from ekka.zoo import parse_set_values

        case = replace(case, config={**case.config, **parse_set_values(args.set)})
    model = build_case_model(case, args.work / "model")
    ids = case_prompt_ids(case, model)
    src_root = args.work / "src"
    shutil.rmtree(src_root, ignore_errors=True)
    src_root.mkdir(parents=True)
    copy_sources(installed_framework_dir(case.framework), src_root)
    apply_patch(case.path / "bug.patch", src_root)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(src_root.resolve()), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    }
    costs, works, walls, parts, baselines, ratios, found, guesses = [], [], [], [], [], [], [], []
    paired, paired_ratios = [], []
    import torch
    from transformers import AutoModelForCausalLM

    # the paired baseline's transformers model, loaded once in this process (excluded)
    hf = AutoModelForCausalLM.from_pretrained(
        str(model), dtype=getattr(torch, case.dtype), attn_implementation="eager"
    ).eval()
    vocab = hf.get_input_embeddings().num_embeddings
    for i in range(args.runs):
        # each round measures its own baseline right before its localization: this machine's
        # speed drifts over minutes, and a ratio of figures taken apart would carry the drift
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                BASELINE,
                str(model),
                json.dumps(ids),
                str(case.max_tokens),
                case.dtype,
                str(Path(__file__).resolve().parent),
            ],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        baseline = json.loads(proc.stdout.strip().splitlines()[-1])
        baselines.append(baseline)
        shutil.rmtree(args.work / f"run{i}", ignore_errors=True)
        start = time.perf_counter()
        diagnosis = run_diagnosis(
            DiagnoseConfig(
                model=str(model),
                prompt_ids=tuple(ids),
                workdir=str(args.work / f"run{i}"),
                dtype=case.dtype,
                max_tokens=case.max_tokens,
                target_pythonpath=(str(src_root.resolve()),),
                ahead=None if args.ahead == "auto" else args.ahead,
            )
        )
        walls.append(time.perf_counter() - start)
        run = args.work / f"run{i}"
        target_manifest = TraceReader(run / "target").manifest
        timings = target_manifest.get("timings", {})
        s = diagnosis.seconds
        replay = run / "target" / "replay"
        replay_manifest = (
            TraceReader(replay).manifest if is_trace(replay) else {}
        )  # none: the replay failed
        # the target replays while this process analyses: the later of the two ends the window
        ended = max(replay_manifest.get("closed_at", 0.0), diagnosis.marks["analysed_at"])
        window = ended - timings["traced_started_at"] + s["confirm"]
        part = {
            "target_traced_generate": timings.get("traced_generate", 0),
            "target_write": target_manifest.get("write_seconds", 0),
            "reference_ahead": s.get(
                "reference_ahead", 0
            ),  # while the engine starts: not in the window
            "reference_after": s["reference"],
            "reference_write": s.get("reference_write", 0),  # by a thread, beside the analysis
            "analysis": s["analysis"],
            "target_replay": replay_manifest.get("timings", {}).get("replay", 0)
            + replay_manifest.get("write_seconds", 0),
            "confirm": s["confirm"],
        }
        parts.append(part)
        costs.append(window)
        works.append(sum(part.values()))
        ratios.append(costs[-1] / (baseline["vllm"] + baseline["transformers"]))
        # the paired baseline: the untraced request the target's process made just before its
        # traced one, and the transformers loop in this process just after the diagnosis
        pair = {
            "vllm": timings["untraced_generate"],
            "transformers": _transformers_run(hf, ids, case.max_tokens, vocab, i),
        }
        paired.append(pair)
        paired_ratios.append(costs[-1] / (pair["vllm"] + pair["transformers"]))
        guesses.append(TraceReader(run / f"reference-{case.dtype}").manifest.get("guess_right"))
        suspects = [sus.component for sus in diagnosis.localization.suspects]
        found.append(bool(suspects) and matches_truth(suspects[0], case.truth_components))
        print(
            f"round {i + 1}/{args.runs}: top suspect {suspects[0] if suspects else None}, guess right {guesses[-1]}, localization {costs[-1]:.3f} s (work {works[-1]:.3f} s), untraced vLLM {pair['vllm']:.3f} s "
            f"+ transformers {pair['transformers']:.3f} s, ratio {paired_ratios[-1]:.2f} (separate baseline: vLLM "
            f"{baseline['vllm']:.3f} s + transformers {baseline['transformers']:.3f} s, ratio {ratios[-1]:.2f}) "
            f"({', '.join(f'{k} {v:.3f}' for k, v in part.items())})",
            file=sys.stderr,
        )

    def median(key: str) -> float:
        return round(statistics.median(b[key] for b in baselines), 3)

    middle = sorted(range(len(costs)), key=costs.__getitem__)[len(costs) // 2]
    print(
        json.dumps(
            {
                "case": case.id,
                "rounds": args.runs,
                "ratio_median": round(
                    statistics.median(paired_ratios), 2
                ),  # against the paired baseline
                "ratios": [round(r, 2) for r in paired_ratios],
                "paired_vllm_s_median": round(statistics.median(p["vllm"] for p in paired), 3),
                "paired_transformers_s_median": round(
                    statistics.median(p["transformers"] for p in paired), 3
                ),
                "separate_ratio_median": round(statistics.median(ratios), 2),
                "separate_ratios": [round(r, 2) for r in ratios],
                "top1_found": sum(found),
                "guess_right": sum(g is True for g in guesses),
                "localization_s_median": round(statistics.median(costs), 3),
                "work_s_median": round(statistics.median(works), 3),
                "work_ratio_median": round(
                    statistics.median(
                        w / (b["vllm"] + b["transformers"]) for w, b in zip(works, paired)
                    ),
                    2,
                ),
                "separate_vllm_s_median": median("vllm"),
                "separate_transformers_s_median": median("transformers"),
                "first_request_vllm_s_median": median("vllm_first"),
                "first_request_transformers_s_median": median("transformers_first"),
                "wall_with_process_and_engine_start_s_median": round(statistics.median(walls), 1),
                "parts_of_median_run": {k: round(v, 3) for k, v in parts[middle].items()},
            }
        )
    )


def greedy_seconds(hf: Any, ids: list[int], n: int) -> float:
    """Seconds of one untraced greedy transformers loop of `n` tokens after `ids` (KV cache):
    both baselines' transformers run."""
    import torch

    t = time.perf_counter()
    with torch.no_grad():
        seq, past = list(ids), None
        for step in range(n):
            feed = seq if step == 0 else seq[-1:]
            out = hf(input_ids=torch.tensor([feed]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            seq.append(int(out.logits[0, -1].argmax()))
    return time.perf_counter() - t


def _transformers_run(hf: Any, ids: list[int], n: int, vocab: int, round_index: int) -> float:
    """One untraced greedy transformers run of the prompt (its tokens shifted, as the baseline's):
    the fastest of three on one thread and three on every thread, the collector paused (as the
    capture's untraced requests): the conservative figure, whichever the diagnosis' reference
    uses."""
    import torch

    from ekka.tracer.capture import collector_paused

    before = torch.get_num_threads()
    best = math.inf
    try:
        with collector_paused():
            for threads in sorted({1, before}):
                torch.set_num_threads(threads)
                for k in range(3):
                    shifted = [(t + 11 * (round_index + k + 1)) % vocab for t in ids]
                    best = min(best, greedy_seconds(hf, shifted, n))
    finally:
        torch.set_num_threads(before)
    return best


if __name__ == "__main__":
    main()
