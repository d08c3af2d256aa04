"""Cost of one bisection probe's capture, measured from outside, against an untraced floor.

What it measures: the wall time of the command a bisection runs per commit, the capture of the
target's logits and greedy tokens, as a user would time it (`/usr/bin/time`: from the process'
start to its exit, everything included: Python's start, the imports, the engine's start, the
capture, the exit):

    python -m ekka.cli trace --framework F --logits-only --model M \\
        --prompt-ids 1,2,... --max-tokens N --dtype D --out DIR

(`--framework vllm`, the default, or `sglang`: then Ekka's command runs SGLang's target in
SGLang's environment, `EKKA_SGLANG_PYTHON` or the checkout's `.venv-sglang`.)

(`--probe logits-module` runs `--modules logits_processor` instead, for checkouts older than the
tracer's redesign, which lack `--logits-only`.)

The floor, run by this script in the same run: a fresh `python` process that imports vLLM,
starts the same engine (`vllm.LLM(model=M, skip_tokenizer_init=True, enforce_eager=True,
gpu_memory_utilization=0.3, dtype=D, seed=0, max_model_len=<the product's: the model's context
length, at most 4096>)`, with `VLLM_ENABLE_V1_MULTIPROCESSING=0` and `VLLM_CPU_KVCACHE_SPACE=1`)
and generates the same N tokens untraced (greedy, `ignore_eos`), prints them and exits at once
(`os._exit`: the interpreter's teardown and vLLM's shutdown would add seconds to the floor and
flatter the ratio). SGLang's floor (`--framework sglang`): a fresh process of SGLang's
interpreter, with the environment SGLang's target gets (`SGLANG_USE_CPU_ENGINE=1`), that
imports SGLang, starts `sglang.Engine(model_path=M, dtype=D, **ENGINE_DEFAULTS)` (the
arguments Ekka's target starts it with, read from the checkout that runs; only Ekka's forward
hook left out), generates the same N tokens untraced (greedy, `ignore_eos`), prints them, ends
SGLang's scheduler and detokenizer processes as the target does (`kill_process_tree`) and
`os._exit`s. Floor and product runs alternate (floor, product, floor, ...) after one
untimed run of each (the page cache), so that a slower or faster moment of a shared machine
falls on both; each round's ratio is product / floor of that round.

Goal (issue 15): the median ratio at most 1.15.

Prints one line per run (wall seconds, CPU seconds of the process and its children, peak
resident memory), the medians and ratios, then one JSON line with every figure.

    .venv/bin/python benchmarks/probe_cost.py --runs 5                     # tiny zoo llama
    .venv/bin/python benchmarks/probe_cost.py --runs 5 --ekka-root /work/before \
        --probe logits-module                                             # an older checkout
    .venv/bin/ekka zoo build llama --out /tmp/llama-114m --set hidden_size=768 \
        --set num_hidden_layers=12 --set num_attention_heads=12 --set num_key_value_heads=12 \
        --set intermediate_size=3072                                      # 114,051,840 parameters
    .venv/bin/python benchmarks/probe_cost.py --runs 5 --model /tmp/llama-114m
    .venv/bin/python benchmarks/probe_cost.py --runs 3 --framework sglang  # SGLang's probe

`--model` takes any model folder; without it the script builds the zoo llama
(`ekka zoo build llama`, `--set KEY=VALUE` for a larger one) into a temporary folder.
`--ekka-root` chooses which checkout's ekka runs (first on PYTHONPATH; default: the repository
this file is in); the Python interpreter is the one running this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# How `ekka trace` is told to capture only what a bisection probe needs.
PROBE_SELECTION = {
    "logits-only": ("--logits-only",),
    "logits-module": ("--modules", "logits_processor"),
}

# The floor: import vLLM, start the engine as the product does, generate untraced, exit at once.
VLLM_FLOOR = r"""
import json, os, sys
from vllm import LLM, SamplingParams
model, ids, n, dtype, max_len = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
llm = LLM(model=model, skip_tokenizer_init=True, enforce_eager=True, gpu_memory_utilization=0.3,
          dtype=dtype, seed=0, max_model_len=max_len)
