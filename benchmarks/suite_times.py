"""The test suite's time budget: per-group table, the slowest tests, the total.

Reads the JSON lines that the test timing plugin (tests/timing.py) writes when `EKKA_TEST_TIMES`
names a file, e.g. after `EKKA_TEST_TIMES=/tmp/times.jsonl make test`:

    python benchmarks/suite_times.py /tmp/times.jsonl [--slowest 10] [--markdown] [--files]
        [--units N]

Each test is in one group, by what it starts (docker, ray, sglang, vllm, postgres, transformers,
nothing; see tests/timing.py). The sum of the tests' times is the time spent in tests; with
xdist's workers (`make test` runs two) it exceeds the wall-clock time from the first test's
start to the last one's end, printed next to it, with a table per worker: its tests, the
seconds it spent in them and when its last test ended (workers that end far apart were given
unbalanced work). `--files` adds, per test file, its tests, seconds and engine starts (the
`engines` the plugin counts: target processes started in this process; a probe in a container
or a Ray task is not seen). `--units N` adds the N largest work units (tests/parallel.py: tests
kept on one worker because they share a fixture or a resource): no run on any number of
workers is shorter than the largest.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

GROUPS = ("vllm", "sglang", "transformers", "docker", "ray", "postgres", "nothing")


def load(path: Path) -> list[dict[str, object]]:
    """The recorded tests; a test recorded twice (a rerun) keeps its last record."""
    records: dict[str, dict[str, object]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            records[str(record["test"])] = record
    return list(records.values())


def table(rows: list[list[str]], markdown: bool) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append(("| " + " | ".join(cells) + " |") if markdown else "  ".join(cells))
        if n == 0:
            rule = ["-" * w for w in widths]
            lines.append(("|-" + "-|-".join(rule) + "-|") if markdown else "  ".join(rule))
    return "\n".join(lines)


def minutes(seconds: float) -> str:
    return f"{seconds:.0f} s ({seconds / 60:.1f} min)"


def report(records: list[dict[str, object]], slowest: int, markdown: bool) -> str:
    total = sum(float(r["seconds"]) for r in records)  # type: ignore[arg-type]
    by_group: dict[str, list[dict[str, object]]] = defaultdict(list)
    for record in records:
        by_group[str(record["group"])].append(record)
    rows = [["group", "tests", "seconds", "share", "mean s", "slowest s"]]
    for group in [*GROUPS, *sorted(set(by_group) - set(GROUPS))]:
        tests = by_group.get(group, [])
        if not tests:
            continue
        seconds = [float(t["seconds"]) for t in tests]  # type: ignore[arg-type]
        rows.append(
            [
                group,
                str(len(tests)),
                f"{sum(seconds):.0f}",
                f"{100 * sum(seconds) / total:.0f} %" if total else "-",
                f"{sum(seconds) / len(seconds):.1f}",
                f"{max(seconds):.0f}",
            ]
        )
    rows.append(["all", str(len(records)), f"{total:.0f}", "100 %", "", ""])
    outcomes: dict[str, int] = defaultdict(int)
    for record in records:
        outcomes[str(record["outcome"])] += 1
    top = sorted(records, key=lambda r: -float(r["seconds"]))[:slowest]  # type: ignore[arg-type]
    span = wall_clock(records)
    in_tests = f" {minutes(total)} in tests" + (f", {minutes(span)} wall-clock" if span else "")
    top_rows = [["test", "seconds", "group"]]
    top_rows += [[str(r["test"]), f"{float(r['seconds']):.1f}", str(r["group"])] for r in top]  # type: ignore[arg-type]
    return "\n".join(
        [
            f"Tests: {len(records)} ({', '.join(f'{n} {k}' for k, n in sorted(outcomes.items()))}),"
            f"{in_tests}",
            *(["", by_worker(records, markdown)] if any(r.get("worker") for r in records) else []),
            "",
            "Time per group (what each test starts):",
            table(rows, markdown),
            "",
            f"The {len(top)} slowest tests:",
            table(top_rows, markdown),
        ]
    )


def _end(record: dict[str, object]) -> float:
    return float(record["start"]) + float(record["seconds"])  # type: ignore[arg-type]


def wall_clock(records: list[dict[str, object]]) -> float | None:
    """Seconds from the first test's start to the last one's end (None for records written
    before the plugin recorded starts)."""
    if not records or any("start" not in r for r in records):
        return None
    return max(map(_end, records)) - min(float(r["start"]) for r in records)  # type: ignore[arg-type]


def by_worker(records: list[dict[str, object]], markdown: bool) -> str:
    """Per xdist worker: tests, seconds in tests, and when its last test ended (seconds after
    the first test of the run started)."""
    first = min(float(r.get("start", 0.0)) for r in records)  # type: ignore[arg-type]
    workers: dict[str, list[dict[str, object]]] = defaultdict(list)
    for record in records:
        workers[str(record.get("worker") or "-")].append(record)
    rows = [["worker", "tests", "seconds", "units", "last ended at s"]]
    for name, tests in sorted(workers.items()):
        ended = f"{max(map(_end, tests)) - first:.0f}" if all("start" in t for t in tests) else ""
        rows.append(
            [
                name,
                str(len(tests)),
                f"{sum(float(t['seconds']) for t in tests):.0f}",  # type: ignore[arg-type]
                str(len({t.get("unit", t["test"]) for t in tests})),
                ended,
            ]
        )
    return "Per worker:\n" + table(rows, markdown)


def by_unit(records: list[dict[str, object]], count: int, markdown: bool) -> str:
    """The `count` largest work units (tests kept on one worker), the largest first."""
    units: dict[str, list[dict[str, object]]] = defaultdict(list)
    for record in records:
        units[str(record.get("unit", record["test"]))].append(record)

    def seconds(tests: list[dict[str, object]]) -> float:
        return sum(float(t["seconds"]) for t in tests)  # type: ignore[arg-type]

    rows = [["unit", "tests", "seconds", "workers"]]
    for name, tests in sorted(units.items(), key=lambda kv: -seconds(kv[1]))[:count]:
        ran_on = sorted({str(t.get("worker") or "-") for t in tests})
        rows.append([name, str(len(tests)), f"{seconds(tests):.0f}", ",".join(ran_on)])
    return f"The {len(rows) - 1} largest work units:\n" + table(rows, markdown)


def by_file(records: list[dict[str, object]], markdown: bool) -> str:
    """Per test file: tests, seconds and engine starts, the slowest file first."""
    files: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for record in records:
        row = files[str(record["test"]).split("::", 1)[0]]
        row[0] += 1
        row[1] += float(record["seconds"])  # type: ignore[arg-type]
        row[2] += float(record.get("engines", 0))  # type: ignore[arg-type]
    rows = [["file", "tests", "seconds", "engine starts"]]
    for name, (tests, seconds, engines) in sorted(files.items(), key=lambda kv: -kv[1][1]):
        rows.append([name, f"{tests:.0f}", f"{seconds:.0f}", f"{engines:.0f}"])
    return "Per test file:\n" + table(rows, markdown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("times", type=Path, help="the JSON lines file of EKKA_TEST_TIMES")
    parser.add_argument("--slowest", type=int, default=10)
    parser.add_argument("--markdown", action="store_true", help="Markdown tables (for a note)")
    parser.add_argument("--files", action="store_true", help="a table per test file")
    parser.add_argument("--units", type=int, default=0, help="a table of the N largest units")
    args = parser.parse_args(argv)
    if not args.times.exists():
        print(f"no test times in {args.times}", file=sys.stderr)
        return 1
    records = load(args.times)
    if not records:
        print(f"no test times in {args.times}", file=sys.stderr)
        return 1
    print(report(records, args.slowest, args.markdown))
    if args.files:
        print("\n" + by_file(records, args.markdown))
    if args.units:
        print("\n" + by_unit(records, args.units, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
