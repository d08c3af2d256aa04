"""Captures from real transformers and real vLLM (CPU) on zoo models, and their agreement."""

from __future__ import annotations

import time

import pytest
import torch

from ekka.tracer.compare import compare_traces, compute_relative_error
from tests.conftest import PROMPT_IDS

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
def test_vllm_capture_records_passes_positions_and_logits(captured, arch):
    reader = captured("vllm", arch)
    assert reader.complete and reader.framework == "vllm"
    assert reader.manifest["framework_version"] == "0.32.0"
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
def test_vllm_shared_rotary_is_attributed_to_each_layer(captured):
    reader = captured("vllm", "llama")
    names = [r.name for r in reader.select(step=0)]
    assert "model.layers.0.self_attn.rotary_emb" in names
    assert "model.layers.1.self_attn.rotary_emb" in names


@pytest.mark.vllm
def test_vllm_chunked_prefill_records_each_chunk(captured):
    reader = captured("vllm", "llama", max_tokens=2, engine={"max_num_batched_tokens": 16})
    prefill = [p for p in reader.passes if p.step == 0]
    assert [len(p.positions) for p in prefill] == [16, 16]
    assert prefill[1].positions == tuple(range(16, 32))
    assert prefill[1].extra["seq_lens"] == [32]


@pytest.mark.vllm
def test_vllm_llama_float32_matches_transformers_layer_by_layer(captured):
    target = captured("vllm", "llama")
    reference = captured("transformers", "llama")
    assert target.generated_ids == reference.generated_ids
    rows = compare_traces(target, reference)
    layers = [c for c in rows if c.target.startswith("model.layers.") and c.target.count(".") == 2]
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
def test_vllm_bfloat16_capture_stores_bfloat16(captured):
    reader = captured("vllm", "llama", dtype="bfloat16", max_tokens=1)
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
    from ekka.tracer.capture import CaptureSpec

    return CaptureSpec(
        framework="vllm", model=str(model), prompt_ids=PROMPT_IDS, out=str(out), max_tokens=3, **kw
    )


@pytest.mark.vllm
def test_after_generate_gets_the_tokens_and_replays_only_what_it_asks(
    zoo_model, captured, tmp_path
):
    from ekka.tracer.capture import capture
    from ekka.tracer.trace import TraceReader

    asked: dict[str, object] = {}
    wanted = ["model.layers.0.input_layernorm", "model.layers.1.mlp.gate_up_proj"]

    def answer(generated):
        asked["ids"] = generated
        asked["complete"] = TraceReader(
            tmp_path / "t"
        ).complete  # the trace is written before asking
        forced = captured("transformers", "llama", forced_ids=tuple(generated[:-1]))
        asked["reference"] = forced
        return {"replay_reference": str(forced.path), "modules": wanted}

    target = capture(_spec(zoo_model("llama"), tmp_path / "t"), after_generate=answer)
    assert asked["ids"] == target.generated_ids and asked["complete"] is True
    replays = TraceReader(target.path / "replay")
    assert sorted(r.name for r in replays.records) == sorted(wanted)
    # replayed on the reference's input, correct vLLM modules give the reference's output
    reference = asked["reference"]
    for record in replays.records:
        ref = next(
            r
            for r in reference.records
            if r.name == record.name.replace("gate_up_proj", "gate_proj")
        )
        out = replays.outputs(record)[0]
        expected = reference.outputs(ref)[0][0]
        if record.name.endswith("gate_up_proj"):
            out = out[:, : expected.shape[-1]]
        assert out.shape == expected.shape
        assert compute_relative_error(out, expected) < 1e-5


@pytest.mark.vllm
@pytest.mark.parametrize("deferred", [False, True])
def test_a_failing_answer_stops_the_target_and_surfaces(zoo_model, tmp_path, deferred):
    from ekka.tracer.capture import capture

    worked = []

    def fail():
        raise RuntimeError("the reference could not be made")

    def answer(generated):
        return fail if deferred else fail()

    with pytest.raises(RuntimeError, match="could not be made"):
        capture(
            _spec(zoo_model("llama"), tmp_path / "t"),
            after_generate=answer,
            timeout=300,
            while_replaying=lambda: worked.append(1) or [],
        )
    assert worked == ([1] if deferred else [])  # a deferred answer fails after the caller's work


@pytest.mark.vllm
def test_a_target_that_fails_before_asking_is_a_capture_error(zoo_model, tmp_path):
    from ekka.errors import CaptureError
    from ekka.tracer.capture import capture

    called = []
    with pytest.raises(CaptureError, match="exit code"):
        capture(
            _spec(zoo_model("llama"), tmp_path / "t", engine={"no_such_engine_setting": 1}),
            after_generate=called.append,
            timeout=300,
        )
    assert called == []


