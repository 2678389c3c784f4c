"""The Linux process tier: bubblewrap + seccomp + Landlock.

``ProcessSandbox(plan)`` follows the verbs every tier shares: ``prepare`` checks
the machine and turns the plan into a bubblewrap command line and a seccomp
program (refusing the whole plan if any operation cannot be enforced), ``start``
runs a command in it, ``wait`` returns the exit status, ``close`` kills what is
left and removes the placeholders it created on the host.

What is a security boundary here: the mount namespace (read-only root, hidden
secrets, writable workspace), the seccomp filter and Landlock.  What is not:
the host's kernel is shared, so a kernel bug reachable through the allowed
syscalls is out of scope; use the container or VM tier for hostile tenants.
"""

from __future__ import annotations

import os
import signal

from blastwall.errors import EnforcementError, Unsupported
from blastwall.policy import plan as P
from blastwall.tiers._lifecycle import OneShot
from blastwall.tiers._check import Enforces, check_plan

__all__ = ["ENFORCES", "ProcessSandbox", "find_bwrap", "find_socat", "landlock_abi", "seccomp_instructions"]

BWRAP_CANDIDATES = ("/usr/bin/bwrap", "/usr/local/bin/bwrap", "/bin/bwrap")
INSTALL_BWRAP = "install bubblewrap: sudo apt-get install bubblewrap (Debian/Ubuntu) or sudo dnf install bubblewrap"

# Operation types this tier enforces; anything else makes prepare() refuse the plan.
HANDLED = frozenset({
    P.ReadOnlyRoot, P.PrivateDev, P.PrivateProc, P.PrivateTmp, P.Writable, P.Pin, P.ReadOnly,
    P.Hide, P.Placeholder, P.Chdir, P.IsolateNetwork, P.DenySyscalls, P.SocketFamilies, P.AllowUnixSockets,
    P.User,  # bubblewrap's --uid/--gid: the user namespace maps that user onto the caller
    P.Device,  # a hypervisor's plan only (the VM tier's QEMU): the host's /dev/kvm in the private /dev
    P.Environment, P.LandlockWrites, P.LandlockReads, P.RequireLandlock, P.Egress,
    P.Resources,  # its timeout only; _check_limits refuses memory, cpus and pids (no cgroups here)
})


def _check_limits(plan: P.Plan) -> None:
    for resources in plan.of(P.Resources):
        # An unprivileged bubblewrap sandbox gets no cgroup of its own, and
        # rlimits are per process (a fork bomb multiplies them): refuse.
        if resources.limits():
            raise Unsupported(
                f"Refusing the plan: the process tier cannot limit {', '.join(resources.limits())} "
                "([resources])", fix="use --tier container, or remove [resources] memory/cpus/pids")


ENFORCES = Enforces("process", HANDLED, fix="use --tier container or --tier vm for this policy",
                    checks=(_check_limits,))

# Inside the sandbox's own network namespace the gateway appears on these ports.
PROXY_PORT = 3128
SOCKS_PORT = 1080
CA_BUNDLE = "/dev/.blastwall/ca-bundle.pem"

# Descriptor numbers inside bubblewrap (see start()).
_FD_REAL_STDERR = 3
_FD_READY = 4
_FD_SECCOMP = 5
_FD_STATUS = 6
_FD_BLOCK = 7

_HERE = os.path.dirname(os.path.abspath(__file__))


def launcher_path() -> str:
    """The compiled in-sandbox launcher (_raw_enter.c), built at install time."""
    from blastwall.tiers._lifecycle import compiled_helper

    return compiled_helper(_HERE, "_raw_enter_bin", what="the sandbox launcher",
                           fix="install a C compiler (sudo apt-get install gcc libc6-dev) and reinstall blastwall")


def find_bwrap(environ=os.environ) -> str:
    """The bubblewrap binary: ``$BLASTWALL_BWRAP`` (absolute) or a system location.

    ``$PATH`` is deliberately not searched: a directory on it may be writable by
    a previous sandbox, and a planted ``bwrap`` would run unsandboxed.
    """
    override = environ.get("BLASTWALL_BWRAP")
    candidates = (override,) if override else BWRAP_CANDIDATES
    for path in candidates:
        if path and os.path.isabs(path) and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    where = override if override else ", ".join(BWRAP_CANDIDATES)
    raise EnforcementError(f"Can't find bubblewrap (looked at {where})", fix=INSTALL_BWRAP)


def landlock_abi() -> int:
    """The kernel's Landlock ABI (0: none); asked once per process (the service and the SDK start many)."""
    global _landlock_abi
    if _landlock_abi is None:
        from blastwall.tiers.process._raw_landlock import landlock_abi as abi

        _landlock_abi = abi()
    return _landlock_abi


