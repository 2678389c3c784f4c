"""The VM tier with real QEMU (software emulation is fine): attacks, checked from the host side.

Boots are slow under emulation, so most tests share one session VM (module
scope) and each check is one command; the CLI tests boot their own (one run,
one kill, one owner killed).  Every test that boots checks that nothing is
left: no QEMU, no state directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import BASE, SECRET, blastwall, bw_env, tier_missing


pytestmark = pytest.mark.skipif(tier_missing("vm") is not None, reason=tier_missing("vm") or "")


@pytest.fixture(scope="module")
def vm_env(image_cache):
    state = BASE / f"vm-state-{os.getpid()}"
    state.mkdir(parents=True, exist_ok=True)
    home = BASE / f"vm-home-{os.getpid()}"
    (home / ".aws").mkdir(parents=True, exist_ok=True)
    (home / ".aws" / "credentials").write_text(f"[default]\naws_secret_access_key = {SECRET}\n")
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(image_cache), "XDG_STATE_HOME": str(state),
           "XDG_CONFIG_HOME": str(home / ".config"), "PATH": os.environ["PATH"]}
    yield env
    shutil.rmtree(state, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)


def _plan(env, workspace, doc=None):
    from blastwall import api
    from blastwall.policy.model import parse_layer

    pol = api.load(None, flags=parse_layer(doc or {"sandbox": {"tier": "vm"}}, "test"), workspace=str(workspace),
                   environ=env)
    return api.plan_for(pol, workspace=str(workspace), cwd=str(workspace), environ=env)


@pytest.fixture(scope="module")
def vm(vm_env):
    """One session VM for the module, its workspace owned by the host user the guest's user maps to."""
    from blastwall.tiers.vm.session import VmSession

    workspace = BASE / f"vm-ws-{os.getpid()}"
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "README.md").write_text("from the host\n")
    session = VmSession(_plan(vm_env, workspace), environ=vm_env, workspace=str(workspace))
    os.chown(workspace, *session.host_owner)
    session.boot()
    session.host_workspace = workspace
    yield session
    state = session.state_path
    qemu = session.qemu_pid
    session.close()
    assert state is None or not os.path.exists(state)
    assert qemu is None or not _running(qemu)
    shutil.rmtree(workspace, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def run(session, script: str, *, root: bool = False, timeout: float = 120) -> tuple[int, str, str]:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}

    def drain(fd: int) -> None:
        while data := os.read(fd, 65536):
            chunks[fd].append(data)
        os.close(fd)

    threads = [threading.Thread(target=drain, args=(fd,)) for fd in (out_r, err_r)]
    for t in threads:
        t.start()
    try:
        command = session.exec(["sh", "-c", script], stdout=out_w, stderr=err_w, root=root)
        status = command.wait(timeout)
    finally:
        # The session wrote into our pipes from its reader thread; closing our ends ends the drains.
        os.close(out_w)
        os.close(err_w)
        for t in threads:
            t.join(10)
    return status, b"".join(chunks[out_r]).decode(), b"".join(chunks[err_r]).decode()


ATTEMPTS = """
import errno, socket
def attempt(name, fn):
    try:
        fn()
        print(name, "SENT")
    except socket.timeout:
        print(name, "timeout")
    except OSError as exc:
        print(name, errno.errorcode.get(exc.errno, exc.errno))
QUERY = b"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x07example\\x03com\\x00\\x00\\x01\\x00\\x01"
def raw():
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.sendto(b"\\x08\\x00\\xf7\\xff\\x00\\x00\\x00\\x00", ("1.1.1.1", 0))
def dns(server):
    def go():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.sendto(QUERY, (server, 53))
        s.recvfrom(512)
    return go
def tcp(host, port):
    return lambda: socket.create_connection((host, port), timeout=5).close()
"""


