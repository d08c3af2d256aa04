"""Capture a trace of one prompt through a framework: the entry point of the tracer.

`capture(spec)` validates the input (model folder, shapes, prompt length, output folder),
then runs the framework's adapter: transformers in this process, vLLM in a fresh subprocess
(so that a patched copy of vLLM's sources can be put first on PYTHONPATH, and so that the
engine's global state never leaks into the caller).
"""

from __future__ import annotations

import gc
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ekka.errors import (
    CaptureError,
    ModelFolderError,
    OutputFolderError,
    PromptTooLongError,
    UnsupportedShapeError,
    UsageError,
)
from ekka.tracer.trace import TraceReader, is_trace, start_bare_thread

FRAMEWORKS = ("vllm", "transformers")
DTYPES = ("float32", "bfloat16")
# Head sizes vLLM 0.32.0's CPU attention accepts ("Unsupported CPU attention configuration" else).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class CaptureSpec:
    """Everything one capture needs; crosses the process boundary as JSON."""

    framework: str
    model: str
    prompt_ids: tuple[int, ...]
    out: str
    dtype: str = "float32"
    max_tokens: int = 4
    modules: tuple[str, ...] = ()
    steps: str = "all"
    prompt_text: str | None = None
    engine: Mapping[str, Any] = field(default_factory=dict)
    shard_bytes: int = 256 * 1024 * 1024
    # transformers only: teacher forcing. One forward pass over prompt + forced_ids (the tokens
    # the target generated), so that every target pass can be compared at the same positions.
    forced_ids: tuple[int, ...] = ()
    # vLLM only: a reference trace covering the prompt (a prefill, or a teacher-forced pass);
    # leaf modules are replayed on its inputs.
    replay_reference: str | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data["engine"] = dict(self.engine)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> CaptureSpec:
        data = json.loads(text)
        data["prompt_ids"] = tuple(data["prompt_ids"])
        data["modules"] = tuple(data["modules"])
        data["forced_ids"] = tuple(data.get("forced_ids", ()))
        return cls(**data)


def read_config(model: str | Path) -> dict[str, Any]:
    """The model folder's config.json, or a ModelFolderError that says what is missing."""
    path = Path(model)
    if not path.exists():
        raise ModelFolderError(
            f"model folder {path} does not exist; build one with `ekka zoo build ARCH --out {path}`."
        )
    if not path.is_dir():
        raise ModelFolderError(f"--model {path} is a file; give the model's folder.")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelFolderError(
            f"model folder {path} has no config.json: it is not a model folder or it is incomplete."
        )
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise ModelFolderError(f"{config_file} is not valid JSON ({exc}).") from None
    if not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
        raise ModelFolderError(
            f"model folder {path} has no weights (*.safetensors): it is incomplete; rebuild it."
        )
    if not config.get("architectures"):
        raise ModelFolderError(f"{config_file} names no architecture (`architectures` is empty).")
    return dict(config)


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    return config.get("text_config") or config


def head_size(config: Mapping[str, Any]) -> int:
    cfg = text_config(config)
    if cfg.get("head_dim"):
        return int(cfg["head_dim"])
    return int(cfg["hidden_size"]) // int(cfg["num_attention_heads"])


def check_cpu_shapes(config: Mapping[str, Any]) -> None:
    """Refuse shapes vLLM's CPU backend rejects, with the fix."""
    size = head_size(config)
    if size not in CPU_HEAD_SIZES:
        sizes = ", ".join(map(str, CPU_HEAD_SIZES))
        raise UnsupportedShapeError(
            f"head size {size} is not supported by vLLM's CPU attention (supported: {sizes}); "
            "rebuild the model with a supported one, e.g. `--set head_dim=64` "
            "(or hidden_size = 64 x num_attention_heads)."
        )


def context_length(config: Mapping[str, Any]) -> int | None:
    cfg = text_config(config)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if cfg.get(key):
            return int(cfg[key])
    return None


def check_prompt_length(config: Mapping[str, Any], prompt_len: int, max_tokens: int) -> None:
    limit = context_length(config)
    if prompt_len == 0:
        raise UsageError("the prompt is empty; give --prompt TEXT or --prompt-ids 1,2,3.")
    if limit is not None and prompt_len + max_tokens > limit:
        raise PromptTooLongError(
            f"the prompt has {prompt_len} tokens and --max-tokens is {max_tokens}, but the model's "
            f"context is {limit} tokens; shorten the prompt or lower --max-tokens to at most "
            f"{max(limit - prompt_len, 0)}."
        )


