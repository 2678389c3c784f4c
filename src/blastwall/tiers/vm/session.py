"""VM sessions: one QEMU microVM, many commands over its control channel, gone at close.

``VmSession.boot()`` starts QEMU (``_raw_qemu``) with the packaged kernel,
blastwall's initramfs, the image as a read-only disk, the workspace as the
one 9p share and a virtio-serial control port whose host end is a unix
socket in the session's state directory; it waits for the guest agent's
``ready``, then hands it the plan's read-only and hidden paths inside the
workspace.  ``exec()`` runs a command through the agent (streamed output, exit
status, signals); ``close()`` powers the guest off, kills QEMU if it does not
stop, and removes the state directory.  If the owner process dies instead,
its end of the control socket closes and the agent powers the guest off;
``recover()`` kills the QEMU of sessions whose owner died and removes their
state (the reaper).

What a session is, is fixed when QEMU starts: its command line holds the
only network the guest has (none, or forwards to the session's own gateway
sockets), the only host directory it sees, and the plan's resources (RAM,
vCPUs, and the user's process limit on the kernel command line).  The agent
has no operation that changes any of them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import threading
import time

from blastwall._unixpath import relative, short
from blastwall.errors import EnforcementError
from blastwall.policy import plan as P
from blastwall.tiers._lifecycle import SessionBase
from blastwall.tiers._check import KILLED, SandboxStopped

__all__ = ["Command", "VmSession", "VmStopped"]

# The guest's only network, when the plan allows hosts: slirp's 10.0.2.0/24 with
# restrict=on, the guest at GUEST_IP, and the gateway's session sockets forwarded
# from GATEWAY_IP (HTTP proxy and SOCKS5).  No route, no DNS, nothing else.
GUEST_IP = "10.0.2.15"
GATEWAY_IP = "10.0.2.100"
GATEWAY_PORTS = {"http": 3128, "socks": 1080}
GUEST_CA = "/etc/ssl/certs/ca-certificates.crt"
BOOT_TIMEOUT = 180.0  # Software emulation on a busy two-core machine.
STOP_TIMEOUT = 10.0


class VmStopped(SandboxStopped):
    """The VM stopped (crashed, killed) while a command was running."""


class Command:
    """A command running in the guest: ``wait()`` for its status, ``kill()`` to signal it."""

    def __init__(self, session: "VmSession", cid: int, stdout: int, stderr: int) -> None:
        self.session = session
        self.id = cid
        # Our own copies: the caller may close its descriptors once the command started (the pty relay
        # does, and waits for every copy of the pty's slave to close); ours close when the command ends.
        self.fds = {1: os.dup(stdout), 2: os.dup(stderr)}
        self._fds_lock = threading.Lock()
        self.status: int | None = None
        self.lost = False
        self.killed = False  # By us (a deadline, the caller): a status, not an error.
        self.done = threading.Event()
        # Made on demand (fileno): readable, at end of file, once the command ended or the VM did.
        self._exit_r = self._exit_w = -1

    def output(self, fd: int, data: bytes) -> None:
        with self._fds_lock:
            target = self.fds.get(fd, -1)
            if target < 0:
                return
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(target, view):]
            except OSError:
                os.close(target)
                self.fds[fd] = -1  # The reader went away: drop the rest, keep the channel going.

    def finish(self, status: int | None) -> None:
        """The command ended (``status``) or the VM did (None): close our descriptors, wake the waiters."""
        with self._fds_lock:
            for fd, target in list(self.fds.items()):
                if target >= 0:
                    os.close(target)
                self.fds[fd] = -1
            if self._exit_w >= 0:
                os.close(self._exit_w)
                self._exit_w = -1
            if status is None:
                self.lost = True
            else:
                self.status = status
            self.done.set()

    def fileno(self) -> int:
        """A descriptor that becomes readable when the command ends (valid until ``release``)."""
        with self._fds_lock:
            if self._exit_r < 0:
                self._exit_r, self._exit_w = os.pipe2(os.O_CLOEXEC)
                if self.done.is_set():
                    os.close(self._exit_w)
                    self._exit_w = -1
            return self._exit_r

    def release(self) -> None:
        """Close the exit descriptor (after the command ended, or when nobody will wait for it)."""
        with self._fds_lock:
            for name in ("_exit_r", "_exit_w"):
                fd = getattr(self, name)
                if fd >= 0:
                    os.close(fd)
                    setattr(self, name, -1)

    def wait(self, timeout: float | None = None) -> int:
        """The command's exit status; raises VmStopped if the VM stopped first."""
        if not self.done.wait(timeout):
            raise TimeoutError
        if self.lost and self.killed:
            return 128 + signal.SIGKILL
        if self.lost:
            raise VmStopped("Can't finish the command: the VM stopped while it ran",
                            fix="see the VM's console log; `blastwall doctor`")
        assert self.status is not None
        return self.status

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.session._send({"op": "signal", "id": self.id, "sig": int(sig)})

    # The contract's Process (tiers/contract.py).
    def exit_fd(self) -> int | None:
        return self.fileno()

    def poll(self) -> int | None:
        if not self.done.is_set():
            return None
        return KILLED if self.lost else self.status


