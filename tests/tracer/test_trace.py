"""Trace storage: round trip, call order, incremental shards, refusal to clobber user folders."""

from __future__ import annotations

import json

import pytest
import torch

from ekka.errors import OutputFolderError, TraceFormatError
from ekka.tracer.metadata import ServingMetadata
from ekka.tracer.trace import PassInfo, TraceManifest, TraceReader, TraceWriter, is_trace


def _write(path, n=20, shard_bytes=4096):
    writer = TraceWriter(
        path,
        TraceManifest(framework="test", dtype="float32", prompt_ids=(1, 2)),
        shard_bytes=shard_bytes,
    )
    writer.add_pass(PassInfo(index=0, step=0, input_ids=(1, 2), positions=(0, 1)))
    tensors = []
    for i in range(n):
        t = torch.randn(2, 64) * i
        tensors.append(t)
        writer.add(
            name=f"m{i}",
            module_class="Linear",
            source_file="x.py",
            source_line=i,
            step=0,
            pass_index=0,
            call_index=i,
            outputs=[t, None],
            inputs={"0": t + 1},
        )
    writer.close(generated_ids=[5])
    return tensors


def test_round_trip_keeps_order_values_and_shards(tmp_path):
    tensors = _write(tmp_path / "t")
    reader = TraceReader(tmp_path / "t")
    assert [r.name for r in reader] == [f"m{i}" for i in range(20)]
    assert [r.call_index for r in reader] == list(range(20))
    assert len(reader.manifest.shards) > 1, "small shard size must flush incrementally"
    for record, (rec2, outs) in zip(reader.records, reader.stream()):
        assert record == rec2
        assert outs[1] is None
        assert torch.equal(outs[0], tensors[record.index])
        assert torch.equal(reader.inputs(record)["0"], tensors[record.index] + 1)
    assert reader.generated_ids == [5]
    assert reader.complete
    assert reader.records[3].outputs[0].shape == (2, 64)
    assert reader.passes[0].positions == (0, 1)


def test_rewriting_a_trace_replaces_it(tmp_path):
    _write(tmp_path / "t", n=20)
    _write(tmp_path / "t", n=3, shard_bytes=1 << 20)
    reader = TraceReader(tmp_path / "t")
    assert len(reader) == 3
    assert len(list((tmp_path / "t").glob("tensors-*.safetensors"))) == 1


