"""Verify one bench/sglang case independently of Ekka: pristine SGLang matches transformers, the
patched SGLang diverges, and where it first diverges.

Run with SGLang's interpreter (bench/sglang/CASES.md has the results):

    /work/main/.venv-sglang/bin/python benchmarks/verify_sglang_case.py CASE [--model DIR]

CASE is a folder of bench/sglang or its id. --model is the case's tiny model, built beforehand
with Ekka's environment; without --model the script builds it so, with Ekka's interpreter
(EKKA_PYTHON, else the checkout's .venv): `ekka.bench.build_case_model`, the only use of Ekka.

Steps:
1. Copy the installed SGLang package to a temporary folder and apply bug.patch there with
   `git apply -p1` (the installed package is never touched).
2. Run `sglang.Engine` twice in a child process each, pristine (the installed package) and
   patched (the copy first on PYTHONPATH; the scheduler is spawned, so PYTHONPATH is set in the
   environment). Each run generates the case's greedy tokens with plain forward hooks on every
   module (SGLang's `forward_hooks` engine argument, sgl_capture_hooks.py).
3. Run transformers (eager attention) on the prompt plus the target's greedy tokens, in the
   case's dtype and in float32, with forward hooks on every module (plus the inputs of o_proj and
   down_proj, and the rotated q/k of `apply_rotary_pos_emb`).
4. Pair each SGLang module's output with its transformers counterpart at the same token
   positions (each pass's rows are the next tokens of the request, in order; a one-row output
   such as the logits is the pass's last token), and print the relative error of both runs.
   The first divergent component is the first one, in SGLang's call order, whose patched error
   exceeds max(floor, 10 x the pristine error there) (floor: 1e-5 for float32, 2e-2 for
   bfloat16).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOOKS = HERE / "sglang_verify"
# Ekka's interpreter (only to build the case's model): EKKA_PYTHON, else the checkout's .venv
EKKA_PYTHON = Path(os.environ.get("EKKA_PYTHON", REPO / ".venv" / "bin" / "python"))
FLOOR = {"float32": 1e-5, "bfloat16": 2e-2}
FACTOR = 10.0

ENGINE_BASE: dict[str, Any] = {
    "device": "cpu",
    "attention_backend": "torch_native",
    "disable_cuda_graph": True,
    "disable_overlap_schedule": True,
    # A share of the memory SGLang sees free at start (on CPU: the machine's). The pool is
    # capped by max_total_tokens anyway; 0.05 failed on a shared machine when other processes
    # took 7 % of its memory while the weights loaded ("no memory for the KV cache").
    "mem_fraction_static": 0.3,
    "max_total_tokens": 2048,
    "skip_tokenizer_init": True,
    "random_seed": 0,
    "disable_radix_cache": True,
}


# ---------------------------------------------------------------- the case and its model


def find_case(arg: str) -> Path:
    path = Path(arg)
    if (path / "case.toml").is_file():
        return path.resolve()
    path = REPO / "bench" / "sglang" / arg
    if (path / "case.toml").is_file():
        return path
    sys.exit(f"no case {arg!r} (a folder with case.toml, or an id in bench/sglang)")


def build_model(case_dir: Path, out: Path) -> Path:
    """The case's tiny model, built with Ekka's environment (its zoo), the only use of Ekka."""
    code = (
        "import sys; from pathlib import Path; from ekka.bench import load_case, build_case_model;"
        "build_case_model(load_case(Path(sys.argv[1])), Path(sys.argv[2]))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    subprocess.run([str(EKKA_PYTHON), "-c", code, str(case_dir), str(out)], check=True, env=env)
    return out


# ---------------------------------------------------------------- the SGLang runs


def patched_copy(case_dir: Path, root: Path) -> Path:
    import sglang

    installed = Path(sglang.__file__).resolve().parent
    shutil.copytree(installed, root / "sglang", ignore=shutil.ignore_patterns("__pycache__"))
    patch = case_dir / "bug.patch"
    for check in (["--check"], []):
        subprocess.run(["git", "apply", "-p1", *check, str(patch)], cwd=root, check=True)
    return root


def run_sglang(spec: dict[str, Any], sglang_root: Path | None) -> dict[str, Any]:
    """One engine run in a child process (so that the copy, when given, is the sglang imported
    there and in the scheduler it spawns)."""
    path = [str(HOOKS)] + ([str(sglang_root)] if sglang_root else [])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path),
        "SGLANG_USE_CPU_ENGINE": "1",
        "HF_HUB_OFFLINE": "1",
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    done = subprocess.run(
        [sys.executable, __file__, "--engine-run", f.name], env=env, capture_output=True, text=True
    )
    Path(f.name).unlink()
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-6000:])
        raise SystemExit(f"the SGLang run failed (rc {done.returncode})")
    return json.loads(Path(spec["result"]).read_text())


def engine_run(spec_file: str) -> None:
    """The child: start the engine with the capture hooks, generate, write the result."""
    spec = json.loads(Path(spec_file).read_text())
    import sglang

    hooks = [
        {
            "name": "verify",
            "target_modules": ["*"],
            "hook_factory": "sgl_capture_hooks:capture_factory",
            "config": {"dir": spec["capture"]},
        }
    ]
    engine = sglang.Engine(
        model_path=spec["model"],
        dtype=spec["dtype"],
        forward_hooks=hooks,
        **{**ENGINE_BASE, **spec["engine"]},
    )
    try:
        out = engine.generate(
            input_ids=spec["prompt_ids"],
            sampling_params={
                "temperature": 0,
                "max_new_tokens": spec["max_tokens"],
                "ignore_eos": True,
            },
            return_logprob=True,
        )
    finally:
        engine.shutdown()
    meta = out["meta_info"]
    result = {
        "sglang_file": sglang.__file__,
        "output_ids": out["output_ids"],
        "logprobs": [lp[0] for lp in meta["output_token_logprobs"]],
    }
    Path(spec["result"]).write_text(json.dumps(result))


def load_capture(folder: Path) -> list[dict[str, Any]]:
    import torch

    return [torch.load(p, weights_only=False) for p in sorted(folder.glob("*.pt"))]


# ---------------------------------------------------------------- the transformers reference


def reference_run(model_dir: Path, dtype: str, ids: list[int]) -> dict[str, list[Any]]:
    """transformers' outputs of every module on `ids` (one forward), by module name: a list of
    calls, each a list of float32 tensors with the batch dimension dropped."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, dtype), attn_implementation="eager"
    ).eval()
    records: dict[str, list[Any]] = {}

    def keep(name: str, value: Any) -> None:
        value = getattr(value, "last_hidden_state", value)  # the base model's output record
        items = value if isinstance(value, (tuple, list)) else [value]
        tensors = [
            v.detach().float()[0] if v.dim() > 1 and v.shape[0] == 1 else v.detach().float()
            for v in items
            if isinstance(v, torch.Tensor)
        ]
        records.setdefault(name, []).append(tensors)

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_hook(lambda m, i, o, n=name: keep(n, o)))
        if name.endswith(("o_proj", "down_proj")):
            handles.append(
                module.register_forward_pre_hook(lambda m, i, n=name: keep(n + ":input", i[0]))
            )
    modeling = sys.modules[type(model).__module__]
    original = getattr(modeling, "apply_rotary_pos_emb", None)
    if original is not None:

        def rotary(q: Any, k: Any, *args: Any, **kwargs: Any) -> Any:
            q2, k2 = original(q, k, *args, **kwargs)
            # [1, heads, T, head_dim] -> [T, heads * head_dim]
            flat = [t[0].transpose(0, 1).reshape(t.shape[2], -1).float() for t in (q2, k2)]
            records.setdefault("rotary", []).append(flat)
            return q2, k2

        modeling.apply_rotary_pos_emb = rotary
    try:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits
    finally:
        for h in handles:
            h.remove()
        if original is not None:
            modeling.apply_rotary_pos_emb = original
    records["logits"] = [[logits[0].float()]]
    return records