def attempts_as_root(session, body: str) -> tuple[dict[str, str], bool]:
    """Run ``body`` (``attempt(name, fn)`` lines; ``{port}`` is a host listener on 127.0.0.1) as root in the
    guest: ({name: "SENT" or the errno name or "timeout"}, whether the host listener got a connection)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    try:
        script = ATTEMPTS + body.replace("{port}", str(listener.getsockname()[1]))
        status, out, err = run(session, f"python3 -c '{script}'", root=True, timeout=180)
        try:
            listener.accept()[0].close()
            reached = True
        except socket.timeout:
            reached = False
    finally:
        listener.close()
    assert status == 0, err
    return dict(line.split(" ", 1) for line in out.splitlines()), reached


# -- the session VM --------------------------------------------------------------------------


def test_boot_runs_a_command_unprivileged_in_its_own_kernel(vm):
    status, out, err = run(vm, "id -u; id -g; grep CapEff /proc/self/status; uname -r; echo $BLASTWALL_SANDBOX; "
                               "grep NoNewPrivs /proc/self/status; exit 7")
    assert status == 7, err
    lines = out.splitlines()
    assert lines[:2] == ["1000", "1000"]
    assert "CapEff:\t0000000000000000" in out
    assert lines[3] != os.uname().release  # The guest's kernel, not the host's.
    assert lines[4] == "vm"
    assert "NoNewPrivs:\t1" in out


def test_workspace_round_trip(vm):
    host = vm.host_workspace
    (host / "from-host.txt").write_text("written on the host\n")
    status, out, err = run(vm, "cat from-host.txt README.md; echo 'written in the guest' > from-guest.txt; "
                               "mkdir -p sub && echo deep > sub/file")
    assert status == 0, err
    assert out == "written on the host\nfrom the host\n"
    made = host / "from-guest.txt"
    # The guest's user (uid 1000) is QEMU's uid, which its user namespace maps onto the caller.
    assert made.read_text() == "written in the guest\n" and made.stat().st_uid == vm.host_owner[0]
    assert (host / "sub" / "file").read_text() == "deep\n"
    # The agent's file operations act as the unprivileged user too.
    vm.write_file("/home/user/via-agent.txt", b"agent\n")
    assert (host / "via-agent.txt").read_bytes() == b"agent\n"
    assert (host / "via-agent.txt").stat().st_uid == vm.host_owner[0]
    assert vm.read_file("/home/user/from-host.txt") == b"written on the host\n"
    with pytest.raises(OSError, match="Permission denied"):
        vm.write_file("/etc/passwd", b"owned\n")


def _descendant(pid: int, prefix: str) -> int:
    """The first process below ``pid`` whose name starts with ``prefix``."""
    todo = [pid]
    while todo:
        current = todo.pop()
        with open(f"/proc/{current}/comm") as f:
            if f.read().startswith(prefix):
                return current
        for task in os.listdir(f"/proc/{current}/task"):
            with open(f"/proc/{current}/task/{task}/children") as f:
                todo += [int(child) for child in f.read().split()]
    raise AssertionError(f"no {prefix} process below {pid}")


def test_qemu_sees_none_of_the_hosts_run(vm):
    """QEMU may create unix sockets (its control socket, the forwards): the host's /run, where D-Bus, systemd and
    docker listen, is an empty tmpfs in its view, as seen from the host through /proc/PID/root."""
    import socket

    host_sock = f"/run/blastwall-test-{os.getpid()}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(host_sock)
    listener.listen(1)
    try:
        view = f"/proc/{_descendant(vm.qemu_pid, 'qemu-system')}/root"  # qemu_pid is bubblewrap's, outside.
        # The control: this is QEMU's view (it serves this workspace), and the host's /run is not empty.
        assert open(f"{view}{vm.host_workspace}/README.md").read() == "from the host\n"
        assert os.path.basename(host_sock) in os.listdir("/run")
        seen = os.listdir(f"{view}/run")
        assert os.path.basename(host_sock) not in seen and not {"systemd", "dbus", "docker.sock"} & set(seen), seen
    finally:
        listener.close()
        os.unlink(host_sock)


def test_writes_outside_the_workspace_are_thrown_away_and_the_root_disk_is_read_only(vm):
    status, out, _ = run(vm, "touch /etc/owned 2>/dev/null && echo user-wrote-etc; "
                             "echo x > /tmp/scratch && echo tmp-ok", timeout=60)
    assert "user-wrote-etc" not in out and "tmp-ok" in out
    disk = os.path.join(vm._environ["XDG_CACHE_HOME"], "blastwall", "images", "default", "vm-root.erofs")
    before = os.stat(disk).st_mtime_ns
    status, out, err = run(vm, "grep ' / ' /proc/mounts; cat /sys/block/vda/ro; "
                               "dd if=/dev/zero of=/dev/vda bs=4k count=1 conv=notrunc 2>/dev/null && echo disk-written; "
                               "touch /etc/root-wrote && echo root-wrote-overlay", root=True)
    assert out.startswith("root / overlay ") and "\n1\n" in out, out  # The guest sees a read-only disk...
    assert "disk-written" not in out
    assert "root-wrote-overlay" in out  # ...and root's writes land in the in-memory layer,
    assert os.stat(disk).st_mtime_ns == before  # never on the host's disk.


def test_host_paths_outside_the_workspace_are_invisible(vm, vm_env):
    home = vm_env["HOME"]
    script = (f"test -e {home}/.aws/credentials && echo SEES-HOST-HOME; "
              f"test -e {os.path.dirname(__file__)} && echo SEES-HOST-REPO; "
              f"grep -rl {SECRET} /home /root /etc /tmp /run /mnt /srv /opt 2>/dev/null; "
              "echo sources $(grep ' 9p ' /proc/mounts | cut -d' ' -f1 | sort -u); mkdir -p /mnt/x; "
              "for tag in host root hostfs share ws0 /; do mount -t 9p -o trans=virtio $tag /mnt/x 2>/dev/null "
              "&& echo MOUNTED-$tag; done; ls /sys/bus/virtio/drivers/9pnet_virtio/ | grep -c virtio")
    status, out, err = run(vm, script, root=True)
    assert "SEES-HOST" not in out and SECRET not in out and "MOUNTED" not in out, out
    # Every 9p mount (the workspace and the read-only binds inside it) comes from the one share there is.
    assert "sources ws\n" in out and out.strip().endswith("\n1"), out


def test_as_root_in_the_guest_nothing_leaves(vm):
    """Raw sockets, DNS to a public resolver, a direct IP, the host's loopback and slirp's gateway: no route."""
    results, reached = attempts_as_root(vm, """
