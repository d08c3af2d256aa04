"""Load on the bot's webhook, measured from outside: 500 signed deliveries from 20 concurrent
clients on loopback against a real `ekka serve` process (its worker in the same process, the
local GitHub API server of the tests standing in for GitHub).

The deliveries mix what GitHub sends: `/ekka diagnose` comments (20 distinct ones), other
comments, `/ekka help`, pings, pushes; a fifth of them are replays of an earlier delivery (the
same X-GitHub-Delivery) and some are redeliveries of the same comment under a new id. Checks:
every answer is 2xx, and once the worker has drained the inbox, each diagnose comment made
exactly one job (no duplicate). Prints p50 / p90 / p99 / max latency and the throughput, then
one JSON line with every figure.

    .venv/bin/python benchmarks/webhook_load.py [--deliveries 500] [--clients 20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ekka.bot.db import Store  # noqa: E402
from ekka.bot.queue import jobs  # noqa: E402
from ekka.bot.signatures import sign  # noqa: E402
from tests.bot.conftest import ORACLE, make_history  # noqa: E402
from tests.bot.github_server import FakeGitHub  # noqa: E402

SECRET = "load-secret"
REPO = "acme/vllm"


def deliveries(count: int, good: str, rng: random.Random) -> list[tuple[str, str, bytes]]:
    """(event, delivery id, body) in sending order."""
    out: list[tuple[str, str, bytes]] = []
    diagnose_comments = [(9000 + i, 40 + i % 5) for i in range(20)]
    while len(out) < count:
        roll = rng.random()
        if out and roll < 0.2:
            out.append(rng.choice(out))  # a replay: the same delivery id again
            continue
        if roll < 0.45:
            comment, issue = rng.choice(diagnose_comments)
            body = f"/ekka diagnose good={good[:12]} max-tokens=4"
        elif roll < 0.7:
            comment, issue = rng.randrange(10**6, 10**7), rng.randrange(1, 30)
            body = rng.choice(["Same here on main.", "> /ekka diagnose\nquoted", "/ekka help"])
        elif roll < 0.85:
            payload = {"zen": "Approachable is better than simple.", "hook_id": 1}
            out.append(("ping", str(uuid.uuid4()), json.dumps(payload).encode()))
            continue
        else:
            payload = {
                "ref": "refs/heads/main",
                "after": uuid.uuid4().hex + "abcdefgh",
                "repository": {"full_name": REPO},
            }
            out.append(("push", str(uuid.uuid4()), json.dumps(payload).encode()))
            continue
        payload = {
            "action": "created",
            "issue": {"number": issue},
            "comment": {"id": comment, "body": body, "user": {"login": "alice", "type": "User"}},
            "repository": {"full_name": REPO},
        }
        out.append(("issue_comment", str(uuid.uuid4()), json.dumps(payload).encode()))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=500)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ekka-webhook-load-"))
    history = make_history(work / "history")
    github = FakeGitHub(tokens=("t0k",))
    github.start()
    github.permissions[(REPO, "alice")] = "write"
    for i in range(20):  # the diagnose comments exist on "GitHub" (the bot reacts to them)
        github.comments[9000 + i] = {
            "id": 9000 + i, "body": "/ekka diagnose", "user": {"login": "alice"},
            "_repo": REPO, "_issue": 40 + i % 5, "_edits": 0,
        }  # fmt: skip
    db = work / "bot.db"
    config = work / "ekka.toml"
    config.write_text(
        f"""
[github]
throttle = false
[server]
database_url = "sqlite:///{db}"
workdir = "{work / "jobs"}"
[executor]
kind = "command"
command = '{ORACLE}'
[worker]
poll_seconds = 0.2
[[repositories]]
name = "{REPO}"
path = "{history.repo}"
bad = "main"
[[models]]
name = "tiny-llama"
path = "{work / "model"}"
prompt = "Hello"
"""
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "EKKA_WEBHOOK_SECRET": SECRET,
        "EKKA_GITHUB_TOKEN": "t0k",
        "EKKA_GITHUB_API_URL": github.url,
    }
    log = (work / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "ekka.cli", "serve", "--config", str(config), "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start: {(work / 'server.log').read_text()}")
            time.sleep(0.1)

        plan = deliveries(args.deliveries, history.good, random.Random(args.seed))
        queue = list(enumerate(plan))
        lock = threading.Lock()
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        bad: list[str] = []

        def client() -> None:
            with httpx.Client(base_url=url, timeout=30) as http:
                while True:
                    with lock:
                        if not queue:
                            return
                        _, (event, delivery, body) = queue.pop(0)
                    headers = {
                        "X-GitHub-Event": event,
                        "X-GitHub-Delivery": delivery,
                        "X-Hub-Signature-256": sign(SECRET, body),
                        "Content-Type": "application/json",
                    }
                    t0 = time.perf_counter()
                    answer = http.post("/webhook", content=body, headers=headers)
                    elapsed = time.perf_counter() - t0
                    with lock:
                        latencies.append(elapsed)
                        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
                        if not 200 <= answer.status_code < 300:
                            bad.append(f"{answer.status_code} {answer.text[:200]}")

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0

        store = Store(f"sqlite:///{db}")
        deadline = time.monotonic() + 120
        while [c for c in store.commands() if c["state"] == "pending"]:
            if time.monotonic() > deadline:
                raise SystemExit("the worker did not drain the inbox in 120 s")
            time.sleep(0.2)
        made = store.jobs(limit=10_000)
        keys = [(j.repository, j.command_comment) for j in made]
        distinct_diagnose = len(
            {
                json.loads(body)["comment"]["id"]
                for event, _, body in plan
                if event == "issue_comment" and "/ekka diagnose good" in body.decode()
            }
        )
        job_count = store.count(jobs)
        store.close()
    finally:
        server.terminate()
        server.wait(30)
        github.stop()

    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] * 1000

    figures = {
        "deliveries": len(latencies),
        "clients": args.clients,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "all_2xx": not bad,
        "p50_ms": round(pct(50), 2),
        "p90_ms": round(pct(90), 2),
        "p99_ms": round(pct(99), 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "mean_ms": round(statistics.mean(latencies) * 1000, 2),
        "wall_s": round(wall, 3),
        "per_second": round(len(latencies) / wall, 1),
        "diagnose_comments": distinct_diagnose,
        "jobs": job_count,
        "duplicate_jobs": len(keys) - len(set(keys)),
    }
    print(
        f"{figures['deliveries']} deliveries from {args.clients} clients in {wall:.2f} s "
        f"({figures['per_second']}/s): statuses {figures['statuses']}"
    )
    print(
        f"latency p50 {figures['p50_ms']} ms, p90 {figures['p90_ms']} ms, "
        f"p99 {figures['p99_ms']} ms, max {figures['max_ms']} ms"
    )
    print(
        f"jobs: {job_count} for {distinct_diagnose} distinct diagnose comments, "
        f"{figures['duplicate_jobs']} duplicates"
    )
    print(json.dumps(figures))
    ok = not bad and figures["duplicate_jobs"] == 0 and job_count == distinct_diagnose
    if bad:
        print("non-2xx answers:", *bad[:5], sep="\n  ")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