# ---------------------------------------------------------------- pairing


def passes_of(capture: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Each pass's token rows (start, count) in the request's token order: the rows of the
    pass's first module (the embedding)."""
    rows, start = [], 0
    first = capture[0]["name"] if capture else None
    for rec in capture:
        if rec["name"] == first and rec["outputs"]:
            count = int(rec["outputs"][0].shape[0])
            rows.append((start, count))
            start += count
    return rows


def dense_routing(weights: Any, ids: Any, experts: int) -> Any:
    import torch

    dense = torch.zeros(weights.shape[0], experts)
    dense.scatter_(1, ids.long(), weights.float())
    return dense


def reference_value(name: str, call: int, ref: dict[str, list[Any]]) -> Any:
    """The transformers tensor [all tokens, features] that SGLang's `name` computes, or None."""
    import torch

    def first(n: str) -> Any:
        return ref[n][0][0] if n in ref and ref[n] and ref[n][0] else None

    if name == "logits_processor":
        return first("logits") if "logits" in ref else None
    if name.endswith(".qkv_proj"):
        base = name[: -len("qkv_proj")]
        parts = [first(base + p) for p in ("q_proj", "k_proj", "v_proj")]
        return None if any(p is None for p in parts) else torch.cat(parts, -1)
    if name.endswith(".gate_up_proj"):
        base = name[: -len("gate_up_proj")]
        parts = [first(base + p) for p in ("gate_proj", "up_proj")]
        return None if any(p is None for p in parts) else torch.cat(parts, -1)
    if name.endswith(".self_attn.attn"):
        return first(name[: -len("attn")] + "o_proj:input")
    if name.endswith(".act_fn"):
        return first(name[: -len("act_fn")] + "down_proj:input")
    if name.endswith(".rotary_emb"):
        layer = call if name == "model.layers.0.self_attn.rotary_emb" else None
        m = re.match(r"model\.layers\.(\d+)\.", name)
        layer = call + (int(m.group(1)) if m else 0) if layer is None else layer
        calls = ref.get("rotary", [])
        return torch.cat(calls[layer], -1) if layer < len(calls) else None
    if name.endswith(".mlp.topk"):
        gate = ref.get(name[: -len("topk")] + "gate")
        if not gate:
            return None
        _, scores, indices = gate[0]
        return dense_routing(scores, indices, gate[0][0].shape[-1])
    return first(name)


def target_value(name: str, rec: Any) -> Any:
    outs = rec.get("outputs")
    if not outs:
        return None
    if re.fullmatch(r"model\.layers\.\d+", name):
        # (MLP output, residual): their sum is transformers' layer output. A layer whose
        # residual is deferred past its output (one tensor) has no counterpart.
        return outs[0] + outs[1] if len(outs) == 2 else None
    if name.endswith(".rotary_emb"):
        return None if len(outs) < 2 else outs
    if name.endswith(".mlp.topk") and len(outs) >= 2:
        return ("topk", outs[0], outs[1])
    return outs[0]


@dataclass(frozen=True)
class Comparison:
    """One run against transformers: relative error ||target - reference|| / ||reference|| per
    component over all its passes, in SGLang's call order, and per pass; and the SGLang modules
    that have no counterpart."""

    errors: dict[str, float]  # in call order (the order of first calls)
    by_pass: dict[str, list[tuple[int, float]]]
    unaligned: list[str]


def relative_error(target: Any, reference: Any) -> float:
    import torch

    if not torch.isfinite(target).all():
        return float("inf")
    return float((target - reference).norm() / reference.norm().clamp_min(1e-30))


def compare(capture: list[dict[str, Any]], ref: dict[str, list[Any]]) -> Comparison:
    import torch

    passes = passes_of(capture)
    stitched: dict[str, list[tuple[Any, Any, int]]] = {}
    unaligned: set[str] = set()
    for rec in capture:
        name, p = rec["name"], rec["pass"]
        if p >= len(passes):
            continue
        start, count = passes[p]
        if name.endswith(".rotary_emb"):
            key = f"{name}#{rec['call']}"  # one module shared by the layers: call k is layer k
        elif rec["call"]:
            continue  # only a module's first call in a pass
        else:
            key = name
        value = target_value(name, rec)
        expect = reference_value(name, rec["call"], ref)
        if value is None or expect is None:
            unaligned.add(name)
            continue
        if isinstance(value, tuple):  # top-k (weights, ids) -> the dense routing matrix
            value = dense_routing(value[1], value[2], expect.shape[-1])
        elif isinstance(value, list):  # rotary (q, k)
            value = torch.cat([v.reshape(count, -1) for v in value], -1)
        if value.dim() > 1 and value.shape[0] == 1 and count > 1:
            span = slice(start + count - 1, start + count)  # one row: the pass's last token
        elif value.numel() % count == 0:
            span = slice(start, start + count)
        else:
            unaligned.add(name)
            continue
        t = value.reshape(span.stop - span.start, -1)
        r = expect.reshape(expect.shape[0], -1)[span] if expect.dim() > 1 else None
        if r is None or t.shape != r.shape:
            unaligned.add(name)
            continue
        stitched.setdefault(key, []).append((t, r, p))
    return Comparison(
        errors={
            key: relative_error(torch.cat([t for t, _, _ in v]), torch.cat([r for _, r, _ in v]))
            for key, v in stitched.items()
        },
        by_pass={key: [(p, relative_error(t, r)) for t, r, p in v] for key, v in stitched.items()},
        unaligned=sorted(unaligned - {k.split("#")[0] for k in stitched}),
    )


# ---------------------------------------------------------------- main


def verify(case_dir: Path, model: Path | None, work: Path, reuse: bool = False) -> dict[str, Any]:
    case = tomllib.loads((case_dir / "case.toml").read_text())
    run, dtype = case["run"], case["model"].get("dtype", "float32")
    if "prompt_token_ids" not in run:
        sys.exit("bench/sglang cases give prompt_token_ids (the engine runs without a tokenizer)")
    model = model or build_model(case_dir, work / "model")
    spec = {
        "model": str(model),
        "dtype": dtype,
        "engine": run.get("engine", {}),
        "prompt_ids": list(run["prompt_token_ids"]),
        "max_tokens": int(run.get("max_tokens", 4)),
    }
    reused = reuse and (work / "patched.json").is_file()
    root = work / "patched" if reused else patched_copy(case_dir, work / "patched")
    results, errors = {}, {}
    for side, sglang_root in (("pristine", None), ("patched", root)):
        capture = work / f"capture-{side}"
        if reused:  # --reuse: the runs of an earlier --keep folder, reported again
            results[side] = json.loads((work / f"{side}.json").read_text())
        else:
            results[side] = run_sglang(
                {**spec, "capture": str(capture), "result": str(work / f"{side}.json")},
                sglang_root,
            )
        out = results[side]["output_ids"]
        ids = spec["prompt_ids"] + out[:-1]
        ref = reference_run(model, dtype, ids)
        ref32 = ref if dtype == "float32" else reference_run(model, "float32", ids)
        records = load_capture(capture)
        errors[side] = compare(records, ref32)
        results[side]["hf_tokens"] = [
            int(t) for t in ref["logits"][0][0][len(spec["prompt_ids"]) - 1 :].argmax(-1)
        ]
        if dtype != "float32":
            results[side]["hf_dtype_noise"] = compare_reference(ref, ref32)
    return {"case": case, "results": results, "errors": errors, "dtype": dtype}


def compare_reference(ref: dict[str, list[Any]], ref32: dict[str, list[Any]]) -> dict[str, float]:
    """transformers in the case's dtype against itself in float32 (the dtype's noise)."""
    out = {}
    for name, calls in ref.items():
        if calls and calls[0] and name in ref32 and ref32[name][0]:
            a, b = calls[0][0], ref32[name][0][0]
            if a.shape == b.shape:
                out[name] = float((a - b).norm() / b.norm().clamp_min(1e-30))
    return out


def shown(key: str) -> str:
    """A component's name as printed: a rotary module shared by all layers (registered once,
    under layer 0) is named after the layer of its k-th call in a pass."""
    name, _, call = key.partition("#")
    if call and call != "0":
        return f"{name.replace('layers.0.', f'layers.{call}.')} (shared, call {call})"
    return name


def report(data: dict[str, Any]) -> str:
    case, res, dtype = data["case"], data["results"], data["dtype"]
    target: Comparison = data["errors"]["patched"]
    pristine: Comparison = data["errors"]["pristine"]
    truth = case["truth"]["components"]
    lines = [f"case {case['id']} ({case['model']['architecture']}, {dtype})"]
    lines.append(f"  patched sglang: {res['patched']['sglang_file']}")
    for side in ("pristine", "patched"):
        r = res[side]
        lines.append(
            f"  {side}: sglang greedy {r['output_ids']}  transformers greedy on the same "
            f"prefix {r['hf_tokens']}"
        )
    lines.append(
        f"  {'component (relative error against transformers)':<52} {'pristine':>10} {'patched':>10}"
    )
    first = None
    for key, err in target.errors.items():
        base = pristine.errors.get(key, float("nan"))
        jump = err > max(FLOOR[dtype], FACTOR * (base if base == base else 0.0))
        mark = ""
        if jump and first is None:
            first, mark = key, "  <- first divergence"
        lines.append(f"  {shown(key):<52} {base:>10.2e} {err:>10.2e}{mark}")
    name = None if first is None else shown(first).split(" ")[0]
    if first is not None:
        base_by_pass = dict(pristine.by_pass.get(first, []))
        lines.append(
            f"  {shown(first)} by pass (0 = the first prefill pass), pristine / patched: "
            + ", ".join(
                f"{p}: {base_by_pass.get(p, float('nan')):.1e} / {e:.1e}"
                for p, e in target.by_pass[first]
            )
        )
    noise = res["pristine"].get("hf_dtype_noise", {})
    if noise:
        lines.append(
            f"  dtype noise: transformers in {dtype} against float32, logits "
            f"{noise.get('logits', float('nan')):.1e}, largest module {max(noise.values()):.1e}"
        )
    lines.append(
        f"  not aligned (no transformers counterpart): {', '.join(target.unaligned) or '-'}"
    )
    same = res["pristine"]["output_ids"] == res["pristine"]["hf_tokens"]
    worst = max(pristine.errors.values(), default=float("nan"))
    lines.append(
        f"  pristine: {len(pristine.errors)} aligned, max err {worst:.1e}, greedy equal to "
        f"transformers: {same}"
    )
    moved = res["patched"]["output_ids"] != res["pristine"]["output_ids"]
    hit = name is not None and any(fnmatch.fnmatchcase(name, p) for p in truth)
    lines.append(
        f"  patched: greedy {'differs from' if moved else 'same as'} pristine; "
        f"first divergence {name} (truth {truth}): {'MATCH' if hit else 'NO MATCH'}"
    )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--engine-run":
        engine_run(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("case")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep the work folder here")
    parser.add_argument(
        "--reuse", action="store_true", help="report the runs already in --keep, run nothing"
    )
    args = parser.parse_args()
    case_dir = find_case(args.case)
    with contextlib.ExitStack() as stack:
        if args.keep:
            work = args.keep
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sgl-verify-")))
        data = verify(case_dir, args.model, work, args.reuse and args.keep is not None)
        print(report(data))


if __name__ == "__main__":
    main()
