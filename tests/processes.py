"""The test process's own children, read from /proc (Linux): what a test starts must end."""

from __future__ import annotations

import os
from pathlib import Path


def descendants() -> list[tuple[int, str]]:
    """This process's live descendants: (pid, name)."""
    parents: dict[int, tuple[int, str, str]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(proc.name)] = (int(fields[1]), name, fields[0])
    found, frontier = [], {os.getpid()}
    while frontier:
        children = {p for p, (parent, _, _) in parents.items() if parent in frontier}
        found += [(p, parents[p][1]) for p in children if parents[p][2] != "Z"]
        frontier = children
    return found
