"""The container tier: each run in an ephemeral gVisor (runsc) sandbox, gone when it ends.

``ContainerSandbox(plan)`` has the verbs every tier shares.  The root
filesystem is a blastwall image (never the host's), read-only with a writable
in-memory layer that dies with the run; only the plan's writable roots are
bound in, plus read-only binds and placeholders for the mandatory denies
inside them.  Nothing else of the host is visible, so the secret list needs no
hiding except where a denied path lies inside a bound root.

What is a security boundary here: gVisor's user-space kernel (the sandboxed
program's syscalls never reach the host kernel directly), its gofer-mediated
filesystem, and the network: none at all, or (when the plan allows hosts) a
namespace of the run's own whose only reachable address is the egress
gateway (see ``session`` and ``_raw_net``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal

from blastwall.errors import EnforcementError, Unsupported
from blastwall.policy import plan as P
from blastwall.tiers._lifecycle import OneShot, owner_record
from blastwall.tiers._check import Enforces, check_plan

__all__ = ["ENFORCES", "ContainerSandbox", "detect_platform", "find_runsc", "host_pids_for", "probe_platform"]

# Fastest first.  kvm is not tried: in nested virtual machines it can hang
# instead of failing; choose it with BLASTWALL_RUNSC_PLATFORM=kvm.
PLATFORMS = ("systrap", "ptrace")

# What this tier enforces, and how; everything else refuses the plan.
HANDLED = frozenset({
    P.ReadOnlyRoot,  # the image, read-only, with an in-memory writable layer
    P.PrivateDev, P.PrivateProc, P.PrivateTmp, P.Writable, P.ReadOnly, P.Placeholder, P.Chdir, P.Environment,
    P.Pin,  # a read-write bind of the directory over itself: a mount point gVisor refuses to rename
    P.User,  # the process's uid/gid; a root someone else owns is shown through an idmapped view (session.py)
    P.SocketFamilies,  # seccomp inside gVisor (session.inside_rules); unix sockets there are the sandbox's own
    P.Hide,  # only matters inside bound roots; the rest of the host is not there at all
    P.IsolateNetwork,  # --network=none
    P.DenySyscalls,  # gVisor implements the syscall surface itself; set-id modes and devices, which would reach
    #                  the host through the gofer, it refuses itself (the OCI profile, session.oci_seccomp)
    P.LandlockWrites,  # outside the bound roots, writes land in the throw-away layer
    P.LandlockReads,  # the secrets' directories are the host's, and the host's files are not there at all
    P.Resources,  # cgroup limits set by runsc (_raw_cgroups); the timeout by a Deadline
    P.Egress,  # a network namespace of the run's own whose only route is the gateway (session.py, _raw_net.py)
})
REFUSED = {
    P.AllowUnixSockets: "host unix sockets cannot be shared into the container tier",
    P.Device: "host devices are never shared into the container tier (only the VM tier's QEMU gets /dev/kvm)",
    P.RequireLandlock: "Landlock is a process-tier layer; gVisor is the container tier's boundary",
}
ENFORCES = Enforces("container", HANDLED, REFUSED, fix="use --tier process for this policy")


def host_pids_for(pids: int) -> int:
    """The host tasks a sandbox allowed ``pids`` processes inside may hold (its cgroup's pids.max)."""
    from blastwall.tiers.container._raw_cgroups import host_pids

    return host_pids(pids)


def find_runsc() -> str:
    from blastwall.tiers.container._raw_oci import RUNSC_CANDIDATES

    for path in RUNSC_CANDIDATES:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise EnforcementError("Can't find gVisor's runsc", fix="sudo apt-get install runsc")


def probe_platform(runsc: str, platform: str, timeout: float = 20.0) -> bool:
    """True if ``runsc --platform=PLATFORM do true`` works here (kvm can hang in nested VMs)."""
    import subprocess

    if os.geteuid() != 0:
        return False
    try:
        result = subprocess.run([runsc, f"--platform={platform}", "--network=none", "do", "true"],
                                capture_output=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        subprocess.run(["pkill", "-9", "-f", f"runsc.*--platform={platform}.*do true"], capture_output=True)
        return False
    return result.returncode == 0


def detect_platform(environ=os.environ) -> str:
    """The gVisor platform to use: $BLASTWALL_RUNSC_PLATFORM, else the first of PLATFORMS that runs here.

    The answer is remembered per runsc binary (path, size, mtime) in the state
    directory, so only the first sandbox after an upgrade pays for the probe.
    """
    chosen = environ.get("BLASTWALL_RUNSC_PLATFORM")
    if chosen:
        if chosen not in ("systrap", "ptrace", "kvm"):
            raise Unsupported(f"BLASTWALL_RUNSC_PLATFORM={chosen!r} is not a gVisor platform",
                              fix="use systrap, ptrace or kvm")
        return chosen
    from blastwall.policy.load import state_dir

    runsc = find_runsc()
    st = os.stat(runsc)
    key = f"{runsc}:{st.st_size}:{int(st.st_mtime)}"
    memo = os.path.join(state_dir(environ), "runsc-platform")
    try:
        with open(memo) as f:
            remembered_key, _, remembered = f.read().strip().rpartition("=")
        if remembered_key == key and remembered in PLATFORMS:
            return remembered
    except OSError:
        pass
    for platform in PLATFORMS:
        if probe_platform(runsc, platform):
            os.makedirs(os.path.dirname(memo), mode=0o700, exist_ok=True)
            with open(memo, "w") as f:
                f.write(f"{key}={platform}\n")
            return platform
    raise EnforcementError("Can't run a gVisor sandbox with any platform here (tried systrap and ptrace)",
                           fix="run `blastwall doctor`; check that runsc works: sudo runsc do true")


def check_machine(plan: P.Plan, environ, platform: str | None) -> tuple[str, str]:
    """Refuse a plan this tier cannot enforce, or a machine it cannot run on; (runsc, its platform)."""
    check_plan(plan, ENFORCES)
    if os.geteuid() != 0:
        raise Unsupported("Can't run the container tier as an unprivileged user yet (runsc needs root here)",
                          fix="run as root, or use --tier process")
    return find_runsc(), platform or detect_platform(environ)


def make_state(container_id: str, environ) -> str:
    """The sandbox's state directory (its bundle, runsc's root, the owner record), made now."""
    from blastwall.policy.load import state_dir

    base = os.path.join(state_dir(environ), "containers")
    os.makedirs(base, mode=0o700, exist_ok=True)
    directory = os.path.join(base, container_id)
    os.makedirs(os.path.join(directory, "bundle"), mode=0o700)
    os.makedirs(os.path.join(directory, "runsc"), mode=0o700)
    with open(os.path.join(directory, "owner"), "w") as f:
        f.write(owner_record())
    return directory


def delete_state(directory: str, container_id: str, *, runsc: str | None) -> None:
    """Remove what a sandbox leaves on the host: runsc's record (forcing the sandbox down, when ``runsc``
    is given), its cgroup (runsc removes it unless the sandbox was killed) and its state directory.

    Never raises: it runs at close and in the reaper, after the sandbox's processes were killed.
    """
    import subprocess

    from blastwall.tiers.container import cgroups

    if runsc is not None:
        try:
            subprocess.run([runsc, f"--root={os.path.join(directory, 'runsc')}", "delete", "--force",
                            container_id], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
    cgroups.remove(f"/blastwall/{container_id}")
    shutil.rmtree(directory, ignore_errors=True)


class ContainerSandbox(OneShot):
    """One command in an ephemeral gVisor sandbox."""

    tier = "container"

    def __init__(self, plan: P.Plan, *, image: str = "default", environ=os.environ, platform: str | None = None,
                 broker=None) -> None:
        super().__init__(plan, environ=environ, broker=broker)
        self.image = image
        self.platform = platform
        self._runsc: str | None = None
        self._rootfs: str | None = None
        self._id = f"blastwall-{secrets.token_hex(6)}"
        self._dir: str | None = None
        self._pid: int | None = None
        self._guard = None
        self._session = None
        self.deadline = None  # [resources] timeout, started with the command

    @staticmethod
    def recover(*, environ=os.environ) -> None:
        """The reaper: delete sandboxes whose `blastwall run` died without cleaning up."""
        from blastwall.policy.load import state_dir
        from blastwall.tiers._lifecycle import dead_owners
        from blastwall.tiers.process import placeholders

        placeholders.recover(environ=environ)
        runsc = None
        for name, directory in dead_owners(os.path.join(state_dir(environ), "containers")):
            try:
                runsc = runsc or find_runsc()
            except EnforcementError:
                pass
            delete_state(directory, name, runsc=runsc)
        if os.geteuid() == 0:
            from blastwall.tiers.container import _raw_net, cgroups

            _raw_net.sweep()
            cgroups.sweep()  # Cgroups whose state directory is gone too (older than a minute, empty).

    # -- prepare ----------------------------------------------------------------
    def prepare(self) -> None:
        self._runsc, self.platform = check_machine(self.plan, self._environ, self.platform)
        from blastwall.tiers.container.images import rootfs

        self._rootfs = rootfs(self.image, self._environ)

    # -- start ------------------------------------------------------------------
    def start(self, command: list[str], *, stdin: int = 0, stdout: int = 1, stderr: int = 2,
              ctty: bool = False) -> int:
        """Start ``command``; ``ctty`` is accepted for the pty relay (gVisor keeps its own session)."""
        if self._rootfs is None:
            raise RuntimeError("prepare() must be called first")
        if self.plan.of(P.Egress):
            return self._start_session(command, stdin, stdout, stderr)
        from blastwall.tiers._lifecycle import spawn
        from blastwall.tiers.container._raw_oci import oci_config, runsc_argv
        from blastwall.tiers.container.session import (attach_views, oci_seccomp, session_mounts, traversal_mounts,
                                                       workspace_views)
        from blastwall.tiers.process.placeholders import Guard

        self._guard = Guard(self.plan, environ=self._environ)
        from blastwall.tiers._lifecycle import image_environment

        env = image_environment(self.plan, home="/tmp")  # The image's /root is root's; the command is not.
        (chdir,) = self.plan.of(P.Chdir)
        (user,) = self.plan.of(P.User)
        self._dir = make_state(self._id, self._environ)
        views, sources = workspace_views(self.plan, self._dir)
        try:
            mounts = session_mounts(self.plan, self.plan.workspace, self.plan.workspace, sources)
            mounts = traversal_mounts(self._rootfs, mounts, (user.uid, user.gid)) + mounts
            config = oci_config(rootfs=self._rootfs, argv=command, env=env, cwd=chdir.path, uid=user.uid,
                                gid=user.gid, mounts=mounts, seccomp=oci_seccomp(self.plan),
                                resources=(self.plan.of(P.Resources) or [None])[0],
                                cgroups_path=f"/blastwall/{self._id}")
            with open(os.path.join(self._dir, "bundle", "config.json"), "w") as f:
                json.dump(config, f)
            argv = runsc_argv(runsc=self._runsc, state=os.path.join(self._dir, "runsc"), platform=self.platform,
                              bundle=os.path.join(self._dir, "bundle"), container_id=self._id)
            pid = spawn(argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, {0: stdin, 1: stdout, 2: stderr},
                        new_session=True, before_exec=attach_views(views))
        finally:
            for fd, _ in views:
                os.close(fd)
        self._pid = pid
        from blastwall.tiers._lifecycle import start_deadline
        from blastwall.tiers.container import cgroups

        self.deadline = start_deadline(self.plan, self.kill)
        cgroups.verify(self.plan, f"/blastwall/{self._id}", pid)  # Limits that did not apply: refuse, close() kills.
        return pid

    def _start_session(self, command: list[str], stdin: int, stdout: int, stderr: int) -> int:
        """With network access, the run is a session (its own namespace, gateway, firewall) and one exec."""
        from blastwall.tiers.container.session import ContainerSession

        (chdir,) = self.plan.of(P.Chdir)
        self._session = ContainerSession(self.plan, image=self.image, environ=self._environ,
                                         workspace=self.plan.workspace, mount_at=self.plan.workspace,
                                         label=" ".join(command)[:2048], platform=self.platform, home="/tmp",
                                         broker=self._broker)
        self._session.boot()
        process = self._session.exec(command, cwd=chdir.path, stdin=stdin, stdout=stdout, stderr=stderr)
        process.release()  # Reaped here by pid (wait()), like the run without a network.
        self._pid = process.pid
        from blastwall.tiers._lifecycle import start_deadline

        self.deadline = start_deadline(self.plan, self.kill)
        return self._pid

    # -- wait / close -------------------------------------------------------------
    def wait(self) -> int:
        if self._pid is None:
            raise RuntimeError("start() must be called first")
        from blastwall.tiers._lifecycle import reap, wait_exit

        wait_exit(self._pid)  # Not reaped yet: kill() from another thread (a deadline, the SDK) still reaches it.
        pid, self._pid = self._pid, None
        status = reap(pid)
        return self.deadline.status(status) if self.deadline is not None else status

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self._session is not None and self._pid is not None:
            self._session.signal_exec(self._pid, sig)
            return
        if self._pid is not None:
            try:
                os.killpg(self._pid, sig)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Kill and delete the sandbox; remove its bundle, state and placeholders."""
        if self.deadline is not None:
            self.deadline.cancel()
        if self._session is not None:
            self._session.close()  # Kills and reaps its commands, too.
            self.egress_summary, self.gateway_lost = self._session.egress_summary, self._session.gateway_lost
            self._session = None
            self._pid = None
        if self._pid is not None:
            from blastwall.tiers._lifecycle import reap_quietly

            self.kill()
            reap_quietly(self._pid)
            self._pid = None
        if self._dir is not None:
            delete_state(self._dir, self._id, runsc=self._runsc)
            self._dir = None
        if self._guard is not None:
            self._guard.close()
            self._guard = None

