"""The VM tier: each run in a QEMU microVM with its own kernel, destroyed when it ends.

``VmSandbox(plan)`` has the verbs every tier shares; ``session.VmSession`` is
the VM itself (boot once, run many commands, close).  The guest runs Debian's
packaged kernel and the container tier's image as a read-only disk under an
in-memory writable layer; of the host it sees only the workspace (one 9p
share); the command runs as an unprivileged user (no capabilities, no new
privileges) and is driven by a small agent over a virtio-serial port: no
network service in the guest is involved in control.

What is a security boundary here: the hypervisor (KVM, or QEMU's software
emulation), QEMU's own seccomp filter (``-sandbox on``), the guest kernel
between the command and everything the guest has, and the absence of any
network device (``-nic none``) -- or, when the plan allows hosts, QEMU's
user network with ``restrict=on`` whose only exits are two forwards to the
run's own session sockets on the egress gateway (the HTTP proxy and SOCKS5):
no route, no DNS, no host address.  Nothing in the guest can change that:
it is QEMU's command line.
"""

from __future__ import annotations

import os
import signal

from blastwall.errors import EnforcementError, Unsupported
from blastwall.policy import plan as P
from blastwall.tiers._lifecycle import OneShot
from blastwall.tiers import _check
from blastwall.tiers._check import Enforces

__all__ = ["ACCELERATORS", "ENFORCES", "HANDLED", "REFUSED", "VmSandbox", "accel_report", "check_plan", "check_resources",
           "detect_accel", "find_qemu", "kvm_opens", "probe_accel", "vm_resources"]

ACCELERATORS = ("kvm", "tcg")
PROBE_TIMEOUT = 15.0  # A KVM guest that works prints its marker within a second or two.
PROBE_MARKER = "blastwall-probe-ok"
DEFAULT_MEMORY = 512  # MiB, when the plan sets no memory
MIN_MEMORY = 128 << 20  # The guest kernel, the agent and a command.

# What this tier enforces, and how; everything else refuses the plan.
HANDLED = frozenset({
    P.ReadOnlyRoot,  # the image as a read-only disk, an in-memory overlay on top
    P.PrivateDev, P.PrivateProc, P.PrivateTmp,  # the guest's own devtmpfs, procfs and tmpfs
    P.Writable,  # the workspace, the one 9p share (a plan writing elsewhere is refused in check_plan)
    P.ReadOnly, P.Placeholder, P.Hide, P.Pin,  # inside the workspace: binds and empty mounts made by the agent
    P.Chdir, P.Environment,
    P.IsolateNetwork,  # -nic none: the guest has no network device at all
    P.DenySyscalls,  # the guest's kernel is not the host's: its syscalls never reach the host kernel
    P.SocketFamilies,  # likewise: a socket in the guest is the guest kernel's
    P.User,  # the guest user that runs every command (bw.uid), never root
    P.LandlockWrites,  # outside the workspace, writes land in the throw-away layer
    P.LandlockReads,  # the secrets' directories are the host's, which the guest never sees (QEMU's sandbox has them)
    P.Resources,  # memory: the VM's RAM; cpus: whole vCPUs; pids: RLIMIT_NPROC of the guest's user; timeout: a Deadline
    P.Egress,  # QEMU user networking, restrict=on, forwards only to the session's gateway sockets (session.py)
})
REFUSED = {
    P.AllowUnixSockets: "host unix sockets cannot be shared into a VM",
    P.Device: "host devices are never shared into the vm tier (only the VM tier's QEMU gets /dev/kvm)",
    P.RequireLandlock: "Landlock is a process-tier layer; the hypervisor is the VM tier's boundary",
}


def _check_shares(plan: P.Plan) -> None:
    workspace = os.path.realpath(plan.workspace)
    others = [op.path for op in plan.of(P.Writable) if os.path.realpath(op.path) != workspace]
    if others:
        raise Unsupported(f"Refusing the plan: the VM tier shares only the workspace, not {others[0]}",
                          fix="remove the path from filesystem.allow_write, or use another tier")


def _check_limits(plan: P.Plan) -> None:
    for op in plan.of(P.Resources):
        check_resources(op.memory_bytes, op.cpus)


ENFORCES = Enforces("VM", HANDLED, REFUSED, fix="use --tier container or --tier process for this policy",
                    checks=(_check_shares, _check_limits))


def check_plan(plan: P.Plan) -> None:
    """Raise Unsupported unless this tier enforces every operation of ``plan`` exactly."""
    _check.check_plan(plan, ENFORCES)