def check_vocab(config: Mapping[str, Any], ids: Sequence[int]) -> None:
    vocab = text_config(config).get("vocab_size")
    bad = [i for i in ids if i < 0 or (vocab is not None and i >= int(vocab))]
    if bad:
        raise UsageError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab}).")


def parse_prompt_ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise UsageError(
            f"--prompt-ids {text!r}: give comma-separated integers like 1,2,3."
        ) from None


def tokenize(model: str | Path, prompt: str) -> list[int]:
    """The prompt's token ids with the model folder's own tokenizer (special tokens added)."""
    path = Path(model)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise ModelFolderError(
            f"model folder {path} has no tokenizer; pass --prompt-ids instead of --prompt, "
            "or rebuild it with `ekka zoo build`."
        )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return list(tokenizer(prompt)["input_ids"])


def resolve_prompt(
    model: str | Path, prompt: str | None, prompt_ids: str | Sequence[int] | None
) -> list[int]:
    if (prompt is None) == (prompt_ids is None):
        raise UsageError("give exactly one of --prompt TEXT and --prompt-ids 1,2,3.")
    if prompt is not None:
        return tokenize(model, prompt)
    if isinstance(prompt_ids, str):
        return parse_prompt_ids(prompt_ids)
    return list(prompt_ids or [])


def validate(spec: CaptureSpec) -> dict[str, Any]:
    """Check everything a user can get wrong before a framework starts; returns the config."""
    if spec.framework not in FRAMEWORKS:
        raise UsageError(
            f"unknown framework {spec.framework!r}; use one of {', '.join(FRAMEWORKS)}."
        )
    if spec.dtype not in DTYPES:
        raise UsageError(f"unknown dtype {spec.dtype!r}; use one of {', '.join(DTYPES)}.")
    if spec.max_tokens < 1:
        raise UsageError("--max-tokens must be at least 1.")
    config = read_config(spec.model)
    if spec.framework == "vllm":
        check_cpu_shapes(config)
    check_prompt_length(config, len(spec.prompt_ids), spec.max_tokens)
    check_vocab(config, spec.prompt_ids)
    out = Path(spec.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_trace(out))):
        raise OutputFolderError(
            f"--out {out} exists and is not an Ekka trace; choose a new folder or remove it first."
        )
    return config


# OpenMP's idle threads spin before they sleep: GNU libgomp for 300,000 rounds by default (about
# 10 ms of a core after each operation here), Intel's for 200 ms. After the traced request the
# target's threads spun on a core that the caller's references needed while the target wrote
# its trace: on two cores the references' pass took 20 ms instead of 9. Shorter spins still
# span the gaps between the operations of a forward pass. A value the user has set is kept.
SHORT_SPIN = {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "1"}


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cycle collector off for a short phase that makes almost no cycles but many
    objects: a full collection in a process that has imported torch and transformers (or
    vLLM) walks millions of objects (a quarter of a second, measured here), and the hooks'
    allocations set off younger ones. Freed memory is still freed at once (reference counts);
    the collector runs again afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _subprocess_env(pythonpath: Sequence[str | Path] = ()) -> dict[str, str]:
    env = dict(os.environ)
    ekka_root = str(Path(__file__).resolve().parents[2])
    parts = [str(Path(p).resolve()) for p in pythonpath] + [ekka_root]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    for name, value in SHORT_SPIN.items():
        env.setdefault(name, value)
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


# Called by a vLLM capture once its trace is written, with the generated token ids; returns
# what to replay: {"replay_reference": trace path, "modules": names or None for every leaf},
# a bare path (every leaf), or None (no replay); or a function that returns it once ready (the
# answer is then sent from a thread while `while_replaying` runs).
ReplayRequest = "dict[str, Any] | str | None"
AfterGenerate = Callable[[list[int]], ReplayRequest]
# Called here with no argument right after the target's process starts (while its engine
# starts).
Hook = Callable[[], None]
# Called here once the target is ready to trace (its engine started, a short request traced
# into a scratch trace), with that scratch trace's folder (None where there is none): the
# target waits until it returns, then times its untraced requests and makes the traced one.
TracingHook = Callable[["Path | None"], None]
# Called here with the generated ids as soon as the target has them, before its trace is
# written, and a function that says whether the target has finished writing it (it waits).
TokensHook = Callable[[list[int], Callable[[], bool]], None]
# Called here once the answer is sent, while the target replays every leaf in call order: the
# modules the replay must cover (the target replays those it has not reached, and stops).
ReplayingHook = Callable[[], "list[str] | None"]
TRACING_EVENT = "tracing"
# The target's traced warm-up request: this many prompt tokens (a prefill) and one decode step;
# a reference's scratch pass covers its positions.
WARMUP_PROMPT_TOKENS = 16
TOKENS_EVENT = "tokens"
CONTROL_ENV = "EKKA_CAPTURE_CONTROL"  # "WRITE_FD,READ_FD" of the pipes to the parent