@pytest.mark.vllm
def test_the_caller_works_while_the_engine_starts_and_while_the_target_generates(
    zoo_model, tmp_path
):
    import os

    from ekka.tracer.capture import capture
    from ekka.tracer.trace import TraceReader

    events, told, scratches = [], [], []

    def ready(scratch):
        events.append("tracing")
        trace = TraceReader(scratch)  # the target's warm-up request, traced, while it waits
        scratches.append(
            (
                scratch,
                trace.framework,
                trace.manifest["complete"],
                trace.generated_ids,
                len(trace.records),
            )
        )
        time.sleep(0.3)

    target = capture(
        _spec(zoo_model("llama"), tmp_path / "t"),
        while_starting=lambda: events.append("starting"),
        when_tracing=ready,
        when_tokens=lambda generated, written: (events.append("tokens"), told.append(generated)),
        after_generate=lambda generated: events.append("answer"),
    )
    assert events == ["starting", "tracing", "tokens", "answer"]
    assert told == [target.generated_ids]  # told before its trace was written
    assert (
        1 <= target.manifest["threads"] <= (os.cpu_count() or 1)
    )  # the traced request's torch threads
    timings = target.manifest["timings"]
    assert timings["tracing_told_at"] < timings["traced_started_at"] < target.manifest["closed_at"]
    # the target waited for `when_tracing` before its timed and traced requests
    assert (
        timings["traced_started_at"] - timings["tracing_told_at"]
        >= 0.3 + 4 * timings["untraced_generate"]
    )
    ((scratch, framework, complete, generated, records),) = scratches
    assert framework == "vllm" and complete and len(generated) == 2 and records > 0
    assert not scratch.exists()  # removed once the caller was done with it
    assert timings["untraced_generate"] > 0  # the untraced request tracing is measured against


def test_the_target_process_spins_briefly_unless_the_user_said_otherwise(monkeypatch):
    """OpenMP threads of the target that spin idle for long would take the core the caller's
    references work on while the target writes its trace."""
    from ekka.tracer.capture import SHORT_SPIN, _subprocess_env

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setenv("KMP_BLOCKTIME", "50")
    env = _subprocess_env()
    assert env["GOMP_SPINCOUNT"] == SHORT_SPIN["GOMP_SPINCOUNT"]
    assert env["KMP_BLOCKTIME"] == "50"


def _capture_children():
    """This process's live vLLM capture subprocesses (their ids)."""
    import os
    from pathlib import Path

    found = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if (
            int(fields[1]) == os.getpid()
            and fields[0] != "Z"
            and b"ekka.tracer.adapters.vllm" in cmdline
        ):
            found.append(int(proc.name))
    return found


def test_a_capture_process_ends_without_the_teardown_only_with_the_engine_in_it(tmp_path):
    """Its work on disk, the target's process ends at once (vLLM's shutdown and the freeing of
    every object took 3 s), its output flushed; an engine in a process of its own is shut down
    the usual way (its exit handlers run)."""
    import os
    import subprocess
    import sys

    script = f"""
import atexit, pathlib, sys
from ekka.tracer.adapters.vllm import _exit_at_once
atexit.register(lambda: pathlib.Path({str(tmp_path / "teardown")!r}).write_text("ran"))
print("work done", end="")
_exit_at_once(0)
"""
    for setting, tore_down in (("0", False), ("1", True)):
        env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": setting}
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0 and done.stdout == "work done"
        assert (tmp_path / "teardown").exists() is tore_down
        (tmp_path / "teardown").unlink(missing_ok=True)


def _replayable_order(target, reference):
    """The names `replay_modules` replays, in the target's call order (every leaf it can)."""
    return [r.name for r in target.records if r.pass_index == 0 and r.leaf and r.kind == "module"]


@pytest.mark.vllm
def test_the_target_replays_every_leaf_while_the_caller_works_until_told(
    zoo_model, captured, tmp_path
):
    import threading
    import time

    from ekka.tracer.capture import capture
    from ekka.tracer.trace import TraceReader

    state: dict[str, object] = {}
    working = threading.Event()

    def answer(generated):
        state["reference"] = captured("transformers", "llama", forced_ids=tuple(generated[:-1]))

        def when_ready():  # a deferred answer: sent once ready, while the caller works
            state["answered_while_working"] = working.wait(60)
            return {"replay_reference": str(state["reference"].path), "modules": None}

        return when_ready

    def analyse_meanwhile():
        working.set()
        # the caller's work outlasts the replay: the target replays every leaf, then ends the
        # replay trace without waiting for the names
        manifest = tmp_path / "t" / "replay" / "manifest.json"
        deadline = time.monotonic() + 240
        while not manifest.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        state["finished_first"] = manifest.exists()
        time.sleep(0.5)  # the target waits for the names before it ends (and frees its engine)
        state["target_alive"] = bool(_capture_children())
        return ["model.layers.0.input_layernorm"]

    target = capture(
        _spec(zoo_model("llama"), tmp_path / "t"),
        after_generate=answer,
        while_replaying=analyse_meanwhile,
        timeout=300,
    )
    assert state["answered_while_working"] is True and state["finished_first"] is True
    assert state["target_alive"] is True and not _capture_children()
    names = [r.name for r in TraceReader(target.path / "replay").records]
    for leaf in (
        "model.layers.0.input_layernorm",
        "model.layers.0.self_attn.qkv_proj",
        "model.layers.0.mlp.gate_up_proj",
        "model.layers.0.mlp.act_fn",
        "model.layers.1.mlp.down_proj",
        "model.norm",
    ):
        assert leaf in names, names
    order = _replayable_order(target, state["reference"])
    assert names == [n for n in order if n in names]  # in the target's call order