def check_resources(memory_bytes: int | None, cpus: float | None) -> None:
    """Raise Unsupported unless a VM can have this memory and these CPUs (None: the default)."""
    most = os.cpu_count() or 1
    if cpus is not None and (cpus != int(cpus) or not 1 <= cpus <= most):
        raise Unsupported(f"Refusing the plan: a VM gets whole CPUs, 1 to this machine's {most}, not {cpus:g}",
                          fix="set resources.cpus to a whole number, or use --tier container for a fractional "
                              "CPU quota")
    if memory_bytes is not None and memory_bytes < MIN_MEMORY:
        raise Unsupported(f"Refusing the plan: a VM needs at least {MIN_MEMORY >> 20} MiB of memory",
                          fix=f"set resources.memory to {MIN_MEMORY >> 20}M or more")


def vm_resources(plan: P.Plan) -> tuple[int, int, int | None]:
    """(memory in MiB, vCPUs, pids or None) of the VM for ``plan`` (check_plan has accepted it)."""
    memory, cpus, pids = DEFAULT_MEMORY, 1, None
    for op in plan.of(P.Resources):
        if op.memory_bytes is not None:
            memory = op.memory_bytes >> 20
        if op.cpus is not None:
            cpus = int(op.cpus)
        pids = op.pids
    return memory, cpus, pids


def find_qemu() -> str:
    from blastwall.tiers.vm._raw_qemu import QEMU_CANDIDATES

    for path in QEMU_CANDIDATES:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise EnforcementError("Can't find QEMU (qemu-system-x86_64)", fix="sudo apt-get install qemu-system-x86")


def kvm_opens() -> str | None:
    """None if /dev/kvm opens read-write and creates a VM; else why not."""
    import fcntl

    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/kvm: {exc.strerror}"
    try:
        os.close(fcntl.ioctl(fd, 0xAE01, 0))  # KVM_CREATE_VM
    except OSError as exc:
        return f"/dev/kvm opens but cannot create a VM: {exc.strerror}"
    finally:
        os.close(fd)
    return None


