"""Cost of a localize-mode diagnosis, measured from outside, against untraced vLLM + transformers.

What it measures: the wall time of the command a user runs (`/usr/bin/time`: from the process'
start to its exit, everything included; exit code 0, no divergence, or 1, a divergence, both
count):

    python -m ekka.cli diagnose --model M --prompt-ids 1,2,... --max-tokens N --dtype D --out DIR

on a zoo model of at least 100M parameters (by default the zoo llama with hidden 768, 12 layers
of 12 query and 12 KV heads of 64, MLP 3072, vocabulary 512: 114,051,840 parameters).

The floor, run by this script in the same run, is the sum of two fresh processes' wall times:
- vLLM (`probe_cost.py`'s floor): import vLLM, start the same engine (`vllm.LLM(model=M,
  skip_tokenizer_init=True, enforce_eager=True, gpu_memory_utilization=0.3, dtype=D, seed=0,
  max_model_len=<the product's>)`, `VLLM_ENABLE_V1_MULTIPROCESSING=0`,
  `VLLM_CPU_KVCACHE_SPACE=1`), generate the same N tokens untraced (greedy, `ignore_eos`);
- the reference: import transformers, load the model
  (`AutoModelForCausalLM.from_pretrained(M, dtype=D, attn_implementation="eager")`) and
  generate N tokens greedily with the KV cache (`generate(..., do_sample=False,
  min_new_tokens=N, max_new_tokens=N)`).
Both print their tokens and exit at once (`os._exit`, no teardown: the stricter floor). The
diagnosis does more than this (a float32 reference as well where D is bfloat16, the traces,
the analysis, the replay of the suspects); the ratio says how much more it costs than running
the two frameworks once each. Floor and product alternate (floor's two processes, product,
...) after one untimed round (the page cache); each round's ratio is product / floor of that
round. The figure is the median ratio; no fixed goal (issue 15: report it before and after).

Prints one line per round, the medians and ratios, then one JSON line with every figure.

    .venv/bin/python benchmarks/diagnose_cost.py --runs 5
    .venv/bin/python benchmarks/diagnose_cost.py --runs 5 --model /tmp/llama-114m  # built as in probe_cost.py
    .venv/bin/python benchmarks/diagnose_cost.py --runs 5 --ekka-root /work/before  # another checkout

Without `--model` the script builds the model above into a temporary folder (`ekka zoo build
llama --set ...`; `--set KEY=VALUE` replaces these settings). `--ekka-root` chooses which
checkout's ekka runs (first on PYTHONPATH; default: the repository this file is in).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_cost import (  # noqa: E402
    Run,
    Summary,
    common_args,
    ekka_cmd,
    ekka_env,
    floor_env,
    parameter_count,
    prepare,
    timed,
    vllm_floor_cmd,
)

# The zoo llama of 114M parameters (head_dim 64, as vLLM's CPU attention needs).
MODEL_114M = (
    "hidden_size=768",
    "num_hidden_layers=12",
    "num_attention_heads=12",
    "num_key_value_heads=12",
    "intermediate_size=3072",
)

# The reference's floor: load the model with transformers, generate greedily, exit at once.
TRANSFORMERS_FLOOR = r"""
import json, os, sys
import torch
from transformers import AutoModelForCausalLM
model, ids, n, dtype = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
hf = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype), attn_implementation="eager").eval()
with torch.inference_mode():
    out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                      do_sample=False, max_new_tokens=n, min_new_tokens=n, use_cache=True)
print(json.dumps(out[0, len(ids):].tolist()), flush=True)
os._exit(0)
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common_args(parser, runs=5)
    args = parser.parse_args()
    if args.model is None and not args.set:
        args.set = list(MODEL_114M)
    with tempfile.TemporaryDirectory(prefix="ekka-diagnose-cost-") as tmp:
        work = Path(tmp)
        model, ids = prepare(args, work)
        parameters = parameter_count(model)
        out = work / "diagnosis"
        product = ekka_cmd(
            "diagnose",
            "--model",
            str(model),
            "--prompt-ids",
            ",".join(map(str, ids)),
            "--max-tokens",
            str(args.max_tokens),
            "--dtype",
            args.dtype,
            "--out",
            str(out),
        )
        vllm_floor = vllm_floor_cmd(model, ids, args.max_tokens, args.dtype)
        hf_floor = [
            sys.executable,
            "-c",
            TRANSFORMERS_FLOOR,
            str(model),
            json.dumps(ids),
            str(args.max_tokens),
            args.dtype,
        ]
        print(f"model {model}: {parameters:,} parameters, {args.dtype}")
        if parameters < 100_000_000:
            print("note: the issue's figure is for a model of at least 100M parameters")
        print(f"prompt {len(ids)} tokens, {args.max_tokens} generated; ekka from {args.ekka_root}")
        print("product: PYTHONPATH=" + str(args.ekka_root) + " " + " ".join(product))
        rounds: list[dict[str, Run]] = []
        for k in range(args.warmup + args.runs):
            label = "warm-up" if k < args.warmup else f"round {k - args.warmup + 1}"
            v = timed(vllm_floor, floor_env(), work)
            t = timed(hf_floor, floor_env(), work)
            shutil.rmtree(out, ignore_errors=True)
            p = timed(product, ekka_env(args.ekka_root.resolve()), work, ok=(0, 1))
            shutil.rmtree(out, ignore_errors=True)
            print(
                f"{label}: floor {v.wall + t.wall:.2f} s (vLLM {v.wall:.2f}, transformers "
                f"{t.wall:.2f}; cpu {v.cpu + t.cpu:.1f} s), product {p.wall:.2f} s (exit "
                f"{p.returncode}, cpu {p.cpu:.1f} s, {p.max_rss_mb:.0f} MB), ratio "
                f"{p.wall / (v.wall + t.wall):.3f}",
                flush=True,
            )
            if k >= args.warmup:
                rounds.append({"vllm": v, "transformers": t, "product": p})
        floors = [r["vllm"].wall + r["transformers"].wall for r in rounds]
        figures = Summary.of(floors, [r["product"].wall for r in rounds])
        print(figures.line("diagnosis vs floor (wall)"))
        print(
            json.dumps(
                {
                    "benchmark": "diagnose_cost",
                    "model": str(model),
                    "parameters": parameters,
                    "dtype": args.dtype,
                    "prompt_tokens": len(ids),
                    "max_tokens": args.max_tokens,
                    "ekka_root": str(args.ekka_root.resolve()),
                    **asdict(figures),
                    "vllm_floor_median": statistics.median(r["vllm"].wall for r in rounds),
                    "transformers_floor_median": statistics.median(
                        r["transformers"].wall for r in rounds
                    ),
                    "cpu_ratio_of_medians": statistics.median(r["product"].cpu for r in rounds)
                    / statistics.median(r["vllm"].cpu + r["transformers"].cpu for r in rounds),
                    "rounds": [{k: asdict(v) for k, v in r.items()} for r in rounds],
                }
            )
        )


if __name__ == "__main__":
    main()
