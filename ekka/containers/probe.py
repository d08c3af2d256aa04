"""What a probe container runs: `python -m ekka.containers.probe SPEC_JSON`.

The same capture that the local executor runs in its subprocess (`ekka.tracer.capture.capture`),
here inside the commit's image: the commit's Python sources at /src (when the image has them
there; a full build installs the framework instead) first on the target's path, the model at
/model (read-only), the trace written under /out. Exit 0 when the trace is written; 3 with the
reason on stderr when the target did not run (the host's executor makes that a skip).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ekka.errors import EkkaError
from ekka.frameworks import framework
from ekka.tracer.capture import capture
from ekka.tracer.protocol import CaptureSpec

SOURCES = Path("/src")
FAILED = 3


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m ekka.containers.probe SPEC_JSON", file=sys.stderr)
        return 2
    spec = CaptureSpec.from_json(json.loads(argv[0]))
    package = framework(spec.framework).package
    pythonpath = [SOURCES] if (SOURCES / package).is_dir() else []
    try:
        trace = capture(spec, pythonpath=pythonpath)
    except EkkaError as exc:
        print(f"ekka probe: {exc}", file=sys.stderr)
        return FAILED
    print(f"ekka probe: trace written to {trace.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
