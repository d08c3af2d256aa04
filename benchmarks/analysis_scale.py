"""Analysis (alignment + ratios + change point) of a trace with Llama-3-8B shapes.

Target (issue): under 30 s with peak memory under 2 GB on the 2-core machine, streaming layer by
layer and never loading a whole trace.

`write DIR` makes three real traces with synthetic tensors (no model runs): a vLLM-named target
in bfloat16 and transformers-named references in bfloat16 and float32, 32 layers, hidden 4096,
MLP 14336, 32 query / 8 KV heads of 128, 512 prompt tokens, one prefill pass; every module
output and the inputs of leaf modules, as the capture records them. Layer 20's MLP activation
on the target gets a real error, so the change point has something to find.

`analyze DIR` runs the analysis `ekka diagnose` runs on them (`ekka.tracer.diagnose.analyse`:
the mapping, the comparisons, the localization) and prints one JSON line. Time it with
`/usr/bin/time -v` (elapsed time; "Maximum resident set size" for the peak memory). The traces
take 18 GB of disk.

    .venv/bin/python benchmarks/analysis_scale.py write /tmp/scale
    /usr/bin/time -v .venv/bin/python benchmarks/analysis_scale.py analyze /tmp/scale
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

LAYERS, HIDDEN, MLP, HEADS, KV_HEADS, HEAD_DIM, TOKENS, VOCAB = (
    32,
    4096,
    14336,
    32,
    8,
    128,
    512,
    128256,
)
BUG_LAYER = 20
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": HIDDEN,
    "intermediate_size": MLP,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "head_dim": HEAD_DIM,
    "vocab_size": VOCAB,
}


def _writers(root: Path) -> dict[str, object]:
    from ekka.tracer.trace import PassInfo, TraceManifest, TraceWriter

    ids = tuple(range(1, TOKENS + 1))
    out = {}
    for name, framework, dtype in (
        ("target", "vllm", "bfloat16"),
        ("reference-bfloat16", "transformers", "bfloat16"),
        ("reference-float32", "transformers", "float32"),
    ):
        header = TraceManifest(framework, dtype=dtype, prompt_ids=ids, model_config=CONFIG)
        writer = TraceWriter(root / name, header)
        writer.add_pass(PassInfo(index=0, step=0, input_ids=ids, positions=tuple(range(TOKENS))))
        out[name] = writer
    return out


class Synth:
    """One value per component (float32 'truth'), written to all three traces with their layouts."""

    def __init__(self, root: Path) -> None:
        self.w = _writers(root)
        self.calls = {k: 0 for k in self.w}
        self.gen = torch.Generator().manual_seed(0)
        self.drift = (
            1.0  # from the bug on, every target output is off by this factor, as errors propagate
        )

    def noisy(self, y: torch.Tensor, scale: float = 4e-3) -> torch.Tensor:
        return (y + scale * y.abs().mean() * torch.randn(y.shape, generator=self.gen)).bfloat16()

    def add(
        self, trace: str, name: str, cls: str, outputs: list, inputs: dict | None = None
    ) -> None:
        if trace == "target" and self.drift != 1.0:
            outputs = [
                o
                if o is None or not o.is_floating_point()
                else (o.float() * self.drift).to(o.dtype)
                for o in outputs
            ]
        self.w[trace].add(
            name=name,
            module_class=cls,
            source_file="synthetic.py",
            source_line=1,
            step=0,
            pass_index=0,
            call_index=self.calls[trace],
            outputs=outputs,
            inputs=inputs,
            leaf=inputs is not None,
        )
        self.calls[trace] += 1

    def both(
        self,
        target_name: str,
        ref_name: str,
        cls: str,
        y: torch.Tensor,
        *,
        x_t: torch.Tensor | None = None,
        target_extra: list | None = None,
        inputs: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Target gets x_t (default: y with bf16 noise); references get y (fp32) and y with noise (bf16)."""
        x_r = self.noisy(y)
        x_t = self.noisy(y) if x_t is None else x_t
        in_t = None if inputs is None else {"0": inputs[1]}
        self.add("target", target_name, cls, [x_t] + (target_extra or []), in_t)
        self.add(
            "reference-bfloat16",
            ref_name,
            cls,
            [x_r[None]],
            None if inputs is None else {"0": inputs[1][None]},
        )
        self.add(
            "reference-float32",
            ref_name,
            cls,
            [y[None]],
            None if inputs is None else {"0": inputs[0][None]},
        )

    def close(self) -> None:
        for writer in self.w.values():
            writer.close()


