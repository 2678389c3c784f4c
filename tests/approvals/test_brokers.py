"""Brokers and the approval store, without a sandbox."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from blastwall.approvals.broker import CallbackBroker, WebhookBroker, parse_answer
from blastwall.approvals.store import ApprovalStore


@pytest.mark.parametrize("typed,answer", [
    ("o", (True, "once")), ("S\n", (True, "session")), ("w", (True, "workspace")), ("d", (False, "once")),
    ("n", (False, "workspace")), ("", (False, "once")), ("yes please", (False, "once")), ("\x1b[A", (False, "once")),
])
def test_parse_answer(typed, answer):
    assert parse_answer(typed) == answer


def test_callback_errors_deny():
    assert CallbackBroker(lambda h, p: (True, "forever")).decide("a", 1) == (True, "once")

    def broken(host, port):
        raise RuntimeError("boom")

    assert CallbackBroker(broken).decide("a", 1) == (False, "callback-error")


@pytest.fixture
def webhook():
    replies = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.server.seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            body = replies.pop(0)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, replies
    server.shutdown()


def test_webhook(webhook):
    server, replies = webhook
    url = f"http://127.0.0.1:{server.server_address[1]}/approve"
    broker = WebhookBroker(url, command="curl x", workspace="/w", timeout=5)
    replies.append(b'{"decision": "allow", "scope": "session"}')
    assert broker.decide("api.test", 443) == (True, "session")
    assert server.seen[0] == {"host": "api.test", "port": 443, "command": "curl x", "workspace": "/w"}
    replies.append(b"not json")
    assert broker.decide("api.test", 443) == (False, "webhook-error")
    replies.append(b'{"decision": "allow", "scope": "everywhere"}')
    assert broker.decide("api.test", 443) == (True, "once")


def test_unreachable_webhook_denies():
    assert WebhookBroker("http://127.0.0.1:9/x", command="c", workspace="/w", timeout=2).decide("h", 1)[0] is False


def test_store_scopes_and_expiry(tmp_path):
    env = {"XDG_STATE_HOME": str(tmp_path), "HOME": str(tmp_path)}
    store = ApprovalStore(env)
    ws = tmp_path / "ws"
    ws.mkdir()
    entry = store.remember(str(ws), "api.test", 443, True)
    assert [e["host"] for e in store.entries(str(ws))] == ["api.test"]
    assert store.entries(str(tmp_path)) == []  # Another workspace sees nothing.
    store.remember(str(ws), "old.test", 443, True, ttl=-1)
    assert [e["host"] for e in store.entries(str(ws))] == ["api.test"]  # Expired entries do not apply.
    assert store.revoke(entry["id"]) and store.entries(str(ws)) == []
