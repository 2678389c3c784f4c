"""The service over real HTTP and real gVisor: create, exec, files, destroy, TTL, crash and restart.

Each test checks the host, not just the status codes: after a sandbox is gone,
its workspace, container state, runsc processes, network namespace and
cgroups are gone too.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.service.conftest import container_ids, destroy_service, make_service, needs_gvisor

pytestmark = needs_gvisor


def test_create_exec_files_destroy_leaves_nothing(service):
    key = service.tenant()
    before = service.containers()
    info = service.create(key)
    sid = info["id"]
    assert info["state"] == "running" and info["tier"] == "container" and info["workdir"] == "/home/user"
    assert sid.startswith("sbx_") and len(sid) == 28
    new = container_ids(service, before)
    assert len(new) == 1
    workspace = service.workspace(sid)
    # The workspace belongs to the sandbox's user, under a directory only the service can enter.
    assert os.stat(workspace).st_uid == 1000 and (os.stat(workspace.parent).st_mode & 0o077) == 0

    out, err, code = service.run(key, sid, "id -u; pwd; echo oops >&2; exit 3")
    assert (out, err, code) == ("1000\n/home/user\n", "oops\n", 3)

    r = service.call("PUT", f"/v1/sandboxes/{sid}/files/src/hello.py", key, data=b"print('hi from gvisor')\n")
    assert r.status_code == 200 and r.json()["size"] == 24
    assert (workspace / "src" / "hello.py").stat().st_uid == 1000  # The sandbox can change what we wrote.
    out, _, code = service.run(key, sid, ["python3", "src/hello.py"])
    assert (out, code) == ("hi from gvisor\n", 0)
    out, _, code = service.run(key, sid, "echo changed >> src/hello.py && echo made > /home/user/made.txt")
    assert code == 0
    assert service.call("GET", f"/v1/sandboxes/{sid}/files/made.txt", key).content == b"made\n"
    assert service.call("GET", f"/v1/sandboxes/{sid}/files//home/user/src/hello.py", key).content.endswith(
        b"changed\n")

    got = service.call("GET", f"/v1/sandboxes/{sid}", key).json()
    assert got["id"] == sid and 0 < got["ttl_remaining"] <= 300
    assert [s["id"] for s in service.call("GET", "/v1/sandboxes", key).json()["sandboxes"]] == [sid]

    r = service.call("DELETE", f"/v1/sandboxes/{sid}", key)
    assert r.status_code == 204
    assert service.wait_clean(new, [sid]) == {}
    assert not workspace.exists()
    assert service.call("GET", f"/v1/sandboxes/{sid}", key).status_code == 404
    assert service.call("DELETE", f"/v1/sandboxes/{sid}", key).status_code == 404

    rows = [r for r in service.audit_rows() if sid in r["session"]]
    actions = [r["command"].split()[0] for r in rows]
    for action in ("create", "exec", "write", "read", "delete", "destroy"):
        assert action in actions, actions
    assert all(r["session"].endswith(f"/{sid}") and r["kind"] == "service" for r in rows)


def test_envs_cwd_and_the_services_environment_stays_out(service):
    key = service.tenant()
    sid = service.create(key)["id"]
    service.call("PUT", f"/v1/sandboxes/{sid}/files/sub/x", key, data=b"x")
    out, _, code = service.run(key, sid, "pwd; echo $GREETING; env", envs={"GREETING": "hello"}, cwd="sub")
    assert code == 0
    assert out.startswith("/home/user/sub\nhello\n")
    # Nothing of the service's own environment (its paths, its audit database) is passed in.
    assert str(service.root) not in out and "BLASTWALL_AUDIT_DB" not in out
    service.call("DELETE", f"/v1/sandboxes/{sid}", key)


def test_the_sandboxs_home_is_its_own(service):
    """A disposable workspace has no mandatory write-denies: git init, ~/.config, ~/.bashrc work."""
    key = service.tenant()
    sid = service.create(key)["id"]
    try:
        out, err, code = service.run(key, sid, "git init -q . && mkdir -p ~/.config/app && echo x > ~/.config/app/rc "
                                               "&& echo 'alias ll=true' >> ~/.bashrc && echo ok")
        assert (out, code) == ("ok\n", 0), err
        assert (service.workspace(sid) / ".git" / "HEAD").exists()
    finally:
        service.call("DELETE", f"/v1/sandboxes/{sid}", key)


def test_output_is_streamed_as_it_comes(service):
    import requests

    key = service.tenant()
    sid = service.create(key)["id"]
    started = time.time()
    r = requests.post(f"{service.url}/v1/sandboxes/{sid}/commands", headers={"Authorization": f"Bearer {key}"},
                      json={"cmd": "echo first; sleep 2; echo second"}, stream=True, timeout=60)
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = r.iter_lines()
    assert json.loads(next(lines)) == {"stdout": "first\n"}
    assert time.time() - started < 1.8  # Before the command ended.
    rest = [json.loads(line) for line in lines]
    assert rest == [{"stdout": "second\n"}, {"exit_code": 0, "timed_out": False}]
    service.call("DELETE", f"/v1/sandboxes/{sid}", key)


def test_timeout_kills_the_command_and_says_124(service):
    key = service.tenant()
    sid = service.create(key)["id"]
    try:
        started = time.time()
        out, _, code = service.run(key, sid, "echo start; sleep 60", timeout=1)
        assert code == 124 and out == "start\n" and time.time() - started < 15
        # The sandbox is still usable.
        assert service.run(key, sid, "echo still here") == ("still here\n", "", 0)
    finally:
        service.call("DELETE", f"/v1/sandboxes/{sid}", key)


def test_timeout_kills_the_commands_children_too(service):
    key = service.tenant()
    sid = service.create(key)["id"]
    try:
        _, _, code = service.run(key, sid, "sleep 60; echo never", timeout=1)
        assert code == 124
        out, _, code = service.run(key, sid, "for p in /proc/[0-9]*; do cat $p/comm; done")
        assert code == 0 and "sleep" not in out.split(), out
    finally:
        service.call("DELETE", f"/v1/sandboxes/{sid}", key)


def test_background_command_status_and_kill(service):
    key = service.tenant()
    sid = service.create(key)["id"]
    r = service.call("POST", f"/v1/sandboxes/{sid}/commands", key,
                     json={"cmd": "echo started; sleep 0.5; echo done", "background": True})
    assert r.status_code == 202
    cid = r.json()["id"]
    status = service.call("GET", f"/v1/sandboxes/{sid}/commands/{cid}?wait=30", key).json()
    assert (status["state"], status["exit_code"], status["stdout"]) == ("exited", 0, "started\ndone\n")

    r = service.call("POST", f"/v1/sandboxes/{sid}/commands", key, json={"cmd": "sleep 300", "background": True})
    cid = r.json()["id"]
    assert service.call("GET", f"/v1/sandboxes/{sid}/commands/{cid}", key).json()["state"] == "running"
    killed = service.call("POST", f"/v1/sandboxes/{sid}/commands/{cid}/kill", key).json()
    assert killed["state"] == "exited" and killed["exit_code"] != 0
    # A process the command left behind does not keep a background command "running".
    r = service.call("POST", f"/v1/sandboxes/{sid}/commands", key,
                     json={"cmd": "sleep 300 & echo parent done", "background": True})
    status = service.call("GET", f"/v1/sandboxes/{sid}/commands/{r.json()['id']}?wait=20", key).json()
    assert status["state"] == "exited" and status["stdout"] == "parent done\n"
    assert service.call("GET", f"/v1/sandboxes/{sid}/commands/cmd_nope", key).status_code == 404
    service.call("DELETE", f"/v1/sandboxes/{sid}", key)


def test_memory_bomb_stops_only_its_own_sandbox(service):
    import requests

    key = service.tenant()
    neighbour = service.create(key)["id"]
    before = service.containers()
    sid = service.create(key, resources={"memory": "128M"})["id"]
    new = container_ids(service, before)
    r = requests.post(f"{service.url}/v1/sandboxes/{sid}/commands", headers={"Authorization": f"Bearer {key}"},
                      json={"cmd": "python3 -c 'x = bytearray(1 << 30)'; echo survived"}, timeout=60)
    events = [json.loads(line) for line in r.text.splitlines()]
    assert events[-1]["exit_code"] >= 128 and events[-1].get("sandbox_stopped") is True, events
    assert "survived" not in r.text
    # The dead sandbox is destroyed (on the host too) and says so; the neighbour runs on.
    assert service.wait_clean(new, [sid]) == {}
    assert service.call("GET", f"/v1/sandboxes/{sid}", key).status_code == 404
    assert service.run(key, neighbour, "echo fine") == ("fine\n", "", 0)
    reasons = [r["reason"] for r in service.audit_rows() if sid in r["session"] and r["decision"] == "destroy"]
    assert reasons and "stopped by itself" in reasons[0]
    service.call("DELETE", f"/v1/sandboxes/{neighbour}", key)


def test_ttl_expiry_destroys_the_sandbox_on_the_host(service):
    key = service.tenant()
    before = service.containers()
    sid = service.create(key, ttl=2)["id"]
    new = container_ids(service, before)
    workspace = service.workspace(sid)
    assert workspace.exists()
    r = service.call("POST", f"/v1/sandboxes/{sid}/commands", key, json={"cmd": "sleep 60", "background": True})
    assert r.status_code == 202
    deadline = time.time() + 20
    while service.call("GET", f"/v1/sandboxes/{sid}", key).status_code == 200:
        assert time.time() < deadline, "the sandbox outlived its TTL"
        time.sleep(0.3)
    assert service.wait_clean(new, [sid]) == {}, service.read_log()
    assert not workspace.exists()
    reasons = [r["reason"] for r in service.audit_rows() if sid in r["session"] and r["decision"] == "destroy"]
    assert reasons == ["TTL expired"]


def test_set_timeout_extends_within_the_ceiling(service):
    key = service.tenant(max_ttl=600)
    sid = service.create(key, ttl=2)["id"]
    r = service.call("POST", f"/v1/sandboxes/{sid}/timeout", key, json={"ttl": 120})
    assert r.status_code == 200 and r.json()["ttl_remaining"] > 100
    time.sleep(2.5)
    assert service.call("GET", f"/v1/sandboxes/{sid}", key).status_code == 200
    r = service.call("POST", f"/v1/sandboxes/{sid}/timeout", key, json={"ttl": 601})
    assert r.status_code == 403 and r.json()["error"]["code"] == "ceiling_exceeded"
    service.call("DELETE", f"/v1/sandboxes/{sid}", key)


def test_killed_service_is_reaped_at_restart(service_images):
    svc = make_service(service_images)
    try:
        svc.start()
        key = svc.tenant()
        ids = [svc.create(key)["id"] for _ in range(2)]
        out, _, _ = svc.run(key, ids[0], "echo alive")
        assert out == "alive\n"
        containers = svc.containers()
        assert len(containers) == 2
        svc.kill()
        # Nothing cleaned up after the SIGKILL (the containers may be going down on
        # their own: their lifeline was the dead process) ...
        assert all(svc.workspace(i).exists() for i in ids)
        svc.start()
        # ... and all of it is gone before the new one answers.
        assert svc.leftovers(containers) == {}
        assert all(svc.call("GET", f"/v1/sandboxes/{i}", key).status_code == 404 for i in ids)
        reaped = [r for r in svc.audit_rows() if r["command"] == "reap"]
        assert sorted(r["session"].split("/")[1] for r in reaped) == sorted(ids)
        # And the restarted service works.
        sid = svc.create(key)["id"]
        assert svc.run(key, sid, "echo again")[0] == "again\n"
    finally:
        destroy_service(svc)
    assert svc.leftovers() == {}


def test_stopping_the_service_destroys_its_sandboxes(service_images):
    svc = make_service(service_images)
    try:
        svc.start()
        key = svc.tenant()
        sid = svc.create(key)["id"]
        containers = svc.containers()
        svc.stop()
        # uvicorn re-raises the SIGTERM it handled once it has shut down.
        assert svc.proc.returncode in (0, -15), svc.read_log()
        assert "Traceback" not in svc.read_log()
        assert svc.leftovers(containers) == {}
        assert not svc.workspace(sid).exists()
    finally:
        destroy_service(svc)


def test_warm_pool_hands_out_booted_sandboxes(service_images):
    svc = make_service(service_images, args=["--warm", "2"])
    try:
        svc.start()
        key = svc.tenant()
        deadline = time.time() + 30
        while len(svc.containers()) < 2:
            assert time.time() < deadline, svc.read_log()
            time.sleep(0.2)
        pooled = set(svc.containers())
        started = time.time()
        sid = svc.create(key)["id"]
        took = time.time() - started
        assert svc.run(key, sid, "echo warm")[0] == "warm\n"
        created = [r for r in svc.audit_rows() if r["command"].startswith("create") and sid in r["session"]]
        assert "(warm)" in created[0]["reason"] and took < 2
        # The pool refills; a sandbox with a non-default configuration is never from the pool.
        deadline = time.time() + 30
        while len(svc.containers()) < 3:
            assert time.time() < deadline, svc.read_log()
            time.sleep(0.2)
        custom = svc.create(key, resources={"memory": "256M"})["id"]
        created = [r for r in svc.audit_rows() if r["command"].startswith("create") and custom in r["session"]]
        assert "(warm)" not in created[0]["reason"]
        assert pooled & set(svc.containers())
    finally:
        destroy_service(svc)
    assert svc.leftovers() == {}


@pytest.mark.parametrize("path", ["/openapi.json"])
def test_openapi_spec_is_served(service, path):
    spec = service.call("GET", path).json()
    paths = spec["paths"]
    for route in ("/v1/sandboxes", "/v1/sandboxes/{sandbox_id}", "/v1/sandboxes/{sandbox_id}/commands",
                  "/v1/sandboxes/{sandbox_id}/files/{path}", "/v1/sandboxes/{sandbox_id}/commands/{command_id}/kill"):
        assert route in paths, sorted(paths)
    assert "CreateSandbox" in json.dumps(spec)