_landlock_abi: int | None = None


def find_socat() -> str | None:
    """socat at a system path (the relays into the sandbox's network namespace), or None."""
    from blastwall.tiers.process._raw_netns import find_socat as find

    return find()


def seccomp_instructions() -> int:
    """The length, in BPF instructions, of the filter every sandbox gets; OSError without libseccomp."""
    from blastwall.policy.defaults import DENIED_SYSCALL_FAMILIES, SOCKET_FAMILIES
    from blastwall.tiers import _raw_seccomp

    fd = _raw_seccomp.compile_filter(families=DENIED_SYSCALL_FAMILIES, socket_families=SOCKET_FAMILIES)
    try:
        return os.fstat(fd).st_size // 8
    finally:
        os.close(fd)


def translate_bwrap_error(text: str) -> EnforcementError:
    """Map bubblewrap's own error output to an EnforcementError with a fix."""
    message = " ".join(line.strip() for line in text.strip().splitlines() if line.strip()) or "bwrap failed"
    lowered = message.lower()
    if ("namespace" in lowered and ("permission" in lowered or "failed" in lowered or "no permissions" in lowered)) \
            or "uid map" in lowered or "max_user_namespaces" in lowered:
        return EnforcementError(
            f"Can't create the sandbox's user namespace: {message}",
            fix="user namespaces are blocked on this machine. On Ubuntu 23.10+ allow them for bwrap "
                "(an AppArmor profile, or sysctl kernel.apparmor_restrict_unprivileged_userns=0); on Debian "
                "sysctl kernel.unprivileged_userns_clone=1; check sysctl user.max_user_namespaces > 0; "
                "inside a container, run it with user namespaces allowed. `blastwall doctor` checks this.",
        )
    return EnforcementError(f"Can't set up the sandbox: {message}")


