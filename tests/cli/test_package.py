"""The CLI as a package: one module per command, composed in `ekka.cli`, whose defaults for
the executor are the executor spec's (one place)."""

from __future__ import annotations

import pkgutil

import typer

import ekka.cli
from ekka.containers.spec import ExecutorSpec


def command() -> typer.main.TyperGroup:
    group = typer.main.get_command(ekka.cli.app)
    assert isinstance(group, typer.main.TyperGroup)
    return group


def test_every_command_has_its_module():
    group = command()
    names = set(group.commands)
    assert names == {"zoo", "containers", "trace", "compare", "demo", "diagnose", "bench",
                     "bisect", "serve", "worker", "sweep"}  # fmt: skip
    modules = {m.name for m in pkgutil.iter_modules(ekka.cli.__path__)} - {"__main__"}
    for name in names - {"serve", "worker"}:  # `ekka.cli.bot` holds the bot's two
        assert name in modules, name
    assert "bot" in modules
    for name in modules:
        module = __import__(f"ekka.cli.{name}", fromlist=["_"])
        assert module.__doc__, f"ekka.cli.{name} says what it holds"


def test_diagnose_takes_the_executor_defaults_from_the_spec():
    diagnose = command().commands["diagnose"]
    defaults = {p.name: p.default for p in diagnose.params}
    spec = ExecutorSpec()
    assert defaults["image_tag"] == spec.image_tag
    assert defaults["shm_size"] == spec.shm_size
    assert defaults["pids_limit"] == spec.pids_limit
    assert defaults["timeout"] == spec.timeout
    assert defaults["executor"] == spec.kind
    assert ExecutorSpec.from_options(**{
        k: defaults[k] for k in ("executor", "timeout", "workers", "shm_size", "pids_limit",
                                 "image_tag", "ray_queue_timeout", "ray_node_executor")
    }) == spec  # fmt: skip
