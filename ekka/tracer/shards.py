"""Trace shards: plain safetensors files, written and read without per-tensor library overhead.

A capture records hundreds of small tensors per step. `safetensors.torch.save_file` spends
most of its time per tensor in Python (a shared-storage search and a NumPy round trip), and
`safe_open(...).get_tensor` copies each tensor out of the file. Here a shard is written as the
format says (8-byte little-endian header length, the JSON header, the bytes of each tensor
back to back) and read through one copy-on-write memory map, each tensor a view of it. The
files stay ordinary safetensors: `safe_open` reads them, and these functions read any
safetensors file.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import torch

from ekka.errors import TraceFormatError

DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
TORCH_DTYPES = {name: dtype for dtype, name in DTYPES.items()}


def write_shard(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> int:
    """Write `tensors` (CPU) to `path` as one safetensors file; returns the bytes of data."""
    buffers, size = shard_buffers(tensors, metadata)
    write_buffers(path, buffers)
    return size


def shard_buffers(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> tuple[list[Any], int]:
    """The buffers of a shard holding `tensors`, in file order (the header first, then views of
    the tensors' own bytes), and the bytes of data. The tensors must stay alive and unchanged
    until the buffers are written."""
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    parts: list[torch.Tensor] = []
    offset = 0
    for key, tensor in tensors.items():
        t = tensor.detach().contiguous()
        if t.is_complex():  # Llama 4's rotary (freqs_cis): kept as its real view, [..., 2]
            t = torch.view_as_real(t).contiguous()
        if t.dtype not in DTYPES:
            raise TypeError(f"tensor {key}: dtype {t.dtype} cannot be stored in a trace shard")
        size = t.numel() * t.element_size()
        header[key] = {
            "dtype": DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        if size:
            parts.append(t.reshape(-1).view(torch.uint8))
        offset += size
    text = orjson.dumps(header)
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return [
        struct.pack("<Q", len(text)) + text,
        # numpy's stubs give ndarray `__buffer__` only on Python 3.12+, but it is a buffer
        *(memoryview(part.numpy()) for part in parts),  # type: ignore[arg-type]
    ], offset


def write_buffers(path: str | Path, buffers: list[Any]) -> None:
    """Write `buffers` back to back as the file `path` (replaced if it exists)."""
    # one system call per IOV_MAX buffers, not one per tensor (a write each took a third more)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, buffers)
    finally:
        os.close(fd)


def _write_all(fd: int, buffers: list[Any]) -> None:
    """Write every buffer, in order, with as few `writev` calls as the system allows."""
    limit = getattr(os, "IOV_MAX", None) or os.sysconf("SC_IOV_MAX")
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first : first + limit])
        while first < len(views) and written >= len(views[first]):  # whole buffers written
            written -= len(views[first])
            first += 1
        if written:  # a buffer written in part: the rest of it next
            views[first] = views[first][written:]


class ShardFile:
    """One shard, memory-mapped copy-on-write: tensors are views of the map (writing to one
    never reaches the file), loaded by the operating system as they are touched."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                self.header: dict[str, Any] = orjson.loads(f.read(length))
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError, struct.error) as exc:
            raise TraceFormatError(f"{self.path} is not a readable tensor shard ({exc}).") from None
        self._start = 8 + length
        self.size = len(self._map)  # bytes of the file, mapped
        self._bytes = torch.frombuffer(self._map, dtype=torch.uint8)
        self._typed: dict[torch.dtype, torch.Tensor] = {}  # the data as one tensor of each dtype

    def keys(self) -> list[str]:
        return [k for k in self.header if k != "__metadata__"]

    def get(self, key: str) -> torch.Tensor:
        entry = self.header.get(key)
        if entry is None:
            raise TraceFormatError(f"{self.path}: no tensor {key}.")
        dtype = TORCH_DTYPES[entry["dtype"]]
        shape = entry["shape"]
        begin, end = entry["data_offsets"]
        if begin == end:
            return torch.empty(shape, dtype=dtype)
        size = dtype.itemsize
        if (self._start + begin) % size:  # a view of another width needs alignment: a copy
            return (
                self._bytes[self._start + begin : self._start + end]
                .clone()
                .view(dtype)
                .reshape(shape)
            )
        if self._start % size == 0:  # one slice of the data seen as `dtype`
            return self._typed_view(dtype)[begin // size : end // size].view(shape)
        return self._bytes[self._start + begin : self._start + end].view(dtype).reshape(shape)

    def _typed_view(self, dtype: torch.dtype) -> torch.Tensor:
        typed = self._typed.get(dtype)
        if typed is None:
            whole = self._bytes[self._start :]
            typed = self._typed[dtype] = whole[: len(whole) - len(whole) % dtype.itemsize].view(
                dtype
            )
        return typed

    def stacked_rows(self, keys: Sequence[str]) -> torch.Tensor | None:
        """The 2-D tensors `keys` one under the other, as one `[rows, width]` tensor, made with
        a few views of the map and one copy rather than a view per tensor. A capture writes
        each step's tensors in the same order and sizes, so one component's tensors of
        successive steps lie at a fixed distance: one strided view takes them all. None where
        they are not all 2-D tensors of one dtype and width, aligned for a typed view."""
        found = [self.header.get(key) for key in keys]
        entries = [e for e in found if e is not None]
        if not entries or len(entries) != len(found) or any(len(e["shape"]) != 2 for e in entries):
            return None
        name, width = entries[0]["dtype"], entries[0]["shape"][1]
        if width == 0 or any(e["dtype"] != name or e["shape"][1] != width for e in entries):
            return None
        dtype = TORCH_DTYPES[name]
        size = dtype.itemsize
        if self._start % size or any(e["data_offsets"][0] % size for e in entries):
            return None
        typed = self._typed_view(dtype)
        base = typed.storage_offset()
        begins = [e["data_offsets"][0] // size for e in entries]
        counts = [e["data_offsets"][1] // size - b for e, b in zip(entries, begins)]
        pieces = []
        i = 0
        while i < len(begins):
            count, j = counts[i], i + 1
            step = begins[j] - begins[i] if j < len(begins) else 0
            while (
                j < len(begins)
                and step >= count > 0
                and counts[j] == count
                and begins[j] - begins[j - 1] == step
            ):
                j += 1
            rows = count // width
            if j - i == 1:
                pieces.append(typed[begins[i] : begins[i] + count].view(rows, width))
            else:  # evenly spaced tensors of one size: one view of them all
                view = typed.as_strided((j - i, rows, width), (step, width, 1), base + begins[i])
                pieces.append(view.reshape((j - i) * rows, width))
            i = j
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)
