"""Trace storage: an ordered list of module records plus their tensors, on disk.

A trace is a folder:

    manifest.json            framework, model, dtype, prompt and generated ids, passes, records
    tensors-00000.safetensors  tensors, written incrementally in shards as the capture runs
    tensors-00001.safetensors  ...

Records are kept in call order. Tensors are buffered in memory up to `shard_bytes` and then
flushed to the next shard, so a capture never holds more than one shard in memory; the reader
opens shards lazily (memory-mapped) and loads one record's tensors at a time.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from ekka import codec
from ekka.codec import JsonRecord, Unknown
from ekka.errors import OutputFolderError, TraceFormatError
from ekka.tracer.metadata import ServingMetadata

if TYPE_CHECKING:
    from ekka.tracer.shards import ShardFile

FORMAT = "ekka-trace"
VERSION = 2  # 2: a pass's serving metadata is `serving` (a ServingMetadata), was `extra`
MANIFEST = "manifest.json"
DEFAULT_SHARD_BYTES = 256 * 1024 * 1024
REPLAY_FOLDER = "replay"  # a target trace's replays: a trace of their own, inside its folder
# Shards kept open (memory-mapped) per reader: two, while their files total at most
# OPEN_BYTES. Two: aligning reads a component's passes in turn, and a long trace's passes
# lie in consecutive shards (with one open, every read re-opened a shard). At most OPEN_BYTES: the pages of
# a mapped shard count in the process's resident memory once read, and two full shards
# (256 MiB each) open in each of three readers took the 8B-shaped analysis to 1.9-2.0 GB of
# peak resident memory, against 1.2-1.3 GB with one, in the same time.
OPEN_SHARDS = 2
OPEN_BYTES = 320 * 1024 * 1024


# Records and their tensors' metas are made by the hundred thousand from a long trace's
# manifest: plain slotted dataclasses, built a third faster than frozen ones (which set every
# field through `object.__setattr__`). Nothing changes them once read.
@dataclass(slots=True)
class TensorMeta:
    """Where one recorded tensor lives and what it looks like."""

    key: str
    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorMeta:
        return cls(key=data["key"], shape=tuple(data["shape"]), dtype=data["dtype"])


@dataclass(slots=True)
class Record:
    """One call of one module (or one synthetic capture point) in one forward pass.

    `outputs` are the module's flattened outputs in order (None where the output is not a
    tensor); `inputs` maps argument names ("0", "1", ... for positional arguments, the keyword
    otherwise) to tensors, and is filled for leaf modules only.
    """

    index: int
    name: str
    module_class: str
    source_file: str | None
    source_line: int | None
    step: int
    pass_index: int
    call_index: int
    outputs: tuple[TensorMeta | None, ...]
    inputs: tuple[tuple[str, TensorMeta], ...] = ()
    kind: str = "module"
    leaf: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        # positional, metas built in place: a long trace has hundreds of thousands of records
        meta = TensorMeta
        return cls(
            data["index"],
            data["name"],
            data["module_class"],
            data.get("source_file"),
            data.get("source_line"),
            data["step"],
            data["pass_index"],
            data["call_index"],
            tuple(
                [
                    None if o is None else meta(o["key"], tuple(o["shape"]), o["dtype"])
                    for o in data["outputs"]
                ]
            ),
            tuple(
                [
                    (k, meta(m["key"], tuple(m["shape"]), m["dtype"]))
                    for k, m in data.get("inputs", ())
                ]
            ),
            data.get("kind", "module"),
            data.get("leaf", False),
        )


@dataclass(frozen=True)
class TraceManifest(JsonRecord):
    """The manifest's header: what the capture knew when it started (the framework, the model,
    the request), what it found (written when it closes) and where its tensors lie. The
    manifest's `passes` and `records` are read beside it (`PassInfo`, `Record`). Keys it does
    not know are skipped, so that a trace written by an older Ekka still reads."""

    JSON_UNKNOWN: ClassVar[Unknown] = "ignore"

    framework: str
    format: str = FORMAT
    version: int = VERSION
    framework_version: str | None = None
    framework_commit: str | None = None  # None: not a git checkout
    framework_path: str | None = None  # where its sources were imported from
    model: str = ""
    dtype: str = "float32"
    prompt: str | None = None
    prompt_ids: tuple[int, ...] = ()
    max_tokens: int = 0
    engine: Mapping[str, Any] = field(default_factory=dict)  # the engine's keyword arguments
    model_config: Mapping[str, Any] = field(default_factory=dict)  # the model's config.json
    model_class: str | None = None
    # vLLM: the requests around the traced one ({"before": [ids...], "alongside": [...],
    # "traced_at": index or null})
    scenario: Mapping[str, Any] | None = None
    replay_of: str | None = None  # a replay trace: the trace whose modules it replayed
    # --- written when the capture closes
    generated_ids: tuple[int, ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds, by phase
    model_source: tuple[str | None, int | None] = (None, None)  # the model class's file, line
    # per module, the framework objects it holds that are not modules: class, file, line
    delegates: Mapping[str, tuple[tuple[str, str | None, int | None], ...]] = field(
        default_factory=dict
    )
    # every module by name: class, file, line
    modules: Mapping[str, tuple[str, str | None, int | None]] = field(default_factory=dict)
    requests: Mapping[str, tuple[int, ...]] | None = None  # a scenario's tokens, by label
    replayed: int | None = None  # a replay trace: the modules replayed
    complete: bool = False  # False: the capture failed, the trace holds what came before
    shards: tuple[str, ...] = ()  # the shard files, in order
    key_shards: Mapping[str, int] = field(default_factory=dict)  # tensor key -> its shard
    write_seconds: float = 0.0  # what closing cost


@dataclass(frozen=True)
class PassInfo:
    """One forward pass of the engine: which step it belongs to and which tokens it computed.

    `step` is 0 for the prefill (which may span several passes when it is chunked) and k for
    the k-th decode step. `positions` are the token positions (in the request) of the rows
    the pass computed, in row order. `serving` is what the scheduler placed and the model was
    given (None where the framework has no scheduler to read: the reference).
    """

    index: int
    step: int
    input_ids: tuple[int, ...]
    positions: tuple[int, ...]
    serving: ServingMetadata | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PassInfo:
        if isinstance(data, Mapping) and "extra" in data:  # version 1: a dict, {} for none
            data = {k: v for k, v in data.items() if k != "extra"} | {
                "serving": data["extra"] or None
            }
        return codec.decode(cls, data, error=TraceFormatError, what="pass")


def is_trace(path: str | Path) -> bool:
    """True when `path` holds an Ekka trace manifest."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return bool(orjson.loads(manifest.read_bytes()).get("format") == FORMAT)
    except (OSError, ValueError, AttributeError):
        return False


