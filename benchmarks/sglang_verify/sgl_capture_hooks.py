"""Forward hooks for SGLang's `forward_hooks` engine argument (used by verify_sglang_case.py).

Runs inside SGLang's scheduler process and imports nothing but torch. Every module's output is
saved, in call order, under `config["dir"]`: one file per call holding the module's name, the
forward pass it belongs to, the module's call index in that pass, and its output tensors (float32,
on the CPU). A pass starts where the first module ever called (the embedding) is called again;
the inputs (input_ids, positions) of the module named "model" are saved with its output.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import torch

_STATE: dict[str, Any] = {"seq": 0, "pass": -1, "calls": {}, "first": None}


def _tensors(value: Any) -> list[torch.Tensor] | None:
    """A module's output as a list of tensors (a tuple's tensor items; a dataclass's
    next_token_logits for SGLang's LogitsProcessorOutput), or None."""
    if isinstance(value, torch.Tensor):
        return [value.detach().float().cpu().clone()]
    if isinstance(value, (tuple, list)):
        items = [v.detach().float().cpu().clone() for v in value if isinstance(v, torch.Tensor)]
        return items or None
    if dataclasses.is_dataclass(value) and hasattr(value, "next_token_logits"):
        return _tensors(value.next_token_logits)
    return None


def capture_factory(config: dict[str, Any]) -> Any:
    """The hook factory: `{"hook_factory": "sgl_capture_hooks:capture_factory",
    "config": {"dir": ...}, "target_modules": ["*"]}`. Module names are read from the
    `name_to_module` mapping of SGLang's register_forward_hooks, the caller."""
    out = config["dir"]
    os.makedirs(out, exist_ok=True)
    caller = sys._getframe(1).f_locals.get("name_to_module")
    if caller is None:
        raise RuntimeError("sgl_capture_hooks: not called from SGLang's register_forward_hooks")
    names = {id(module): name for name, module in caller.items()}

    def hook(module: torch.nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        name = names.get(id(module), "?")
        if _STATE["first"] is None:
            _STATE["first"] = name
        if name == _STATE["first"]:
            _STATE["pass"] += 1
            _STATE["calls"] = {}
        record: dict[str, Any] = {"seq": _STATE["seq"], "pass": _STATE["pass"], "name": name}
        calls = _STATE["calls"]
        record["call"] = calls.get(name, 0)
        calls[name] = record["call"] + 1
        record["outputs"] = _tensors(output)
        if name == "model":
            record["inputs"] = [
                t.detach().cpu().clone() for t in inputs[:2] if isinstance(t, torch.Tensor)
            ]
        torch.save(record, os.path.join(out, f"{_STATE['seq']:07d}.pt"))
        _STATE["seq"] += 1

    return hook
