"""A pytest plugin that records each test's duration and what it starts, for the CI budget.

With `EKKA_TEST_TIMES=FILE` set, every test appends one JSON line to FILE (one locked append
per test, so xdist's workers share the file): its node id, outcome, seconds (setup + call +
teardown, so a session fixture's first build counts on the test that triggers it), when it
started (`start`, seconds since the epoch), markers, group, the number of target processes it
started (`engines`: one engine start each, vLLM's or SGLang's), the xdist worker that ran it (`worker`, empty
without xdist) and its work unit (`unit`, tests/parallel.py: the tests kept on one worker).
`benchmarks/suite_times.py FILE` prints the table `.ci/run` shows. Without the variable the
plugin does nothing.

The group is what the test starts, the most expensive first:

- `docker`, `ray`, `postgres`: the test's markers (those tests need the engine, cluster or server);
- `sglang`, `vllm`: a target process of that framework started during the test (seen by an
  audit hook on the warm process' fork event, `ekka.tracer.warm.FORK_EVENT`; a test marked
  `vllm` that only checks its input before any start, or reads a capture another test made,
  is not in this group);
- `transformers`: a zoo or pretrained model built or traced without vLLM (the `zoo_model`,
  `captured`, `diagnosed` or `real_model` fixtures);
- `nothing`: the rest.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import Generator
from typing import Any

import pytest

from ekka.tracer.warm import FORK_EVENT
from tests.parallel import unit_of

ENV = "EKKA_TEST_TIMES"
MODEL_FIXTURES = frozenset({"zoo_model", "captured", "diagnosed", "real_model"})

_state: dict[str, Any] = {"recording": False, "started": set(), "engines": 0}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Count each target a test starts: a fork of a warm process (`ekka.tracer.warm`)."""
    if event == FORK_EVENT and _state["recording"]:
        _state["started"].add("sglang" if str(args[0]).endswith(".sglang") else "vllm")
        _state["engines"] += 1


def group_of(markers: set[str], fixtures: set[str], started: set[str]) -> str:
    """What a test starts, the most expensive first."""
    for name in ("docker", "ray"):
        if name in markers:
            return name
    for name in ("sglang", "vllm"):
        if name in started:
            return name
    if "postgres" in markers:
        return "postgres"
    if "real" in markers or fixtures & MODEL_FIXTURES:
        return "transformers"
    return "nothing"


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(ENV):
        sys.addaudithook(_audit)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, None, None]:
    path = os.environ.get(ENV)
    if not path:
        yield
        return
    _state["recording"] = True
    _state["started"] = set()
    _state["engines"] = 0
    _state["outcome"] = "passed"
    started = time.time()
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - start
        _state["recording"] = False
        markers = {m.name for m in item.iter_markers()}
        fixtures = set(getattr(item, "fixturenames", ()))
        record = {
            "test": item.nodeid,
            "outcome": _state["outcome"],
            "seconds": round(seconds, 3),
            "start": round(started, 3),
            "markers": sorted(markers - {"parametrize", "usefixtures", "filterwarnings"}),
            "group": group_of(markers, fixtures, _state["started"]),
            "started": sorted(_state["started"]),
            "engines": _state["engines"],
            "worker": getattr(item.config, "workerinput", {}).get("workerid", ""),
            "unit": unit_of(item),
        }
        with open(path, "a", encoding="utf-8") as out:
            fcntl.flock(out, fcntl.LOCK_EX)  # released when the file closes
            out.write(json.dumps(record) + "\n")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not _state["recording"]:
        return
    if report.failed:
        _state["outcome"] = "failed"
    elif report.skipped and _state["outcome"] == "passed":
        _state["outcome"] = "skipped"