def probe_accel(accel: str, environ=os.environ, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None if a guest boots with ``accel`` here (its init prints a marker); else what went wrong.

    A /dev/kvm that opens and creates a VM can still fail to run a guest (nested
    virtualisation without the features a guest needs): only a boot tells.
    """
    import subprocess
    import tempfile

    from blastwall.tiers.vm._raw_qemu import qemu_argv
    from blastwall.tiers.vm.guest import clock_args, find_kernel, probe_initramfs

    if accel == "kvm":
        why = kvm_opens()
        if why:
            return why
    qemu = find_qemu()
    kernel, _ = find_kernel(environ)
    initrd = probe_initramfs(environ)
    with tempfile.TemporaryDirectory(prefix="blastwall-probe-") as tmp:
        log = os.path.join(tmp, "console.log")
        argv = qemu_argv(qemu=qemu, accel=accel, kernel=kernel, initrd=initrd,
                         cmdline=" ".join(["console=ttyS0", "quiet", "panic=-1", *clock_args(accel)]), root_disk=None, share=None, control=None,
                         console_log=log, memory_mb=128, cpus=1, guestfwd=None)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError as exc:
            return f"QEMU did not start: {exc.strerror}"
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return f"a {accel} guest did not boot within {timeout:.0f} s"
        try:
            with open(log, "rb") as f:
                console = f.read().decode("utf-8", "replace")
        except OSError:
            console = ""
    if PROBE_MARKER in console:
        return None
    last = (out.decode("utf-8", "replace").strip().splitlines() or console.strip().splitlines() or ["no output"])[-1]
    return f"a {accel} guest did not boot: {last[:200]}"


def accel_report(environ=os.environ) -> dict[str, str | None]:
    """For each accelerator, None if a guest boots with it here, else why not; remembered.

    What boots is a property of the machine (its CPU, /dev/kvm, QEMU and the
    kernel), so as root the answer is kept in /run/blastwall (forgotten at
    reboot); otherwise in the user's state directory.  Keyed by the QEMU binary,
    the kernel and whether /dev/kvm exists: only the first VM after a change
    pays for the probes.  TCG is probed only when KVM fails.
    """
    import json

    from blastwall.policy.load import state_dir
    from blastwall.tiers.vm.guest import find_kernel

    qemu = find_qemu()
    _, version = find_kernel(environ)
    st = os.stat(qemu)
    key = f"{qemu}:{st.st_size}:{int(st.st_mtime)}:{version}:{os.path.exists('/dev/kvm')}"
    base = "/run/blastwall" if os.geteuid() == 0 else state_dir(environ)
    memo = os.path.join(base, "vm-accel.json")
    try:
        with open(memo) as f:
            remembered = json.load(f)
        if isinstance(remembered, dict) and remembered.get("key") == key:
            return {"kvm": remembered.get("kvm"), "tcg": remembered.get("tcg")}
    except (OSError, ValueError):
        pass
    report: dict[str, str | None] = {"kvm": probe_accel("kvm", environ)}
    report["tcg"] = probe_accel("tcg", environ) if report["kvm"] is not None else None
    os.makedirs(base, mode=0o700, exist_ok=True)
    tmp = f"{memo}.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"key": key, **report}, f)
    os.replace(tmp, memo)
    return report


def detect_accel(environ=os.environ) -> str:
    """$BLASTWALL_VM_ACCEL, else KVM if a guest boots with it here, else software emulation (tcg)."""
    chosen = environ.get("BLASTWALL_VM_ACCEL")
    if chosen:
        if chosen not in ACCELERATORS:
            raise Unsupported(f"BLASTWALL_VM_ACCEL={chosen!r} is not an accelerator", fix="use kvm or tcg")
        return chosen
    report = accel_report(environ)
    for accel in ACCELERATORS:
        if report[accel] is None:
            return accel
    raise EnforcementError(f"Can't boot a VM here: {report['tcg']}", fix="run `blastwall doctor`")


class VmSandbox(OneShot):
    """One command in a VM booted for it (``blastwall run --tier vm``, the SDK's local backend)."""

    tier = "vm"

    def __init__(self, plan: P.Plan, *, image: str = "default", environ=os.environ, broker=None) -> None:
        super().__init__(plan, environ=environ, broker=broker)
        self.image = image
        self._session = None
        self._command = None
        self.deadline = None
        self.accel: str | None = None

    @staticmethod
    def recover(*, environ=os.environ) -> None:
        """The reaper: kill VMs whose owner died (and the placeholders of runs killed with SIGKILL)."""
        from blastwall.tiers.process import placeholders
        from blastwall.tiers.vm.session import VmSession

        placeholders.recover(environ=environ)
        VmSession.recover(environ=environ)

    def prepare(self) -> None:
        check_plan(self.plan)
        find_qemu()
        from blastwall.tiers.container.images import rootfs
        from blastwall.tiers.vm.guest import find_busybox, find_kernel

        find_kernel(self._environ)
        find_busybox()
        rootfs(self.image, self._environ)
        self.accel = detect_accel(self._environ)

    def start(self, command: list[str], *, stdin: int = 0, stdout: int = 1, stderr: int = 2,
              ctty: bool = False) -> None:
        """Boot the VM and start ``command`` in it; ``ctty`` is accepted for the pty relay (the guest has none)."""
        from blastwall.tiers._lifecycle import start_deadline
        from blastwall.tiers.vm.session import VmSession

        (chdir,) = self.plan.of(P.Chdir)
        # The workspace keeps its host path inside, so that paths in arguments mean the same thing.
        self._session = VmSession(self.plan, image=self.image, environ=self._environ, workspace=self.plan.workspace,
                                  mount_at=os.path.realpath(self.plan.workspace),
                                  accel=self.accel, label=" ".join(command)[:2048],
                                  broker=self._broker)
        self._session.boot()
        self._command = self._session.exec(command, cwd=chdir.path, stdin=stdin, stdout=stdout, stderr=stderr)
        self.deadline = start_deadline(self.plan, self.kill)

    def wait(self) -> int:
        if self._command is None:
            raise RuntimeError("start() must be called first")
        status = self._command.wait()
        return self.deadline.status(status) if self.deadline is not None else status

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the command; SIGKILL takes the whole VM with it (the run's status is then 137)."""
        if self._command is None or self._session is None:
            return
        if sig != signal.SIGKILL:
            self._command.kill(sig)
            return
        self._command.killed = True
        self._session.kill_vm()

    def close(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        if self._session is not None:
            networked = self._session.egress_env != {}
            self._session.close()
            # What `blastwall run` reports on one line: the gateway's refusals, or that it was lost.
            self.egress_summary = self._session.egress_summary
            self.gateway_lost = networked and self.egress_summary is None
            self._session = None

