"""Process lifecycle helpers every tier shares: reaping, liveness, exit statuses."""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["ExitLatch", "OneShot", "OneShotProcess", "SessionBase", "compiled_helper", "is_devnull", "owner_alive", "owner_record", "TIMED_OUT", "Deadline", "alive", "exited", "reap", "reap_quietly", "spawn", "start_deadline",
           "wait_exit"]

# The exit status of a run killed at its [resources] timeout, as timeout(1) reports it.
TIMED_OUT = 124


def compiled_helper(directory: str, stem: str, *, what: str, fix: str) -> str:
    """The executable setup.py built from ``directory``'s ``stem``.c (named like an extension module)."""
    import importlib.machinery

    from blastwall.errors import EnforcementError

    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(directory, stem + suffix)
        if os.access(path, os.X_OK):
            return path
    raise EnforcementError(f"Can't find {what} in {directory}: blastwall was installed without building it", fix=fix)


def spawn(argv: list[str], env: dict[str, str], layout: dict[int, int], *, new_session: bool,
          die_with_parent: bool = True, before_exec=None) -> int:
    """Fork and exec ``argv`` with descriptors placed as ``layout`` ({target: source}); return the pid.

    The child dies with its parent, even on SIGKILL (PR_SET_PDEATHSIG, checked
    against the race with the parent's death) -- unless ``die_with_parent`` is
    false: PR_SET_PDEATHSIG follows the forking *thread*, and a long-lived
    child started from a short-lived worker thread (the service's) must
    outlive that thread; such children need another lifeline.  Sources are first moved out of
    the way, so placing one never clobbers another sitting on its target.
    ``before_exec``: called in the child last, just before exec (raw system
    calls only: the parent may have other threads).  Any failure before exec
    exits 125, with the reason on the child's stderr.
    """
    import ctypes
    import fcntl
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    try:
        if die_with_parent:
            if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG: no orphan may outlive run
                os._exit(125)
            if os.getppid() != parent:
                os._exit(125)
        moved = {}
        for target, source in layout.items():
            try:
                moved[target] = fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, 64)
            except OSError:
                moved[target] = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        for target, temp in moved.items():
            os.dup2(temp, target, inheritable=True)
        if new_session:
            os.setsid()
        if before_exec is not None:
            before_exec()
        os.execve(argv[0], argv, env)
    except BaseException as exc:  # noqa: BLE001 - the child must never return into the caller
        try:
            os.write(2, f"blastwall: Can't start {os.path.basename(argv[0])}: {exc}\n".encode("utf-8", "replace"))
        except BaseException:  # noqa: BLE001
            pass
    os._exit(125)


IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LAYOUT_VARIABLES = ("PATH", "HOME", "USER", "LOGNAME")


def image_environment(plan, *, home: str, user: str = "user") -> dict[str, str]:
    """The plan's environment in a tier with a filesystem of its own (an image).

    The host's ``LAYOUT_VARIABLES`` name the host's directories and user, which
    are not there: they become the image's (``home``: where the tier puts the
    user's home), and git's global config is ``/tmp/.gitconfig`` (the home is
    the workspace, whose ``.gitconfig`` is protected).  Every other variable is
    the plan's, unchanged.  This is the only place a tier departs from the
    plan's environment.
    """
    from blastwall.policy import plan as P

    (env_op,) = plan.of(P.Environment)
    env = dict(env_op.variables)
    env.update(PATH=IMAGE_PATH, HOME=home, USER=user, LOGNAME=user)
    # The home is the workspace, where `.gitconfig` is protected (a placeholder directory git cannot
    # read): git's global config is a private file instead, as writable as in any fresh machine.
    env["GIT_CONFIG_GLOBAL"] = "/tmp/.gitconfig"
    return env


def reap(pid: int) -> int:
    """Wait for ``pid``; its exit status as a shell reports it (128+N when killed by signal N)."""
    while True:
        try:
            _, raw = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    status = os.waitstatus_to_exitcode(raw)
    return 128 - status if status < 0 else status


def wait_exit(pid: int) -> None:
    """Block until child ``pid`` has exited, *without* reaping it.

    Until it is reaped, the pid stays a zombie that no other process can be
    given, so ``kill()`` from another thread (a deadline, the SDK's own
    timeout) is safe at any moment: it signals the sandbox or nothing at all.
    """
    while True:
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            return
        except InterruptedError:
            continue
        except ChildProcessError:
            return  # Already reaped: reap() says what it can.


def exited(pid: int) -> bool:
    """True once child ``pid`` has exited (or was reaped); it is not reaped here."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


class ExitLatch:
    """The end of a command: a status, an event and a descriptor that is readable once it is set."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.event = threading.Event()
        self._r, self._w = os.pipe2(os.O_CLOEXEC)
        self._lock = threading.Lock()

    def set(self, status: int) -> None:
        with self._lock:
            if self.status is not None:
                return
            self.status = status
            if self._w >= 0:
                os.close(self._w)  # The read end sees EOF: readable.
                self._w = -1
        self.event.set()

    def fileno(self) -> int:
        return self._r

    def wait(self, timeout: float | None) -> int:
        if not self.event.wait(timeout):
            raise TimeoutError("the command is still running")
        assert self.status is not None
        return self.status

    def release(self) -> None:
        with self._lock:
            for fd in (self._r, self._w):
                if fd >= 0:
                    os.close(fd)
            self._r = self._w = -1


