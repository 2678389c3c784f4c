"""The API's bad inputs: each gets a 4xx with a clear body, and nothing changes on the host.

Path traversal in file paths (sent raw, as an attacker would, not as a
normalising HTTP client would), links and FIFOs planted by the sandbox,
oversized uploads (announced and chunked), invalid and over-ceiling policies,
garbage JSON, unknown ids, and a bug's 500 that must not leak its details.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time

import pytest

from tests.service.conftest import needs_service_deps, requires_gvisor

SERVICE_ARGS = ["--max-upload", "1M"]
UNKNOWN = "sbx_" + "0" * 24


def raw(service, method: str, target: str, key: str, body: bytes = b"", headers=None) -> tuple[int, dict]:
    """One request with ``target`` exactly as given (no client-side normalisation of '..')."""
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=60)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        conn.putheader("Authorization", f"Bearer {key}")
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        data = response.read()
        return response.status, (json.loads(data) if data.startswith(b"{") else {"raw": data})
    finally:
        conn.close()


def snapshot(service) -> dict:
    """What exists of the service on the host, to compare before and after an attack."""
    files = {}
    for base, _dirs, names in os.walk(service.data):
        for name in names:
            if name.startswith("service.sqlite") or name == "service.lock":
                continue
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                files[path] = f.read()
    return {"files": files, "containers": service.containers()}


@pytest.fixture(scope="module")
def victim(service):
    """A tenant and its sandbox, with a host file outside the workspace next to it."""
    if os.geteuid() != 0:
        pytest.skip(reason="the container tier needs root on this machine")
    key = service.tenant(allow_domains=["*.example.com"], max_memory="1G", max_ttl=600)
    sid = service.create(key)["id"]
    outside = service.workspace(sid).parent / "outside.txt"
    outside.write_text("host file next to the workspaces\n")
    yield key, sid
    service.call("DELETE", f"/v1/sandboxes/{sid}", key)
    outside.unlink(missing_ok=True)


TRAVERSALS = [
    "../outside.txt",
    "..%2Foutside.txt",
    "%2e%2e/outside.txt",
    "%2E%2E%2Foutside.txt",
    "a/../../outside.txt",
    "./../outside.txt",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "/home/user/../../outside.txt",
    "/home/userx/a",
    "/home/user",
    "..",
    "a/%00b",
    "a" * 5000,
    "",
]


@requires_gvisor
@pytest.mark.parametrize("path", TRAVERSALS)
def test_file_paths_cannot_leave_the_workspace(service, victim, path):
    key, sid = victim
    before = snapshot(service)
    status, body = raw(service, "PUT", f"/v1/sandboxes/{sid}/files/{path}", key, b"PWNED")
    assert status in (400, 404), (status, body)
    assert "Traceback" not in str(body)
    if status == 400:
        assert body["error"]["code"] == "invalid_path" and body["error"]["message"]
    status, body = raw(service, "GET", f"/v1/sandboxes/{sid}/files/{path}", key)
    assert status in (400, 404) and "root:" not in str(body) and "host file" not in str(body)
    assert snapshot(service) == before


@requires_gvisor
def test_links_and_fifos_planted_by_the_sandbox_are_not_followed(service, victim):
    key, sid = victim
    outside = service.workspace(sid).parent / "outside.txt"
    _, _, code = service.run(key, sid, f"ln -s {outside} leak.txt && ln -s {outside.parent} dirlink && "
                                       f"ln -s /etc/shadow shadow && mkfifo fifo")
    assert code == 0
    import stat

    fifo = service.workspace(sid) / "fifo"
    fifo_on_host = os.path.lexists(fifo) and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    before = snapshot(service)
    for path in ("leak.txt", "shadow", "dirlink/outside.txt", "dirlink/new.txt", "fifo"):
        if path == "fifo" and not fifo_on_host:
            continue  # gVisor kept the FIFO to itself: on the host it is no FIFO to hang on.
        started = time.time()
        r = service.call("PUT", f"/v1/sandboxes/{sid}/files/{path}", key, data=b"PWNED", timeout=20)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_path", (path, r.text)
        r = service.call("GET", f"/v1/sandboxes/{sid}/files/{path}", key, timeout=20)
        assert r.status_code == 400 and "host file" not in r.text and "root:" not in r.text, (path, r.text)
        assert time.time() - started < 10  # A FIFO must not hang the service.
    assert snapshot(service) == before
    assert outside.read_text() == "host file next to the workspaces\n"


@requires_gvisor
def test_oversized_uploads_are_refused_early(service, victim):
    key, sid = victim
    before = snapshot(service)
    # Announced: refused before a byte of the body is read.
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as s:
        s.sendall(f"PUT /v1/sandboxes/{sid}/files/big.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                  f"Content-Length: {10 << 30}\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(65536):  # The service closes the connection after its answer.
            answer += chunk
        answer = answer.decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413") and "payload_too_large" in answer
    # Chunked, with no length: refused once the limit is passed.
    def chunks():
        for _ in range(8):
            yield b"\0" * (256 << 10)

    r = service.call("PUT", f"/v1/sandboxes/{sid}/files/big.bin", key, data=chunks())
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    # Exactly the limit is fine; the limit is the service's --max-upload (1M here).
    r = service.call("PUT", f"/v1/sandboxes/{sid}/files/ok.bin", key, data=b"\0" * (1 << 20))
    assert r.status_code == 200
    (service.workspace(sid) / "ok.bin").unlink()
    assert snapshot(service) == before
    assert not (service.workspace(sid) / "big.bin").exists()


CREATE_BODIES = [
    # (body or raw bytes, status, code, words in the message)
    (b"{not json", 400, "invalid_json", "not valid JSON"),
    (b"[1, 2]", 422, "invalid_request", ""),
    (b"", 422, "invalid_request", ""),
    ({"ttl": "forever"}, 422, "invalid_request", "ttl"),
    ({"ttl": -5}, 422, "invalid_request", "ttl"),
    ({"flavour": "large"}, 422, "invalid_request", "flavour"),
    ({"policy": "[network\nallow = ["}, 422, "invalid_policy", "TOML"),
    ({"policy": {"network": {"allow": "example.com"}}}, 422, "invalid_policy", "network.allow"),
    ({"policy": {"filesystem": {"allow_write": ["/etc"]}}}, 422, "invalid_policy", "allow_write"),
    ({"policy": {"credentials": {"K": {"from": "env:AWS_SECRET_ACCESS_KEY", "hosts": ["api.example.com"]}}}},
     422, "invalid_policy", "credentials"),
    ({"policy": "[environment]\npass = [\"AWS_SECRET_ACCESS_KEY\"]\n"}, 422, "invalid_policy", "environment.pass"),
    ({"policy": {"network": {"trusted_addresses": ["10.0.0.0/8"]}}}, 422, "invalid_policy", "trusted_addresses"),
    ({"tier": "process"}, 422, "invalid_policy", "container or vm tier, not 'process'"),
    ({"policy": "[sandbox]\ntier = \"process\"\n"}, 422, "invalid_policy", "not 'process'"),
    ({"tier": "vm"}, 403, "ceiling_exceeded", "the vm tier is not allowed for this tenant"),  # VMs are opt-in.
    ({"policy": "[sandbox]\ntier = \"vm\"\n"}, 403, "ceiling_exceeded", "vm tier"),
    ({"resources": {"memory": "lots"}}, 422, "invalid_request", "memory"),
    ({"resources": {"gpus": 1}}, 422, "invalid_request", ""),
    ({"resources": {"cpus": 0.001}}, 422, "invalid_request", "0.01"),  # A 500 before (the policy model refused).
    ({"resources": {"cpus": 5e-324}}, 422, "invalid_request", "0.01"),
    # Processes: whole numbers only, never more than the machine's pid space allows one sandbox (a 500 before).
    ({"resources": {"pids": 1048576}}, 422, "invalid_request", "resources.pids"),
    ({"resources": {"pids": 1000000}}, 422, "invalid_request", "more than one sandbox may hold on this machine"),
    ({"resources": {"pids": "64"}}, 422, "invalid_request", "resources.pids"),
    ({"resources": {"pids": True}}, 422, "invalid_request", "resources.pids"),
    ({"resources": {"pids": 8}}, 422, "invalid_request", "resources.pids"),
    ({"policy": "[resources]\npids = 1048576\n"}, 422, "invalid_policy", "pids"),
    ({"policy": "[resources]\npids = 900000\n"}, 422, "invalid_request", "more than one sandbox may hold"),
    ({"image": "../../etc"}, 422, "invalid_policy", "image"),
    ({"policy": {"network": {"allow": ["evil.com"]}}}, 403, "ceiling_exceeded", "evil.com"),
    ({"policy": "[network]\nallow = [\"example.com\"]\n"}, 403, "ceiling_exceeded", "example.com"),
    ({"policy": {"network": {"rules": [{"host": "evil.com", "methods": ["POST"]}]}}}, 403, "ceiling_exceeded",
     "evil.com"),
    ({"image": "other"}, 403, "ceiling_exceeded", "image"),
    ({"resources": {"memory": "2G"}}, 403, "ceiling_exceeded", "memory"),
    ({"ttl": 601}, 403, "ceiling_exceeded", "TTL"),
]


@requires_gvisor
@pytest.mark.parametrize("body, status, code, words", CREATE_BODIES)
def test_bad_create_requests_change_nothing(service, victim, body, status, code, words):
    key, _ = victim
    before = snapshot(service)
    listed = [s["id"] for s in service.call("GET", "/v1/sandboxes", key).json()["sandboxes"]]
    if isinstance(body, bytes):
        r = service.call("POST", "/v1/sandboxes", key, data=body, headers={"Content-Type": "application/json"})
    else:
        r = service.call("POST", "/v1/sandboxes", key, json=body)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    assert words in r.json()["error"]["message"], r.text
    assert "Traceback" not in r.text and "/home" not in r.text
    assert [s["id"] for s in service.call("GET", "/v1/sandboxes", key).json()["sandboxes"]] == listed
    assert snapshot(service) == before
    if status in (403, 422) and code != "invalid_request":
        refused = service.audit_rows()[-1]
        assert (refused["command"], refused["decision"], refused["rule"]) == ("create", "deny", code)


@requires_gvisor
def test_processes_beyond_the_tenants_ceiling_are_refused(service):
    key = service.tenant(max_pids=32)
    before = snapshot(service)
    r = service.call("POST", "/v1/sandboxes", key, json={"resources": {"pids": 33}})
    assert (r.status_code, r.json()["error"]["code"]) == (403, "ceiling_exceeded"), r.text
    assert "resources.pids" in r.json()["error"]["message"] and "32" in r.json()["error"]["message"]
    assert snapshot(service) == before
    created = service.create(key, resources={"pids": 32})  # The control: up to the ceiling.
    assert created["resources"]["pids"] == 32
    service.call("DELETE", f"/v1/sandboxes/{created['id']}", key)


@requires_gvisor
def test_huge_json_body_is_refused(service, victim):
    key, _ = victim
    r = service.call("POST", "/v1/sandboxes", key, json={"policy": "#" * (2 << 20)})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


@requires_gvisor
@pytest.mark.parametrize("body, words", [
    ({"cmd": 42}, "cmd"),
    ({"cmd": []}, "cmd"),
    ({"cmd": ["ls", 3]}, "cmd"),
    ({"cmd": "true", "envs": {"1BAD": "x"}}, "envs"),
    ({"cmd": "true", "envs": {"A": "x\u0000y"}}, "envs"),
    ({"cmd": "true", "timeout": -1}, "timeout"),
    ({"cmd": "true", "timeout": 10 ** 9}, "timeout"),
    ({"cmd": "true", "cwd": "a\u0000b"}, "cwd"),
    ({"cmd": "true", "cwd": "../../etc"}, "cwd"),
    ({"cmd": "true", "as_root": True}, "as_root"),
])
def test_bad_commands_run_nothing(service, victim, body, words):
    key, sid = victim
    execs = len([r for r in service.audit_rows() if r["command"].startswith("exec") and sid in r["session"]])
    r = service.call("POST", f"/v1/sandboxes/{sid}/commands", key, json=body)
    assert r.status_code == 422 and words in r.json()["error"]["message"], r.text
    assert len([r for r in service.audit_rows() if r["command"].startswith("exec") and sid in r["session"]]) == execs


@requires_gvisor
@pytest.mark.parametrize("sandbox_id", [UNKNOWN, "nope", "sbx_" + "f" * 2000, "%2e%2e", "sbx_%00"])
def test_unknown_ids_are_404(service, victim, sandbox_id):
    key, _ = victim
    for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/files/a"), ("GET", "/commands/cmd_x")):
        status, body = raw(service, method, f"/v1/sandboxes/{sandbox_id}{path}", key)
        assert status == 404, (method, path, status, body)
        assert body["error"]["code"] in ("sandbox_not_found", "not_found")


@requires_gvisor
def test_unknown_routes_and_methods(service, victim):
    key, sid = victim
    r = service.call("GET", "/v1/nothing", key)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = service.call("PATCH", f"/v1/sandboxes/{sid}", key)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


@needs_service_deps
def test_a_bug_answers_500_without_its_details(scratch):
    """An unexpected exception: a generic 500 body, the details only in the service's log."""
    import logging

    import requests
    import uvicorn

    from blastwall.service.app import create_app
    from blastwall.service.sessions import Config

    class Store:
        def authenticate(self, key):
            return object()

    class Manager:
        config = Config(data_dir=str(scratch))

        def list(self, tenant):
            raise RuntimeError("database password is hunter2")

        def audit(self, *args, **kwargs):
            pass

        def close(self):
            pass

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("blastwall.service").addHandler(handler)
    server = uvicorn.Server(uvicorn.Config(create_app(Manager(), Store()), host="127.0.0.1", port=0,
                                           log_level="critical", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 10
        while not server.started:
            assert time.time() < deadline
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        r = requests.get(f"http://127.0.0.1:{port}/v1/sandboxes", headers={"Authorization": "Bearer x"}, timeout=10)
        assert r.status_code == 500
        assert r.json() == {"error": {"code": "internal_error",
                                      "message": "internal error; the operator's log has the details"}}
        assert "hunter2" not in r.text and "Traceback" not in r.text
        assert any("internal error" in record.getMessage() for record in records)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        logging.getLogger("blastwall.service").removeHandler(handler)


@requires_gvisor
def test_stdin_floods_and_huge_command_ids_harm_no_one(service):
    """A command that never reads its stdin, flooded by its tenant: each write is answered within seconds
    (one at a time per command, a few per tenant), and another tenant is served meanwhile."""
    import concurrent.futures

    key, other = service.tenant(), service.tenant()
    sid = service.create(key)["id"]
    theirs = service.create(other)["id"]
    try:
        started = service.call("POST", f"/v1/sandboxes/{sid}/commands", key,
                               json={"cmd": "sleep 120", "background": True, "stdin": True, "timeout": 120})
        cid = started.json()["id"]
        data = "x" * 70000  # more than a pipe holds

        def write(_):
            t = time.monotonic()
            r = service.call("POST", f"/v1/sandboxes/{sid}/commands/{cid}/stdin", key, json={"data": data},
                             timeout=60)
            return r.status_code, time.monotonic() - t

        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            flood = [pool.submit(write, i) for i in range(80)]
            time.sleep(1.0)
            t = time.monotonic()
            r = service.call("GET", f"/v1/sandboxes/{theirs}", other, timeout=30)
            assert r.status_code == 200 and time.monotonic() - t < 3.0  # the other tenant is served
            results = [f.result() for f in flood]
        assert {status for status, _ in results} <= {204, 409, 429}, results
        assert max(took for _, took in results) < 10.0, results
        assert any(status in (409, 429) for status, _ in results)  # refused at once, not queued
        huge = "9" * 5000
        for method, suffix in (("GET", ""), ("POST", "/kill"), ("POST", "/stdin/close")):
            r = service.call(method, f"/v1/sandboxes/{sid}/commands/{huge}{suffix}", key)
            assert r.status_code == 404 and r.json()["error"]["code"] == "command_not_found", (method, r.text)
    finally:
        service.call("DELETE", f"/v1/sandboxes/{sid}", key)
        service.call("DELETE", f"/v1/sandboxes/{theirs}", other)
