"""Captures from real transformers and real vLLM (CPU) on zoo models, and their agreement.

A vLLM capture of pristine vLLM is read from the session's diagnosis of the same request (the
`diagnosed` fixture: its target's trace, written by the same session and writer that `capture`
uses), which tests/tracer/test_diagnose.py asserts on too: one engine start for both. The tests
about a start of their own (a session's steps, a probe, a failing start) start theirs."""

from __future__ import annotations

import sys
import time

import pytest
import torch

from ekka.tracer.compare import compare_traces
from ekka.tracer.metrics import compute_relative_error
from tests.conftest import LONG_PROMPT_IDS, PROMPT_IDS
from tests.processes import descendants

TRANSFORMERS_ARCHS = ["llama", "qwen3", "gemma2", "phi", "mixtral", "stablelm"]
VLLM_ARCHS = ["llama", "qwen3", "phi", "mixtral"]


@pytest.mark.parametrize("arch", TRANSFORMERS_ARCHS)
def test_transformers_capture_records_every_module_in_call_order(captured, arch):
    reader = captured("transformers", arch)
    assert reader.complete and reader.framework == "transformers"
    assert len(reader.generated_ids) == 3
    steps = [p.step for p in reader.passes]
    assert steps == [0, 1, 2]
    assert reader.passes[0].positions == tuple(range(len(PROMPT_IDS)))
    assert reader.passes[1].positions == (len(PROMPT_IDS),)
    # call order: pass by pass, call_index 0..n-1, children before their parents
    prev = (-1, -1)
    for record in reader.records:
        assert (record.pass_index, record.call_index) > prev
        prev = (record.pass_index, record.call_index)
    names = [r.name for r in reader.select(step=0)]
    assert (
        names.index("model.layers.0.input_layernorm")
        < names.index("model.layers.0")
        < names.index("model.layers.1")
    )
    assert "model.layers.0.mlp" in names or "model.layers.0.mlp.experts" in names
    # every step has its logits, and greedy tokens are their argmax
    logits = [r for r in reader.records if r.kind == "logits"]
    assert len(logits) == 3
    for token, record in zip(reader.generated_ids, logits):
        assert int(reader.outputs(record)[0][-1].argmax()) == token
    # leaf inputs are recorded, with source locations
    leaf = next(r for r in reader.records if r.name == "model.layers.0.input_layernorm")
    assert leaf.inputs and leaf.source_file and leaf.source_line


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma2"])
def test_transformers_records_post_rotary_q_and_k(captured, arch):
    reader = captured("transformers", arch)
    rotary = reader.select(step=0, name="model.layers.1.self_attn.apply_rotary_pos_emb")
    assert len(rotary) == 1
    q, k = reader.outputs(rotary[0])
    assert q.shape[2] == len(PROMPT_IDS) and k.shape[2] == len(PROMPT_IDS)
    assert set(dict(rotary[0].inputs)) >= {"q", "k", "cos", "sin"}


def test_teacher_forced_reference_is_one_pass_over_the_sequence(captured):
    greedy = captured("transformers", "llama")
    forced = captured("transformers", "llama", forced_ids=tuple(greedy.generated_ids[:-1]))
    assert len(forced.passes) == 1
    assert forced.passes[0].positions == tuple(range(len(PROMPT_IDS) + 2))
    assert forced.generated_ids == greedy.generated_ids


@pytest.mark.vllm
@pytest.mark.parametrize("arch", VLLM_ARCHS)
def test_vllm_capture_records_passes_positions_and_logits(diagnosed, arch):
    reader = diagnosed(arch).target
    assert reader.complete and reader.framework == "vllm"
    assert reader.manifest.framework_version == "0.32.0"
    assert [p.step for p in reader.passes] == [0, 1, 2]
    assert reader.passes[0].positions == tuple(range(len(PROMPT_IDS)))
    assert reader.passes[0].input_ids == PROMPT_IDS
    assert reader.passes[2].positions == (len(PROMPT_IDS) + 1,)
    assert len(reader.generated_ids) == 3
    assert len([r for r in reader.records if r.kind == "logits"]) == 3
    vllm_files = [
        r.source_file for r in reader.records if r.source_file and r.source_file.startswith("vllm/")
    ]
    assert vllm_files, "vLLM module classes carry their source file relative to the package root"