attempt("raw", raw)
attempt("dns", dns("8.8.8.8"))
attempt("direct", tcp("1.1.1.1", 443))
attempt("slirp-host", tcp("10.0.2.2", {port}))
attempt("loopback", tcp("127.0.0.1", {port}))
print("links", sorted(open("/proc/net/dev").read().split()[i].rstrip(":") for i in range(20, len(open("/proc/net/dev").read().split()), 17)))
""")
    assert results["raw"] == "ENETUNREACH" and results["dns"] == "ENETUNREACH", results
    assert results["direct"] == "ENETUNREACH" and results["slirp-host"] == "ENETUNREACH", results
    assert results["loopback"] == "ECONNREFUSED", results  # The guest's own loopback, not the host's.
    assert results["links"] == "['lo']", results  # -nic none: no network device at all.
    assert not reached


def test_signals_reach_the_command_and_the_session_survives(vm):
    out_r, out_w = os.pipe()
    command = vm.exec(["sh", "-c", "echo started; sleep 100"], stdout=out_w, stderr=out_w)
    assert os.read(out_r, 100).startswith(b"started")
    command.kill(signal.SIGTERM)
    assert command.wait(30) == 128 + signal.SIGTERM
    os.close(out_w)
    os.close(out_r)
    status, out, _ = run(vm, "echo still-here")
    assert status == 0 and out == "still-here\n"


def test_input_reaches_the_command(vm):
    r, w = os.pipe()
    out_r, out_w = os.pipe()
    command = vm.exec(["sh", "-c", "tr a-z A-Z"], stdin=r, stdout=out_w, stderr=out_w)
    os.close(r)
    os.write(w, b"hello vm\n")
    os.close(w)
    assert command.wait(60) == 0
    os.close(out_w)
    assert os.read(out_r, 100) == b"HELLO VM\n"
    os.close(out_r)


def test_commands_that_cannot_start_say_why(vm):
    for argv, status, words in ((["no-such-command"], 127, "Can't run no-such-command: No such file"),
                                (["/etc"], 126, "Can't run /etc: Permission denied")):
        out_r, out_w = os.pipe()
        command = vm.exec(argv, stdout=out_w, stderr=out_w)
        os.close(out_w)
        assert command.wait(60) == status
        said = os.read(out_r, 1000).decode()
        os.close(out_r)
        assert words in said, said
    # What Popen itself refuses (here a NUL in the working directory) is a failed command, for the user's
    # starter and for the agent (pid 1) alike: the VM stays up.
    for root in (False, True):
        devnull = os.open(os.devnull, os.O_WRONLY)
        assert vm.exec(["true"], cwd="/tmp\0x", stdout=devnull, stderr=devnull, root=root).wait(60) == 126
        os.close(devnull)
    with pytest.raises(ValueError):
        vm.exec([])
    with pytest.raises(ValueError):
        vm.exec(["true"], env={"A": "b\0c"})
    assert run(vm, "echo up")[:2] == (0, "up\n")


def test_programs_are_found_in_the_commands_own_path(vm):
    """As execvp does: the first *executable* file of that name in the command's PATH, and the working directory."""
    for sub, mode, says in (("first", 0o644, "not me"), ("second", 0o755, "me")):
        directory = vm.host_workspace / sub
        directory.mkdir(exist_ok=True)
        (directory / "hello").write_text(f"#!/bin/sh\necho {says} in $(pwd)\n")
        (directory / "hello").chmod(mode)
        os.chown(directory / "hello", *vm.host_owner)
    out_r, out_w = os.pipe()
    command = vm.exec(["hello"], env={"PATH": "/home/user/first:/home/user/second:/usr/bin:/bin"}, cwd="/tmp",
                      stdout=out_w, stderr=out_w)
    os.close(out_w)
    assert command.wait(60) == 0
    assert os.read(out_r, 1000) == b"me in /tmp\n"
    os.close(out_r)