class VmSession(SessionBase):
    """One QEMU microVM that stays up between commands (the contract's Session, tiers/contract.py)."""

    tier = "vm"

    def __init__(self, plan: P.Plan, *, image: str = "default", environ=os.environ, workspace: str | None = None,
                 mount_at: str = "/home/user", accel: str | None = None, label: str = "", broker=None) -> None:
        from blastwall.tiers.vm import vm_resources

        super().__init__(plan, environ=environ, broker=broker)
        self.image = image
        self.workspace = os.path.realpath(workspace or plan.workspace)
        self.mount_at = mount_at
        (user,) = plan.of(P.User)
        self.user = (user.uid, user.gid)
        # QEMU serves the workspace as the guest user's uid in a user namespace that maps it onto the caller:
        # the guest user's files belong to the caller on the host.
        self.host_owner = (os.getuid(), os.getgid())
        self.accel = accel
        # The plan's [resources]: the VM's RAM, its vCPUs, and the guest user's process limit.
        self.memory_mb, self.cpus, self.pids = vm_resources(plan)
        self.id = f"blastwall-vm-{secrets.token_hex(6)}"
        self.booted = False
        self.boot_seconds: float | None = None
        self.label = label
        self.egress_env: dict[str, str] = {}
        self._prepared = False
        self._gateway = None
        self._dir: str | None = None
        self._qemu: int | None = None
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._commands: dict[int, Command] = {}
        self._results: dict[int, tuple[threading.Event, list]] = {}
        self._next = 1
        self._id_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._guard = None
        self._box = None  # The process sandbox QEMU runs in.
        self.stopped = threading.Event()

    # -- the reaper ----------------------------------------------------------------------
    @staticmethod
    def recover(*, environ=os.environ) -> None:
        """Kill the QEMU of sessions whose owner died; remove their state directories."""
        from blastwall.policy.load import state_dir
        from blastwall.tiers._lifecycle import dead_owners

        for _name, directory in dead_owners(os.path.join(state_dir(environ), "vms")):
            qemu = _read_int(os.path.join(directory, "qemu.pid"))
            if qemu and _is_our_qemu(qemu, directory):
                try:
                    os.kill(qemu, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            shutil.rmtree(directory, ignore_errors=True)

    # -- boot ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Check the plan and the machine (QEMU); nothing is started."""
        from blastwall.tiers.vm import check_plan, find_qemu

        check_plan(self.plan)
        find_qemu()
        self._prepared = True

    def boot(self) -> None:
        if not self._prepared:
            self.prepare()
        started = time.monotonic()
        try:
            self._boot()
        except BaseException:
            self.close()
            raise
        self.booted = True
        self.boot_seconds = time.monotonic() - started

    def _boot(self) -> None:
        from blastwall.policy.load import state_dir
        from blastwall.tiers._lifecycle import owner_record
        from blastwall.tiers.process.placeholders import Guard
        from blastwall.tiers.vm import detect_accel, find_qemu
        from blastwall.tiers.vm._raw_qemu import qemu_argv
        from blastwall.tiers.vm.guest import clock_args, find_kernel, initramfs, root_disk

        qemu = find_qemu()
        kernel, version = find_kernel(self._environ)
        initrd = initramfs(version, self._environ)
        disk = root_disk(self.image, self._environ)
        self.accel = self.accel or detect_accel(self._environ)
        self._guard = Guard(self.plan, environ=self._environ)  # Placeholders exist before the guest sees the share.
        guestfwd = self._egress()
        base = os.path.join(state_dir(self._environ), "vms")
        os.makedirs(base, mode=0o700, exist_ok=True)
        self._dir = os.path.join(base, self.id)
        os.makedirs(self._dir, mode=0o700)
        with open(os.path.join(self._dir, "owner"), "w") as f:
            f.write(owner_record())
        control = os.path.join(self._dir, "control.sock")  # QEMU binds it as "control.sock": its cwd is _dir.
        cmdline = " ".join(["console=ttyS0", *(["bw.debug=1"] if self._environ.get("BLASTWALL_VM_DEBUG") else ["quiet"]),
                            "panic=-1", "reboot=t", *clock_args(self.accel),
                            f"bw.ws={self.mount_at.encode().hex()}", f"bw.uid={int(self.user[0])}",
                            f"bw.gid={int(self.user[1])}", "bw.hostname=blastwall",
                            *([f"bw.pids={int(self.pids)}"] if self.pids else []),
                            *([f"bw.net={GUEST_IP}"] if guestfwd else [])])
        argv = qemu_argv(qemu=qemu, accel=self.accel, kernel=kernel, initrd=initrd, cmdline=cmdline, root_disk=disk,
                         share=self.workspace, control="control.sock", console_log=os.path.join(self._dir, "console.log"),
                         memory_mb=self.memory_mb, cpus=self.cpus, guestfwd=guestfwd)
        # QEMU runs in a process-tier sandbox built from the same plan: whatever the guest makes QEMU do
        # to the workspace (guest root included) is held to the plan on the host side.
        sockets = (self._gateway.http_path, self._gateway.socks_path) if self._gateway is not None else ()
        qemu_plan = P.hypervisor_plan(self.plan, own=self._dir, sockets=sockets,
                                      devices=("/dev/kvm",) if self.accel == "kvm" else (),
                                      environment={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        from blastwall.tiers.process import ProcessSandbox

        # Lifelines: the control socket is this process's (when it dies, the agent sees the host end close
        # and powers the guest off); from the main thread, QEMU also dies with it (PR_SET_PDEATHSIG, which
        # follows the forking thread: a worker thread's end must not kill a service's VM); the reaper
        # covers the rest.
        self._box = ProcessSandbox(qemu_plan, environ=self._environ,
                                   die_with_parent=threading.current_thread() is threading.main_thread())
        self._box.prepare()
        log = os.open(os.path.join(self._dir, "qemu.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            self._qemu = self._box.start(argv, stdin=null, stdout=log, stderr=log)
        finally:
            os.close(log)
            os.close(null)
        with open(os.path.join(self._dir, "qemu.pid"), "w") as f:
            f.write(str(self._qemu))
        self._sock = self._connect(control)
        self._sock.settimeout(None)
        # The first frame attaches the agent to this end: from then on, this end closing powers the guest off.
        self._send({"op": "hello"})  # (If QEMU is already gone, the wait for "ready" below says why.)
        ready = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, args=(ready,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + BOOT_TIMEOUT
        while not ready.wait(0.05):
            if self.stopped.is_set() or time.monotonic() > deadline:
                raise EnforcementError(f"Can't boot the VM ({self.accel}): {self._why()}",
                                       fix="run `blastwall doctor`; BLASTWALL_VM_ACCEL=tcg forces software emulation")
        self._mounts()
        if self._gateway is not None and self._gateway.ca_bundle:
            # The gateway decrypts ruled hosts: its CA (with the usual ones) replaces the guest's bundle.
            with open(self._gateway.ca_bundle, "rb") as f:
                error, _ = self._request({"op": "write", "path": GUEST_CA, "user": "root"}, f.read())
            if error:
                raise EnforcementError(f"Can't install the gateway's CA in the VM: {error}")

    def _egress(self) -> list[str] | None:
        """Register with the gateway; the guest forwards to its session sockets (None: no network at all)."""
        import shlex

        from blastwall.egress import client
        from blastwall.tiers.process import find_socat

        if not self.plan.of(P.Egress):
            return None
        socat = find_socat()
        if socat is None:
            raise EnforcementError("Can't give the VM its network: socat is not installed",
                                   fix="sudo apt-get install socat")
        self._gateway = client.connect(self.plan, label=self.label or self.id, environ=self._environ,
                                       broker=self._broker, workspace=self.workspace)
        forwards = []
        for kind, path in (("http", self._gateway.http_path), ("socks", self._gateway.socks_path)):
            # QEMU starts this per guest connection: stdio to the session's own socket on the gateway, named
            # in its directory (a socket address holds 107 bytes, whatever the state directory's length).
            directory, name = relative(path)
            script = f"cd {shlex.quote(directory)} && exec {shlex.quote(socat)} STDIO {shlex.quote('UNIX-CONNECT:' + name)}"
            command = f"/bin/sh -c {shlex.quote(script)}"
            forwards.append(f"tcp:{GATEWAY_IP}:{GATEWAY_PORTS[kind]}-cmd:{command}")
        self.egress_env = client.sandbox_environment(self._gateway, host=GATEWAY_IP, ports=GATEWAY_PORTS,
                                                     ca_path=GUEST_CA)
        return forwards

    def _connect(self, path: str) -> socket.socket:
        from blastwall.tiers._lifecycle import exited

        deadline = time.monotonic() + 30
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                with short(path) as name:
                    sock.connect(name)
                return sock
            except OSError:
                sock.close()
            assert self._qemu is not None
            if exited(self._qemu):
                self._box_failure()
                raise EnforcementError(f"Can't start QEMU: {self._why()}", fix="run `blastwall doctor`")
            if time.monotonic() > deadline:
                raise EnforcementError(f"Can't start QEMU: {self._why()}", fix="run `blastwall doctor`")
            time.sleep(0.005)

    def _box_failure(self) -> None:
        """If QEMU's sandbox could not be set up, raise what bubblewrap or the launcher said."""
        assert self._box is not None
        self._qemu = None
        self._box.wait()  # Raises EnforcementError when the sandbox never started QEMU.

    def _why(self) -> str:
        """The last words of QEMU or the guest, for an error message."""
        assert self._dir is not None
        for name in ("qemu.log", "console.log"):
            try:
                with open(os.path.join(self._dir, name), "rb") as f:
                    lines = [line for line in f.read()[-8192:].decode("utf-8", "replace").splitlines() if line.strip()]
            except OSError:
                continue
            if lines:
                return lines[-1].strip()[:300]
        return "no output (timed out)" if not self.stopped.is_set() else "it stopped without a word"

    def _mounts(self) -> None:
        """The plan's mounts inside the workspace, in the plan's order, made by the agent before any command.

        They hold the guest's unprivileged user; against root in the guest, the
        same mounts on the host side (QEMU's own sandbox) hold.
        """
        kinds = {P.Pin: "pin", P.ReadOnly: "ro", P.Placeholder: "ro"}
        mounts = []
        for op in self.plan.operations:
            kind = type(op)
            if kind not in (P.Pin, P.ReadOnly, P.Placeholder, P.Hide) or not P.is_within(op.path, self.workspace) \
                    or op.path == self.workspace:
                continue
            name = kinds.get(kind) or ("hide-dir" if op.kind == "dir" else "hide-file")
            mounts.append([name, P.relocate(op.path, self.workspace, self.mount_at)])
        if not mounts:
            return
        error, _ = self._request({"op": "mounts", "list": mounts})
        if error:
            raise EnforcementError(f"Can't protect paths inside the workspace in the VM: {error}")

    # -- the channel ---------------------------------------------------------------------
    def _read_loop(self, ready: threading.Event) -> None:
        from blastwall.tiers._spawner import FrameError, Reader

        reader = Reader()
        assert self._sock is not None
        try:
            while True:
                chunk = self._sock.recv(262144)
                if not chunk:
                    break
                for header, data in reader.feed(chunk):
                    self._dispatch(header, data, ready)
        except (OSError, FrameError):
            pass  # A broken or lying channel ends the session like a dead VM.
        finally:
            self.stopped.set()
            for command in list(self._commands.values()):
                command.finish(None)
            for event, _ in list(self._results.values()):
                event.set()

    def _dispatch(self, header: dict, data: bytes, ready: threading.Event) -> None:
        event = header.get("ev")
        cid = header.get("id")
        if event == "ready":
            ready.set()
        elif event == "out" and isinstance(cid, int) and cid in self._commands:
            self._commands[cid].output(1 if header.get("fd") == 1 else 2, data)
        elif event == "exit" and isinstance(cid, int) and cid in self._commands:
            command = self._commands.pop(cid)
            status = header.get("status")
            command.finish(status if isinstance(status, int) and 0 <= status <= 255 else 255)
        elif event == "result" and isinstance(cid, int) and cid in self._results:
            waiter, box = self._results[cid]
            error = header.get("error")
            box[:] = [str(error)[:500] if error else None, data]
            waiter.set()

    def _send(self, header: dict, data: bytes = b"") -> None:
        from blastwall.tiers._spawner import pack

        if self._sock is None or self.stopped.is_set():
            return
        frame = pack(header, data)
        with self._send_lock:
            try:
                self._sock.sendall(frame)
            except OSError:
                pass  # The reader sees the end and reports it.

    def _new_id(self) -> int:
        with self._id_lock:
            cid, self._next = self._next, self._next + 1
        return cid

    def _request(self, header: dict, data: bytes = b"", timeout: float = 60.0) -> tuple[str | None, bytes]:
        cid = self._new_id()
        waiter: tuple[threading.Event, list] = (threading.Event(), [])
        self._results[cid] = waiter
        try:
            self._send({**header, "id": cid}, data)
            if not waiter[0].wait(timeout) or not waiter[1]:
                raise VmStopped("Can't reach the VM's agent: " + ("the VM stopped" if self.stopped.is_set()
                                                                  else "no answer"))
            return waiter[1][0], waiter[1][1]
        finally:
            self._results.pop(cid, None)

    # -- commands ----------------------------------------------------------------------------
    def exec(self, argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
             stdin: int | None = None, stdout: int = 1, stderr: int = 2, root: bool = False) -> Command:
        """Start ``argv`` in the guest as the session's user (``root``: as root, for tests and set-up)."""
        if not self.booted:
            raise RuntimeError("boot() must succeed first")
        import errno
        import json

        from blastwall.tiers._lifecycle import is_devnull
        from blastwall.tiers._spawner import MAX_HEADER

        if stdin is not None and is_devnull(stdin):
            stdin = None  # The guest's /dev/null: no pipe, no pump thread.

        cid = self._new_id()
        from blastwall.tiers._lifecycle import image_environment

        variables = image_environment(self.plan, home=self.mount_at)
        if root:
            variables.update(HOME="/root", USER="root", LOGNAME="root")
        variables.update(self.egress_env)
        variables.update(env or {})
        if not argv or not all(isinstance(a, str) and "\0" not in a for a in argv) \
                or not all(isinstance(k, str) and isinstance(v, str) and "\0" not in k + v and "=" not in k and k
                           for k, v in variables.items()):
            raise ValueError("a command needs a non-empty argv and an environment of strings without NUL "
                             "(names without '=')")
        header = {"op": "exec", "id": cid, "argv": list(argv), "env": variables, "cwd": cwd or self.mount_at,
                  "user": "root" if root else "user", "stdin": stdin is not None}
        if len(json.dumps(header, separators=(",", ":")).encode()) > MAX_HEADER:
            raise OSError(errno.E2BIG, "the command's arguments and environment are too long for the VM's agent")
        command = Command(self, cid, stdout, stderr)
        self._commands[cid] = command
        self._send(header)
        if stdin is not None:
            threading.Thread(target=self._pump_stdin, args=(cid, os.dup(stdin), command), daemon=True).start()
        if self.stopped.is_set():
            self._commands.pop(cid, None)
            command.finish(None)
        return command

    def _pump_stdin(self, cid: int, fd: int, command: Command) -> None:
        import select

        try:
            while not command.done.is_set():
                try:
                    if not select.select([fd], [], [], 0.2)[0]:
                        continue  # Look again whether the command ended: then this copy must close.
                    data = os.read(fd, 65536)
                except OSError:
                    data = b""
                self._send({"op": "stdin", "id": cid}, data)
                if not data:
                    break
        finally:
            os.close(fd)

    def read_file(self, path: str) -> bytes:
        error, data = self._request({"op": "read", "path": path})
        if error:
            raise OSError(f"Can't read {path}: {error}")
        return data

    def write_file(self, path: str, data: bytes) -> None:
        error, _ = self._request({"op": "write", "path": path}, data)
        if error:
            raise OSError(f"Can't write {path}: {error}")

    def alive(self) -> bool:
        return self.booted and not self.stopped.is_set()

    # -- close ------------------------------------------------------------------------------------
    def close(self) -> None:
        """Power the guest off (kill QEMU if it does not stop) and remove everything; idempotent."""
        from blastwall.tiers._lifecycle import exited, reap_quietly

        self.booted = False
        if self._qemu is not None:
            if not exited(self._qemu):
                self._send({"op": "shutdown"})
                deadline = time.monotonic() + STOP_TIMEOUT
                while not exited(self._qemu) and time.monotonic() < deadline:
                    time.sleep(0.01)
            try:
                os.kill(self._qemu, signal.SIGKILL)  # bubblewrap: QEMU, its pid 1's child, dies with it.
            except ProcessLookupError:
                pass
            reap_quietly(self._qemu)
            self._qemu = None
        if self._box is not None:
            self._box.close()
            self._box = None
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(5)
            self._reader = None
        if self._gateway is not None:
            self.egress_summary = self._gateway.summary()  # What it refused (None: the gateway was gone).
            self.gateway_lost = self.egress_summary is None
            self._gateway.close()  # The gateway ends the session and removes its sockets.
            self._gateway = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        if self._guard is not None:
            self._guard.close()
            self._guard = None

    def kill_vm(self) -> None:
        """Kill QEMU outright (what a crash looks like); close() still cleans up."""
        if self._qemu is not None:
            try:
                os.kill(self._qemu, signal.SIGKILL)
            except ProcessLookupError:
                pass

    @property
    def qemu_pid(self) -> int | None:
        return self._qemu

    @property
    def state_path(self) -> str | None:
        return self._dir



def _read_int(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _is_our_qemu(pid: int, directory: str) -> bool:
    """True if ``pid`` is a QEMU started for ``directory`` (pids are reused)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    # The pid is bubblewrap's, which runs QEMU (older versions: QEMU's own).
    names = (b"bwrap", b"qemu-system")
    return bool(args) and any(n in os.path.basename(args[0]) for n in names) \
        and any(directory.encode() in a for a in args)