@pytest.mark.vllm
def test_vllm_shared_rotary_is_attributed_to_each_layer(diagnosed):
    reader = diagnosed("llama").target
    names = [r.name for r in reader.select(step=0)]
    assert "model.layers.0.self_attn.rotary_emb" in names
    assert "model.layers.1.self_attn.rotary_emb" in names


@pytest.mark.vllm
def test_vllm_chunked_prefill_records_each_chunk(diagnosed):
    # 37 prompt tokens, 16 a step: the chunks of 16, 16 and 5 (the chunked-prefill diagnosis
    # of tests/tracer/test_diagnose.py)
    engine = {"max_num_batched_tokens": 16}
    reader = diagnosed("llama", prompt_ids=LONG_PROMPT_IDS, engine=engine).target
    prefill = [p for p in reader.passes if p.step == 0]
    assert [len(p.positions) for p in prefill] == [16, 16, 5]
    assert prefill[1].positions == tuple(range(16, 32))
    # placed from the scheduler's state; what the model was given recorded beside it
    serving = prefill[1].serving
    assert serving is not None and serving.request is not None
    assert serving.request.start == 16 and serving.request.count == 16
    assert serving.given_positions == tuple(range(16, 32))
    assert serving.attention["0"].seq_lens == (32,)
    assert serving.attention["0"].query_start_loc == (0, 16)


@pytest.mark.vllm
def test_vllm_llama_float32_matches_transformers_layer_by_layer(captured, diagnosed):
    target = diagnosed("llama").target
    reference = captured("transformers", "llama")
    assert target.generated_ids == reference.generated_ids
    rows = compare_traces(target, reference)
    layers = [
        c
        for c in rows
        if c.target.startswith("model.layers.") and c.target.count(".") == 2 and c.kind == "output"
    ]
    assert len(layers) == 2 * 3, "two decoder layers in each of three steps"
    for c in layers:
        assert c.plan.startswith("sum_pair"), "vLLM's (hidden, residual) is summed"
        assert c.error < 1e-5, (c.target, c.step, c.error)
    assert all(c.error < 1e-5 for c in rows), max((c.error, c.target) for c in rows)
    # the final logits agree too
    t_logits = [r for r in target.records if r.kind == "logits"]
    r_logits = [r for r in reference.records if r.kind == "logits"]
    for a, b in zip(t_logits, r_logits):
        assert compute_relative_error(target.outputs(a)[0], reference.outputs(b)[0][-1]) < 1e-5


@pytest.mark.vllm
def test_vllm_bfloat16_capture_stores_bfloat16(diagnosed):
    reader = diagnosed("llama", dtype="bfloat16").target
    record = reader.select(step=0, name="model.layers.0")[0]
    assert reader.outputs(record)[0].dtype == torch.bfloat16


def test_inputs_are_recorded_for_weighted_leaves_only(captured):
    reader = captured("transformers", "llama")
    first = {r.name: r for r in reader.select(step=0)}
    for weighted in (
        "model.layers.0.input_layernorm",
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.mlp.down_proj",
    ):
        assert first[weighted].inputs, weighted
    # parameter-free leaves receive what the module before them returned, recorded already
    for free in ("model.layers.0.mlp.act_fn", "model.rotary_emb"):
        assert first[free].leaf and not first[free].inputs, free


def _spec(model, out, **kw):
    from ekka.tracer.capture import CaptureSpec, resolved

    return resolved(
        CaptureSpec(
            framework="vllm",
            model=str(model),
            prompt_ids=PROMPT_IDS,
            out=str(out),
            max_tokens=3,
            **kw,
        )
    )


def _target_processes():
    """This process's live target processes (their ids): forks of its warm processes, named
    `ekka-target` (`ekka.tracer.warm`)."""
    return [pid for pid, name in descendants() if name == "ekka-target"]