params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
out = llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)
print(json.dumps(list(out[0].outputs[0].token_ids)), flush=True)
os._exit(0)
"""

# SGLang's floor: import SGLang, start the engine as Ekka's target does (without its hook),
# generate untraced, end SGLang's child processes and exit at once.
SGLANG_FLOOR = r"""
import json, os, sys
import sglang
from sglang.srt.utils import kill_process_tree
model, ids, n, dtype, arguments = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
engine = sglang.Engine(model_path=model, dtype=dtype, **arguments)
out = engine.generate(input_ids=[ids], sampling_params=[{"temperature": 0.0, "max_new_tokens": n, "ignore_eos": True}])
print(json.dumps([int(t) for t in out[0]["output_ids"]]), flush=True)
sys.stdout.flush()
kill_process_tree(os.getpid(), include_parent=False, wait_timeout=10)
os._exit(0)
"""

# What the chosen checkout says about SGLang's target: its interpreter, the environment its
# process adds, and Ekka's engine arguments (printed as JSON).
SGLANG_TARGET = r"""
import json
from ekka.frameworks import framework, python_for
from ekka.tracer.adapters.sglang import ENGINE_DEFAULTS
print(json.dumps({"python": python_for("sglang"), "env": dict(framework("sglang").env),
                  "engine": ENGINE_DEFAULTS}))
"""


@dataclass(frozen=True)
class Run:
    """One timed process: what `/usr/bin/time` reports of it."""

    wall: float  # seconds, start to exit
    cpu: float  # user + system seconds of the process and the children it waited for
    max_rss_mb: float  # peak resident memory of the process or its largest child
    returncode: int


def timed(cmd: Sequence[str], env: dict[str, str], cwd: Path, ok: Sequence[int] = (0,)) -> Run:
    """Run `cmd` to its end and time it; raise (with its output) on an unexpected exit code."""
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode not in ok:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-4000:]
            raise RuntimeError(f"exit code {proc.returncode}: {' '.join(cmd)}\n{tail}")
    return Run(
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        max_rss_mb=usage.ru_maxrss / 1024,
        returncode=proc.returncode,
    )


def ekka_env(ekka_root: Path) -> dict[str, str]:
    """The environment of the product's command: `ekka_root` first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ekka_root), env.get("PYTHONPATH")]))
    return env


