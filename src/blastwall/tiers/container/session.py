"""Long-lived container sessions: one gVisor sandbox, many commands, gone at close.

``ContainerSession`` is what the service and the SDK drive: ``boot()`` starts
the sandbox with an idle init, ``exec()`` runs each command in it (``runsc
exec``, as the session's unprivileged user, no capabilities, no new
privileges), ``close()`` destroys everything the session made: the sandbox,
its in-memory writable layer, its cgroup, its network namespace, veth and
firewall table, its gateway session and its state directory.

The host workspace directory is mounted at ``mount_at`` inside (``/home/user``
by default); every other path of the plan keeps its host name.  The network,
when the plan allows hosts, is a namespace of its own whose only reachable
addresses are the session's listeners on the egress gateway
(``_raw_net``).  ``recover()`` is the reaper for sessions whose owner died.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import threading

from blastwall.errors import EnforcementError, Unsupported
from blastwall.policy import plan as P
from blastwall.tiers._lifecycle import SessionBase, is_devnull

__all__ = ["ContainerSession", "session_mounts"]

# The init says it is up, then waits on its stdin: the session's lifeline.  When
# the owner closes it (or dies), the init exits, gVisor stops every process of
# the sandbox and the foreground `runsc run` tears the sandbox down itself,
# which is much faster than `runsc delete --force` on a running one.
# While it waits, `wait` also reaps the orphans re-parented to it (killed
# commands' children), so that no zombie lingers.  The reader runs as the
# session's user, so a command's `kill -9 -1` reaches it: a reader that died of
# a signal (status > 128) is started again; only the lifeline's end (or a line)
# ends the init.
IDLE_INIT = ["sh", "-c", "exec 3<&0; echo ready; while :; do read _ <&3 & wait $!; [ $? -gt 128 ] || exit 0; done"]
# A spare reads one line we wrote (every word quoted) and becomes that command.
SPARE = 'IFS= read -r line || exit 125; eval "$line"'
# Inside every session: the program that installs the seccomp program, and the program.
FILTER = "/.blastwall/filter"
FILTER_PROGRAM = "/.blastwall/seccomp.bpf"
NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
BOOT_TIMEOUT = 60.0
RELAY_DRAIN = 1.0     # seconds a spare's exit waits for its output to be copied out


# Plan operations that are not mounts; session_mounts refuses any other kind it does not know.
_NOT_MOUNTS = frozenset({P.ReadOnlyRoot, P.PrivateDev, P.PrivateProc, P.Chdir, P.IsolateNetwork, P.Egress,
                         P.DenySyscalls, P.SocketFamilies, P.AllowUnixSockets, P.User, P.Environment,
                         P.LandlockWrites, P.LandlockReads, P.RequireLandlock, P.Resources})


def session_mounts(plan: P.Plan, workspace: str, mount_at: str,
                   sources: dict[str, str] | None = None) -> list[tuple[str, ...]]:
    """The plan's mounts as (kind, host source, destination inside); the workspace appears at ``mount_at``.

    Of the read-only and hidden paths only those inside a bound root matter:
    nothing else of the host is in the sandbox.  ``sources``: a writable root
    -> the path of its idmapped view (``workspace_views``), which replaces the
    root as the source of every mount beneath it.
    """
    roots = [op.path for op in plan.of(P.Writable)]
    sources = sources or {}

    def inside(path: str) -> bool:
        return any(P.is_within(path, root) for root in roots)

    def source(path: str) -> str:
        for root, view in sources.items():
            if P.is_within(path, root):
                return P.relocate(path, root, view)
        return path

    def map_path(path: str) -> str:
        return P.relocate(path, workspace, mount_at)

    mounts: list[tuple[str, ...]] = []
    for op in plan.operations:
        kind = type(op)
        if kind is P.PrivateTmp:
            mounts.append(("tmpfs", op.path, op.path))
        elif kind in (P.Writable, P.Pin):
            mounts.append(("bind-rw", source(op.path), map_path(op.path)))
        elif kind in (P.ReadOnly, P.Placeholder):
            if inside(op.path):
                mounts.append(("bind-ro", source(op.path), map_path(op.path)))
        elif kind is P.Hide:
            if inside(op.path):
                mounts.append(("hide-dir" if op.kind == "dir" else "hide-file", op.path, map_path(op.path)))
        elif kind not in _NOT_MOUNTS:
            raise Unsupported(f"Refusing the plan: the container tier cannot mount {kind.__name__}")
    return mounts


def traversal_mounts(rootfs: str, mounts: list[tuple[str, ...]], user: tuple[int, int]) -> list[tuple[str, ...]]:
    """Empty tmpfs mounts over the image's directories on a mount's path that ``user`` cannot enter.

    A root caller's workspace keeps its host path inside (``/root/...``), and
    the image's ``/root`` is root's alone: the sandbox's user could not reach
    its own workspace.  Such a directory held nothing that user could read, so
    an empty one (mode 0755) in its place hides nothing from it.
    """
    import stat

    covered: list[str] = []
    for mount in mounts:
        destination = mount[2] if len(mount) > 2 else mount[1]
        current = "/"
        for part in destination.strip("/").split("/")[:-1]:
            current = os.path.join(current, part)
            if any(P.is_within(current, done) for done in covered):
                continue
            try:
                info = os.lstat(rootfs + current)
            except OSError:
                break  # Not in the image: gVisor makes it, enterable.
            if not stat.S_ISDIR(info.st_mode):
                break
            mode = info.st_mode
            enters = mode & 0o001 or (info.st_uid == user[0] and mode & 0o100) or (info.st_gid == user[1] and mode & 0o010)
            if not enters:
                covered.append(current)
    return [("tmpfs-755", path, path) for path in covered]


def workspace_views(plan: P.Plan, directory: str) -> tuple[list[tuple[int, str]], dict[str, str]]:
    """Idmapped views of the writable roots the plan's user does not own on the host.

    Returns ([(view descriptor, target)], {root: target}); the views are
    attached in ``runsc run``'s own mount namespace (``_raw_idmap.attach``),
    at empty directories under ``directory``.  The caller closes the
    descriptors once ``runsc run`` started.
    """
    (user,) = plan.of(P.User)
    wanted = (user.uid, user.gid)
    views: list[tuple[int, str]] = []
    sources: dict[str, str] = {}
    namespaces: dict[tuple[int, int], int] = {}
    from blastwall.tiers.container import _raw_idmap

    try:
        for index, op in enumerate(plan.of(P.Writable)):
            info = os.stat(op.path)
            owner = (info.st_uid, info.st_gid)
            if owner == wanted:
                continue
            if owner not in namespaces:
                namespaces[owner] = _raw_idmap.swap_userns(owner=owner, user=wanted)
            target = os.path.join(directory, "views", str(index))
            os.makedirs(target, mode=0o700)
            views.append((_raw_idmap.idmapped_view(source=op.path, userns=namespaces[owner]), target))
            sources[op.path] = target
    except OSError as exc:
        for fd, _ in views:
            os.close(fd)
        raise EnforcementError(
            f"Can't show the sandbox's user (uid {user.uid}) the workspace it does not own: {exc.strerror or exc}",
            fix="the workspace's filesystem must support idmapped mounts (Linux >= 5.12; ext4, xfs, btrfs; tmpfs "
                f"from 6.3), or make the workspace belong to uid {user.uid}") from None
    finally:
        for fd in namespaces.values():
            os.close(fd)
    return views, sources


class ContainerProcess:
    """A command of a container session: its ``runsc exec``, a child of this process (the contract's Process)."""

    def __init__(self, session: "ContainerSession", pid: int) -> None:
        self.session = session
        self.pid = pid
        self._status: int | None = None
        self._killed = False
        self._lock = threading.Lock()
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except OSError:
            self._pidfd = None

    def exit_fd(self) -> int | None:
        return self._pidfd

    def poll(self) -> int | None:
        return self._reap(block=False)

    def wait(self, timeout: float | None = None) -> int:
        if timeout is not None:
            import select

            if self._pidfd is None:
                raise ValueError("can't wait with a timeout without a pidfd")
            if self._status is None and not select.select([self._pidfd], [], [], timeout)[0]:
                raise TimeoutError("the command is still running")
        status = self._reap(block=True)
        assert status is not None
        return status

    def _reap(self, *, block: bool) -> int | None:
        with self._lock:
            if self._status is not None:
                return self._status
            try:
                pid, raw = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            except ChildProcessError:
                self._status = 128 + signal.SIGKILL  # Reaped by the session's close(): the sandbox went under it.
                return self._status
            if pid == 0:
                return None
            status = os.waitstatus_to_exitcode(raw)
            self._status = 128 - status if status < 0 else status
        try:
            self.session.finished(self.pid)
        except Exception:  # noqa: BLE001 - its files are removed at close() anyway
            pass
        return self._status

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self._status is not None:
            return
        if self._killed and sig == signal.SIGKILL:
            try:  # Its `runsc exec` did not go: kill it on the host.
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            return
        self._killed = self._killed or sig == signal.SIGKILL
        self.session.signal_exec(self.pid, sig)

    def release(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class ContainerSession(SessionBase):
    """One gVisor sandbox that stays up between commands (the contract's Session, tiers/contract.py)."""

    tier = "container"

    def __init__(self, plan: P.Plan, *, image: str = "default", environ=os.environ, workspace: str | None = None,
                 mount_at: str = "/home/user", label: str = "", platform: str | None = None, broker=None,
                 home: str | None = None) -> None:
        super().__init__(plan, environ=environ, broker=broker)
        self.image = image
        self.workspace = os.path.realpath(workspace or plan.workspace)
        self.mount_at = mount_at
        (user,) = plan.of(P.User)
        self.user = (user.uid, user.gid)
        # Who owns, on the host, the files the sandbox's user owns inside: gVisor's gofer
        # gives the host file the uid that made it (or, through an idmapped view of a
        # root someone else owns, that root's owner).
        self.host_owner = self.user
        self.label = label
        self.platform = platform
        self.home = home or mount_at
        self.id = f"blastwall-{secrets.token_hex(6)}"
        self.booted = False
        self.egress_env: dict[str, str] = {}
        self._runsc: str | None = None
        self._dir: str | None = None
        self._net = None
        self._gateway = None
        self._guard = None
        self._execs: dict[int, str] = {}
        self._relays: dict[int, list[threading.Thread]] = {}  # A spare's output copiers, by its pid.
        self._serial = itertools.count(1)
        self._spare = None
        self._spare_lock = threading.Lock()
        self._rlimits: list[dict] = []
        self._lifeline: int | None = None
        self._runner: int | None = None

    # -- the reaper --------------------------------------------------------------------
    @staticmethod
    def recover(*, environ=os.environ) -> None:
        """Destroy what sessions whose owner died left behind (same reaper as one-shot runs)."""
        from blastwall.tiers.container import ContainerSandbox

        ContainerSandbox.recover(environ=environ)  # Includes the network sweep.

    # -- boot ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Check the plan and the machine (runsc, its platform); nothing is started."""
        from blastwall.tiers.container import check_machine

        self._runsc, self.platform = check_machine(self.plan, self._environ, self.platform)

    def boot(self) -> None:
        """Start the sandbox (idle init) and, if the plan allows hosts, its network; all or nothing."""
        if self._runsc is None:
            self.prepare()
        try:
            self._boot()
        except BaseException:
            self.close()
            raise
        self.booted = True
        self._refill()  # The first command's spare.

    def _boot(self) -> None:
        from blastwall.tiers.container import make_state
        from blastwall.tiers.container.images import rootfs
        from blastwall.tiers.process.placeholders import Guard

        root = rootfs(self.image, self._environ)
        self._guard = Guard(self.plan, environ=self._environ)
        self._dir = make_state(self.id, self._environ)
        views, sources = workspace_views(self.plan, self._dir)
        try:
            self._start(root, views, sources)
        finally:
            for fd, _ in views:
                os.close(fd)
        self._check_limits()

    def _start(self, root: str, views: list[tuple[int, str]], sources: dict[str, str]) -> None:
        from blastwall.tiers.container._raw_oci import oci_config

        mounts = session_mounts(self.plan, self.workspace, self.mount_at, sources)
        mounts = traversal_mounts(root, mounts, self.user) + mounts
        mounts += self._filter_mounts()
        netns = None
        egress = self.plan.of(P.Egress)
        if egress:
            netns, extra = self._network()
            mounts += extra
        config = oci_config(rootfs=root, argv=IDLE_INIT, env=self._env({}), cwd="/", uid=self.user[0],
                            gid=self.user[1], mounts=mounts, netns=netns, seccomp=oci_seccomp(self.plan),
                            **self._resource_args())
        with open(os.path.join(self._dir, "bundle", "config.json"), "w") as f:
            json.dump(config, f)
        # Every command gets the init's limits (RLIMIT_NPROC is how gVisor bounds pids).
        self._rlimits = config["process"]["rlimits"]
        argv = self._run_argv(netns)
        from blastwall.tiers._lifecycle import spawn

        lifeline_r, self._lifeline = os.pipe()
        ready_r, ready_w = os.pipe()
        log = os.open(os.path.join(self._dir, "start.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self._runner = spawn(argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, {0: lifeline_r, 1: ready_w, 2: log},
                                 new_session=True, die_with_parent=False, before_exec=attach_views(views))
        finally:
            for fd in (lifeline_r, ready_w, log):
                os.close(fd)
        try:
            ready = _read_ready(ready_r, BOOT_TIMEOUT)
        finally:
            os.close(ready_r)
        if not ready:
            with open(os.path.join(self._dir, "start.log"), "rb") as f:
                output = f.read()[-4096:]
            message = output.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
            raise EnforcementError(f"Can't start the gVisor sandbox: {message[0][:300]}",
                                   fix="run `blastwall doctor`")

    def _filter_mounts(self) -> list[tuple[str, ...]]:
        """The seccomp program every command installs first (``_raw_filter.c``), and the program that does it."""
        from blastwall.tiers import _raw_seccomp

        assert self._dir is not None
        fd = _raw_seccomp.compile_filter(**inside_rules(self.plan))
        program = os.path.join(self._dir, "seccomp.bpf")
        try:
            with open(program, "wb") as f:
                f.write(os.read(fd, 1 << 20))
        finally:
            os.close(fd)
        return [("file-ro", filter_binary(), FILTER), ("file-ro", program, FILTER_PROGRAM)]

    def _check_limits(self) -> None:
        """The plan's limits, read back from the host: a limit that did not apply is refused, not ignored."""
        from blastwall.tiers.container._raw_cgroups import expected_limits, read_limits

        ops = [op for op in self.plan.of(P.Resources) if op.limits()]
        if not ops:
            return
        wanted = {k: v for k, v in expected_limits(ops[0]).items() if v is not None}
        found = read_limits(f"/blastwall/{self.id}") or {}
        wrong = [f"{k} {found.get(k)} instead of {v}" for k, v in wanted.items() if found.get(k) != v]
        if wrong:
            raise EnforcementError(f"Can't verify the sandbox's resource limits on the host: {', '.join(wrong)}",
                                   fix="check that the cgroup controllers are enabled; `blastwall doctor`")

    def _state(self) -> dict:
        """``runsc state`` of the sandbox ({} if it cannot say)."""
        import subprocess

        if self._dir is None or self._runsc is None:
            return {}
        result = subprocess.run([self._runsc, f"--root={os.path.join(self._dir, 'runsc')}", "state", self.id],
                                capture_output=True, timeout=30)
        try:
            state = json.loads(result.stdout) if result.returncode == 0 else {}
        except ValueError:
            return {}
        return state if isinstance(state, dict) else {}

    def _resource_args(self) -> dict:
        """The sandbox's own cgroup, always (so that close() knows what to remove), limited by the plan."""
        ops = self.plan.of(P.Resources)
        return {"resources": ops[0] if ops else None, "cgroups_path": f"/blastwall/{self.id}"}

    def _run_argv(self, netns: str | None) -> list[str]:
        from blastwall.tiers.container._raw_oci import runsc_argv

        assert self._runsc is not None and self._dir is not None
        argv = runsc_argv(runsc=self._runsc, state=os.path.join(self._dir, "runsc"), platform=self.platform,
                          bundle=os.path.join(self._dir, "bundle"), container_id=self.id,
                          network="sandbox" if netns else "none")
        if netns:
            from blastwall.tiers.container import _raw_net

            argv = _raw_net.runsc_wrapper(self._dir) + argv
        return argv

    def _network(self):
        """The session's namespace, veth, gateway listeners and firewall; returns (netns path, mounts)."""
        from blastwall.egress import client
        from blastwall.tiers.container import _raw_net

        assert self._dir is not None
        try:
            self._net = _raw_net.create(self.id, self._dir)
        except OSError as exc:
            raise EnforcementError(f"Can't set up the session's network: {exc.strerror or exc}",
                                   fix="run `blastwall doctor` (nftables, iproute2)") from None
        self._gateway = client.connect(self.plan, label=self.label or self.id, environ=self._environ,
                                       broker=self._broker, workspace=self.workspace, listen=self._net.host_ip)
        try:
            _raw_net.firewall(self._net, tcp_ports=self._gateway.tcp_ports, dns_port=self._gateway.dns_port)
        except OSError as exc:
            raise EnforcementError(f"Can't open the session's firewall to its gateway: {exc.strerror or exc}",
                                   fix="run `blastwall doctor`") from None
        mounts = []
        resolv = os.path.join(self._dir, "resolv.conf")
        with open(resolv, "w") as f:
            f.write(f"nameserver {self._net.host_ip}\noptions attempts:1 timeout:2\n")
        os.chmod(resolv, 0o644)
        mounts.append(("file-ro", resolv, "/etc/resolv.conf"))
        if self._gateway.ca_bundle:
            mounts.append(("file-ro", self._gateway.ca_bundle, "/etc/ssl/certs/ca-certificates.crt"))
        self.egress_env = client.sandbox_environment(self._gateway, host=self._net.host_ip,
                                                     ports=self._gateway.tcp_ports,
                                                     ca_path="/etc/ssl/certs/ca-certificates.crt")
        return self._net.netns_path, mounts

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        from blastwall.tiers._lifecycle import image_environment

        env = image_environment(self.plan, home=self.home)
        env.update(self.egress_env)
        env.update(extra)
        return env

    # -- commands ---------------------------------------------------------------------
    def exec(self, argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
             stdin: int = 0, stdout: int = 1, stderr: int = 2) -> ContainerProcess:
        """Start ``argv`` in the sandbox; its Process (the ``runsc exec``, reaped through it).

        A command with no input is handed to a spare: a ``runsc exec`` of a
        shell started ahead of time (same user, limits and environment), which
        reads one line -- ``cd``, ``export`` lines and ``exec`` of the command,
        every word quoted by us -- and becomes the command.  That saves
        ``runsc exec``'s own start-up (~25 ms) on the path a warm pool serves;
        its output is relayed to the caller's descriptors.
        """
        if not self.booted or self._dir is None or self._runsc is None:
            raise RuntimeError("boot() must succeed first")
        return ContainerProcess(self, self._exec_pid(argv, env, cwd, stdin, stdout, stderr))

    def _exec_pid(self, argv, env, cwd, stdin, stdout, stderr) -> int:
        line = _command_line(argv, env or {}, cwd or self.mount_at)
        if line is not None and is_devnull(stdin):
            spare = self._take_spare()
            if spare is not None:
                try:
                    return self._run_on_spare(spare, line, stdout, stderr)
                except BrokenPipeError:
                    pass  # The spare was killed (the user's `kill -9 -1` reaches it): runsc exec instead.
        return self._start_exec(list(argv), self._env(env or {}), cwd or self.mount_at,
                                {0: stdin, 1: stdout, 2: stderr})

    def _start_exec(self, args: list[str], env: dict[str, str], cwd: str, layout: dict[int, int]) -> int:
        from blastwall.tiers._lifecycle import spawn

        if self._dir is None or self._runsc is None:
            raise RuntimeError("the session is closed")
        serial = next(self._serial)
        spec = os.path.join(self._dir, f"exec-{serial}.json")
        process = {
            "terminal": False,
            "user": {"uid": self.user[0], "gid": self.user[1]},
            # gVisor applies the OCI seccomp profile to `runsc run`'s processes only: every exec installs it first.
            "args": [FILTER, FILTER_PROGRAM, "--", *args],
            "env": [f"{k}={v}" for k, v in sorted(env.items())],
            "cwd": cwd,
            "noNewPrivileges": True,
            "capabilities": {"bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []},
            "rlimits": self._rlimits,
        }
        with open(spec, "w") as f:
            json.dump(process, f)
        pidfile = os.path.join(self._dir, f"exec-{serial}.pid")
        command = [self._runsc, f"--root={os.path.join(self._dir, 'runsc')}", "exec", f"--process={spec}",
                   f"--internal-pid-file={pidfile}", self.id]
        # Not tied to the calling thread (the service's worker threads come and
        # go); the command ends with the sandbox at close() at the latest.
        pid = spawn(command, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, layout, new_session=True,
                    die_with_parent=False)
        self._execs[pid] = pidfile
        return pid

    # -- spares --------------------------------------------------------------------------
    def _make_spare(self) -> tuple[int, int, int, int] | None:
        if not self.booted:
            return None
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            pid = self._start_exec(["sh", "-c", SPARE], self._env({}), self.mount_at, {0: in_r, 1: out_w, 2: err_w})
        except BaseException:
            for fd in (in_w, out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        return pid, in_w, out_r, err_r

    def _take_spare(self):
        from blastwall.tiers._lifecycle import exited

        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is None:
            return None
        threading.Thread(target=self._refill, daemon=True).start()
        if exited(spare[0]):
            # Killed by one of the session's own commands (same user: `kill -9 -1`).
            # One killed in the instant before we write reports 137 for the command.
            self._discard(spare)
            return None
        return spare

    def _refill(self) -> None:
        try:
            spare = self._make_spare()
        except Exception:  # noqa: BLE001 - closed meanwhile, or runsc refused: no spare, commands use runsc exec
            return
        if spare is None:
            return
        with self._spare_lock:
            if self._spare is None and self.booted:
                self._spare, spare = spare, None
        if spare is not None:  # Closed meanwhile, or raced: this one is not needed.
            self._discard(spare)

    def _discard(self, spare) -> None:
        from blastwall.tiers._lifecycle import reap_quietly

        pid, in_w, out_r, err_r = spare
        for fd in (in_w, out_r, err_r):
            os.close(fd)  # The shell reads EOF and exits.
        reap_quietly(pid)
        self.finished(pid)

    def _run_on_spare(self, spare, line: str, stdout: int, stderr: int) -> int:
        pid, in_w, out_r, err_r = spare
        try:
            os.write(in_w, line.encode() + b"\n")
        except BrokenPipeError:
            self._discard((pid, in_w, out_r, err_r))
            raise
        os.close(in_w)  # The command's stdin: end of file, like /dev/null.
        relays = [threading.Thread(target=_relay, args=(source, os.dup(target)), daemon=True)
                  for source, target in ((out_r, stdout), (err_r, stderr))]
        self._relays[pid] = relays
        for relay in relays:
            relay.start()
        return pid

    def finished(self, pid: int) -> None:
        """Forget a reaped command's files; a spare's output is all copied before its exit is reported.

        Without the wait, a caller that reads what its pipe holds once the
        command has exited (under load) could find the last output not yet
        copied.  Bounded: a background child still holding the output open
        keeps its copier going after the command's exit.
        """
        import time

        deadline = time.monotonic() + RELAY_DRAIN
        for relay in self._relays.pop(pid, ()):
            relay.join(max(0.0, deadline - time.monotonic()))
        pidfile = self._execs.pop(pid, None)
        if pidfile:
            for path in (pidfile, pidfile[:-4] + ".json"):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def signal_exec(self, pid: int, sig: int = signal.SIGKILL) -> None:
        """Signal a running command inside the sandbox: its process group (its children too), then itself."""
        import subprocess

        pidfile = self._execs.get(pid)
        if pidfile and self._dir is not None and self._runsc is not None and self.booted:
            try:
                with open(pidfile) as f:
                    inner = int(f.read().strip())
            except (OSError, ValueError):
                inner = None
            if inner:
                # Each command leads its own process group inside; runsc signals
                # one pid only, so the group is signalled from inside, as the
                # command's own user (the shell's kill builtin: no binary needed).
                devnull = os.open(os.devnull, os.O_RDWR)
                try:
                    killer = self._start_exec(["sh", "-c", f"kill -{int(sig)} -{inner}"], self._env({}), "/",
                                              {0: devnull, 1: devnull, 2: devnull})
                finally:
                    os.close(devnull)
                if not _wait_exit(killer, 10.0):
                    try:
                        os.killpg(killer, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                from blastwall.tiers._lifecycle import reap_quietly

                reap_quietly(killer)
                self.finished(killer)
                subprocess.run([self._runsc, f"--root={os.path.join(self._dir, 'runsc')}", "kill", f"--pid={inner}",
                                self.id, str(int(sig))], capture_output=True, timeout=30)
        try:
            os.killpg(pid, signal.SIGTERM if sig == signal.SIGKILL else sig)
        except ProcessLookupError:
            pass

    def alive(self) -> bool:
        return self.booted and self._state().get("status") == "running"

    # -- close ------------------------------------------------------------------------------
    def close(self) -> None:
        """Destroy the sandbox and everything it had; safe to call more than once."""
        from blastwall.tiers._lifecycle import reap_quietly
        from blastwall.tiers.container import delete_state

        self.booted = False
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            for fd in spare[1:]:
                os.close(fd)
        if self._lifeline is not None:
            os.close(self._lifeline)  # The init exits; the sandbox stops and `runsc run` removes it.
            self._lifeline = None
        torn_down = False
        if self._runner is not None:
            torn_down = _wait_exit(self._runner, 10.0)
            if not torn_down:
                try:
                    os.killpg(self._runner, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            from blastwall.tiers._lifecycle import reap

            # `runsc run` exits 0 only after removing the sandbox it ran.
            torn_down = reap(self._runner) == 0 and torn_down
            self._runner = None
        for pid in list(self._execs):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # Still known to runsc (the teardown above did not finish)? Then it is forced down first.
        forced = self._runsc if self._dir is not None and not torn_down and self._state() else None
        if forced is not None:
            delete_state(self._dir, self.id, runsc=forced)
            self._dir = None

        for pid in list(self._execs):
            reap_quietly(pid)
        self._execs.clear()
        if self._gateway is not None:
            self.egress_summary = self._gateway.summary()  # What it refused (None: the gateway was gone).
            self.gateway_lost = self.egress_summary is None
            self._gateway.close()
            self._gateway = None
        if self._net is not None:
            from blastwall.tiers.container import _raw_net

            _raw_net.destroy(self._net)
            self._net = None
        if self._dir is not None:
            delete_state(self._dir, self.id, runsc=None)
            self._dir = None
        if self._guard is not None:
            self._guard.close()
            self._guard = None



def _read_ready(fd: int, timeout: float) -> bool:
    """True once the init wrote "ready" (the sandbox runs); False if it ended or timed out first."""
    import select
    import time

    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return False
        chunk = os.read(fd, 64)
        if not chunk:
            return False
        data += chunk
    return data.startswith(b"ready")


def _wait_exit(pid: int, timeout: float) -> bool:
    import time

    from blastwall.tiers._lifecycle import exited

    deadline = time.monotonic() + timeout
    while not exited(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _command_line(argv: list[str], env: dict[str, str], cwd: str) -> str | None:
    """The spare's line for a command, or None when it cannot be said safely on one line."""
    import shlex

    words = [*argv, *env.keys(), *env.values(), cwd]
    if not argv or argv[0].startswith("-") or any("\n" in w or "\0" in w for w in words):
        return None
    if any(not k or k[0].isdigit() or not set(k) <= NAME_CHARS for k in env):
        return None
    parts = [f"cd {shlex.quote(cwd)} || exit 126"]
    parts += [f"export {shlex.quote(f'{k}={v}')}" for k, v in env.items()]
    parts.append("exec " + " ".join(shlex.quote(w) for w in argv))
    return "; ".join(parts)


def _relay(source: int, target: int) -> None:
    """Copy until end of file; a reader that went away only stops the copying, not the draining."""
    try:
        while True:
            try:
                data = os.read(source, 65536)
            except InterruptedError:
                continue
            if not data:
                break
            while data and target >= 0:
                try:
                    data = data[os.write(target, data):]
                except BrokenPipeError:
                    os.close(target)
                    target = -1
    finally:
        os.close(source)
        if target >= 0:
            os.close(target)


def attach_views(views: list[tuple[int, str]]):
    """The ``before_exec`` of ``runsc run``: its own mount namespace holding the views (None: none needed)."""
    if not views:
        return None
    from blastwall.tiers.container import _raw_idmap

    return lambda: _raw_idmap.attach(views)


# The syscall families gVisor is asked to refuse itself: those whose effect
# reaches the host through the gofer (a set-id mode or a device node on a
# bound root).  The rest of the list guards a host kernel the sandbox never
# talks to.
OCI_FAMILIES = ("set-id", "devices")


def inside_rules(plan: P.Plan) -> dict:
    """The seccomp rules applied inside gVisor: (families, socket families).

    The plan's socket families, and unix: in gVisor a unix socket is the
    sandbox's own kernel's and reaches nothing of the host (tools use them
    among their own processes).
    """
    (deny,) = plan.of(P.DenySyscalls)
    (sockets,) = plan.of(P.SocketFamilies)
    return {"families": tuple(f for f in OCI_FAMILIES if f in deny.families),
            "socket_families": tuple(dict.fromkeys((*sockets.allowed, "unix")))}


def oci_seccomp(plan: P.Plan) -> dict:
    """The OCI seccomp profile gVisor applies to ``runsc run``'s processes (``runsc --oci-seccomp``)."""
    from blastwall.tiers import _raw_seccomp

    return _raw_seccomp.oci_profile(**inside_rules(plan))


def filter_binary() -> str:
    """The static program that installs a seccomp program inside gVisor (_raw_filter.c), built at install time."""
    from blastwall.tiers._lifecycle import compiled_helper

    return compiled_helper(os.path.dirname(os.path.abspath(__file__)), "_raw_filter_bin",
                           what="the container tier's seccomp starter",
                           fix="install a C compiler and the static C library (sudo apt-get install gcc libc6-dev) "
                               "and reinstall blastwall")
