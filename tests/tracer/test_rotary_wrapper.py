"""The reference's post-rotary q and k as `wrap_rotary` records them: both forms of transformers'
`apply_rotary_pos_emb` (q and k in one call; one tensor a call, as Gemma 3n and Gemma 4 do)."""

from __future__ import annotations

import sys
import types
from typing import Any

import torch

from ekka.tracer.adapters.transformers import wrap_rotary

TOKENS, HEADS, D = 5, 2, 4


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int) -> Any:
    return x * cos.unsqueeze(unsqueeze_dim) + 2 * sin.unsqueeze(unsqueeze_dim)


def apply_pair(q, k, cos, sin, unsqueeze_dim=1):
    return _rotate(q, cos, sin, unsqueeze_dim), _rotate(k, cos, sin, unsqueeze_dim)


def apply_one(x, cos, sin, unsqueeze_dim=1):
    return _rotate(x, cos, sin, unsqueeze_dim)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[list[torch.Tensor], dict[str, Any]]] = []

    def record_function(self, suffix, func, outputs, inputs, *, kind):
        assert suffix == "apply_rotary_pos_emb" and kind == "rotary"
        self.calls.append((list(outputs), inputs))


def _model_in(module_name: str, function: Any) -> torch.nn.Module:
    """A model whose class lives in a modeling module of its own, holding `function`."""
    pymod = types.ModuleType(module_name)
    pymod.apply_rotary_pos_emb = function  # type: ignore[attr-defined]
    model_class = type("Model", (torch.nn.Module,), {"__module__": module_name})
    sys.modules[module_name] = pymod
    return model_class()


def _inputs() -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    cos, sin = torch.rand(1, TOKENS, D), torch.rand(1, TOKENS, D)
    return torch.rand(1, TOKENS, HEADS, D), torch.rand(1, TOKENS, 1, D), cos, sin


def test_q_and_k_in_one_call_are_one_record_heads_first():
    model = _model_in("ekka_test_rotary_pair", apply_pair)
    recorder = Recorder()
    q, k, cos, sin = _inputs()
    try:
        with wrap_rotary(model, recorder) as wrapped:
            assert wrapped == 1
            out = sys.modules["ekka_test_rotary_pair"].apply_rotary_pos_emb(
                q, k, cos, sin, unsqueeze_dim=2
            )
    finally:
        del sys.modules["ekka_test_rotary_pair"]
    [(outputs, inputs)] = recorder.calls
    assert [t.shape for t in outputs] == [(1, HEADS, TOKENS, D), (1, 1, TOKENS, D)]
    assert torch.equal(outputs[0], out[0].transpose(1, 2))
    assert set(inputs) == {"q", "k", "cos", "sin"}


def test_one_tensor_a_call_is_a_record_a_call_heads_first():
    model = _model_in("ekka_test_rotary_one", apply_one)
    recorder = Recorder()
    q, k, cos, sin = _inputs()
    try:
        with wrap_rotary(model, recorder):
            apply = sys.modules["ekka_test_rotary_one"].apply_rotary_pos_emb
            q_out = apply(q, cos, sin, unsqueeze_dim=2)
            k_out = apply(k, cos, sin, unsqueeze_dim=2)
        assert sys.modules["ekka_test_rotary_one"].apply_rotary_pos_emb is apply_one
    finally:
        del sys.modules["ekka_test_rotary_one"]
    assert torch.equal(q_out, apply_one(q, cos, sin, 2))  # the model's result, unchanged
    assert len(recorder.calls) == 2
    for (outputs, inputs), given, result in zip(recorder.calls, (q, k), (q_out, k_out)):
        assert len(outputs) == 1 and torch.equal(outputs[0], result.transpose(1, 2))
        assert torch.equal(inputs["x"], given.transpose(1, 2))
        assert inputs["cos"] is cos and inputs["sin"] is sin
