"""The service's VM tier over real HTTP and real QEMU: a tenant allowed VMs gets one, and nothing else of the host.

Boots are slow under software emulation, so this module boots two VMs: one
for the SDK and HTTP checks, one in a service that is then SIGKILLed.  Every
check looks at the host or inside the guest, not only at status codes.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.service.conftest import destroy_service, make_service, needs_service_deps
from tests.tiers.vm.test_vm import _vm_dirs
from tests.tiers.vm.test_vm import pytestmark as vm_marks

pytestmark = [needs_service_deps, vm_marks]

VM_TENANT = {"tiers": ["container", "vm"], "max_cpus": 2}


def qemus(svc) -> list[int]:
    """QEMU processes started for this service (their command lines name its state directory).

    QEMU itself, not the bubblewrap sandbox around it, whose command line names QEMU too.
    """
    return sorted(pid for pid, line in svc.processes(b"qemu-system-").items()
                  if "qemu-system-" in os.path.basename(line.split(" ", 1)[0]))


def vm_dirs(svc) -> list[str]:
    return _vm_dirs(svc.env)  # The service's XDG_STATE_HOME.


def wait_for(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_vm_sandbox_through_the_sdk_and_http(service):
    from blastwall.client import Sandbox

    key = service.tenant(**VM_TENANT)
    sandbox = Sandbox.create(api_url=service.url, api_key=key, tier="vm", timeout=900,
                             resources={"memory": "256M", "pids": 48})
    sid = sandbox.sandbox_id
    try:
        workspace = service.workspace(sid)
        info = service.call("GET", f"/v1/sandboxes/{sid}", key).json()
        assert info["tier"] == "vm" and info["workdir"] == "/home/user" and info["resources"]["memory"] == "256M"
        assert len(qemus(service)) == 1 and len(vm_dirs(service)) == 1

        # Its own kernel, the unprivileged user, the workspace, the memory and CPUs asked for.
        first = sandbox.commands.run("uname -r; id -u; echo $BLASTWALL_SANDBOX; pwd; nproc; "
                                     "grep MemTotal /proc/meminfo", timeout=300)
        release, uid, tier, cwd, cpus, memory = first.stdout.splitlines()
        assert release != os.uname().release and (uid, tier, cwd, cpus) == ("1000", "vm", "/home/user", "1")
        assert 150 * 1024 < int(memory.split()[1]) <= 256 * 1024

        # Files both ways through the API; on the host they belong to the user the guest's user maps to
        # (QEMU's user namespace maps uid 1000 onto the service's own user).
        sandbox.files.write("in/data.txt", "from the API\n")
        assert sandbox.commands.run("cat in/data.txt && echo made > made.txt").stdout == "from the API\n"
        assert service.call("GET", f"/v1/sandboxes/{sid}/files/made.txt", key).content == b"made\n"
        assert (workspace / "made.txt").stat().st_uid == os.getuid()

        # Nothing of the host but the workspace: not the service's database, not its data directory.
        assert service.db.exists() and workspace.parent.is_dir()
        out, _, _ = service.run(key, sid, f"test -e {service.db} || echo no-db; test -e {workspace.parent} || "
                                          "echo no-data; ls /home")
        assert out == "no-db\nno-data\nuser\n"

        # pids: at most 48 processes of the sandbox's user at once (the guest kernel's RLIMIT_NPROC).
        out, err, code = service.run(key, sid, ["python3", "-c", (
            "import subprocess\n"
            "procs = []\n"
            "for _ in range(80):\n"
            "    try:\n"
            "        procs.append(subprocess.Popen(['sleep', '30']))\n"
            "    except OSError:\n"
            "        break\n"
            "print(len(procs))\n"
            "for p in procs:\n"
            "    p.kill()\n"
            "    p.wait()\n")], timeout=240)
        assert code == 0, err
        assert 20 <= int(out) < 48

        # memory: the VM's RAM.  A bomb gets the guest's OOM killer (137); the VM and its agent go on.
        _, _, code = service.run(key, sid, ["python3", "-c", "b = []\nwhile True: b.append(b'x' * (16 << 20))"],
                                 timeout=240)
        assert code == 137
        assert sandbox.commands.run("echo survived").stdout == "survived\n"
        (qemu,) = qemus(service)
        with open(f"/proc/{qemu}/status") as f:
            peak = int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) << 10
        # On the host the VM cost its RAM plus QEMU's own (with TCG, a 64 MiB translation cache): bounded.
        assert peak < (256 + 192) << 20, peak >> 20

        # A timeout ends the command (124); a killed background command ends with its processes.
        _, _, code = service.run(key, sid, "sleep 60", timeout=2)
        assert code == 124
        r = service.call("POST", f"/v1/sandboxes/{sid}/commands", key,
                         json={"cmd": "sleep 300 & sleep 301", "background": True})
        cid = r.json()["id"]
        assert service.call("GET", f"/v1/sandboxes/{sid}/commands/{cid}", key).json()["state"] == "running"
        killed = service.call("POST", f"/v1/sandboxes/{sid}/commands/{cid}/kill", key).json()
        assert killed["state"] == "exited" and killed["exit_code"] == 137
        out, err, code = service.run(key, sid, "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done "
                                                "2>/dev/null | grep -c '^sleep 30[01]'")
        assert out.strip() == "0", (out, err, code)
    finally:
        sandbox.kill()
    # Gone from the host: QEMU, its state, the workspace.
    assert wait_for(lambda: not qemus(service) and not vm_dirs(service), 30), (qemus(service), vm_dirs(service))
    assert not service.workspace(sid).exists()
    assert service.call("GET", f"/v1/sandboxes/{sid}", key).status_code == 404
    actions = [r["command"].split()[0] for r in service.audit_rows() if sid in r["session"]]
    assert "create" in actions and "destroy" in actions


@pytest.mark.parametrize("resources, words", [
    ({"cpus": 0.5}, "whole CPUs"),
    ({"memory": "64M"}, "at least 128 MiB"),
])
def test_vm_resources_it_cannot_give_are_refused_before_booting(service, resources, words):
    key = service.tenant(**VM_TENANT)
    r = service.call("POST", "/v1/sandboxes", key, json={"tier": "vm", "resources": resources})
    assert r.status_code == 422 and words in r.json()["error"]["message"], r.text
    assert qemus(service) == [] and vm_dirs(service) == []


def test_killed_service_vm_powers_off_and_is_reaped_at_restart(service_images):
    svc = make_service(service_images)
    try:
        svc.start()
        key = svc.tenant("vm-tenant", **VM_TENANT)
        sid = svc.create(key, tier="vm")["id"]
        assert svc.run(key, sid, "echo alive")[0] == "alive\n"
        assert len(qemus(svc)) == 1
        svc.kill()
        # The control socket was the dead service's: the agent saw it close and powered the guest off.
        assert wait_for(lambda: not qemus(svc), 60), "QEMU outlived its service"
        assert svc.workspace(sid).exists() and len(vm_dirs(svc)) == 1  # Nothing cleaned up by the dead.
        svc.start()
        assert vm_dirs(svc) == [] and not svc.workspace(sid).exists()
        assert svc.call("GET", f"/v1/sandboxes/{sid}", key).status_code == 404
        assert [r["session"] for r in svc.audit_rows() if r["command"] == "reap"] == ["vm-tenant/" + sid]
    finally:
        destroy_service(svc)
    assert qemus(svc) == [] and vm_dirs(svc) == []
