"""Component mapping and alignment: which reference record(s) a target record computes, and how.

Mapping is split into a pure planner and an executor:

- `plan_components` reads names only (target and reference records, the model's family) and
  returns one `Plan` per target component: a small frozen record naming the target op, the
  reference components and the reference op. Rules are data (`RULES`), grouped by family; a
  caller can pass its own list. Where no rule applies, `infer_plan` pairs by value.
- `Aligner` applies a plan to one target pass: it gathers the reference rows at the pass's
  token positions (a target pass may be one chunk of the prefill or one decode step, while
  the reference may be one teacher-forced pass over the whole sequence) and returns the two
  (or three, with the float32 reference) `[rows, features]` tensors to compare.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ekka.tracer import transforms
from ekka.tracer.model_config import text_config
from ekka.tracer.trace import PassInfo, Record, TraceReader


@dataclass(frozen=True)
class Rule:
    """Target components matching `target` (regex, group `p` = prefix) map to `reference`.

    Templates in `reference` may use `{p}` (the prefix) and `{name}` (the whole target name).
    `slot` says which reference tensor: "out" (first output) or "in" (first input).
    """

    target: str
    reference: tuple[str, ...]
    target_op: str = "first"
    reference_op: str | None = None
    slot: str = "out"
    target_class: str | None = None
    families: tuple[str, ...] = ()
    note: str = ""
    # False where the target component's input is no reference component's input (an SGLang
    # decoder layer receives the previous layer's branch output, the residual kept elsewhere)
    inputs: bool = True
    # a key of the model's (text) config whose value divides the reference's tensor: a factor
    # the reference applies inside the component and the target after it (absent: 1)
    reference_divisor: str = ""

    def matches(self, name: str, cls: str, family: str) -> re.Match[str] | None:
        if self.families and family not in self.families:
            return None
        if self.target_class and not re.search(self.target_class, cls):
            return None
        return re.fullmatch(self.target, name)


@dataclass(frozen=True)
class Plan:
    """How one target component is made comparable with the reference."""

    target: str
    target_op: str
    reference: tuple[str, ...]
    reference_op: str | None
    slot: str = "out"
    inferred: bool = False
    rule: str = ""
    inputs: bool = True  # its input is comparable (`Rule.inputs`)
    # the reference's tensor is divided by `divisor`, the config's `divisor_key`
    # (`Rule.reference_divisor`)
    divisor: float = 1.0
    divisor_key: str = ""

    def describe(self) -> str:
        refs = ", ".join(self.reference)
        where = "input of " if self.slot == "in" else ""
        how = f"{self.reference_op}({where}{refs})" if self.reference_op else f"{where}{refs}"
        if self.divisor_key:
            how = f"{how} / {self.divisor_key} ({self.divisor:g})"
        tag = " [inferred by value]" if self.inferred else ""
        return f"{self.target_op}({self.target}) ~ {how}{tag}"


@dataclass(frozen=True)
class Unmapped:
    """A target component no rule and no value match could pair, with the reason."""

    target: str
    reason: str


MOE = ("mixtral",)
# vLLM's SharedFusedMoE holds the shared experts and returns routed + shared from `experts`;
# transformers adds `shared_experts` after its `experts`
SHARED_EXPERTS = ("glm4_moe", "afmoe", "ernie4_5_moe", "exaone_moe", "hy_v3")
GEMMA = ("gemma", "gemma2", "gemma3", "gemma3_text")


@dataclass(frozen=True)
class LayerConvention:
    """What a family's decoder layer returns in the target, against transformers' layer output
    (one tensor: the hidden state after the layer, residual added).

    `target_op` makes the target's outputs that tensor: `sum_pair` where the layer returns
    `(branch output, residual)` and leaves the last residual add to the next layer's fused
    norm; `first` where its first output already is the full hidden state.
    """

    name: str
    target_op: str
    families: tuple[str, ...]
    returns: str


# Per family, checked against vLLM 0.32.0's decoder layers (model_executor/models/*.py). A family
# that is in none is paired by value (`infer_missing` tries both ops), never by a default.
LAYER_CONVENTIONS: tuple[LayerConvention, ...] = (
    LayerConvention(
        "pre-norm",
        "sum_pair",
        (
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "gemma",
            "phi3",
            "mixtral",
            "qwen2_moe",
            "qwen3_moe",
            "olmoe",
        ),
        "(mlp output, residual): the next layer's fused norm adds them",
    ),
    LayerConvention(
        "sandwich-norm",
        "sum_pair",
        ("gemma2", "gemma3", "gemma3_text", "glm4"),
        "(post-norm of the mlp output, residual): the next layer's fused norm adds them",
    ),
    LayerConvention(
        "post-norm",
        "first",
        ("exaone4", "olmo2", "olmo3"),
        "(full hidden state, residual after attention): norms after attention and mlp, residual "
        "added inside (OLMo 2/3 run on the Transformers backend: transformers' own output)",
    ),
    LayerConvention(
        "parallel",
        "first",
        ("cohere", "cohere2"),
        "(full hidden state, residual): attention and mlp of one norm, summed inside",
    ),
    LayerConvention(
        "residual-inside",
        "first",
        ("stablelm", "granite", "phi", "starcoder2"),
        "the full hidden state first (StableLM: (hidden, residual); Granite one tensor; Phi and "
        "Starcoder2 on the Transformers backend: transformers' own output)",
    ),
)


def _layer_rules() -> tuple[Rule, ...]:
    return tuple(
        Rule(
            r"(?P<p>.*\.layers\.\d+)",
            ("{p}",),
            convention.target_op,
            families=convention.families,
            note=f"{convention.name} decoder layer: vLLM returns {convention.returns}",
        )
        for convention in LAYER_CONVENTIONS
    )


# Order matters: the first rule whose target pattern matches and whose reference components
# all exist wins. Family-specific rules come first, the same-name fallback last.
RULES: tuple[Rule, ...] = (
    Rule(
        r"(?P<p>.*)embed_tokens",
        ("{p}embed_tokens",),
        "scale_sqrt_hidden",
        families=GEMMA,
        note="Gemma scales the embedding by sqrt(hidden) inside transformers' module, after it in vLLM",
    ),
    Rule(
        r"(?P<p>.*)block_sparse_moe(?P<rest>.*)",
        ("{p}mlp{rest}",),
        families=MOE,
        note="transformers v5 names Mixtral's MoE block `mlp`",
    ),
    Rule(
        r"(?P<p>.*\.mlp)\.shared_expert",
        ("{p}.shared_expert", "{p}.shared_expert_gate"),
        reference_op="gated_sum",
        families=("qwen2_moe",),
        note="vLLM folds sigmoid(shared_expert_gate) into shared_expert",
    ),
    Rule(
        r"(?P<p>.*\.mlp)\.experts",
        ("{p}.experts", "{p}.shared_expert", "{p}.shared_expert_gate"),
        reference_op="gated_sum",
        families=("qwen2_moe",),
        note="vLLM's FusedMoE returns routed + gated shared experts",
    ),
    Rule(
        r"(?P<p>.*\.mlp)\.experts",
        ("{p}.experts", "{p}.shared_experts"),
        reference_op="sum",
        families=SHARED_EXPERTS,
        note="vLLM's SharedFusedMoE returns routed + shared experts",
    ),
    *_layer_rules(),
    Rule(
        r"(?P<p>.*)\.rotary_emb",
        ("{p}.apply_rotary_pos_emb", "{p}.apply_rotary_pos_emb#1"),
        "cat_outputs",
        "heads_concat",
        slot="outs",
        target_class=r"Rotary|RoPE|Rope",
        note="post-rotary q and k, rotated one a call (Gemma 3n, Gemma 4)",
    ),
    Rule(
        r"(?P<p>.*)\.rotary_emb",
        ("{p}.apply_rotary_pos_emb",),
        "cat_outputs",
        "heads_concat",
        slot="outs",
        target_class=r"Rotary|RoPE|Rope",
        note="post-rotary q and k",
    ),
    Rule(
        r"(?P<p>.*)\.attn",
        ("{p}.o_proj",),
        slot="in",
        target_class=r"Attention",
        note="attention output = input of the output projection",
    ),
    Rule(r"(?P<p>.*)\.attn", ("{p}.dense",), slot="in", target_class=r"Attention"),
    Rule(
        r"(?P<p>.*)\.act_fn",
        ("{p}.down_proj",),
        slot="in",
        target_class=r"AndMul",
        note="vLLM's fused act(gate) * up = input of down_proj",
    ),
    Rule(r"logits_processor", ("logits",), note="final logits (scale, softcap applied)"),
    Rule(
        r"(?P<name>(?!.*\.layers\.\d+$).+)",
        ("{name}",),
        note="same name (not a decoder layer: what it returns is its family's convention)",
    ),
    Rule(
        r"(?P<p>.*)\.qkv_proj",
        ("{p}.q_proj", "{p}.k_proj", "{p}.v_proj"),
        reference_op="concat",
        note="fused q/k/v projection",
    ),
    Rule(
        r"(?P<p>.*)\.gate_up_proj",
        ("{p}.gate_proj", "{p}.up_proj"),
        reference_op="concat",
        note="fused gate/up projection",
    ),
)

# --- per framework ------------------------------------------------------------------------
# RULES were written against vLLM; another framework's differences are rules of its own, put
# before vLLM's (`rules_for`). SGLang's module names are vLLM's (qkv_proj, gate_up_proj,
# act_fn, rotary_emb, attn, logits_processor; RMSNorm's `(x, residual)`), so what differs is
# its decoder layers and its MoE blocks.

# SGLang 0.5.23's layer boundaries (`layers/layer_boundary`) keep the residual in the forward
# batch's residual stream: a decoder layer of these families receives the previous layer's
# mlp output and returns its own (the next layer's input norm adds the residual; its second
# output is the full hidden state). Checked against sglang/srt/models/*.py.
SGLANG_BRANCH_LAYERS = (
    "llama",
    "mistral",
    "phi3",
    "qwen2",
    "qwen3",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
)
# families whose SGLang MoE block adds the shared experts after `experts` and whose routing
# weights carry any routed scaling as transformers' do (HY-V3's TopK applies
# router_scaling_factor to its weights: `apply_routed_scaling_factor_on_output`)
SGLANG_ROUTED_EXPERTS = ("ernie4_5_moe", "hy_v3")
SGLANG_RULES: tuple[Rule, ...] = (
    Rule(
        r"(?P<p>.*\.layers\.\d+)",
        ("{p}.mlp",),
        families=SGLANG_BRANCH_LAYERS,
        inputs=False,
        note="SGLang decoder layer: returns its mlp output, the residual stays in the forward "
        "batch's residual stream",
    ),
    Rule(
        r"(?P<p>.*\.layers\.\d+)",
        ("{p}.post_mlp_layernorm",),
        families=("glm4",),
        inputs=False,
        note="SGLang decoder layer (sandwich norm): returns its mlp output after the post-mlp "
        "norm, the residual stays in the forward batch's residual stream",
    ),
    Rule(
        r"(?P<p>.*\.layers\.\d+)",
        ("{p}",),
        "sum_pair",
        families=("granite",),
        note="SGLang's Granite layer returns (mlp output x residual multiplier, residual): the "
        "next layer's fused norm adds them (vLLM's adds the residual inside)",
    ),
    Rule(
        r"(?P<p>.*)embed_tokens",
        ("{p}embed_tokens",),
        families=("gemma3", "gemma3_text"),
        note="SGLang's Gemma 3 embedding scales by sqrt(hidden) inside the module, as transformers'",
    ),
    # MoE blocks, checked against SGLang 0.5.23's CPU path (no fused shared experts there, so
    # `experts` is the routed experts alone, as transformers' `experts`; vLLM's is not)
    Rule(
        r"(?P<p>.*\.mlp)\.experts",
        ("{p}.experts",),
        families=SGLANG_ROUTED_EXPERTS,
        note="SGLang's FusedMoE returns the routed experts alone (the block adds the shared "
        "experts after it), as transformers' experts",
    ),
    Rule(
        r"(?P<p>.*\.mlp)\.experts",
        ("{p}.experts",),
        families=("glm4_moe",),
        reference_divisor="routed_scaling_factor",
        note="SGLang's Glm4Moe on a CPU multiplies the routed experts' output by "
        "routed_scaling_factor after `experts` (glm4_moe.py forward_normal); transformers' "
        "routing weights carry it",
    ),
    Rule(
        r"(?P<p>.*\.mlp)\.shared_mlp",
        ("{p}.shared_experts",),
        families=("hy_v3",),
        note="SGLang names HY-V3's shared experts `shared_mlp`",
    ),
    Rule(
        r"(?P<p>.*\.block_sparse_moe)\.gate",
        ("{p}.router",),
        reference_op="router_logits",
        slot="outs",
        families=("granitemoe", "granitemoeshared"),
        note="SGLang's GraniteMoe gate is a linear layer; transformers' router computes the same "
        "logits inside (its third output)",
    ),
    Rule(
        r"(?P<p>.*\.block_sparse_moe)\.topk",
        ("{p}.router",),
        "dense_routing",
        "dense_routing",
        slot="outs",
        target_class=r"TopK",
        families=("granitemoe", "granitemoeshared"),
        note="SGLang's TopK returns (weights, expert ids, router logits), transformers' router "
        "(expert ids, weights, router logits): each as a [tokens, experts] routing matrix",
    ),
    *RULES,
)
FRAMEWORK_RULES: Mapping[str, tuple[Rule, ...]] = {"sglang": SGLANG_RULES}


def rules_for(framework: str | None) -> tuple[Rule, ...]:
    """The rules of the framework that served the target trace (vLLM's for any other)."""
    return FRAMEWORK_RULES.get(framework or "", RULES)


SKIP_CLASSES = ("ModuleList", "Dropout", "Identity")
# A value match farther than this (relative error) is no pairing: nothing computes the same thing.
INFER_MAX_ERROR = 0.25
NO_OUTPUT_REASON = "records no tensor output"


def family_of(config: Mapping[str, Any]) -> str:
    return str(text_config(config).get("model_type") or config.get("model_type") or "")


def _divisor(rule: Rule, config: Mapping[str, Any]) -> float:
    """The value of the rule's `reference_divisor` key in the model's (text) config (1: none)."""
    if not rule.reference_divisor:
        return 1.0
    value = text_config(config).get(rule.reference_divisor)
    return 1.0 if value is None else float(value)


def plan_component(
    name: str,
    cls: str,
    family: str,
    reference_names: set[str],
    rules: Sequence[Rule] = RULES,
    config: Mapping[str, Any] | None = None,
) -> Plan | None:
    """The first rule's plan for target component `name` (None: no rule applies). `config`:
    the model's config, where a rule reads a factor (`Rule.reference_divisor`)."""
    # a module's k-th call in a forward (`name#k`: HRM's recurrence runs each layer several
    # times) pairs by its rule with the reference components' k-th calls
    base, repeated, call = name.partition("#")
    for rule in rules:
        match = rule.matches(base, cls, family)
        if match is None:
            continue
        groups = {k: (v or "") for k, v in match.groupdict().items()}
        groups.setdefault("name", base)
        refs = tuple(t.format(**groups) + (f"#{call}" if repeated else "") for t in rule.reference)
        if all(r in reference_names for r in refs):
            return Plan(
                target=name,
                target_op=rule.target_op,
                reference=refs,
                reference_op=rule.reference_op,
                slot=rule.slot,
                rule=rule.note or rule.target,
                inputs=rule.inputs,
                divisor=_divisor(rule, config or {}),
                divisor_key=rule.reference_divisor,
            )
    return None


@dataclass
class ComponentMap:
    """The plans of every target component, and those that could not be paired."""

    plans: dict[str, Plan] = field(default_factory=dict)
    unmapped: dict[str, Unmapped] = field(default_factory=dict)


def plan_components(
    target: TraceReader,
    reference: TraceReader,
    *,
    rules: Sequence[Rule] | None = None,
) -> ComponentMap:
    """Plan every target component (by name) against the reference's component names, with
    `rules` (None: those of the target's framework, `rules_for`)."""
    if rules is None:
        rules = rules_for(target.manifest.framework)
    config = target.manifest.model_config or reference.manifest.model_config
    family = family_of(config)
    reference_names = {r.name for r in reference.records}
    mapping = ComponentMap()
    for record in target.records:
        if (
            record.name in mapping.plans
            or record.name in mapping.unmapped
            or record.kind in ("logits", "replay")
        ):
            continue
        if record.module_class in SKIP_CLASSES:
            continue
        if not any(o is not None for o in record.outputs):
            mapping.unmapped[record.name] = Unmapped(record.name, NO_OUTPUT_REASON)
            continue
        plan = plan_component(
            record.name, record.module_class, family, reference_names, rules, config
        )
        if plan is not None:
            mapping.plans[record.name] = plan
    return mapping


class Aligner:
    """Gathers reference rows at a target pass's token positions and applies a plan."""

    def __init__(
        self, target: TraceReader, reference: TraceReader, reference32: TraceReader | None = None
    ):
        self.target = target
        self.reference = reference
        self.reference32 = reference32
        self._index = {id(t): _index(t) for t in (reference, reference32) if t is not None}

    def target_tensor(self, record: Record, plan: Plan, rows: int | None) -> torch.Tensor:
        outputs = self.target.outputs(record)
        return transforms.TARGET_OPS[plan.target_op](outputs, rows).float()

    def reference_tensor(
        self, trace: TraceReader, plan: Plan, positions: Sequence[int]
    ) -> torch.Tensor | None:
        """The reference side of `plan` at `positions` (None if a position was not computed)."""
        index = self._index[id(trace)]
        per_ref: list[torch.Tensor] = []
        for name in plan.reference:
            gathered = _gather(trace, index, name, positions, plan.slot)
            if gathered is None:
                return None
            per_ref.extend(gathered)
        if plan.reference_op is None:
            tensor = per_ref[0].reshape(len(positions), -1).float()
        else:
            tensor = transforms.REFERENCE_OPS[plan.reference_op](per_ref, None).float()
        return tensor if plan.divisor == 1.0 else tensor / plan.divisor


def _index(trace: TraceReader) -> dict[str, Any]:
    """Per reference trace: position -> (pass, row) and (pass, name) -> record."""
    position_of: dict[int, tuple[int, int]] = {}
    for p in trace.passes:
        for row, pos in enumerate(p.positions):
            position_of[pos] = (p.index, row)
    records: dict[tuple[int, str], Record] = {}
    for r in trace.records:
        records.setdefault((r.pass_index, r.name), r)
    # runs of consecutive positions held by consecutive rows of one pass: (first position,
    # last position + 1, pass, first row), in position order
    runs: list[tuple[int, int, int, int]] = []
    for pos in sorted(position_of):
        pass_index, row = position_of[pos]
        if (
            runs
            and runs[-1][1] == pos
            and runs[-1][2] == pass_index
            and runs[-1][3] + pos - runs[-1][0] == row
        ):
            runs[-1] = (runs[-1][0], pos + 1, pass_index, runs[-1][3])
        else:
            runs.append((pos, pos + 1, pass_index, row))
    return {
        "position_of": position_of,
        "records": records,
        "passes": {p.index: p for p in trace.passes},
        "runs": runs,
    }


def _rows_of(tensor: torch.Tensor, pass_len: int) -> torch.Tensor:
    """A reference tensor as `[rows, ...]` with one row per token of its pass.

    Drops transformers' batch dimension, and puts tokens first in the attention layout
    `[1, heads, tokens, d]` (the layout a reference records post-rotary q and k in, whatever
    the model's own: `wrap_rotary`), also where there are as many heads as tokens.
    """
    t = tensor
    heads_first = t.dim() == 4 and t.shape[0] == 1
    if t.dim() >= 3 and t.shape[0] == 1:
        t = t[0]
    elif t.dim() == 2 and t.shape[0] == 1 and pass_len != 1:
        t = t[0]
    if t.dim() >= 3 and t.shape[1] == pass_len and (heads_first or t.shape[0] != pass_len):
        t = t.transpose(0, 1)
    if t.dim() == 1:
        t = t.reshape(pass_len, -1) if t.numel() % pass_len == 0 else t.reshape(1, -1)
    return t


def _is_run(rows: Sequence[int]) -> bool:
    return all(b == a + 1 for a, b in zip(rows, rows[1:]))


def _pass_tensors(
    trace: TraceReader, index: Mapping[str, Any], name: str, pass_index: int, slot: str
) -> list[torch.Tensor] | None:
    """Component `name`'s tensors of one reference pass, `[rows, ...]`, one row per token."""
    record = index["records"].get((pass_index, name))
    if record is None:
        return None
    if slot == "in":
        inputs = trace.inputs(record)
        first = inputs.get("0", next(iter(inputs.values()), None))
        tensors = [] if first is None else [first]
    else:
        outputs = [t for t in trace.outputs(record) if t is not None]
        tensors = outputs if slot == "outs" else outputs[:1]
    if not tensors:
        return None
    pass_len = len(index["passes"][pass_index].positions)
    rows = [_rows_of(t, pass_len) for t in tensors]
    if any(r.shape[0] != pass_len for r in rows):
        return None
    return rows


def _runs_covering(
    index: Mapping[str, Any], positions: Sequence[int]
) -> list[tuple[int, int, int]] | None:
    """(pass, first row, rows) pieces that hold `positions` in order, when these are ascending
    consecutive positions and every one of them was computed; else None."""
    if not positions:
        return None
    start, end = positions[0], positions[0] + len(positions)
    if list(positions) != list(range(start, end)):
        return None
    pieces = []
    covered = start
    for first, stop, pass_index, row in index["runs"]:
        if stop <= covered or first >= end:
            continue
        if first > covered:  # a position no pass computed
            return None
        take = min(stop, end) - covered
        pieces.append((pass_index, row + covered - first, take))
        covered += take
        if covered == end:
            return pieces
    return None


def _gather(
    trace: TraceReader, index: Mapping[str, Any], name: str, positions: Sequence[int], slot: str
) -> list[torch.Tensor] | None:
    """The reference tensors of component `name` at `positions`, rows in `positions` order.

    `slot`: "out" the first output, "outs" every output, "in" the first input.
    """
    pieces = _runs_covering(index, positions)
    if pieces is not None:  # consecutive positions: a slice of each pass that holds them
        parts: list[list[torch.Tensor]] = []
        for pass_index, row, count in pieces:
            found = _pass_tensors(trace, index, name, pass_index, slot)
            if found is None:
                return None
            parts.append([r[row : row + count] for r in found])
        if len(parts) == 1:  # the common case: one slice, no copy
            return parts[0]
        return [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]
    by_pass: dict[int, list[tuple[int, int]]] = {}
    for i, pos in enumerate(positions):
        where = index["position_of"].get(pos)
        if where is None:
            return None
        by_pass.setdefault(where[0], []).append((i, where[1]))
    result: list[torch.Tensor] | None = None
    for pass_index, pairs in by_pass.items():
        rows = _pass_tensors(trace, index, name, pass_index, slot)
        if rows is None:
            return None
        dest = [i for i, _ in pairs]
        src = [r for _, r in pairs]
        if len(by_pass) == 1 and _is_run(src):  # the common case: one slice, no copy
            return [r[src[0] : src[0] + len(src)] for r in rows]
        if result is None:
            result = [
                torch.empty((len(positions),) + tuple(r.shape[1:]), dtype=r.dtype) for r in rows
            ]
        for out, r in zip(result, rows):
            out[dest] = r[src]
    return result


def positions_for(outputs_rows: int, info: PassInfo) -> list[int]:
    """Token positions of a target tensor's rows: all of the pass, or its last (logits)."""
    if outputs_rows == len(info.positions):
        return list(info.positions)
    if outputs_rows == 1:
        return [info.positions[-1]]
    return list(info.positions[-outputs_rows:])


def infer_plan(
    record: Record,
    target: TraceReader,
    reference: TraceReader,
    aligner: Aligner,
    info: PassInfo,
    candidates: Iterable[Record],
) -> Plan | None:
    """Pair by value: among reference components of the same layer whose shape fits, the closest."""
    best: tuple[float, Plan] | None = None
    for ref in candidates:
        for slot in ("out", "in"):
            for op in ("first", "sum_pair"):
                plan = Plan(
                    record.name, op, (ref.name,), None, slot=slot, inferred=True, rule="value match"
                )
                try:
                    x = aligner.target_tensor(record, plan, len(info.positions))
                    y = aligner.reference_tensor(reference, plan, positions_for(x.shape[0], info))
                except (RuntimeError, IndexError, KeyError, AssertionError):
                    continue
                if y is None or x.shape != y.shape:
                    continue
                err = float((x - y).norm() / (y.norm() + 1e-30))
                if best is None or err < best[0]:
                    best = (err, plan)
    if best is None or best[0] > INFER_MAX_ERROR:
        return None
    return best[1]


_LAYER = re.compile(r"layers\.(\d+)\.")


def infer_missing(
    mapping: ComponentMap, target: TraceReader, reference: TraceReader
) -> ComponentMap:
    """Pair by value the target components no rule mapped; list the rest as unmapped."""
    aligner = Aligner(target, reference)
    passes = {p.index: p for p in target.passes}
    first_pass = min(passes) if passes else 0
    ref_first = (
        [r for r in reference.records if r.pass_index == reference.records[0].pass_index]
        if reference.records
        else []
    )
    for record in target.records:
        name = record.name
        if (
            record.pass_index != first_pass
            or name in mapping.plans
            or name in mapping.unmapped
            or record.kind in ("logits", "replay")
            or record.module_class in SKIP_CLASSES
        ):
            continue
        layer = _LAYER.search(name)
        key = layer.group(0) if layer else None
        candidates = [
            r
            for r in ref_first
            if r.kind != "logits"
            and ((key is None and not _LAYER.search(r.name)) or (key is not None and key in r.name))
        ]
        plan = infer_plan(record, target, reference, aligner, passes[record.pass_index], candidates)
        if plan is None:
            mapping.unmapped[name] = Unmapped(
                name,
                "no mapping rule, and no reference component of the same layer has a fitting shape "
                f"and values within {INFER_MAX_ERROR:.0%}",
            )
        else:
            mapping.plans[name] = plan
    return mapping
