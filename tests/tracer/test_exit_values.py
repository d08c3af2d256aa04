"""A recorded output or input is the value at the module's exit (or entry, for inputs): no
later in-place write (by a sibling, by the glue, by vLLM's fused residual-add norm) changes it,
also where a later record refers to an earlier stored copy and where records are handed over
in the middle of a pass."""

from __future__ import annotations

import pytest
import torch

from ekka.tracer.trace import TraceManifest, TraceReader, TraceWriter


class _Scale(torch.nn.Module):
    """A weighted leaf that writes into its input and returns it."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.full((4,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2.0)
        return x.add_(self.w)


class _Block(torch.nn.Module):
    """A container returning its child's output (stored once, shared by both records)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class _Siblings(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = _Block()
        self.scale = _Scale()
        self.after = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.first(x)
        b = self.scale(a)  # writes into `first`'s (and `first.proj`'s) output
        c = self.after(b)
        a.zero_()  # glue that overwrites it again, after every record of it
        return c


def _record(model: torch.nn.Module, path, inputs, passes: int = 1):
    from ekka.tracer.hooks import ModuleRecorder

    writer = TraceWriter(path, TraceManifest("test"))
    recorder = ModuleRecorder(writer, model)
    recorder.install()
    with torch.no_grad():
        for step in range(passes):
            recorder.begin_pass(step)
            model(*inputs())
    recorder.remove()
    writer.close()
    return TraceReader(path)


@pytest.mark.parametrize("pending_bytes", [None, 1], ids=["at-end", "mid-pass"])
def test_a_later_sibling_writing_in_place_changes_no_record(tmp_path, monkeypatch, pending_bytes):
    from ekka.tracer import hooks

    if pending_bytes is not None:
        monkeypatch.setattr(hooks, "PENDING_BYTES", pending_bytes)
    torch.manual_seed(0)
    model = _Siblings()
    x = torch.randn(3, 4)
    reader = _record(model, tmp_path / "t", lambda: (x.clone(),), passes=2)
    with torch.no_grad():
        a = model.first.proj(x)
        b = 2 * a + model.scale.w
        c = model.after(b)
    for pass_index in range(2):
        by = {r.name: r for r in reader.records if r.pass_index == pass_index}
        assert set(by) == {"first.proj", "first", "scale", "after"}
        assert by["first"].outputs[0].key == by["first.proj"].outputs[0].key  # shared copy
        assert torch.equal(reader.outputs(by["first.proj"])[0], a)
        assert torch.equal(reader.outputs(by["first"])[0], a)
        assert torch.equal(reader.inputs(by["scale"])["0"], a), "its input before it ran"
        assert torch.allclose(reader.outputs(by["scale"])[0], b)
        assert torch.allclose(reader.inputs(by["after"])["0"], b)
        assert torch.allclose(reader.outputs(by["after"])[0], c)


class _Layer(torch.nn.Module):
    """A pre-norm decoder layer as vLLM writes it: the norms add the residual in place."""

    def __init__(self, norm: type[torch.nn.Module]) -> None:
        super().__init__()
        self.input_layernorm = norm(8)
        self.proj = torch.nn.Linear(8, 8)
        self.post_attention_layernorm = norm(8)
        self.mlp = torch.nn.Linear(8, 8)

    def forward(self, h: torch.Tensor, residual: torch.Tensor | None):
        if residual is None:
            residual = h
            h = self.input_layernorm(h)
        else:
            h, residual = self.input_layernorm(h, residual)
        h = self.proj(h)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class _Decoder(torch.nn.Module):
    def __init__(self, norm: type[torch.nn.Module]) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([_Layer(norm) for _ in range(3)])
        self.norm = norm(8)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        residual = None
        for layer in self.layers:
            h, residual = layer(h, residual)
        return self.norm(h, residual)[0]


def _vllm_rms_norm(monkeypatch: pytest.MonkeyPatch | None):
    """vLLM's RMSNorm; with `monkeypatch`, its residual add goes to the in-place kernel that
    GPUs dispatch to (`vllm_c`: writes the sum into `residual` and the norm into `x`)."""
    import vllm.kernels.vllm_c  # noqa: F401  (registers the in-place implementation)
    from vllm import ir
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.layernorm import RMSNorm

    op = ir.ops.fused_add_rms_norm
    if monkeypatch is not None:
        monkeypatch.setattr(op, "maybe_inplace", op.impls["vllm_c"].impl_fn)

    def make(hidden: int) -> torch.nn.Module:
        with set_current_vllm_config(VllmConfig()):
            return RMSNorm(hidden, eps=1e-6)

    return make


def test_vllm_fused_residual_add_norm_changes_no_record(tmp_path, monkeypatch):
    """The kernel writes into its `residual` argument and into `x`: the previous layer's
    outputs, the mlp's output, the layer's recorded inputs. Every record keeps the value it had
    when its hook ran: the same as a run whose norm adds out of place."""
    pytest.importorskip("vllm")
    torch.manual_seed(0)
    x = torch.randn(5, 8)
    out_of_place = _Decoder(_vllm_rms_norm(None))
    expected = _record(out_of_place, tmp_path / "native", lambda: (x.clone(),))
    in_place = _Decoder(_vllm_rms_norm(monkeypatch))
    in_place.load_state_dict(out_of_place.state_dict())
    probe_x, probe_r = torch.randn(2, 8), torch.randn(2, 8)
    before = probe_r.clone()
    in_place.norm(probe_x, probe_r)
    assert not torch.equal(probe_r, before), "the patched norm writes into its residual"
    got = _record(in_place, tmp_path / "inplace", lambda: (x.clone(),))
    assert [r.name for r in got.records] == [r.name for r in expected.records]
    assert any(r.name == "layers.1" and r.inputs for r in got.records)
    for mine, theirs in zip(got.records, expected.records):
        for a, b in zip(got.outputs(mine), expected.outputs(theirs)):
            assert (a is None) == (b is None)
            if a is not None:
                assert torch.allclose(a, b, atol=1e-5), f"{mine.name}'s output changed later"
        ins, ref_ins = got.inputs(mine), expected.inputs(theirs)
        assert ins.keys() == ref_ins.keys()
        for key in ins:
            assert torch.allclose(ins[key], ref_ins[key], atol=1e-5), f"{mine.name}'s input {key}"