def test_a_child_left_running_does_not_hold_the_command(vm):
    started = time.monotonic()
    status, out, _ = run(vm, "sleep 100 & echo parent done")
    assert status == 0 and out == "parent done\n" and time.monotonic() - started < 20
    run(vm, "kill $(for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = sleep ] && basename $p; done) "
            "2>/dev/null; true")


def test_killing_every_process_of_the_user_does_not_break_the_session(vm):
    """`kill -9 -1` as the user also reaches the agent's unprivileged starter: its commands are still accounted for."""
    out_r, out_w = os.pipe()
    victim = vm.exec(["sh", "-c", "echo started; sleep 100"], stdout=out_w, stderr=out_w)
    assert os.read(out_r, 100).startswith(b"started")
    os.close(out_w)
    os.close(out_r)
    status, _, _ = run(vm, "kill -9 -1")
    assert victim.wait(60) == 128 + signal.SIGKILL
    status, out, _ = run(vm, "echo still-here; id -u")
    assert status == 0 and out == "still-here\n1000\n"
    # Root's processes were out of reach: the agent (pid 1) answers, and so does a command as root.
    status, out, _ = run(vm, "cat /proc/1/status | grep ^Uid", root=True)
    assert status == 0 and out.split()[1] == "0"


# -- blastwall run --tier vm ----------------------------------------------------------------------


@pytest.fixture
def cli_env(vm_env, scratch):
    """The module's image and home, a state directory of the test's own (the session VM lives in the module's)."""
    return {**vm_env, "XDG_STATE_HOME": str(scratch / "state")}


def _vm_dirs(env) -> list[str]:
    base = os.path.join(env["XDG_STATE_HOME"], "blastwall", "vms")
    return os.listdir(base) if os.path.isdir(base) else []


def _qemus(env) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if "qemu-system" in line and env["XDG_STATE_HOME"] in line]


def test_run_tier_vm_runs_the_command_and_leaves_nothing(cli_env, workspace):
    r = blastwall(["run", "--tier", "vm", "--", "sh", "-c", "pwd; cat README.md; echo out > made.txt; "
                   "echo to-stderr >&2; exit 3"], home=env_home(cli_env), cwd=workspace, env=cli_env, timeout=300)
    assert r.returncode == 3, r.stderr
    assert r.stdout == f"{workspace}\nproject\n" and "to-stderr" in r.stderr
    assert (workspace / "made.txt").read_text() == "out\n"
    assert not (workspace / ".bashrc").exists()  # Placeholders are removed after the run.
    assert _vm_dirs(cli_env) == [] and _qemus(cli_env) == []


def env_home(env):
    from pathlib import Path

    return Path(env["HOME"])


