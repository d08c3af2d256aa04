"""One JSON codec for Ekka's frozen records (dataclasses), checked field by field.

`encode(record)` gives the JSON-ready value: a dataclass as an object of its fields, tuples as
lists, mappings as objects, enums as their values, and a non-finite float as the string "inf",
"-inf" or "nan" (JSON has none). `decode(cls, data)` builds `cls` back and checks every field
against its annotation (`int`, `float`, `str`, `bool`, `None`, unions, `tuple[X, ...]`,
`tuple[A, B]`, `Mapping`/`dict`, `Any`, enums and nested dataclasses); tuples are made from JSON
lists, floats from numbers or the strings above. A value that does not fit is an error naming
the record and the field, never a misread:

    malformed Suspect: field 'ratio' is 'lots', not a number

A field may say what an absent key reads as (`field(metadata=absent(""))`) without taking a
default in Python; a field with a default reads as it when absent. Unknown keys are rejected
(`unknown="reject"`, the process protocol) or skipped (`unknown="ignore"`, a report read from a
richer JSON).

`JsonRecord` gives a dataclass `to_json()` and `from_json()` through this codec. This module is
a leaf: it imports nothing of Ekka but its errors, so that the tracer's in-process side, the
tracer and the report all use it.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar, Union

from ekka.errors import EkkaError

T = TypeVar("T")
R = TypeVar("R", bound="JsonRecord")

ABSENT = "ekka.codec.absent"  # the field metadata key: what an absent JSON key reads as
Unknown = Literal["reject", "ignore"]


def absent(value: Any) -> dict[str, Any]:
    """Field metadata: an absent JSON key reads as `value` (the field stays required in
    Python). `value` is used as given: make it immutable."""
    return {ABSENT: value}


def dump_float(x: float) -> float | str:
    """A float as JSON holds it: itself where finite, else "inf", "-inf" or "nan"."""
    return x if math.isfinite(x) else str(x)


_EXACT = (int, str, bool)  # types a JSON value is exactly when it fits


def encode(value: Any) -> Any:
    """`value` as JSON holds it (see the module's docstring)."""
    if type(value) in _EXACT or value is None:  # the common case, at once
        return value
    if isinstance(value, float):
        return dump_float(value)
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, enum.Enum):
        return encode(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        if all(type(v) in _EXACT for v in value.values()):
            return {str(k): v for k, v in value.items()}
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    return value


class _Invalid(Exception):
    """A value that does not fit its annotation; caught and raised again as the caller's
    error. `detail` says what is wrong in the innermost record (`record`, None while that is
    the record being built) and `path` where that record lies in the outer one."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.record: str | None = None
        self.path: list[str] = []

    def message(self) -> str:
        if self.record is None:
            return self.detail
        where = "".join(p if p.startswith("[") else f".{p}" for p in self.path).lstrip(".")
        return f"at {where} ({self.record}): {self.detail}"


def decode(
    cls: type[T],
    data: Any,
    *,
    error: type[Exception] = EkkaError,
    what: str | None = None,
    unknown: Unknown = "reject",
    quote: str | None = None,
) -> T:
    """The `cls` record that `encode` wrote as `data`; `error` (with a message naming the
    record, the field and what is wrong, then `quote` where given) when it is not one."""
    try:
        return typing.cast(T, _build(cls, data, unknown))
    except _Invalid as exc:
        name = what or cls.__name__
        tail = f": {quote}" if quote is not None else ""
        raise error(f"malformed {name}: {exc.message()}{tail}") from None


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _build(cls: type[Any], data: Any, unknown: Unknown) -> Any:
    if not isinstance(data, Mapping):
        raise _Invalid(f"not an object ({type(data).__name__}: {_short(data)})")
    hints = _hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    if unknown == "reject":
        extra = sorted(set(data) - {f.name for f in fields})
        if extra:
            raise _Invalid(f"unknown field(s) {', '.join(map(str, extra))}")
    values: dict[str, Any] = {}
    for f in fields:
        if f.name not in data:
            if ABSENT in f.metadata:
                values[f.name] = f.metadata[ABSENT]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _Invalid(f"missing field {f.name!r}")
            continue
        try:
            values[f.name] = _value(hints[f.name], data[f.name], unknown)
        except _Invalid as exc:
            if exc.record is None:
                exc.detail = f"field {f.name!r} {exc.detail}"
            else:
                exc.path.insert(0, f.name)
            raise
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:  # the record's own checks (`__post_init__`)
        raise _Invalid(str(exc)) from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def _value(hint: Any, value: Any, unknown: Unknown) -> Any:
    """`value` as the annotation `hint` says, or _Invalid."""
    if hint in _EXACT and type(value) is hint:  # the common case, at once
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is Union or type(hint).__name__ == "UnionType":
        failed: list[_Invalid] = []
        for option in args:
            try:
                return _value(option, value, unknown)
            except _Invalid as exc:
                failed.append(exc)
        fitting = [exc for option, exc in zip(args, failed) if option is not type(None)]
        if len(fitting) == 1 and value is not None:  # `X | None`: what is wrong with the X
            raise fitting[0]
        raise _Invalid(f"is {_short(value)}, not {_name(hint)}")
    if hint is type(None):
        if value is None:
            return None
        raise _Invalid(f"is {_short(value)}, not null")
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise _Invalid(f"is {_short(value)}, not an object ({hint.__name__})")
        try:
            return _build(hint, value, unknown)
        except _Invalid as exc:
            if exc.record is None:
                exc.record = hint.__name__
            raise
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            known = ", ".join(repr(m.value) for m in hint)
            raise _Invalid(f"is {_short(value)}, not one of {known}") from None
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _Invalid(f"is {_short(value)}, not a list")
        if len(args) == 2 and args[1] is Ellipsis:
            if args[0] in _EXACT and all(type(v) is args[0] for v in value):
                return tuple(value)
            return tuple(_item(args[0], v, i, unknown) for i, v in enumerate(value))
        if len(args) != len(value):
            raise _Invalid(f"is {_short(value)}, not a list of {len(args)}")
        return tuple(_item(a, v, i, unknown) for i, (a, v) in enumerate(zip(args, value)))
    if origin in (Mapping, dict) or hint in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise _Invalid(f"is {_short(value)}, not an object")
        if len(args) == 2 and args[1] is not Any:
            if args[1] in _EXACT and all(type(v) is args[1] for v in value.values()):
                return dict(value)
            return {k: _item(args[1], v, k, unknown) for k, v in value.items()}
        return dict(value)
    if hint is float:
        if isinstance(value, str) and value in ("inf", "-inf", "nan"):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"is {_short(value)}, not a number")
        return float(value)
    if hint in (int, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise _Invalid(f"is {_short(value)}, not {hint.__name__}")
        return value
    raise _Invalid(f"has an annotation the codec cannot read ({hint})")


def _item(hint: Any, value: Any, at: int | str, unknown: Unknown) -> Any:
    try:
        return _value(hint, value, unknown)
    except _Invalid as exc:
        if exc.record is None:
            exc.detail = f"at [{at!r}] {exc.detail}"
        else:
            exc.path.insert(0, f"[{at!r}]")
        raise


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)


class JsonRecord:
    """A dataclass written and read through this codec: `to_json()` and `from_json(data)`,
    which round-trip exactly. `JSON_ERROR` is the error a malformed object raises,
    `JSON_UNKNOWN` what becomes of keys the record does not know."""

    __slots__ = ()
    JSON_ERROR: ClassVar[type[Exception]] = EkkaError
    JSON_UNKNOWN: ClassVar[Unknown] = "reject"

    def to_json(self) -> dict[str, Any]:
        return typing.cast(dict[str, Any], encode(self))

    @classmethod
    def from_json(cls: type[R], data: Mapping[str, Any]) -> R:
        return decode(cls, data, error=cls.JSON_ERROR, unknown=cls.JSON_UNKNOWN)
