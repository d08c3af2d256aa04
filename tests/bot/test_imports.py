"""What loading the bot loads: `ekka` starts without the bot's dependencies, the server and its
worker start without torch, vLLM or transformers (a job imports them when it runs), and the
GitHub client (`ekka.forge`: the bot's, the sweeps' and the bisection's PR lookup's) loads no web
server, nor anything of the bot."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.bot


def loaded(statement: str, modules: tuple[str, ...]) -> list[str]:
    code = f"import sys; {statement}; print([m for m in {modules!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return eval(out.stdout.strip())  # a list of names printed by the child


def test_the_cli_loads_nothing_of_the_bot():
    modules = ("starlette", "uvicorn", "github", "ekka.bot.app", "ekka.bot.worker")
    assert loaded("import ekka.cli", modules) == []


def test_the_server_and_worker_load_no_framework():
    statement = "import ekka.bot.app, ekka.bot.worker, ekka.bot.jobs"
    assert loaded(statement, ("torch", "vllm", "transformers", "numpy")) == []


def test_the_github_client_loads_no_server():
    modules = ("starlette", "uvicorn", "sqlalchemy", "ekka.bot", "ekka.sweep")
    assert loaded("import ekka.forge.pulls, ekka.forge.client, ekka.forge.comments", modules) == []


def test_the_pr_lookup_loads_pygithub_only_when_it_asks():
    assert loaded("import ekka.forge.pulls, ekka.bot.config", ("github",)) == []
