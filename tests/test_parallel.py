"""The suite on xdist's workers (tests/parallel.py, tests/timing.py, benchmarks/suite_times.py):
tests that share a fixture or a resource run on one worker, a shared fixture is built once,
every worker's test times land in one file, and the clean-tree check runs once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.parallel import units

CONFTEST = """\
import os
from pathlib import Path

import pytest

OUT = Path(__file__).parent / "out"


def pytest_configure(config):
    config.addinivalue_line("markers", "docker: the one daemon")


@pytest.fixture(scope="session")
def shared():
    with (OUT / "built.txt").open("a") as f:
        f.write(f"{os.getpid()}\\n")
    return "built"
"""

TESTS = {
    "test_shared.py": "".join(
        f"def test_reads_the_shared_fixture_{i}(shared):\n    assert shared == 'built'\n\n\n"
        for i in range(4)
    ),
    "test_module.py": (
        "import pytest\n\n\n@pytest.fixture(scope='module')\ndef history():\n    return 1\n\n\n"
        + "".join(
            f"def test_reads_the_module_fixture_{i}(history):\n    pass\n\n\n" for i in range(3)
        )
    ),
    "test_docker.py": (
        "import pytest\n\npytestmark = pytest.mark.docker\n\n\n"
        + "".join(f"def test_uses_the_daemon_{i}():\n    pass\n\n\n" for i in range(2))
    ),
    "test_alone.py": "import time\n\n\n"
    + "".join(f"def test_on_its_own_{i}():\n    time.sleep(0.3)\n\n\n" for i in range(6)),
}


def test_units_join_tests_that_share_any_key_transitively() -> None:
    got = units(
        {
            "a": {"fixture:tests::captured"},
            "b": {"fixture:tests::captured", "fixture:tests::diagnosed"},
            "c": {"fixture:tests::diagnosed"},
            "d": {"marker:docker", "fixture:tests/containers::base_image"},
            "e": {"fixture:tests/containers::base_image"},
            "f": {"group:mine"},
            "g": set(),
            "h": {"fixture:x.py::history"},
        }
    )
    assert got["a"] == got["b"] == got["c"] == "tests::captured"
    assert got["d"] == got["e"] == "docker", "a marker names its unit before a fixture"
    assert got["f"] == "mine" and got["h"] == "x.py::history"
    assert got["g"] == "g", "a test that shares nothing is its own unit"


def test_two_workers_keep_units_together_and_record_every_test_in_one_file(
    tmp_path: Path,
) -> None:
    """The suite's plugins on a small suite with `-n 2`, as `make test` runs."""
    suite = tmp_path / "suite"
    (suite / "out").mkdir(parents=True)
    (suite / "conftest.py").write_text(CONFTEST)
    for name, text in TESTS.items():
        (suite / name).write_text(text)
    # one test writes into the checkout, to see the clean-tree check run once, in the controller
    target = REPO / f"left-by-{tmp_path.name}.txt"
    (suite / "test_writes.py").write_text(
        f"from pathlib import Path\n\n\ndef test_writes():\n    Path({str(target)!r}).write_text('x')\n"
    )
    times = tmp_path / "times.jsonl"
    env = {**os.environ, "EKKA_TEST_TIMES": str(times)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["-p", "tests.conftest", "-n", "2"]  # the conftest brings its plugins
    try:
        done = subprocess.run(
            [*command, "--rootdir", str(suite), str(suite)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        target.unlink(missing_ok=True)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output  # the tests pass; the tree check fails the run
    assert "16 passed" in output, output
    assert output.count("working tree changed by the tests") == 1, output
    assert (suite / "out" / "built.txt").read_text().count("\n") == 1, "built once"

    records = [json.loads(line) for line in times.read_text().splitlines()]
    assert len(records) == 16, "every worker's tests, in one file"
    by_file: dict[str, set[str]] = {}
    for record in records:
        by_file.setdefault(record["test"].split("::")[0], set()).add(record["worker"])
    assert all(len(workers) == 1 for name, workers in by_file.items() if "alone" not in name)
    assert {w for ws in by_file.values() for w in ws} == {"gw0", "gw1"}, by_file
    units_of = {r["unit"] for r in records if "docker" in r["test"] or "shared" in r["test"]}
    assert units_of == {"docker", ".::shared"}, units_of
    # the heaviest unit (the docker-marked tests) is the first its worker runs
    docker = [r for r in records if "test_docker.py" in r["test"]]
    on_its_worker = sorted(
        (r for r in records if r["worker"] == docker[0]["worker"]), key=lambda r: r["start"]
    )
    assert {r["test"] for r in on_its_worker[:2]} == {r["test"] for r in docker}

    summary = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "suite_times.py"), str(times), "--units", "3"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Tests: 16 (16 passed)" in summary and "wall-clock" in summary, summary
    assert "Per worker:" in summary and "gw0" in summary and "gw1" in summary, summary
    assert "The 3 largest work units:" in summary, summary