def start_run(cli_env, workspace) -> subprocess.Popen:
    """`blastwall run --tier vm` of a command that says "started" and sleeps (the caller kills it)."""
    return subprocess.Popen([sys.executable, "-m", "blastwall", "run", "--tier", "vm", "--", "sh", "-c",
                             "echo started; sleep 300"], cwd=workspace, env=bw_env(env_home(cli_env), cli_env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_vm_killed_mid_command_is_reported_and_nothing_is_left(cli_env, workspace):
    proc = start_run(cli_env, workspace)
    try:
        assert proc.stdout.readline() == "started\n"
        (name,) = _vm_dirs(cli_env)
        with open(os.path.join(cli_env["XDG_STATE_HOME"], "blastwall", "vms", name, "qemu.pid")) as f:
            os.kill(int(f.read()), signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 125, err
    assert "the VM stopped" in err and "Traceback" not in err
    assert _vm_dirs(cli_env) == [] and _qemus(cli_env) == []


def test_owner_killed_takes_its_vm_and_the_reaper_cleans_up(cli_env, workspace):
    proc = start_run(cli_env, workspace)
    try:
        assert proc.stdout.readline() == "started\n"
        assert len(_vm_dirs(cli_env)) == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    deadline = time.monotonic() + 30
    while _qemus(cli_env) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _qemus(cli_env) == []  # QEMU died with its owner (parent-death signal).
    from blastwall.tiers.vm import VmSandbox

    VmSandbox.recover(environ=cli_env)  # What the next run does first.
    assert _vm_dirs(cli_env) == []
    assert not (workspace / ".bashrc").exists()


def test_missing_parts_fail_closed_with_a_fix(cli_env, workspace):
    r = blastwall(["run", "--tier", "vm", "--", "true"], home=env_home(cli_env), cwd=workspace,
                  env={**cli_env, "BLASTWALL_VM_KERNEL": "0.0-none"})
    assert r.returncode == 125 and "Can't find a packaged kernel 0.0-none" in r.stderr and "fix" in r.stderr, r.stderr
    (workspace.parent / "config" / "blastwall").mkdir(parents=True)
    (workspace.parent / "config" / "blastwall" / "policy.toml").write_text("[resources]\ncpus = 0.5\n")
    r = blastwall(["run", "--tier", "vm", "--", "true"], home=env_home(cli_env), cwd=workspace,
                  env={**cli_env, "XDG_CONFIG_HOME": str(workspace.parent / "config")})
    assert r.returncode == 125 and "a VM gets whole CPUs" in r.stderr and "fix" in r.stderr, r.stderr
    # Root's one-shot run is uid 1000 in the guest too, so its process limit holds.
    (workspace.parent / "config" / "blastwall" / "policy.toml").write_text("[resources]\npids = 64\n")
    r = blastwall(["run", "--tier", "vm", "--", "sh", "-c", "id -u; grep processes /proc/self/limits"], home=env_home(cli_env),
                  cwd=workspace, env={**cli_env, "XDG_CONFIG_HOME": str(workspace.parent / "config")})
    assert r.returncode == 0 and r.stdout.split()[:5] == [str(os.getuid() or 1000), "Max", "processes", "64", "64"], r.stderr
    r = blastwall(["run", "--tier", "vm", "--", "true"], home=env_home(cli_env), cwd=workspace,
                  env={**cli_env, "BLASTWALL_VM_ACCEL": "hvf"})
    assert r.returncode == 125 and "not an accelerator" in r.stderr
    assert _vm_dirs(cli_env) == [] and _qemus(cli_env) == []


def test_sdk_keeps_one_warm_vm_per_sandbox_and_kill_removes_it(cli_env, workspace):
    from blastwall.client import Sandbox, TimeoutException

    sandbox = Sandbox.create(tier="vm", workspace=str(workspace), environ=cli_env)
    try:
        first = sandbox.commands.run("echo kept > /tmp/state; echo $BLASTWALL_SANDBOX", timeout=300)
        (name,) = _vm_dirs(cli_env)
        later = sandbox.commands.run("cat /tmp/state README.md", timeout=60)  # Same VM: its /tmp is still there.
        with pytest.raises(TimeoutException) as exc:
            sandbox.commands.run("sleep 60", timeout=2)
        assert exc.value.result.exit_code == 124
        after = sandbox.commands.run("echo alive", timeout=60)
        assert _vm_dirs(cli_env) == [name]  # One VM for all of it.
    finally:
        sandbox.kill()
    assert first.stdout == "vm\n" and later.stdout == "kept\nproject\n" and after.stdout == "alive\n"
    assert _vm_dirs(cli_env) == [] and _qemus(cli_env) == []
