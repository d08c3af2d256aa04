"""The messages between the parent and the target's process, and the line between the sides."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ekka.errors import ProtocolError
from ekka.tracer.protocol import (
    MESSAGES,
    CaptureSpec,
    Channel,
    Close,
    Failed,
    Ready,
    Replay,
    Replayed,
    Start,
    Tokens,
    Trace,
    Written,
    decode,
    encode,
)
from tests.test_layering import INSIDE  # the line between the sides, with its static check

SPEC = CaptureSpec(
    framework="vllm",
    model="/m",
    prompt_ids=(1, 2, 3),
    out="/o",
    dtype="bfloat16",
    modules=("model.layers.0.*",),
    engine={"max_num_batched_tokens": 16, "enable_prefix_caching": False},
    logits_only=True,
)
EXAMPLES = [
    Start(SPEC),
    Ready("vllm", "0.32.0", None, "/site-packages/vllm", 12.5),
    Trace(),
    Tokens((5, 6, 7)),
    Written("/o", 0.25),
    Replay("/r", ("model.norm",)),
    Replay("/r", None),
    Replayed("/o/replay", 1),
    Close(),
    Failed("ValueError: bad", "Traceback ..."),
]


def test_every_message_kind_has_an_example():
    assert {type(m) for m in EXAMPLES} == set(MESSAGES.values())


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_as_one_json_line_with_its_type(message):
    line = encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["type"] == message.type
    assert decode(line) == message


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "no `type`"),
        (b'{"generated_ids": [1]}', "no `type`"),
        (b'{"type": "explode"}', "unknown message type 'explode'"),
        (b'{"type": "tokens"}', "missing field 'generated_ids'"),
        (b'{"type": "tokens", "generated_ids": [1], "extra": 2}', "unknown field(s) extra"),
        (b'{"type": "tokens", "generated_ids": "123"}', "field 'generated_ids'"),
        (b'{"type": "tokens", "generated_ids": [1, "2"]}', "field 'generated_ids'"),
        (b'{"type": "tokens", "generated_ids": [true]}', "field 'generated_ids'"),
        (b'{"type": "written", "path": 3, "seconds": 1}', "field 'path'"),
        (b'{"type": "replayed", "path": "/p", "count": 1.5}', "field 'count'"),
        (b'{"type": "start", "spec": {"framework": "vllm"}}', "missing field 'model'"),
        (b'{"type": "start", "spec": 7}', "not an object"),
    ],
)
def test_an_unknown_or_malformed_message_is_an_error_that_quotes_it(line, says):
    with pytest.raises(ProtocolError) as caught:
        decode(line)
    assert says in str(caught.value)
    assert line.decode()[:20] in str(caught.value)


def test_a_capture_spec_round_trips_with_its_engine_arguments():
    data = json.loads(json.dumps(SPEC.to_json()))
    assert CaptureSpec.from_json(data) == SPEC


def test_a_channel_carries_messages_both_ways_and_tells_the_end_and_the_silence():
    a_read, b_write = os.pipe()
    b_read, a_write = os.pipe()
    a, b = Channel(a_read, a_write), Channel(b_read, b_write)
    a.send(Trace())
    a.send(Replay("/r", None))
    assert b.receive(1) == Trace() and b.receive(1) == Replay("/r", None)
    with pytest.raises(TimeoutError):
        b.receive(0.05)
    b.send(Tokens((1,)))
    assert a.receive(1) == Tokens((1,))
    a.close()
    assert b.receive(1) is None  # the other side is gone
    with pytest.raises(BrokenPipeError):
        b.send(Close())
    b.close()


ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_target_adapter_loads_the_inside_only():
    code = (
        "import sys, ekka.tracer.adapters.vllm, ekka.tracer.adapters.vllm_replay,"
        " ekka.tracer.adapters.sglang, ekka.tracer.adapters.sglang_hooks,"
        " ekka.tracer.hooks; print(sorted(m for m in sys.modules if m.startswith('ekka')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    loaded = set(ast.literal_eval(done.stdout.strip()))
    assert loaded <= INSIDE, sorted(loaded - INSIDE)


def test_a_users_engine_arguments_win_over_ekkas_defaults():
    from ekka.tracer.adapters.vllm import ENGINE_DEFAULTS, engine_arguments

    assert engine_arguments({}, 128) == {**ENGINE_DEFAULTS, "max_model_len": 128}
    assert engine_arguments({}, None)["max_model_len"] == 4096
    chosen = engine_arguments({"gpu_memory_utilization": 0.9, "max_model_len": 64}, 8192)
    assert chosen["gpu_memory_utilization"] == 0.9 and chosen["max_model_len"] == 64
    assert chosen["enforce_eager"] is True
