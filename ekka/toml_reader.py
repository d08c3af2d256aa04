"""Typed reads from a parsed TOML document, with errors that name the file and the key.

One reader for every table Ekka reads from TOML (the bot's configuration, its `[executor]`);
each mistake is a `ConfigError` saying where and what is expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ekka.errors import ConfigError


class TomlReader:
    """Typed reads from the parsed TOML with errors that name the file (`where`) and the key."""

    def __init__(self, where: str) -> None:
        self.where = where

    def known(self, data: Mapping[str, Any], at: str, keys: tuple[str, ...]) -> None:
        unknown = sorted(set(data) - set(keys))
        if unknown:
            place = f" in [{at}]" if at else ""
            raise ConfigError(
                f"{self.where}: unknown key {unknown[0]!r}{place}; the keys are {', '.join(keys)}."
            )

    def table(self, data: Mapping[str, Any], name: str, keys: tuple[str, ...]) -> Mapping[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.where}: [{name}] must be a table.")
        self.known(value, name, keys)
        return value

    def array(self, data: Mapping[str, Any], name: str) -> list[Any]:
        value = data.get(name, [])
        if not isinstance(value, list):
            raise ConfigError(f"{self.where}: {name} must be an array of tables ([[{name}]]).")
        return value

    def get(self, data: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
        value = data.get(key.rsplit(".", 1)[-1], default)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise ConfigError(f"{self.where}: {key} must be a {kind.__name__}, not {value!r}.")
        return value

    def string(self, data: Mapping[str, Any], key: str, default: str) -> str:
        value: str = self.get(data, key, str, default)
        return value

    def optional_string(self, data: Mapping[str, Any], key: str) -> str | None:
        value = data.get(key.rsplit(".", 1)[-1])
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{self.where}: {key} must be a string, not {value!r}.")
        return value

    def required_string(self, data: Mapping[str, Any], key: str) -> str:
        value = self.optional_string(data, key)
        if not value:
            raise ConfigError(f"{self.where}: {key} is missing.")
        return value

    def number(
        self, data: Mapping[str, Any], key: str, default: float, *, integer: bool = False
    ) -> float:
        value = data.get(key.rsplit(".", 1)[-1], default)
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value < 0:
            what = "a non-negative integer" if integer else "a non-negative number"
            raise ConfigError(f"{self.where}: {key} must be {what}, not {value!r}.")
        return float(value)

    def optional_number(self, data: Mapping[str, Any], key: str) -> float | None:
        if data.get(key.rsplit(".", 1)[-1]) is None:
            return None
        return self.number(data, key, 0.0)
