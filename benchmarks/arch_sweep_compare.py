"""Two architecture sweeps side by side: each row's kind before and after, and the counts.

Reads two sweep JSON files (`ekka sweep --architectures ... --json` or a sweep's
`sweep.json`), classifies each row of the new one with today's rules and findings file
(`row_label`), shows the old one's kinds as its file recorded them (the findings of its day), and
prints a Markdown table per dtype of the rows whose kind or load changed, then the counts of
each kind and of the architectures that load on both sides. An older sweep (before the row
kinds) shows its status, "(transient)" where its largest ratio was above the threshold.

    .venv/bin/python benchmarks/arch_sweep_compare.py OLD.json NEW.json [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

from ekka.sweep.arch_rows import ArchRow, SweepReport, load_findings, transient


def rows_of(
    path: Path,
) -> tuple[dict[str, str], dict[tuple[str, str], ArchRow], dict[tuple[str, str], str]]:
    """The sweep's versions, its rows by (architecture, dtype), and their kinds as recorded
    (none in a sweep from before the row kinds)."""
    data = json.loads(path.read_text())
    rows = {}
    kinds = {}
    for raw in data["rows"]:
        fields = {k: v for k, v in raw.items() if k != "kind"}
        row = ArchRow.from_json(fields)
        rows[(row.architecture, row.dtype)] = row
        if "kind" in raw:
            kinds[(row.architecture, row.dtype)] = raw["kind"]
    return data["versions"], rows, kinds


def label(report: SweepReport, row: ArchRow, kinds: bool) -> str:
    if kinds:
        return report.label(row)
    return row.status + (" (transient)" if transient(row) else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--dtype", action="append", help="only these dtypes (repeatable)")
    args = parser.parse_args()
    findings = tuple(load_findings())
    versions, old, old_kinds = rows_of(args.old)
    _, new, new_kinds = rows_of(args.new)
    new_report = SweepReport(versions, tuple(new.values()), 0.0, 0, findings)
    dtypes = args.dtype or sorted({d for _, d in new})
    out: list[str] = []
    for dtype in dtypes:
        keys = [k for k in new if k[1] == dtype]
        out += [f"## {dtype}: {len(keys)} rows in the new sweep", ""]
        out += [
            "| architecture | before | after | largest ratio before | after |",
            "|---|---|---|---|---|",
        ]
        before_counts: Counter[str] = Counter()
        after_counts: Counter[str] = Counter()
        for key in keys:
            after = label(new_report, new[key], bool(new_kinds))
            after_counts[after] += 1
            row = old.get(key)
            before = "-" if row is None else old_kinds.get(key) or label(new_report, row, False)
            if row is not None:
                before_counts[before] += 1
            if before != after:
                out.append(
                    f"| {key[0]} | {before} | {after} | {_fmt(row.ratio if row else None)} | "
                    f"{_fmt(new[key].ratio)} |"
                )
        both_before = sum(1 for k in keys if k in old and old[k].loads_both)
        both_after = sum(1 for k in keys if new[k].loads_both)
        out += [
            "",
            f"Load on both sides: {both_before} before, {both_after} after (of these rows).",
            "",
        ]
        out += ["| kind | before | after |", "|---|---|---|"]
        for kind in sorted(set(before_counts) | set(after_counts)):
            out.append(f"| {kind} | {before_counts[kind]} | {after_counts[kind]} |")
        out.append("")
    print("\n".join(out))


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.3g}"


if __name__ == "__main__":
    main()
