"""Where an architecture sweep keeps its finished rows: a database (`ekka.storage.sweeps`,
table sweep_arch_rows) under a key of the versions, the sweep's settings and the zoo's settings of
the architecture, so that a sweep started again skips them."""

from __future__ import annotations

import hashlib
import json

from ekka.sweep.arch_rows import MAX_TOKENS, PROMPT_IDS, ArchRow


def sweep_key(versions: dict[str, str]) -> str:
    """What a finished row is kept under: the versions and the sweep's settings."""
    data = json.dumps(
        {**versions, "prompt": PROMPT_IDS, "max_tokens": MAX_TOKENS, "rows": 2}, sort_keys=True
    )
    return hashlib.sha256(data.encode()).hexdigest()[:24]


def spec_digest(architecture: str) -> str:
    """The zoo's settings of an architecture: a row is swept again when they change."""
    from ekka.zoo import get_arch

    spec = get_arch(architecture)
    data = json.dumps([spec.config_class, dict(spec.defaults)], sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:8]


class ArchStore:
    """The finished rows of the sweeps run with `versions`, in the database at `url`."""

    def __init__(self, url: str, versions: dict[str, str]) -> None:
        from ekka.storage.sweeps import SweepStore

        self.key = sweep_key(versions)
        self.store = SweepStore(url)

    def kept(self, architecture: str, dtype: str) -> ArchRow | None:
        """The row finished before (None: not swept yet with these settings)."""
        found = self.store.arch_row(f"{self.key}-{spec_digest(architecture)}", architecture, dtype)
        return None if found is None else ArchRow.from_json(found)

    def record(self, row: ArchRow) -> None:
        key = f"{self.key}-{spec_digest(row.architecture)}"
        self.store.record_arch_row(key, row.architecture, row.dtype, row.to_json())

    def close(self) -> None:
        self.store.close()
