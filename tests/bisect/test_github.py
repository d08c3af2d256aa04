"""PR lookup through a real HTTP server that speaks GitHub's `commits/{sha}/pulls` endpoint."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ekka.errors import UsageError
from ekka.forge.pulls import GitHubPrLookup

PULLS = {
    "aaaa": [
        {"number": 41, "merged_at": None},
        {"number": 42, "merged_at": "2026-01-01T00:00:00Z"},
    ],
    "bbbb": [],
}


class Handler(BaseHTTPRequestHandler):
    seen: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        Handler.seen.append((self.path, self.headers.get("Authorization")))
        parts = self.path.strip("/").split("/")
        if (
            len(parts) == 6
            and parts[:1] == ["repos"]
            and parts[3] == "commits"
            and parts[5] == "pulls"
            and parts[4] in PULLS
        ):
            body = json.dumps(PULLS[parts[4]]).encode()
            self.send_response(200)
        else:
            body = b'{"message": "Not Found"}'
            self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_lookup_prefers_the_merged_pull_request_and_caches(api):
    lookup = GitHubPrLookup("vllm-project/vllm", token="t0k", api=api)
    Handler.seen.clear()
    assert lookup("aaaa") == 42
    assert lookup("aaaa") == 42
    assert lookup("bbbb") is None
    assert lookup("cccc") is None and "HTTP 404" in lookup.errors[-1]
    assert [p for p, _ in Handler.seen] == [
        "/repos/vllm-project/vllm/commits/aaaa/pulls",
        "/repos/vllm-project/vllm/commits/bbbb/pulls",
        "/repos/vllm-project/vllm/commits/cccc/pulls",
    ]
    assert Handler.seen[0][1] == "Bearer t0k"


def test_unreachable_api_falls_back_quietly():
    lookup = GitHubPrLookup("a/b", api="http://127.0.0.1:9", timeout=1)
    assert lookup("aaaa") is None and lookup.errors


def test_repository_name_is_checked():
    with pytest.raises(UsageError, match="OWNER/NAME"):
        GitHubPrLookup("vllm")