def prepare_output(path: str | Path) -> Path:
    """Make `path` ready for a new trace: create it, or clear an earlier trace in it.

    A folder that exists and holds anything other than an Ekka trace is refused, so that a
    mistyped path never deletes a user's files.
    """
    out = Path(path)
    if out.exists():
        if not out.is_dir():
            raise OutputFolderError(f"--out {out} exists and is a file; give a folder path.")
        if any(out.iterdir()):
            if not is_trace(out):
                raise OutputFolderError(
                    f"--out {out} exists, is not empty and is not an Ekka trace; "
                    "choose a new folder or remove it first."
                )
            for child in out.iterdir():
                if child.name == MANIFEST or (
                    child.name.startswith("tensors-") and child.suffix == ".safetensors"
                ):
                    child.unlink()
                elif child.is_dir():
                    shutil.rmtree(child)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _dtype_name(tensor: Any) -> str:
    name = str(tensor.dtype).removeprefix("torch.")
    _DTYPE_NAMES[tensor.dtype] = name
    return name


_DTYPE_NAMES: dict[Any, str] = {}


class TraceWriter:
    """Writes records and their tensors incrementally; `close()` writes the manifest."""

    def __init__(
        self,
        path: str | Path,
        header: TraceManifest,
        *,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
    ) -> None:
        self.path = prepare_output(path)
        self.header = header
        self.shard_bytes = shard_bytes
        self.records: list[Record] = []
        self.passes: list[PassInfo] = []
        self.shards: list[str] = []
        self._buffer: dict[str, Any] = {}
        self._buffered = 0
        self._key_shard: dict[str, int] = {}
        self._serial = 0  # the next record's tensor key prefix
        self._closed = False

    def _put(self, key: str, tensor: Any) -> TensorMeta:
        if isinstance(tensor, TensorMeta):  # a tensor stored already: the record refers to it
            return tensor
        if tensor.device.type != "cpu" or not tensor.is_contiguous():
            tensor = tensor.detach().contiguous().cpu()
        self._buffer[key] = tensor
        self._buffered += tensor.nbytes
        if self._buffered >= self.shard_bytes:
            self.flush()
        dtype = _DTYPE_NAMES.get(tensor.dtype) or _dtype_name(tensor)
        return TensorMeta(key, tuple(tensor.shape), dtype)

    def add(
        self,
        *,
        name: str,
        module_class: str,
        source_file: str | None,
        source_line: int | None,
        step: int,
        pass_index: int,
        call_index: int,
        outputs: Sequence[Any | None],
        inputs: Mapping[str, Any] | None = None,
        kind: str = "module",
        leaf: bool = False,
    ) -> Record:
        """Append one record; tensors must already be copies the framework will not reuse.

        An item may be the TensorMeta of a tensor stored before: the record then refers to it.
        """
        index = len(self.records)
        prefix = f"{self._serial:07d}."
        self._serial += 1
        out_meta = tuple(
            [None if t is None else self._put(f"{prefix}out.{i}", t) for i, t in enumerate(outputs)]
        )
        in_meta = (
            tuple(
                [(k, self._put(f"{prefix}in.{k}", t)) for k, t in inputs.items() if t is not None]
            )
            if inputs
            else ()
        )
        record = Record(
            index,
            name,
            module_class,
            source_file,
            source_line,
            step,
            pass_index,
            call_index,
            out_meta,
            in_meta,
            kind,
            leaf,
        )
        self.records.append(record)
        return record

    def add_pass(self, info: PassInfo) -> None:
        self.passes.append(info)

    def flush(self) -> None:
        """Write the buffered tensors to the next shard and free them."""
        if not self._buffer:
            return
        name = f"tensors-{len(self.shards):05d}.safetensors"
        for key in self._buffer:
            self._key_shard[key] = len(self.shards)
        self.shards.append(name)
        from ekka.tracer.shards import write_shard  # torch: only where tensors are written

        write_shard(self.path / name, self._buffer)
        self._buffer, self._buffered = {}, 0

    def close(self, *, complete: bool = True, **found: Any) -> Path:
        """Flush the last shard and write the manifest (`complete` False after a failure);
        `found`: the manifest's fields the capture found (`generated_ids`, `timings`, ...).

        The manifest's `write_seconds` is what closing cost (the last shard and the records'
        serialization), so that a capture's cost can be told in full.
        """
        if self._closed:
            return self.path
        start = time.perf_counter()
        self.flush()
        head = dataclasses.replace(
            self.header,
            **found,
            format=FORMAT,
            version=VERSION,
            complete=complete,
            shards=tuple(self.shards),
            key_shards=dict(self._key_shard),
        )
        self._write_manifest(head, start)
        self._closed = True
        return self.path

    def _write_manifest(self, head: TraceManifest, start: float) -> None:
        """The manifest: the header, what closing cost, the passes and the records. orjson
        writes the records and passes (dataclasses) as their fields, without a dict per record
        built in Python; keys as `json` writes them (1 -> "1")."""
        head = dataclasses.replace(head, write_seconds=time.perf_counter() - start)
        manifest = {**head.to_json(), "passes": self.passes, "records": self.records}
        data = orjson.dumps(manifest, default=str, option=orjson.OPT_NON_STR_KEYS)
        tmp = self.path / (MANIFEST + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(self.path / MANIFEST)


class TraceReader:
    """Reads a trace back: records in call order, tensors loaded lazily one record at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise TraceFormatError(
                f"{self.path} is not a folder; give the --out folder of `ekka trace`."
            )
        try:  # read once: the manifest of a long capture is megabytes of JSON
            manifest = orjson.loads((self.path / MANIFEST).read_bytes())
        except (OSError, ValueError):
            manifest = None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise TraceFormatError(
                f"{self.path} holds no Ekka trace ({MANIFEST} missing or not ours)."
            )
        if manifest.get("version", 0) > VERSION:
            raise TraceFormatError(
                f"{self.path} was written by a newer Ekka (trace version {manifest['version']})."
            )
        header = {k: v for k, v in manifest.items() if k not in ("passes", "records")}
        self.manifest = codec.decode(
            TraceManifest,
            header,
            error=TraceFormatError,
            what=f"trace {self.path}",
            unknown="ignore",
        )
        self.records = [Record.from_json(r) for r in manifest["records"]]
        self.passes = [PassInfo.from_json(p) for p in manifest.get("passes", [])]
        self._key_shard = self.manifest.key_shards
        self._handles: dict[int, ShardFile] = {}  # open shards, least recently used first

    # header fields
    @property
    def framework(self) -> str:
        return self.manifest.framework

    @property
    def dtype(self) -> str:
        return self.manifest.dtype

    @property
    def prompt_ids(self) -> list[int]:
        return list(self.manifest.prompt_ids)

    @property
    def generated_ids(self) -> list[int]:
        return list(self.manifest.generated_ids)

    @property
    def complete(self) -> bool:
        return self.manifest.complete

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def select(self, *, step: int | None = None, name: str | None = None) -> list[Record]:
        return [
            r
            for r in self.records
            if (step is None or r.step == step) and (name is None or r.name == name)
        ]

    def _tensor(self, meta: TensorMeta) -> Any:
        shard = self._key_shard.get(meta.key)
        if shard is None:
            raise TraceFormatError(
                f"{self.path}: tensor {meta.key} is listed but was never written."
            )
        return self._shard(shard).get(meta.key)

    def stacked_rows(self, metas: Sequence[TensorMeta]) -> Any | None:
        """The 2-D tensors `metas` one under the other (`[rows, width]`), read in one gather
        when they lie in one shard with one dtype and width; None otherwise (read them one by
        one)."""
        shards = {self._key_shard.get(m.key) for m in metas}
        shard = shards.pop() if len(shards) == 1 else None
        if shard is None:
            return None
        return self._shard(shard).stacked_rows([m.key for m in metas])

    def _shard(self, shard: int) -> ShardFile:
        handle = self._handles.pop(shard, None)
        if handle is None:
            from ekka.tracer.shards import ShardFile  # torch: only where tensors are read

            handle = ShardFile(self.path / self.manifest.shards[shard])
            # keep the mapped memory bounded: the least recently used go first
            open_bytes = handle.size + sum(h.size for h in self._handles.values())
            while self._handles and (len(self._handles) >= OPEN_SHARDS or open_bytes > OPEN_BYTES):
                open_bytes -= self._handles.pop(next(iter(self._handles))).size
        self._handles[shard] = handle
        return handle

    def outputs(self, record: Record) -> list[Any | None]:
        """The record's output tensors (None where the output was not a tensor)."""
        return [None if m is None else self._tensor(m) for m in record.outputs]

    def inputs(self, record: Record) -> dict[str, Any]:
        return {k: self._tensor(m) for k, m in record.inputs}

    def stream(self) -> Iterator[tuple[Record, list[Any | None]]]:
        """Records with their outputs, in call order, one at a time."""
        for record in self.records:
            yield record, self.outputs(record)

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