def capture(
    spec: CaptureSpec,
    *,
    pythonpath: Sequence[str | Path] = (),
    timeout: float | None = None,
    in_process: bool | None = None,
    after_generate: AfterGenerate | None = None,
    while_starting: Hook | None = None,
    when_tracing: TracingHook | None = None,
    when_tokens: TokensHook | None = None,
    while_replaying: ReplayingHook | None = None,
) -> TraceReader:
    """Capture `spec` and return a reader on the written trace.

    vLLM runs in a subprocess (with `pythonpath` first on its path: a patched copy of the
    framework's sources); transformers runs here unless `in_process` is False.

    `after_generate` (vLLM only) runs here while the target's process waits, its trace written:
    it gets the generated ids (to teacher-force references on them, and to analyse the trace)
    and returns what to replay, on which reference; the target's process then replays those
    modules into `<out>/replay`. `timeout` bounds the target's own time, not the time spent in
    `after_generate`. `while_starting` runs here as soon as the target's process has started
    (its engine is starting): work that does not need the target (loading the reference) runs
    there, alongside it. `when_tracing(scratch)` runs once the target is ready to trace (its
    engine started, a short request traced into the scratch trace in folder `scratch`, which
    exists until it returns), while the target waits: the target's timed untraced requests
    and its traced one come after it, so that they never share the cores with this process's
    work. `when_tokens(generated, written)` runs as soon as the target has its tokens, while
    its process still writes the trace (teacher forcing can start there);
    `written()` tells, without waiting, whether the target has finished writing;
    `after_generate` follows once the trace is written. They too are vLLM only.

    `while_replaying` (vLLM only, with `after_generate`) runs here once the answer is sent: the
    target's process replays every replayable leaf of its first pass in call order meanwhile,
    and once `while_replaying` returns the names of the modules that matter (None: all), it
    replays those it has not reached yet and stops. The caller's analysis and the replay so
    overlap; in one process they take turns.
    """
    validate(spec)
    spec = replace(spec, model=str(Path(spec.model).resolve()), out=str(Path(spec.out).resolve()))
    hooks = (after_generate, while_starting, when_tracing, when_tokens, while_replaying)
    if any(h is not None for h in hooks) and spec.framework != "vllm":
        raise ValueError(
            "after_generate, while_starting, when_tracing, when_tokens and while_replaying are for vLLM captures only."
        )
    if while_replaying is not None and after_generate is None:
        raise ValueError(
            "while_replaying needs after_generate (the answer that names the reference to replay on)."
        )
    if in_process is None:
        in_process = spec.framework == "transformers" and not pythonpath
    if in_process:
        if spec.framework == "vllm":
            from ekka.tracer.adapters import vllm as adapter

            if while_starting is not None:
                while_starting()
            if after_generate is not None:  # in one process the analysis comes before the replay
                after_generate = _in_turn(after_generate, while_replaying)
            if when_tokens is not None:  # in one process the trace is written before either runs
                after_generate = _tokens_then(when_tokens, after_generate or _no_replay)
            adapter.run(spec, after_generate=after_generate, when_tracing=when_tracing)
        else:
            from ekka.tracer.adapters import transformers as adapter  # type: ignore[no-redef]

            adapter.run(spec)
        return TraceReader(spec.out)
    return _capture_subprocess(
        spec,
        pythonpath=pythonpath,
        timeout=timeout,
        after_generate=after_generate,
        while_starting=while_starting,
        when_tracing=when_tracing,
        when_tokens=when_tokens,
        while_replaying=while_replaying,
    )


