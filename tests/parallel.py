"""A pytest plugin that keeps together, on one xdist worker, the tests that share something
expensive or exclusive, so that `make test` runs the suite on both cores (`-n 2`) without
building anything twice or two tests fighting over one resource.

Two tests are in one work unit when they share, directly or through others:

- a fixture of this suite at session, package, module or class scope (a capture, a diagnosis,
  the real-weights model, the docker base image, Ray's cluster, a module's git history): it is
  built once, on the worker that runs the unit. The rule reads the fixtures' scopes, so a new
  file whose tests share a module-scoped engine, or a new session fixture, needs no edit here;
- a resource marker in `EXCLUSIVE_MARKERS` (the one Docker daemon, whose images the tests build
  and prune; one Ray cluster is enough; the one PostgreSQL database, whose tables each test
  drops);
- an `xdist_group` mark (a test may still name its group).

`PER_WORKER` lists the session fixtures cheap enough to build on each worker (a zoo model takes
under a second once torch is imported): tying every test that uses them together would leave one
worker idle. Every other test is a unit of its own, given to whichever worker is free.

Under `-n N` (xdist's `load` or `loadgroup` distribution) the workers put each unit's tests
together, the heaviest units first, and write the units to a file that the controller's
scheduler (xdist's scope scheduling, a scope being a unit) reads: no way of running the suite
on several workers splits a unit. Other distributions (`--dist loadfile`, ...) are xdist's. Without xdist (a developer running one file) the order is the
collection's and nothing is scheduled; the units are still computed, so that the timing plugin
records each test's.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

EXCLUSIVE_MARKERS = ("docker", "ray", "postgres")
PER_WORKER = frozenset({"zoo_model", "history", "docker_client", "gpu_available"})
SHARED_SCOPES = ("session", "package", "module", "class")
# tests marked so start an engine, a container or a cluster: the units holding them go first
HEAVY_MARKERS = frozenset({"vllm", "sglang", "docker", "ray", "real", "slow"})
UNIT = pytest.StashKey[str]()
PLAN = "ekka_units"  # the worker input naming the file where workers write the units
PLAN_DIR = pytest.StashKey[Path]()


def shared_keys(item: pytest.Item) -> set[str]:
    """What `item` shares with other tests: resource markers, its own group and the
    non-function fixtures of this suite it uses (each keyed by the instance it gets: a
    module-scoped fixture is one instance per file)."""
    keys = {f"marker:{m.name}" for m in item.iter_markers() if m.name in EXCLUSIVE_MARKERS}
    for mark in item.iter_markers("xdist_group"):
        name = mark.args[0] if mark.args else mark.kwargs.get("name", "")
        keys.add(f"group:{name}")
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return keys
    root = item.config.rootpath
    for name in info.names_closure:
        definitions = info.name2fixturedefs.get(name)
        if not definitions:
            continue
        fixture = definitions[-1]  # the one this item gets (closest overrides last)
        # pytest's and plugins' fixtures (tmp_path_factory, ...) are per worker anyway
        if fixture.scope not in SHARED_SCOPES or not _is_the_suites(fixture.func, root):
            continue
        if fixture.scope == "session" and name in PER_WORKER:
            continue
        if fixture.scope == "module":
            owner = item.nodeid.split("::", 1)[0]
        elif fixture.scope == "class":
            owner = item.nodeid.rsplit("::", 1)[0]
        else:
            owner = fixture.baseid or "."
        keys.add(f"fixture:{owner}::{name}")
    return keys


def _is_the_suites(function: Any, root: Path) -> bool:
    """True for a fixture defined in a conftest or test module under the rootdir, not in an
    installed package (a virtual environment may live in the checkout)."""
    try:
        source = Path(inspect.getsourcefile(inspect.unwrap(function)) or "")
    except TypeError:
        return False
    return source.is_relative_to(root) and "site-packages" not in source.parts


def units(keys_by_test: dict[str, set[str]]) -> dict[str, str]:
    """Each test's work unit: tests joined by any shared key (transitively) form one unit,
    named after its first key (a marker's name before a group's before a fixture's); a test that
    shares nothing is its own unit (its node id). Deterministic, so that every worker computes
    the same names from the same collection."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for keys in keys_by_test.values():
        ordered = sorted(keys, key=_rank)
        for key in ordered[1:]:
            a, b = find(ordered[0]), find(key)
            if a != b:
                first, second = sorted((a, b), key=_rank)
                parent[second] = first
    return {
        test: unit_name(find(min(keys, key=_rank))) if keys else test
        for test, keys in keys_by_test.items()
    }


def _rank(key: str) -> tuple[int, str]:
    kind = key.split(":", 1)[0]
    return ({"marker": 0, "group": 1}.get(kind, 2), key)


def unit_name(key: str) -> str:
    """A group name xdist takes: `marker:docker` -> `docker`, `fixture:tests::diagnosed` ->
    `tests::diagnosed`; xdist splits a node id at its last `@`, so none is left in it."""
    return re.sub(r"@", "_", key.split(":", 1)[1])


def is_worker(config: pytest.Config) -> bool:
    """True in an xdist worker (its config carries the controller's input; the environment
    does not say it: a pytest that a test starts inherits PYTEST_XDIST_WORKER)."""
    return hasattr(config, "workerinput")


def weight(item: pytest.Item) -> float:
    """A rough cost for ordering the units, the heaviest first: about what an engine start,
    a container or a cluster costs, against a tenth of a second for the rest."""
    return 20.0 if any(m.name in HEAVY_MARKERS for m in item.iter_markers()) else 0.1


def in_unit_order(items: list[pytest.Item], unit: dict[str, str]) -> list[pytest.Item]:
    """The items with each unit's tests together (in their order), the heaviest unit first
    (longest first: the last unit to start is a short one, so no worker waits long on the
    other at the end); units of the same weight keep the collection's order."""
    members: dict[str, list[pytest.Item]] = {}
    for item in items:
        members.setdefault(unit[item.nodeid], []).append(item)
    ordered = sorted(members.values(), key=lambda tests: -sum(weight(t) for t in tests))
    return [item for tests in ordered for item in tests]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    by_test = units({item.nodeid: shared_keys(item) for item in items})
    for item in items:
        item.stash[UNIT] = by_test[item.nodeid]
    plan = getattr(config, "workerinput", {}).get(PLAN)
    if plan is None:
        return
    # an xdist worker under `-n N`: every worker computes the same order and
    # units from the same collection; the controller's scheduler reads them from the file
    items[:] = in_unit_order(items, by_test)
    staging = Path(f"{plan}.{os.getpid()}")
    staging.write_text(json.dumps({item.nodeid: by_test[item.nodeid] for item in items}))
    staging.replace(plan)


def unit_of(item: pytest.Item) -> str:
    """The work unit the collection gave `item` (its node id when it shares nothing)."""
    return item.stash.get(UNIT, item.nodeid)


# ------------------------------------------------------------------ the controller's side


def _distributes_units(config: pytest.Config) -> bool:
    return (
        not is_worker(config)
        and bool(getattr(config.option, "numprocesses", None))
        and getattr(config.option, "dist", "no") in ("load", "loadgroup")
    )


def pytest_configure(config: pytest.Config) -> None:
    if _distributes_units(config):
        config.stash[PLAN_DIR] = Path(tempfile.mkdtemp(prefix="ekka-xdist-units-"))


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(PLAN_DIR, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Tell each worker where to write the units it collected."""
    folder = node.config.stash.get(PLAN_DIR, None)
    if folder is not None:
        node.workerinput[PLAN] = str(folder / "units.json")


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under `-n N`, xdist's scopes are this suite's units (xdist's own loadgroup reads
    `xdist_group` marks from the node ids it rewrites, which pytest 9 no longer lets it do; the
    units hold those marks too)."""
    folder = config.stash.get(PLAN_DIR, None)
    if folder is None:
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        """xdist's scope scheduling, a scope being a unit; units go out in the collection's
        order, which the workers made heaviest first."""

        unit: dict[str, str] = {}

        def schedule(self) -> None:
            if self.collection is None:
                self.config.option.loadscopereorder = False
                path = folder / "units.json"
                self.unit = json.loads(path.read_text()) if path.exists() else {}
            super().schedule()

        def _split_scope(self, nodeid: str) -> str:
            return self.unit.get(nodeid, nodeid)

    return UnitScheduling(config, log)