def test_refuses_folder_that_is_not_a_trace(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputFolderError, match="not an Ekka trace"):
        TraceWriter(tmp_path / "mine", TraceManifest("x"))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_reader_rejects_non_trace(tmp_path):
    with pytest.raises(TraceFormatError):
        TraceReader(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    assert not is_trace(tmp_path)
    with pytest.raises(TraceFormatError):
        TraceReader(tmp_path)


def test_failed_capture_leaves_incomplete_manifest(tmp_path):
    writer = TraceWriter(tmp_path / "t", TraceManifest("x", prompt_ids=(1,)))
    writer.add(
        name="a",
        module_class="A",
        source_file=None,
        source_line=None,
        step=0,
        pass_index=0,
        call_index=0,
        outputs=[torch.ones(1, 2)],
    )
    writer.close(complete=False)
    reader = TraceReader(tmp_path / "t")
    assert not reader.complete
    assert torch.equal(reader.outputs(reader.records[0])[0], torch.ones(1, 2))


def test_tensors_sharing_memory_are_stored_separately(tmp_path):
    writer = TraceWriter(tmp_path / "t", TraceManifest("x", prompt_ids=(1,)))
    base = torch.arange(6.0).reshape(2, 3)
    writer.add(
        name="a",
        module_class="A",
        source_file=None,
        source_line=None,
        step=0,
        pass_index=0,
        call_index=0,
        outputs=[base, base[0]],
        inputs={"0": base},
    )
    writer.close()
    reader = TraceReader(tmp_path / "t")
    out = reader.outputs(reader.records[0])
    assert torch.equal(out[0], base) and torch.equal(out[1], base[0])
    assert torch.equal(reader.inputs(reader.records[0])["0"], base)


def test_shards_round_trip_every_dtype_and_stay_plain_safetensors(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ekka.tracer.shards import ShardFile, write_shard

    tensors = {
        "odd_bf16": torch.randn(3, 5).to(
            torch.bfloat16
        ),  # 15 x 2 bytes: the next tensor is misaligned
        "f32": torch.randn(4, 7),
        "i64": torch.arange(6).reshape(2, 3),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.empty(0, 4),
        "scalar": torch.tensor(2.5),
        "strided": torch.randn(6, 4).t(),  # not contiguous
    }
    write_shard(tmp_path / "a.safetensors", tensors)
    shard = ShardFile(tmp_path / "a.safetensors")
    assert set(shard.keys()) == set(tensors)
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as reference:
        for key, tensor in tensors.items():
            got = shard.get(key)
            assert got.dtype == tensor.dtype and got.shape == tensor.shape
            assert torch.equal(got, tensor) and torch.equal(reference.get_tensor(key), tensor)
    # writing to a tensor read back never reaches the file
    shard.get("f32").zero_()
    assert torch.equal(ShardFile(tmp_path / "a.safetensors").get("f32"), tensors["f32"])
    # and a file written by the safetensors library reads back the same
    save_file({"w": tensors["f32"], "h": tensors["odd_bf16"]}, str(tmp_path / "b.safetensors"))
    assert torch.equal(ShardFile(tmp_path / "b.safetensors").get("h"), tensors["odd_bf16"])


def test_a_shard_is_whole_when_the_system_writes_few_buffers_and_bytes_at_a_time(
    tmp_path, monkeypatch
):
    """More tensors than one `writev` takes, and writes that stop in the middle of a buffer."""
    import os

    from safetensors import safe_open

    from ekka.tracer.shards import ShardFile, write_shard

    real_writev, calls = os.writev, []

    def short_writev(fd, buffers):
        calls.append(len(buffers))
        budget, parts = 1000, []
        for b in buffers:  # at most 1000 bytes a call: most calls end inside a buffer
            take = memoryview(b)[:budget]
            parts.append(take)
            budget -= len(take)
            if not budget:
                break
        return real_writev(fd, parts)

    monkeypatch.setattr(os, "writev", short_writev)
    tensors = {f"t{i}": torch.full((i % 7 + 1, 3), float(i)) for i in range(2500)}
    tensors["big"] = torch.randn(100, 100)
    write_shard(tmp_path / "many.safetensors", tensors)
    assert len(calls) > 3 and max(calls) <= (
        getattr(os, "IOV_MAX", None) or os.sysconf("SC_IOV_MAX")
    )
    shard = ShardFile(tmp_path / "many.safetensors")
    with safe_open(str(tmp_path / "many.safetensors"), framework="pt") as reference:
        for key, tensor in tensors.items():
            assert torch.equal(shard.get(key), tensor) and torch.equal(
                reference.get_tensor(key), tensor
            )


def test_truncated_shard_is_a_trace_format_error(tmp_path):
    from ekka.tracer.shards import ShardFile

    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(TraceFormatError, match="not a readable tensor shard"):
        ShardFile(tmp_path / "bad.safetensors")


def test_manifest_tells_what_closing_cost(tmp_path):
    writer = TraceWriter(tmp_path / "t", TraceManifest("x"))
    writer.add(
        name="m",
        module_class="M",
        source_file=None,
        source_line=None,
        step=0,
        pass_index=0,
        call_index=0,
        outputs=[torch.ones(2)],
    )
    writer.close()
    seconds = TraceReader(tmp_path / "t").manifest.write_seconds
    assert 0 < seconds < 5


class _Inner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.proj(x)


class _Outer(torch.nn.Module):
    """`same` returns its child's output untouched; `scaled` changes it in place first."""

    def __init__(self):
        super().__init__()
        self.same = _Inner()
        self.scaled = _Inner()
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        a = self.same(x)
        b = self.scaled.proj(a)
        b.mul_(3.0)  # glue that changes a recorded tensor in place
        return self.head(b)


def test_a_tensor_recorded_twice_is_stored_once_unless_it_changed(tmp_path):
    from ekka.tracer.hooks import ModuleRecorder

    torch.manual_seed(0)
    model = _Outer()
    writer = TraceWriter(tmp_path / "t", TraceManifest("test"))
    recorder = ModuleRecorder(writer, model)
    recorder.install()
    recorder.begin_pass(0)
    x = torch.randn(3, 4)
    with torch.no_grad():
        model(x)
    recorder.remove()
    writer.close()
    reader = TraceReader(tmp_path / "t")
    by = {r.name: r for r in reader.records}
    inner, outer = by["same.proj"].outputs[0], by["same"].outputs[0]
    assert inner.key == outer.key, "the parent's untouched output refers to the child's copy"
    assert by["scaled.proj"].inputs[0][1].key == inner.key, (
        "a projection receiving it refers to it too"
    )
    # the in-place change is seen: the head receives 3x the projection's output, stored anew
    head_in = by["head"].inputs[0][1]
    assert head_in.key != by["scaled.proj"].outputs[0].key
    with torch.no_grad():
        expected = model.scaled.proj(model.same(x))
    assert torch.allclose(reader.outputs(by["scaled.proj"])[0], expected)
    assert torch.allclose(reader.inputs(by["head"])["0"], 3 * expected)


def _record_outer(tmp_path, name, *, pending_bytes=None, monkeypatch=None):
    from ekka.tracer import hooks
    from ekka.tracer.hooks import ModuleRecorder

    if pending_bytes is not None:
        monkeypatch.setattr(hooks, "PENDING_BYTES", pending_bytes)
    torch.manual_seed(0)
    model = _Outer()
    writer = TraceWriter(tmp_path / name, TraceManifest("test"))
    recorder = ModuleRecorder(writer, model)
    recorder.install()
    with torch.no_grad():
        for step in range(2):
            recorder.begin_pass(step)
            model(torch.randn(3, 4))
    recorder.remove()
    writer.close()
    return TraceReader(tmp_path / name)


def test_records_handed_over_mid_pass_are_the_same_as_handed_over_at_the_end(tmp_path, monkeypatch):
    """The hooks only copy; records reach the writer at the end, or whenever the copies waiting
    pass PENDING_BYTES (here: after every call), with the same names, order and sharing."""
    at_end = _record_outer(tmp_path, "end")
    eager = _record_outer(tmp_path, "eager", pending_bytes=1, monkeypatch=monkeypatch)
    assert [r.name for r in at_end.records] == ["same.proj", "same", "scaled.proj", "head"] * 2
    assert at_end.records == eager.records  # names, call order, keys (shared copies) alike
    for a, b in zip(at_end.records, eager.records):
        assert all(torch.equal(x, y) for x, y in zip(at_end.outputs(a), eager.outputs(b)))
        assert all(
            torch.equal(x, y) for x, y in zip(at_end.inputs(a).values(), eager.inputs(b).values())
        )
    by = {(r.pass_index, r.name): r for r in eager.records}
    assert by[(1, "same")].outputs[0].key == by[(1, "same.proj")].outputs[0].key


def test_a_manifest_that_is_not_json_is_no_trace(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "manifest.json").write_text("{not json")
    with pytest.raises(TraceFormatError, match="holds no Ekka trace"):
        TraceReader(tmp_path / "t")


def test_the_parent_side_of_a_capture_does_not_import_torch():
    """`ekka trace` and a session's parent start the target before anything imports torch
    (seconds of the probe's wall time otherwise); torch comes with the first tensor read."""
    import subprocess
    import sys

    code = (
        "import sys, ekka.cli, ekka.tracer.capture, ekka.tracer.session, ekka.tracer.trace; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_reading_two_shards_in_turn_opens_each_once(tmp_path, monkeypatch):
    from ekka.tracer import shards

    _write(tmp_path / "t", n=4, shard_bytes=1)  # one shard per record
    opened = []
    real = shards.ShardFile
    monkeypatch.setattr(shards, "ShardFile", lambda path: opened.append(path.name) or real(path))
    reader = TraceReader(tmp_path / "t")
    for _ in range(3):
        for record in reader.records[:2]:
            reader.outputs(record)
    assert len(opened) == len(set(opened)) == 2


def test_stacked_rows_are_the_tensors_one_under_the_other(tmp_path):
    """One component's tensors of successive steps, read with a few views and one copy: the
    same rows as reading them one by one, wherever they lie in the shard."""
    from ekka.tracer.shards import ShardFile, write_shard

    torch.manual_seed(0)
    tensors = {"prefill": torch.randn(5, 8), "other0": torch.randn(5, 3)}
    for step in range(1, 6):  # decode steps: the same sizes at a fixed distance
        tensors[f"step{step}"] = torch.randn(1, 8)
        tensors[f"other{step}"] = torch.randn(1, 3)
    tensors["odd"] = torch.randn(2, 8)
    tensors["gap"] = torch.randn(7)
    tensors["late"] = torch.randn(1, 8)  # past the steps' spacing
    tensors["half"] = torch.randn(2, 8).to(torch.bfloat16)
    tensors["cube"] = torch.randn(1, 2, 8)
    write_shard(tmp_path / "s.safetensors", tensors)
    shard = ShardFile(tmp_path / "s.safetensors")
    for keys in (
        ["prefill"] + [f"step{s}" for s in range(1, 6)],
        [f"step{s}" for s in range(1, 6)] + ["odd", "late"],
        ["step3", "step1", "prefill"],  # out of file order
        ["step2"],
        [f"other{s}" for s in range(6)],
    ):
        got = shard.stacked_rows(keys)
        assert torch.equal(got, torch.cat([tensors[k] for k in keys])), keys
    assert shard.stacked_rows(["prefill", "other0"]) is None  # widths differ
    assert shard.stacked_rows(["prefill", "half"]) is None  # dtypes differ
    assert shard.stacked_rows(["cube"]) is None  # not 2-D
    assert shard.stacked_rows([]) is None


def test_reader_stacks_rows_of_one_shard_only(tmp_path):
    from ekka.tracer.trace import TensorMeta

    tensors = _write(tmp_path / "t", n=20, shard_bytes=4096)
    reader = TraceReader(tmp_path / "t")
    shards = reader.manifest.key_shards
    metas = [r.outputs[0] for r in reader.records]
    same = [m for m in metas if shards[m.key] == shards[metas[0].key]]
    assert len(same) > 1 and len(same) < len(metas)
    got = reader.stacked_rows(same)
    assert torch.equal(
        got, torch.cat([tensors[int(r.name[1:])] for r in reader.records[: len(same)]])
    )
    assert reader.stacked_rows(metas) is None  # across shards: read one by one
    assert reader.stacked_rows([TensorMeta("missing", (1, 64), "float32")]) is None


def test_manifest_lists_records_and_passes_as_their_fields(tmp_path):
    """The manifest's JSON, as other tools read it: a record's fields by name, its outputs as
    metas (null where not a tensor), its inputs as [name, meta] pairs; a pass's fields."""
    _write(tmp_path / "t", n=2)
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    first = manifest["records"][0]
    assert list(first) == [
        "index",
        "name",
        "module_class",
        "source_file",
        "source_line",
        "step",
        "pass_index",
        "call_index",
        "outputs",
        "inputs",
        "kind",
        "leaf",
    ]
    assert first["outputs"][0]["shape"] == [2, 64] and first["outputs"][0]["dtype"] == "float32"
    assert first["outputs"][1] is None
    assert first["inputs"][0][0] == "0" and first["inputs"][0][1]["shape"] == [2, 64]
    assert manifest["passes"] == [
        {"index": 0, "step": 0, "input_ids": [1, 2], "positions": [0, 1], "serving": None}
    ]
    assert list(manifest)[-2:] == ["passes", "records"]  # the header reads first


def test_manifest_header_values_are_written_as_json_would(tmp_path):
    """Integer keys become strings and other objects (a path) their text, as `json` did."""
    from pathlib import Path

    config = {"by_layer": {0: "a"}, "path": Path("/models/tiny")}
    writer = TraceWriter(tmp_path / "t", TraceManifest("test", model="/m", model_config=config))
    writer.add_pass(
        PassInfo(index=0, step=0, input_ids=(1,), positions=(0,), serving=ServingMetadata((0,)))
    )
    writer.close()
    manifest = TraceReader(tmp_path / "t").manifest
    assert manifest.model_config == {"by_layer": {"0": "a"}, "path": "/models/tiny"}
    assert manifest.complete is True and manifest.write_seconds >= 0


def test_a_reader_keeps_two_small_shards_open_and_one_large(tmp_path, monkeypatch):
    from ekka.tracer import trace as trace_module

    tensors = _write(tmp_path / "t", n=20, shard_bytes=4096)
    reader = TraceReader(tmp_path / "t")
    shards = reader.manifest.key_shards
    first, last = reader.records[0], reader.records[-1]
    assert shards[first.outputs[0].key] != shards[last.outputs[0].key]

    def read_in_turn():
        for _ in range(2):  # every read right, whichever shards stay open
            assert torch.equal(reader.outputs(first)[0], tensors[0])
            assert torch.equal(reader.outputs(last)[0], tensors[19])
        return sorted(reader._handles)

    assert read_in_turn() == sorted({shards[first.outputs[0].key], shards[last.outputs[0].key]})
    # shards whose files together pass the budget: one open at a time (their read pages count
    # in the process's resident memory)
    monkeypatch.setattr(
        trace_module, "OPEN_BYTES", max(h.size for h in reader._handles.values()) + 1
    )
    reader._handles.clear()
    assert read_in_turn() == [shards[last.outputs[0].key]]


def test_a_complex_tensor_is_kept_as_its_real_view(tmp_path):
    """Llama 4's rotary embedding returns complex frequencies: kept as [..., 2] floats."""
    from ekka.tracer.shards import ShardFile, write_shard

    freqs = torch.polar(torch.ones(3, 4), torch.randn(3, 4))
    write_shard(tmp_path / "c.safetensors", {"freqs": freqs})
    got = ShardFile(tmp_path / "c.safetensors").get("freqs")
    assert got.shape == (3, 4, 2) and torch.equal(torch.view_as_complex(got), freqs)