class ProcessSandbox(OneShot):
    """One sandboxed command under bubblewrap.  Use as a context manager."""

    tier = "process"

    def __init__(self, plan: P.Plan, *, environ=os.environ, broker=None, die_with_parent: bool = True) -> None:
        """``die_with_parent``: the sandbox dies with this process (PR_SET_PDEATHSIG, which follows the
        starting *thread*: a long-lived sandbox started from a short-lived worker thread needs False and
        a lifeline of its own)."""
        super().__init__(plan, environ=environ, broker=broker)
        self._die_with_parent = die_with_parent
        self._bwrap: str | None = None
        self._launcher: str | None = None
        self._socat: str | None = None
        self._gateway = None
        self._relay_helper: int | None = None
        self._seccomp_fd: int | None = None
        self._guard = None
        self._pid: int | None = None
        self._status: int | None = None
        self.deadline = None
        self._err_r: int | None = None
        self._json_r: int | None = None
        self._ready_r: int | None = None
        self._started = False
        self.landlock = 0
        self.bwrap_messages = ""
        self.environment: dict[str, str] = {}
        self.timeout_applies = True  # A session's sandbox is not timed: its commands are, one by one.

    @staticmethod
    def recover(*, environ=os.environ) -> None:
        """Remove what runs killed with SIGKILL left behind (placeholders)."""
        from blastwall.tiers.process import placeholders

        placeholders.recover(environ=environ)

    # -- prepare ----------------------------------------------------------------
    def prepare(self) -> None:
        """Check the machine and compile the plan; refuse it whole if needed."""
        check_plan(self.plan, ENFORCES)
        self._bwrap = find_bwrap(self._environ)
        self._launcher = launcher_path()
        if self.plan.of(P.Egress):
            self._socat = find_socat()
            if self._socat is None:
                raise EnforcementError("Can't give the sandbox network access: socat is not installed",
                                       fix="sudo apt-get install socat")
        self.landlock = landlock_abi()
        self.degraded = () if self.landlock else ("landlock",)
        if not self.landlock and self.plan.of(P.RequireLandlock):
            raise EnforcementError(
                "Refusing to run: Landlock is required (--require landlock) but this kernel does not provide it",
                fix="use a kernel >= 5.13 with CONFIG_SECURITY_LANDLOCK=y and landlock in the lsm= boot list",
            )
        from blastwall.tiers import _raw_seccomp

        (deny,) = self.plan.of(P.DenySyscalls)
        (sockets,) = self.plan.of(P.SocketFamilies)
        try:
            self._seccomp_fd = _raw_seccomp.compile_filter(families=deny.families, socket_families=sockets.allowed)
        except OSError as exc:
            raise EnforcementError(f"Can't build the seccomp filter: {exc.strerror or exc}",
                                   fix="install libseccomp2 (sudo apt-get install libseccomp2)") from None

    # -- start ------------------------------------------------------------------
    def start(self, command: list[str], *, stdin: int = 0, stdout: int = 1, stderr: int = 2,
              ctty: bool = False) -> int:
        """Start ``command`` in the sandbox with the given descriptors; return bwrap's pid."""
        if self._seccomp_fd is None:
            raise RuntimeError("prepare() must be called first")
        if self._started:
            raise RuntimeError("a ProcessSandbox runs one command; create another for the next")
        self._started = True
        if not command:
            raise EnforcementError("Can't run an empty command")
        from blastwall.tiers.process.placeholders import Guard

        self._guard = Guard(self.plan, environ=self._environ)
        mounts = self._mounts()
        env = dict(self.plan.of(P.Environment)[0].variables)
        egress = self.plan.of(P.Egress)
        if egress:
            from blastwall.egress import client

            self._gateway = client.connect(self.plan, label=" ".join(command), environ=self._environ,
                                           broker=self._broker, workspace=self.plan.workspace)
            env.update(client.sandbox_environment(self._gateway, host="127.0.0.1", ca_path=CA_BUNDLE,
                                                  ports={"http": PROXY_PORT, "socks": SOCKS_PORT}))
            if self._gateway.ca_bundle:
                # The gateway's CA (certificate only) plus the system's, for the
                # hosts it decrypts to apply HTTP rules and credentials.
                mounts.append(("ro-bind-at", self._gateway.ca_bundle, CA_BUNDLE))
        self.environment = dict(env)  # What the command got: the plan's, with the gateway's variables.
        (landlock,) = self.plan.of(P.LandlockWrites)
        (chdir,) = self.plan.of(P.Chdir)
        launcher = [self._launcher, "--stderr-fd", str(_FD_REAL_STDERR), "--ready-fd", str(_FD_READY)]
        for path in landlock.paths:
            launcher += ["--write", path]
        for reads in self.plan.of(P.LandlockReads):
            for path in reads.parents:
                launcher += ["--read-parent", path]
            for path in reads.excluded:
                launcher += ["--read-exclude", path]
        if self.plan.of(P.RequireLandlock):
            launcher.append("--require-landlock")
        if self.plan.of(P.AllowUnixSockets):
            launcher.append("--allow-unix")
        if ctty:
            launcher.append("--ctty")
        err_r, err_w = os.pipe()
        json_r, json_w = os.pipe()
        ready_r, ready_w = os.pipe()
        block_r = block_w = None
        if egress:
            block_r, block_w = os.pipe()
        from blastwall.tiers._raw_bwrap import bwrap_argv

        (user,) = self.plan.of(P.User)
        argv = bwrap_argv(
            bwrap=self._bwrap, mounts=mounts, isolate_network=True, chdir=chdir.path, uid=user.uid, gid=user.gid,
            seccomp_fd=_FD_SECCOMP, status_fd=_FD_STATUS, block_fd=_FD_BLOCK if egress else None,
            launcher=launcher, command=list(command),
        )
        # Descriptor layout of bubblewrap: 0-2 as given (2 is a pipe for
        # bubblewrap's own messages), then the fixed numbers the argv names.
        layout = {0: stdin, 1: stdout, 2: err_w, _FD_REAL_STDERR: stderr, _FD_READY: ready_w,
                  _FD_SECCOMP: self._seccomp_fd, _FD_STATUS: json_w}
        if block_r is not None:
            layout[_FD_BLOCK] = block_r
        from blastwall.tiers._lifecycle import spawn, start_deadline

        pid = spawn(argv, env, layout, new_session=False, die_with_parent=self._die_with_parent)
        self._pid = pid
        if self.timeout_applies:
            self.deadline = start_deadline(self.plan, self.kill)  # [resources] timeout, counted from here
        os.close(err_w)
        os.close(json_w)
        os.close(ready_w)
        self._err_r, self._json_r, self._ready_r = err_r, json_r, ready_r
        if block_r is not None:
            os.close(block_r)
            try:
                self._start_relays(json_r)
            finally:
                # Unblock bubblewrap either way: without relays the command
                # starts with no route out (fail closed) or is killed below.
                os.write(block_w, b"1")
                os.close(block_w)
        return pid

    def _start_relays(self, json_r: int) -> None:
        from blastwall.tiers.process._raw_netns import start_relays

        child_pid = _read_child_pid(json_r, timeout=10.0)
        if child_pid is None:
            return  # bubblewrap failed; wait() reports why.
        try:
            self._relay_helper = start_relays(
                sandbox_pid=child_pid, socat=self._socat, timeout=10.0,
                relays={PROXY_PORT: self._gateway.http_path, SOCKS_PORT: self._gateway.socks_path},
            )
        except OSError as exc:
            self.kill()
            raise EnforcementError(f"Can't connect the sandbox to the egress gateway: {exc.strerror or exc}") from None

    # -- wait -------------------------------------------------------------------
    def wait(self) -> int:
        """Wait for the sandbox to finish; return the command's exit status.

        Raises EnforcementError when bubblewrap failed before the command ran.
        """
        if self._pid is None:
            raise RuntimeError("start() must be called first")
        from blastwall.tiers._lifecycle import reap, wait_exit

        wait_exit(self._pid)  # Not reaped yet: kill() from another thread still reaches only the sandbox.
        pid, self._pid = self._pid, None
        status = reap(pid)
        self._finish_egress()
        self.bwrap_messages = _drain(self._err_r)
        _drain(self._json_r)
        ready = _drain(self._ready_r)
        self._err_r = self._json_r = self._ready_r = None
        if self.deadline is not None:
            status = self.deadline.status(status)
            if self.deadline.expired:
                self._status = status  # Killed at its timeout, whether or not the command had started.
                return status
        if ready != "1":
            # The command never started.  Either bubblewrap failed (its message
            # is in the pipe) or the launcher refused and already said why.
            if self.bwrap_messages.strip():
                raise translate_bwrap_error(self.bwrap_messages)
            raise EnforcementError(f"Can't start the sandbox (status {status})", fix=None) \
                if status != 125 else _LauncherRefused()
        if self.bwrap_messages:
            # Output on bubblewrap's stderr after set-up (rare): pass it on.
            os.write(2, self.bwrap_messages.encode("utf-8", "replace"))
        self._status = status
        return status

    def _finish_egress(self) -> None:
        if self._relay_helper is not None:
            from blastwall.tiers.process._raw_netns import stop_relays

            stop_relays(self._relay_helper)
            self._relay_helper = None
        if self._gateway is not None:
            self.egress_summary = self._gateway.summary()
            self.gateway_lost = self.egress_summary is None
            self._gateway.close()
            self._gateway = None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self._pid is not None:
            try:
                os.kill(self._pid, sig)
            except ProcessLookupError:
                pass

    # -- close ------------------------------------------------------------------
    def close(self) -> None:
        """Kill anything still running, reap it, remove placeholders, close fds."""
        if self.deadline is not None:
            self.deadline.cancel()
        if self._pid is not None:
            from blastwall.tiers._lifecycle import reap_quietly

            self.kill()
            reap_quietly(self._pid)
            self._pid = None
        for fd in (self._seccomp_fd, self._err_r, self._json_r, self._ready_r):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._seccomp_fd = self._err_r = self._json_r = self._ready_r = None
        self._finish_egress()
        if self._guard is not None:
            self._guard.close()
            self._guard = None


    # -- helpers ------------------------------------------------------------------
    def _mounts(self) -> list[tuple[str, ...]]:
        mounts: list[tuple[str, ...]] = []
        for op in self.plan.operations:
            kind = type(op)
            if kind is P.ReadOnlyRoot:
                mounts.append(("ro-root",))
            elif kind is P.PrivateDev:
                mounts.append(("dev",))
            elif kind is P.PrivateProc:
                mounts.append(("proc",))
            elif kind is P.PrivateTmp:
                mounts.append(("tmpfs", op.path))
            elif kind in (P.Writable, P.Pin):
                mounts.append(("bind", op.path))
            elif kind in (P.ReadOnly, P.Placeholder):
                mounts.append(("ro-bind", op.path))
            elif kind is P.Hide:
                mounts.append(("hide-dir" if op.kind == "dir" else "hide-file", op.path))
            elif kind is P.Device:
                mounts.append(("dev-bind", op.path))
        return mounts


class _LauncherRefused(EnforcementError):
    """The in-sandbox launcher refused to run and has printed why."""

    def __init__(self) -> None:
        super().__init__("the sandbox launcher refused to run (see the message above)")
        self.already_reported = True




def _read_child_pid(fd: int, *, timeout: float) -> int | None:
    """The sandbox's pid from bubblewrap's first status line (without consuming more)."""
    import select
    import time

    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            return None
        chunk = os.read(fd, 1)
        if not chunk:
            return None
        data += chunk
    text = data.decode("ascii", "replace")
    marker = '"child-pid":'
    if marker not in text:
        return None
    digits = text.split(marker, 1)[1].strip().split(",")[0].split("}")[0].strip()
    return int(digits) if digits.isdigit() else None


def _drain(fd: int | None) -> str:
    if fd is None:
        return ""
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")