def floor_env() -> dict[str, str]:
    """The floor's environment: vLLM's engine in the process, 1 GiB of CPU KV cache, quiet."""
    env = dict(os.environ)
    env.update(
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_LOGGING_LEVEL="WARNING",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return env


def sglang_target(ekka_root: Path, cwd: Path) -> dict[str, Any]:
    """SGLang's interpreter, target environment and engine arguments, as `ekka_root` has them."""
    found = subprocess.run(
        [sys.executable, "-c", SGLANG_TARGET],
        env=ekka_env(ekka_root),
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    target: dict[str, Any] = json.loads(found.stdout.strip().splitlines()[-1])
    return target


def ekka_cmd(*args: str) -> list[str]:
    """The product's command line (`python -m ekka.cli ...`, run where no ekka/ folder is)."""
    return [sys.executable, "-m", "ekka.cli", *args]


def build_zoo_model(ekka_root: Path, out: Path, sets: Sequence[str], cwd: Path) -> Path:
    """`ekka zoo build llama --out OUT --set ...` with the chosen checkout's ekka."""
    cmd = ekka_cmd("zoo", "build", "llama", "--out", str(out))
    for item in sets:
        cmd += ["--set", item]
    subprocess.run(cmd, env=ekka_env(ekka_root), cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return out


def model_config(model: Path) -> dict[str, object]:
    config = json.loads((model / "config.json").read_text())
    text = config.get("text_config")
    return text if isinstance(text, dict) else config


def max_model_len(model: Path) -> int:
    """What the product passes as vLLM's `max_model_len`: the context length, at most 4096."""
    config = model_config(model)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return min(value, 4096)
    return 4096


def parameter_count(model: Path) -> int:
    """Parameters in the model's safetensors files (read from their headers)."""
    total = 0
    for path in sorted(model.glob("*.safetensors")):
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        for name, info in header.items():
            if name != "__metadata__":
                count = 1
                for dim in info["shape"]:
                    count *= dim
                total += count
    return total


def default_prompt_ids(model: Path, length: int) -> list[int]:
    """A fixed prompt: BOS, then ids spread over the vocabulary (no special ids 0-2)."""
    vocab = int(str(model_config(model).get("vocab_size", 512)))
    return [1] + [(7 * i + 11) % (vocab - 3) + 3 for i in range(length - 1)]


def vllm_floor_cmd(model: Path, ids: Sequence[int], max_tokens: int, dtype: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        VLLM_FLOOR,
        str(model),
        json.dumps(list(ids)),
        str(max_tokens),
        dtype,
        str(max_model_len(model)),
    ]


def sglang_floor_cmd(
    target: dict[str, Any], model: Path, ids: Sequence[int], max_tokens: int, dtype: str
) -> list[str]:
    return [
        target["python"],
        "-c",
        SGLANG_FLOOR,
        str(model),
        json.dumps(list(ids)),
        str(max_tokens),
        dtype,
        json.dumps(target["engine"]),
    ]


def common_args(parser: argparse.ArgumentParser, runs: int) -> None:
    """The options both benchmarks take."""
    parser.add_argument("--model", type=Path, help="model folder (default: build the zoo llama)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="zoo config override for the built model (repeatable; without --model only)",
    )
    parser.add_argument("--runs", type=int, default=runs, help="timed rounds (floor + product)")
    parser.add_argument("--max-tokens", type=int, default=8, help="greedy tokens to generate")
    parser.add_argument("--prompt-len", type=int, default=32, help="prompt tokens")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    parser.add_argument(
        "--ekka-root",
        type=Path,
        default=REPO,
        help="checkout whose ekka runs (first on PYTHONPATH; default: this repository)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, list[int]]:
    """The model folder (built if not given) and the prompt ids; checks the ekka checkout."""
    root = args.ekka_root.resolve()
    found = subprocess.run(
        [sys.executable, "-c", "import ekka; print(ekka.__file__)"],
        env=ekka_env(root),
        cwd=work,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(root):
        raise SystemExit(f"--ekka-root {root}: python imports ekka from {found} instead")
    if args.model is None:
        model = build_zoo_model(root, work / "model", args.set, work)
    else:
        if args.set:
            raise SystemExit("--set builds a zoo model: give it without --model")
        model = args.model.resolve()
    return model, default_prompt_ids(model, args.prompt_len)


@dataclass(frozen=True)
class Summary:
    """Medians, ratios and ranges of the rounds' wall times (seconds).

    On a shared machine other work only ever slows a run down: the fastest runs' ratio is the
    least disturbed figure, the median of the rounds' ratios the one to compare with the goal.
    """

    floor_median: float
    product_median: float
    ratio_of_medians: float
    ratio_median: float
    ratio_of_minimums: float
    ratios: list[float]
    floor_range: list[float]
    product_range: list[float]

    @classmethod
    def of(cls, floors: Sequence[float], products: Sequence[float]) -> Summary:
        ratios = [p / f for f, p in zip(floors, products)]
        return cls(
            floor_median=statistics.median(floors),
            product_median=statistics.median(products),
            ratio_of_medians=statistics.median(products) / statistics.median(floors),
            ratio_median=statistics.median(ratios),
            ratio_of_minimums=min(products) / min(floors),
            ratios=ratios,
            floor_range=[min(floors), max(floors)],
            product_range=[min(products), max(products)],
        )

    def line(self, name: str) -> str:
        return (
            f"{name}: floor median {self.floor_median:.2f} s "
            f"({self.floor_range[0]:.2f}-{self.floor_range[1]:.2f}), product median "
            f"{self.product_median:.2f} s ({self.product_range[0]:.2f}-{self.product_range[1]:.2f}), "
            f"ratio of medians {self.ratio_of_medians:.3f}, median of the rounds' ratios "
            f"{self.ratio_median:.3f} ({min(self.ratios):.3f}-{max(self.ratios):.3f}), ratio of "
            f"the fastest runs {self.ratio_of_minimums:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common_args(parser, runs=5)
    parser.add_argument(
        "--probe",
        choices=sorted(PROBE_SELECTION),
        default="logits-only",
        help="what the probe captures: the logits and tokens only (the bisection oracle's probe, "
        "`--logits-only`), or the logits_processor module (`--modules logits_processor`, the "
        "probe of checkouts older than the tracer's redesign, which lack --logits-only)",
    )
    parser.add_argument(
        "--framework",
        choices=("vllm", "sglang"),
        default="vllm",
        help="the target: vLLM (its floor: vllm.LLM) or SGLang (its floor: sglang.Engine in "
        "SGLang's environment)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ekka-probe-cost-") as tmp:
        work = Path(tmp)
        model, ids = prepare(args, work)
        out = work / "trace"
        product = ekka_cmd(
            "trace",
            "--framework",
            args.framework,
            *PROBE_SELECTION[args.probe],
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
        if args.framework == "sglang":
            target = sglang_target(args.ekka_root.resolve(), work)
            floor = sglang_floor_cmd(target, model, ids, args.max_tokens, args.dtype)
            floor_environment = {**floor_env(), **target["env"]}
        else:
            floor = vllm_floor_cmd(model, ids, args.max_tokens, args.dtype)
            floor_environment = floor_env()
        print(
            f"{args.framework}, model {model}: {parameter_count(model):,} parameters, {args.dtype}"
        )
        print(f"prompt {len(ids)} tokens, {args.max_tokens} generated; ekka from {args.ekka_root}")
        print("product: PYTHONPATH=" + str(args.ekka_root) + " " + " ".join(product))
        floors: list[Run] = []
        products: list[Run] = []
        for k in range(args.warmup + args.runs):
            label = "warm-up" if k < args.warmup else f"round {k - args.warmup + 1}"
            f = timed(floor, floor_environment, work)
            shutil.rmtree(out, ignore_errors=True)
            p = timed(product, ekka_env(args.ekka_root.resolve()), work)
            shutil.rmtree(out, ignore_errors=True)
            print(
                f"{label}: floor {f.wall:.2f} s (cpu {f.cpu:.1f} s, {f.max_rss_mb:.0f} MB), "
                f"product {p.wall:.2f} s (cpu {p.cpu:.1f} s, {p.max_rss_mb:.0f} MB), "
                f"ratio {p.wall / f.wall:.3f}",
                flush=True,
            )
            if k >= args.warmup:
                floors.append(f)
                products.append(p)
        figures = Summary.of([r.wall for r in floors], [r.wall for r in products])
        print(figures.line("probe vs floor (wall)"))
        print(
            json.dumps(
                {
                    "benchmark": "probe_cost",
                    "framework": args.framework,
                    "probe": args.probe,
                    "model": str(model),
                    "parameters": parameter_count(model),
                    "dtype": args.dtype,
                    "prompt_tokens": len(ids),
                    "max_tokens": args.max_tokens,
                    "ekka_root": str(args.ekka_root.resolve()),
                    **asdict(figures),
                    "cpu_ratio_of_medians": statistics.median(r.cpu for r in products)
                    / statistics.median(r.cpu for r in floors),
                    "floor_runs": [asdict(r) for r in floors],
                    "product_runs": [asdict(r) for r in products],
                }
            )
        )


if __name__ == "__main__":
    main()