def _capture_subprocess(
    spec: CaptureSpec,
    *,
    pythonpath: Sequence[str | Path],
    timeout: float | None,
    after_generate: AfterGenerate | None = None,
    while_starting: Hook | None = None,
    when_tracing: TracingHook | None = None,
    when_tokens: TokensHook | None = None,
    while_replaying: ReplayingHook | None = None,
) -> TraceReader:
    module = f"ekka.tracer.adapters.{spec.framework}"
    with tempfile.TemporaryDirectory(prefix="ekka-capture-") as tmp:
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(spec.to_json())
        log_file = Path(tmp) / "log.txt"
        env = _subprocess_env(pythonpath)
        fds: tuple[int, ...] = ()
        if after_generate is None and (when_tracing or when_tokens) is not None:
            after_generate = _no_replay
        if after_generate is not None:
            from_child, child_out = os.pipe()
            child_in, to_child = os.pipe()
            fds = (child_out, child_in)
            env[CONTROL_ENV] = f"{child_out},{child_in}"
        with open(log_file, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, str(spec_file)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp,
                pass_fds=fds,
            )
            for fd in fds:
                os.close(fd)
            try:
                waited = 0.0
                if while_starting is not None:
                    while_starting()
                if after_generate is not None:
                    waited = _serve_child(
                        proc,
                        from_child,
                        to_child,
                        after_generate,
                        timeout,
                        when_tracing,
                        when_tokens,
                        while_replaying,
                    )
                proc.wait(timeout=None if timeout is None else max(timeout - waited, 1.0))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise CaptureError(
                    f"{spec.framework} capture did not finish within {timeout:.0f} s."
                ) from None
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                if after_generate is not None:
                    for fd in (from_child, to_child):
                        try:
                            os.close(fd)
                        except OSError:
                            pass
        if proc.returncode != 0:
            tail = log_file.read_text(errors="replace")[-4000:]
            error_line = _last_error_line(tail)
            raise CaptureError(
                f"{spec.framework} capture failed (exit code {proc.returncode}): {error_line}\n"
                f"--- last lines of its log ---\n{tail}"
            )
    return TraceReader(spec.out)


def _no_replay(_generated: list[int]) -> None:
    return None


def _replay_request(request: Any) -> dict[str, Any] | None:
    """A replay request as a dict (a bare path: every leaf on that reference)."""
    if isinstance(request, (str, Path)):
        return {"replay_reference": str(request), "modules": None}
    return request if isinstance(request, dict) else None


def _in_turn(after_generate: AfterGenerate, while_replaying: ReplayingHook | None) -> AfterGenerate:
    """In one process: the answer (a deferred one awaited), then `while_replaying`, whose
    modules the replay covers."""

    def both(generated: list[int]) -> Any:
        request = after_generate(generated)
        request = _replay_request(request() if callable(request) else request)
        if while_replaying is None:
            return request
        modules = while_replaying()
        return None if request is None else {**request, "modules": modules}

    return both


def _tokens_then(when_tokens: TokensHook, after_generate: AfterGenerate) -> AfterGenerate:
    def both(generated: list[int]) -> Any:
        when_tokens(generated, lambda: True)
        return after_generate(generated)

    return both


def _serve_child(
    proc: subprocess.Popen[Any],
    from_child: int,
    to_child: int,
    after_generate: AfterGenerate,
    timeout: float | None,
    when_tracing: TracingHook | None = None,
    when_tokens: TokensHook | None = None,
    while_replaying: ReplayingHook | None = None,
) -> float:
    """Serve the child's messages (one JSON line each) until it asks with its generated ids (its
    trace written), and answer with `after_generate`'s request. Its "tracing" event runs
    `when_tracing`, then tells the child to go on (it waits); its "tokens" event (the ids,
    before the trace is written) `when_tokens`.
    With `while_replaying`, the answer tells the child to replay every leaf until a second
    message names the modules that matter: `while_replaying`'s result, sent once it returns (a
    child that finished every leaf first waits for it, so that its exit does not take a core
    from `while_replaying`; one that is gone meanwhile needed nothing more).

    Returns the seconds the child had used by then (its time budget continues after). A child
    that exits without asking (it failed) is left for the caller to report.
    """
    start = time.monotonic()
    busy = 0.0  # time spent here in `when_tracing` and `when_tokens`, not the child's
    data = b""
    while True:
        while b"\n" not in data:
            left = None if timeout is None else timeout - (time.monotonic() - start - busy)
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(proc.args, timeout or 0)
            ready, _, _ = select.select([from_child], [], [], left)
            if not ready:
                continue
            chunk = os.read(from_child, 65536)
            if not chunk:  # the child is gone before asking: its exit code and log tell why
                return time.monotonic() - start - busy
            data += chunk
        line, data = data.split(b"\n", 1)
        message = json.loads(line.decode())
        event = message.get("event")
        if event in (TRACING_EVENT, TOKENS_EVENT):
            t = time.monotonic()
            if event == TRACING_EVENT:
                if when_tracing is not None:
                    scratch = message.get("scratch")
                    when_tracing(Path(scratch) if scratch else None)
                try:
                    os.write(to_child, (json.dumps({"go": True}) + "\n").encode())
                except BrokenPipeError:  # the child is gone: its exit code and log tell why
                    pass
            elif event == TOKENS_EVENT and when_tokens is not None:
                told = [int(i) for i in message["generated_ids"]]
                when_tokens(told, lambda: bool(select.select([from_child], [], [], 0)[0]))
            busy += time.monotonic() - t
            continue
        break
    used = time.monotonic() - start - busy
    generated = [int(i) for i in message["generated_ids"]]
    request = after_generate(generated)
    sent: dict[str, Any] = {}

    def answer() -> None:
        try:
            ready = request() if callable(request) else request
            sent["more"] = while_replaying is not None and _replay_request(ready) is not None
            os.write(
                to_child, (json.dumps({"request": ready, "more": sent["more"]}) + "\n").encode()
            )
        except BaseException as exc:  # raised here once the caller's work is done
            sent["error"] = exc

    # A deferred answer (a function: the reference still being written, say) is sent from a
    # thread once it is ready, while `while_replaying` runs here.
    helper = start_bare_thread(answer) if callable(request) else None
    if helper is None:
        answer()
    try:
        modules = while_replaying() if while_replaying is not None else None
    finally:
        if helper is not None:
            helper.wait()
    if "error" in sent:
        raise sent["error"]
    if sent.get("more"):
        try:
            os.write(to_child, (json.dumps({"modules": modules}) + "\n").encode())
        except BrokenPipeError:  # the child is gone (its replay ended or failed): it needs no more
            pass
    return used