@pytest.mark.vllm
def test_told_the_suspects_early_the_target_replays_them_and_stops(zoo_model, captured, tmp_path):
    from ekka.tracer.capture import capture
    from ekka.tracer.trace import TraceReader

    wanted = ["model.layers.1.mlp.down_proj"]
    target = capture(
        _spec(zoo_model("llama"), tmp_path / "t"),
        after_generate=lambda generated: str(
            captured("transformers", "llama", forced_ids=tuple(generated[:-1])).path
        ),
        while_replaying=lambda: wanted,
        timeout=300,
    )
    names = [r.name for r in TraceReader(target.path / "replay").records]
    assert names[-1] == wanted[0]
    # what came before the names is a run of leaves from the start of the call order
    order = [n for n in _replayable_order(target, None) if n != wanted[0]]
    before = names[:-1]
    assert before == [n for n in order[: len(before) + 8] if n in before][: len(before)]
    assert "model.norm" not in names  # after the wanted module: never reached


def test_the_replay_protocol_reads_the_answer_and_then_the_names_without_waiting(monkeypatch):
    import importlib
    import json
    import os

    cap = importlib.import_module(
        "ekka.tracer.capture"
    )  # the module, not the function of that name

    def pipes():
        to_parent_r, to_parent_w = os.pipe()
        from_parent_r, from_parent_w = os.pipe()
        monkeypatch.setenv(cap.CONTROL_ENV, f"{to_parent_w},{from_parent_r}")
        return to_parent_r, from_parent_w

    # the answer and the names come in one read: the names are kept for ParentMessages
    _, parent = pipes()
    answer = {"request": {"replay_reference": "/ref", "modules": None}, "more": True}
    os.write(
        parent, (json.dumps(answer) + "\n" + json.dumps({"modules": ["a", "b"]}) + "\n").encode()
    )
    assert cap.ask_parent([1, 2]) == {"replay_reference": "/ref", "modules": None, "more": True}
    assert cap.ParentMessages().modules() == ["a", "b"]

    # the names come later, in pieces; None means every module
    _, parent = pipes()
    os.write(parent, (json.dumps({"request": "/ref", "more": True}) + "\n").encode())
    assert cap.ask_parent([1]) == {"replay_reference": "/ref", "modules": None, "more": True}
    messages = cap.ParentMessages()
    assert messages.modules() is cap.NOT_YET
    os.write(parent, b'{"modu')
    assert messages.modules() is cap.NOT_YET
    os.write(parent, b'les": null}\n')
    assert messages.modules() is None

    # a parent that is gone never narrows the replay
    _, parent = pipes()
    os.write(parent, (json.dumps({"request": "/ref", "more": True}) + "\n").encode())
    cap.ask_parent([1])
    messages = cap.ParentMessages()
    os.close(parent)
    assert messages.modules() is cap.NOT_YET and messages.modules() is cap.NOT_YET


def test_replay_narrows_to_the_named_modules_once_told(captured, tmp_path):
    from transformers import AutoModelForCausalLM

    from ekka.tracer.capture import NOT_YET
    from ekka.tracer.replay import replay_modules
    from ekka.tracer.trace import TraceReader, TraceWriter

    trace = captured("transformers", "llama")
    model = AutoModelForCausalLM.from_pretrained(
        trace.manifest["model"], attn_implementation="eager"
    ).eval()
    modules = dict(model.named_modules())

    def replayed(until=None, only=None, name="all"):
        writer = TraceWriter(tmp_path / name, {})
        replay_modules(modules, trace.records, writer, str(trace.path), only, until=until)
        writer.close()
        return [r.name for r in TraceReader(tmp_path / name).records]

    every = replayed()
    assert len(every) >= 10 and "model.layers.1.mlp.down_proj" in every
    asked = []

    def until():
        asked.append(1)
        return NOT_YET if len(asked) <= 4 else [every[-1]]

    names = replayed(until, name="narrowed")
    leaves = list(
        dict.fromkeys(
            r.name for r in trace.records if r.pass_index == 0 and r.leaf and r.kind == "module"
        )
    )
    assert names == [n for n in leaves[:4] if n in every] + [every[-1]]
    assert len(asked) == 5  # asked before each module until told, then no more
