"""`ekka serve` as a user starts it: a real process on loopback; a missing secret is exit 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from ekka.bot.signatures import sign
from ekka.cli import main

pytestmark = pytest.mark.bot


def test_serve_stops_at_start_with_exit_2_naming_the_secret(tmp_path, monkeypatch, capsys):
    config = tmp_path / "ekka.toml"
    config.write_text('[[repositories]]\nname = "acme/vllm"\n')
    monkeypatch.delenv("EKKA_WEBHOOK_SECRET", raising=False)
    monkeypatch.setenv("EKKA_GITHUB_TOKEN", "t")
    assert main(["serve", "--config", str(config)]) == 2
    assert "EKKA_WEBHOOK_SECRET is not set" in capsys.readouterr().err
    monkeypatch.setenv("EKKA_WEBHOOK_SECRET", "s")
    config.write_text("[server\n")
    assert main(["worker", "--config", str(config)]) == 2
    assert "is not valid TOML" in capsys.readouterr().err


def test_ekka_serve_answers_signed_deliveries(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "EKKA_WEBHOOK_SECRET": "s3cret",
        "EKKA_GITHUB_TOKEN": "t",
        "EKKA_GITHUB_API_URL": "http://127.0.0.1:9",
        "EKKA_DATABASE_URL": f"sqlite:///{tmp_path / 'bot.db'}",
        "EKKA_REPOSITORIES": "acme/vllm",
    }
    env.pop("EKKA_CONFIG", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "ekka.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        body = b'{"zen": "Speak like a human.", "hook_id": 1}'
        headers = {"X-GitHub-Event": "ping", "X-GitHub-Delivery": "p-1"}
        signed = {**headers, "X-Hub-Signature-256": sign("s3cret", body)}
        assert httpx.post(f"{url}/webhook", content=body, headers=signed).status_code == 202
        assert httpx.post(f"{url}/webhook", content=body, headers=headers).status_code == 401
        assert "recent jobs" in httpx.get(url).text
    finally:
        server.terminate()
        output = server.communicate(timeout=20)[0].decode()
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught
    assert server.returncode in (0, -15) and "Application shutdown complete" in output, output