@pytest.mark.vllm
def test_a_target_session_traces_tells_the_tokens_writes_replays_and_closes(
    zoo_model, captured, tmp_path
):
    from ekka.tracer.session import TargetSession
    from ekka.tracer.trace import TraceReader

    wanted = ["model.layers.0.input_layernorm", "model.layers.1.mlp.gate_up_proj"]
    with TargetSession(_spec(zoo_model("llama"), tmp_path / "t"), timeout=300) as session:
        ready = session.wait_ready()
        assert ready.framework == "vllm" and ready.version == "0.32.0" and ready.seconds > 0
        assert ready.path.endswith("vllm")
        tokens = session.trace()
        written = session.wait_written()
        target = TraceReader(written.path)
        assert target.complete and list(tokens.generated_ids) == target.generated_ids
        assert _target_processes(), "the target stays until the session closes"
        reference = captured("transformers", "llama", forced_ids=tokens.generated_ids[:-1])
        replayed = session.replay(reference.path, wanted)
    assert not _target_processes(), "closed, the target's process has ended"
    replays = TraceReader(replayed.path)
    assert replayed.count == 2 and sorted(r.name for r in replays.records) == sorted(wanted)
    # replayed on the reference's input, correct vLLM modules give the reference's output
    for record in replays.records:
        name = record.name.replace("gate_up_proj", "gate_proj")
        ref = next(r for r in reference.records if r.name == name)
        out = replays.outputs(record)[0]
        expected = reference.outputs(ref)[0][0]
        if record.name.endswith("gate_up_proj"):
            out = out[:, : expected.shape[-1]]
        assert out.shape == expected.shape
        assert compute_relative_error(out, expected) < 1e-5


@pytest.mark.vllm
def test_a_probe_records_the_logits_and_tokens_only(zoo_model, diagnosed, tmp_path):
    from ekka.tracer.capture import capture

    probe = capture(_spec(zoo_model("llama"), tmp_path / "t", logits_only=True), timeout=300)
    assert [r.kind for r in probe.records] == ["logits"] * 3
    assert [p.step for p in probe.passes] == [0, 1, 2]
    assert probe.generated_ids == diagnosed("llama").target.generated_ids


@pytest.mark.vllm
def test_a_target_that_fails_to_start_is_a_capture_error_with_its_traceback(zoo_model, tmp_path):
    from ekka.errors import CaptureError
    from ekka.tracer.session import TargetSession

    spec = _spec(zoo_model("llama"), tmp_path / "t", engine={"no_such_engine_setting": 1})
    with pytest.raises(CaptureError, match="no_such_engine_setting") as caught:
        with TargetSession(spec, timeout=300) as session:
            session.wait_ready()
    assert "vllm target failed" in str(caught.value) and "Traceback" in str(caught.value)
    assert not _target_processes()


def test_a_target_that_does_not_answer_in_time_is_killed(tmp_path, monkeypatch):
    """The time limit holds whatever the target does: here a process that never answers."""
    from ekka.errors import CaptureError
    from ekka.tracer import session as session_module
    from ekka.tracer.protocol import CaptureSpec

    monkeypatch.setattr(sys, "executable", str(_sleeper(tmp_path)))  # vLLM's interpreter
    spec = CaptureSpec(framework="vllm", model="m", prompt_ids=(1,), out=str(tmp_path / "t"))
    session = session_module.TargetSession(spec, timeout=2)
    started = time.monotonic()
    with pytest.raises(CaptureError, match="time limit"):
        session.wait_ready()
    assert time.monotonic() - started < 30
    assert session._process is not None and session._process.poll() is not None


def _sleeper(tmp_path):
    """An executable that ignores its arguments and sleeps (a target that never answers)."""
    import stat

    path = tmp_path / "sleeper"
    path.write_text("#!/bin/sh\nexec sleep 600\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_a_target_process_ends_without_the_teardown_only_with_the_engine_in_it(tmp_path):
    """Its work on disk, the target's process ends at once (vLLM's shutdown and the freeing of
    every object took 3 s), its output flushed; an engine in a process of its own is shut down
    the usual way (its exit handlers run)."""
    import os
    import subprocess
    import sys

    script = f"""
import atexit, pathlib, sys
from ekka.tracer.adapters.vllm import exit_at_once
atexit.register(lambda: pathlib.Path({str(tmp_path / "teardown")!r}).write_text("ran"))
print("work done", end="")
exit_at_once(0)
"""
    for setting, tore_down in (("0", False), ("1", True)):
        env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": setting}
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0 and done.stdout == "work done"
        assert (tmp_path / "teardown").exists() is tore_down
        (tmp_path / "teardown").unlink(missing_ok=True)