def tell_parent(event: str, **fields: Any) -> None:
    """In a capture subprocess started with `after_generate`: tell the parent `event`."""
    control = os.environ.get(CONTROL_ENV)
    if control:
        os.write(
            int(control.split(",")[0]), (json.dumps({"event": event, **fields}) + "\n").encode()
        )


def wait_for_parent() -> None:
    """In a capture subprocess started with `after_generate`, after its "tracing" event: wait
    until the parent says to go on (or is gone)."""
    control = os.environ.get(CONTROL_ENV)
    if control:
        _read_line(int(control.split(",")[1]))


def _read_line(fd: int) -> bytes | None:
    """The parent's next message (None when it is gone); what comes with it is kept for the
    next read."""
    data, _UNREAD[0] = _UNREAD[0], b""
    while b"\n" not in data:
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        data += chunk
    line, _UNREAD[0] = data.split(b"\n", 1)
    return line


def ask_parent(generated: list[int]) -> Any:
    """In a capture subprocess started with `after_generate`: send the generated ids to the
    parent and wait for its answer (what to replay). None when not started so."""
    control = os.environ.get(CONTROL_ENV)
    if not control:
        return None
    write_fd, read_fd = (int(x) for x in control.split(","))
    os.write(write_fd, (json.dumps({"generated_ids": generated}) + "\n").encode())
    line = _read_line(read_fd)
    if line is None:
        raise CaptureError(
            "the capturing process stopped answering (it failed or was interrupted)."
        )
    message = json.loads(line.decode())
    request = message.get("request")
    if message.get("more"):
        request = {**(_replay_request(request) or {}), "more": True}
    return request


NOT_YET = "not yet"
_UNREAD = [b""]  # what a capture subprocess read from the parent past the answer


class ParentMessages:
    """In a capture subprocess told to replay `more`: the parent's second message, the modules
    that matter, read without waiting (`modules()` is NOT_YET until it has come, then its list,
    or None for every module)."""

    def __init__(self) -> None:
        control = os.environ.get(CONTROL_ENV, "")
        self._fd = int(control.split(",")[1]) if control else None
        self._data, _UNREAD[0] = _UNREAD[0], b""
        self._told: Any = NOT_YET

    def modules(self, wait: bool = False) -> Any:
        """The modules told (NOT_YET until they are; with `wait`, until the parent tells them
        or is gone)."""
        if self._told is not NOT_YET or self._fd is None:
            return self._told
        while b"\n" not in self._data and select.select([self._fd], [], [], None if wait else 0)[0]:
            chunk = os.read(self._fd, 65536)
            if not chunk:  # the parent is gone: nothing will narrow the replay
                self._fd = None
                return NOT_YET
            self._data += chunk
        if b"\n" in self._data:
            told = json.loads(self._data.split(b"\n", 1)[0].decode()).get("modules")
            self._told = None if told is None else [str(name) for name in told]
        return self._told


def _last_error_line(log: str) -> str:
    for line in reversed(log.strip().splitlines()):
        if "Error" in line or "error" in line:
            return line.strip()
    return "see the log below"
