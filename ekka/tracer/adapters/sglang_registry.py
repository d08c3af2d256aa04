"""SGLang's model registry, asked in SGLang's own interpreter (never imported in Ekka's
process): `python -m ekka.tracer.adapters.sglang_registry` prints one JSON object with the
installed release's version, the architectures its registry holds, the architectures of the
model modules it could not import (each with the import's error: on a CPU, mostly a kernel the
stand-in for `sgl_kernel` lacks) and the notes every SGLang report carries (`standin_notes`).

The registry imports every module of `sglang.srt.models` and skips, with a warning, one that
fails to import; the warnings are read here and each skipped module's `EntryClass` names are
read from its source (`ast`), so that such an architecture still gets its row, with its cause.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import sys
from pathlib import Path

from ekka.frameworks import FRAMEWORKS, listed_architectures
from ekka.tracer.adapters.sglang import standin_notes

SKIPPED = re.compile(r"Ignore import error when loading (sglang\.srt\.models\.[\w.]+): (.*)", re.S)


def entry_classes(module: str) -> tuple[str, ...]:
    """The names a model module's `EntryClass` lists, read from its source (not imported)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return ()
    listed = FRAMEWORKS["sglang"].models.name
    return tuple(listed_architectures(Path(spec.origin).read_text(), listed))


class _Skipped(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.modules: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        found = SKIPPED.match(record.getMessage())
        if found is not None:
            self.modules[found.group(1)] = found.group(2).strip().splitlines()[0][:300]


def main() -> int:
    from importlib.metadata import version

    skipped = _Skipped()
    logger = logging.getLogger("sglang.srt.models.registry")
    logger.addHandler(skipped)
    from sglang.srt.models.registry import ModelRegistry  # type: ignore[import-not-found]

    registered = sorted(ModelRegistry.get_supported_archs())
    unimportable: dict[str, str] = {}
    for module, error in skipped.modules.items():
        for name in entry_classes(module):
            if name not in registered:
                unimportable[name] = f"cannot import {module}: {error}"
    json.dump(
        {
            "version": version("sglang"),
            "registered": registered,
            "unimportable": unimportable,
            "notes": list(standin_notes()),
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