def write(root: Path) -> None:
    s = Synth(root)
    r = lambda *shape: torch.randn(*shape, generator=s.gen)  # noqa: E731
    hidden = r(TOKENS, HIDDEN)
    s.both("model.embed_tokens", "model.embed_tokens", "Embedding", hidden)
    q_w, kv_w = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        x_in = (hidden, hidden.bfloat16())
        normed = r(TOKENS, HIDDEN)
        s.both(f"{p}.input_layernorm", f"{p}.input_layernorm", "RMSNorm", normed, inputs=x_in)
        q, k, v = r(TOKENS, q_w), r(TOKENS, kv_w), r(TOKENS, kv_w)
        n_in = (normed, normed.bfloat16())
        # fused qkv on the target, three projections on the reference
        s.add(
            "target",
            f"{p}.self_attn.qkv_proj",
            "QKVParallelLinear",
            [s.noisy(torch.cat([q, k, v], -1)), None],
            {"0": n_in[1]},
        )
        for name, t in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
            s.add(
                "reference-bfloat16",
                f"{p}.self_attn.{name}",
                "Linear",
                [s.noisy(t)[None]],
                {"0": n_in[1][None]},
            )
            s.add(
                "reference-float32",
                f"{p}.self_attn.{name}",
                "Linear",
                [t[None]],
                {"0": n_in[0][None]},
            )
        qr, kr = r(TOKENS, q_w), r(TOKENS, kv_w)
        s.add(
            "target",
            f"{p}.self_attn.rotary_emb",
            "RotaryEmbedding",
            [s.noisy(qr), s.noisy(kr)],
            {"0": torch.arange(TOKENS), "1": q.bfloat16(), "2": k.bfloat16()},
        )
        heads = lambda t, h: t.reshape(1, TOKENS, h, HEAD_DIM).transpose(1, 2)  # noqa: E731
        for trace, f in (("reference-bfloat16", s.noisy), ("reference-float32", lambda t: t)):
            s.add(
                trace,
                f"{p}.self_attn.apply_rotary_pos_emb",
                "apply_rotary_pos_emb",
                [heads(f(qr), HEADS), heads(f(kr), KV_HEADS)],
                {"q": heads(q, HEADS), "k": heads(k, KV_HEADS)},
            )
        attn, o = r(TOKENS, q_w), r(TOKENS, HIDDEN)
        s.add(
            "target",
            f"{p}.self_attn.attn",
            "Attention",
            [s.noisy(attn)],
            {"0": qr.bfloat16(), "1": kr.bfloat16(), "2": v.bfloat16()},
        )
        s.both(
            f"{p}.self_attn.o_proj",
            f"{p}.self_attn.o_proj",
            "Linear",
            o,
            target_extra=[None],
            inputs=(attn, attn.bfloat16()),
        )
        s.both(f"{p}.self_attn", f"{p}.self_attn", "LlamaAttention", o)
        residual = hidden + o
        normed2 = r(TOKENS, HIDDEN)
        x_t = s.noisy(normed2)
        s.add(
            "target",
            f"{p}.post_attention_layernorm",
            "RMSNorm",
            [x_t, s.noisy(residual)],
            {"0": o.bfloat16(), "1": hidden.bfloat16()},
        )
        for trace, f in (("reference-bfloat16", s.noisy), ("reference-float32", lambda t: t)):
            s.add(
                trace,
                f"{p}.post_attention_layernorm",
                "RMSNorm",
                [f(normed2)[None]],
                {"0": f(residual)[None]},
            )
        gate, up = r(TOKENS, MLP), r(TOKENS, MLP)
        s.add(
            "target",
            f"{p}.mlp.gate_up_proj",
            "MergedColumnParallelLinear",
            [s.noisy(torch.cat([gate, up], -1)), None],
            {"0": normed2.bfloat16()},
        )
        act = torch.nn.functional.silu(gate) * up
        if i == BUG_LAYER:
            s.drift = 1.05
        s.add(
            "target",
            f"{p}.mlp.act_fn",
            "SiluAndMul",
            [s.noisy(act)],
            {"0": torch.cat([gate, up], -1).bfloat16()},
        )
        for trace, f in (("reference-bfloat16", s.noisy), ("reference-float32", lambda t: t)):
            s.add(trace, f"{p}.mlp.gate_proj", "Linear", [f(gate)[None]], {"0": f(normed2)[None]})
            s.add(trace, f"{p}.mlp.up_proj", "Linear", [f(up)[None]], {"0": f(normed2)[None]})
        down = r(TOKENS, HIDDEN)
        s.both(
            f"{p}.mlp.down_proj",
            f"{p}.mlp.down_proj",
            "Linear",
            down,
            target_extra=[None],
            inputs=(act, act.bfloat16()),
        )
        s.both(f"{p}.mlp", f"{p}.mlp", "LlamaMLP", down)
        hidden = residual + down
        s.add(
            "target",
            p,
            "LlamaDecoderLayer",
            [s.noisy(hidden) - residual.bfloat16(), residual.bfloat16()],
        )
        for trace, f in (("reference-bfloat16", s.noisy), ("reference-float32", lambda t: t)):
            s.add(trace, p, "LlamaDecoderLayer", [f(hidden)[None]])
        print(f"wrote layer {i}", file=sys.stderr, flush=True)
    final = r(TOKENS, HIDDEN)
    s.both(
        "model.norm",
        "model.norm",
        "RMSNorm",
        final,
        target_extra=[hidden.bfloat16()],
        inputs=(hidden, hidden.bfloat16()),
    )
    logits = r(TOKENS, VOCAB)
    s.add("target", "logits_processor", "LogitsProcessor", [s.noisy(logits[-1:])])
    s.add("reference-bfloat16", "logits", "logits", [s.noisy(logits)])
    s.add("reference-float32", "logits", "logits", [logits])
    s.close()


def analyze(root: Path) -> None:
    from ekka.tracer.diagnose import analyse
    from ekka.tracer.trace import TraceReader

    start = time.perf_counter()
    target = TraceReader(root / "target")
    references = {
        "bfloat16": TraceReader(root / "reference-bfloat16"),
        "float32": TraceReader(root / "reference-float32"),
    }
    found = analyse(target, references, "bfloat16", threshold=2.0)
    comparisons, mapping, result = found.comparisons, found.mapping, found.localization
    elapsed = time.perf_counter() - start
    size = sum(f.stat().st_size for d in root.iterdir() for f in d.iterdir()) / 1e9
    print(
        json.dumps(
            {
                "seconds": round(elapsed, 1),
                "comparisons": len(comparisons),
                "trace_gb": round(size, 1),
                "change_point": result.suspects[0].component if result.suspects else None,
                "unmapped": sorted(mapping.unmapped),
            }
        )
    )


if __name__ == "__main__":
    command, folder = sys.argv[1], Path(sys.argv[2])
    {"write": write, "analyze": analyze}[command](folder)