class OneShotProcess:
    """The one command of a one-shot sandbox: the sandbox's own (its ``wait()`` says how it ended)."""

    def __init__(self, box) -> None:
        self._box = box
        self._status: int | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def exit_fd(self) -> int | None:
        return None  # A one-shot run waits for its command; nothing selects on it (and no descriptor is held).

    def poll(self) -> int | None:
        return self._status

    def wait(self, timeout: float | None = None) -> int:
        if timeout is not None:
            raise ValueError("a one-shot command is waited for whole (its [resources] timeout bounds it)")
        with self._lock:
            if self._status is None and self._error is None:
                try:
                    self._status = self._box.wait()
                except BaseException as exc:
                    self._error = exc
        if self._error is not None:
            raise self._error
        assert self._status is not None
        return self._status

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self._box.kill(sig)

    def release(self) -> None:
        """Nothing to let go of."""


class SessionBase:
    """What every tier's session shares: the reports' defaults and the context manager (prepare, boot; close)."""

    egress_summary: dict | None = None  # Set at close() by a session that had the gateway.
    gateway_lost = False
    degraded: tuple[str, ...] = ()

    def __init__(self, plan, *, environ, broker=None) -> None:
        self.plan = plan
        self._environ = environ
        self._broker = broker  # Answers the gateway's questions (network.unlisted = "ask").

    def __enter__(self):
        self.prepare()
        self.boot()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update_network(self, allow, deny=()) -> None:
        """From now on new requests may reach ``allow`` (replacing the allow list) and never ``deny`` (added
        to the deny list).  Whether this widens what the policy granted is the caller's to check first.
        Unsupported when the sandbox was booted without the gateway (no network at all): its namespace has
        no way out to give it."""
        from blastwall.errors import Unsupported

        gateway = self._egress_client()
        if gateway is None:
            raise Unsupported("this sandbox was started without network access, so it has no way out to change",
                              fix="create it with the hosts it may need (network.allow), then narrow them")
        gateway.update_network(list(allow), list(deny))

    def _egress_client(self):
        return getattr(self, "_gateway", None)


class OneShot(SessionBase):
    """A one-shot sandbox (``prepare``, ``start``, ``wait``, ``kill``, ``close``) as the contract's Session
    with one ``exec``: what ``blastwall run`` uses, in every tier."""

    _one = None

    def boot(self) -> None:
        """Nothing: a one-shot sandbox starts with its command."""

    def exec(self, argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
             stdin: int = 0, stdout: int = 1, stderr: int = 2, ctty: bool = False) -> "OneShotProcess":
        if self._one is not None:
            raise RuntimeError("a one-shot sandbox runs one command; start a session for more")
        if env or cwd:
            raise ValueError("a one-shot command runs with the plan's environment and working directory")
        self.start(list(argv), stdin=stdin, stdout=stdout, stderr=stderr, ctty=ctty)
        self._one = OneShotProcess(self)
        return self._one

    def alive(self) -> bool:
        return self._one is None or self._one.poll() is None


class Deadline:
    """A ``[resources] timeout``: kill a started sandbox when its time is up.

    A timer thread, started as soon as the sandbox is, so that it fires however
    the caller waits (``wait()``, a pty relay, an SDK thread).  ``kill`` must be
    safe to call from another thread at any time; the tiers' is, because they
    keep their child unreaped (``wait_exit``) until they have stopped signalling it.
    """

    __slots__ = ("seconds", "expired", "_timer")

    def __init__(self, seconds: float, kill) -> None:
        import threading  # Only runs with a timeout pay for it.

        self.seconds = seconds
        self.expired = False

        def expire() -> None:
            self.expired = True
            kill()

        self._timer = threading.Timer(seconds, expire)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()

    def status(self, status: int) -> int:
        """The run's exit status: TIMED_OUT if the deadline killed it."""
        self.cancel()
        return TIMED_OUT if self.expired else status


def start_deadline(plan, kill) -> Deadline | None:
    """The plan's timeout, started now; None when it sets none."""
    from blastwall.policy import plan as P

    for op in plan.of(P.Resources):
        if op.timeout_seconds is not None:
            return Deadline(op.timeout_seconds, kill)
    return None


def reap_quietly(pid: int) -> None:
    """Reap ``pid`` if it is still our child; nothing if it was reaped already."""
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def alive(pid: int) -> bool:
    """True while a process with this pid exists (it may belong to someone else)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]  # Field 22: start time, in clock ticks since boot.
    except (OSError, IndexError):
        return None


def owner_record(pid: int | None = None) -> str:
    """"PID STARTTIME" of this process: names it even after its pid is reused."""
    pid = pid or os.getpid()
    return f"{pid} {_start_time(pid) or 0}"


def owner_alive(record: str) -> bool:
    """True while the process an ``owner_record`` names still runs (a reused pid does not count)."""
    parts = record.split()
    if not parts or not parts[0].isdigit() or int(parts[0]) <= 0:
        return False
    pid = int(parts[0])
    if not alive(pid):
        return False
    if len(parts) < 2 or parts[1] == "0":
        return True  # An old record without a start time: the pid is all we know.
    return _start_time(pid) == parts[1]


def dead_owners(base: str, *, grace: float = 30.0) -> list[tuple[str, str]]:
    """(name, path) of the state directories under ``base`` whose owner (an ``owner_record`` file) died.

    A directory without a record that is younger than ``grace`` seconds is
    being made right now (its record is written next): it is left alone.
    """
    import time

    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        directory = os.path.join(base, name)
        try:
            with open(os.path.join(directory, "owner")) as f:
                record = f.read()
        except OSError:
            record = ""
        if owner_alive(record):
            continue
        try:
            if not record and time.time() - os.stat(directory).st_mtime < grace:
                continue
        except OSError:
            continue  # Gone already.
        found.append((name, directory))
    return found


def is_devnull(fd: int) -> bool:
    """True if ``fd`` is /dev/null (the character device 1:3), whatever path opened it."""
    import stat

    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
