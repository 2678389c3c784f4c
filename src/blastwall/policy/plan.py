"""Compiling a Policy into a Plan: the ordered, frozen operations a tier enforces.

The policy says *what* is allowed; the plan says exactly which paths to hide,
bind read-only or writable, which syscall families to refuse, which variables
the sandbox sees.  Every judgement is made here, once, in pure code; a tier
receives the plan and either enforces every operation or refuses the whole plan.

The compiler needs to know what exists on disk (to resolve symlinks and to
choose between hiding a file and hiding a directory), so it takes a ``Host``
describing the invoking user and a filesystem probe; tests give it a fake one.
"""

from __future__ import annotations

import os

from blastwall.errors import EnforcementError, PolicyError
from blastwall.policy import defaults as _defaults
from blastwall.policy import gitdirs as _gitdirs
from blastwall.policy.reasons import Reason

__all__ = [
    "Access",
    "AllowUnixSockets",
    "Chdir",
    "DenySyscalls",
    "Device",
    "Egress",
    "Environment",
    "Hide",
    "Host",
    "IsolateNetwork",
    "LandlockReads",
    "LandlockWrites",
    "OPERATION_TYPES",
    "Pin",
    "Placeholder",
    "Plan",
    "PrivateDev",
    "PrivateProc",
    "PrivateTmp",
    "ReadOnly",
    "ReadOnlyRoot",
    "RequireLandlock",
    "Resources",
    "SocketFamilies",
    "User",
    "Writable",
    "access",
    "compile_plan",
    "guarded_beneath",
    "hypervisor_plan",
]


class Operation:
    """Base of plan operations: immutable, compared and hashed by value."""

    __slots__ = ()

    def __init__(self, *args: object) -> None:
        if len(args) != len(self.__slots__):
            raise TypeError(f"{type(self).__name__} takes {len(self.__slots__)} arguments")
        for name, value in zip(self.__slots__, args):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("plan operations are immutable")

    def _key(self) -> tuple:
        return (type(self),) + tuple(getattr(self, n) for n in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Operation) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def describe(self) -> str:
        return repr(self)


class ReadOnlyRoot(Operation):
    """Show the host's root filesystem read-only."""

    __slots__ = ()


class PrivateDev(Operation):
    """A minimal private /dev (null, zero, random, tty, pts, shm)."""

    __slots__ = ()


class PrivateProc(Operation):
    """A /proc showing only the sandbox's own processes."""

    __slots__ = ()


class PrivateTmp(Operation):
    """An empty writable tmpfs at ``path`` that disappears with the sandbox."""

    __slots__ = ("path",)


class Writable(Operation):
    """Bind ``path`` (a directory that exists) writable at the same place."""

    __slots__ = ("path", "reason")


class ReadOnly(Operation):
    """Bind existing ``path`` read-only over itself (inside a writable root)."""

    __slots__ = ("path", "reason")


class Hide(Operation):
    """Replace existing ``path`` by an empty read-only ``kind`` ('dir' or 'file')."""

    __slots__ = ("path", "kind", "reason")


class Pin(Operation):
    """Bind the existing directory ``path`` over itself, as writable as it was: a mount point.

    Every ancestor of a protected path inside a writable root is pinned.  The
    kernel refuses to rename, remove or replace a mount point (EBUSY), so the
    sandbox cannot move a protected path away together with its parent
    (``mv .git .old``) and put a directory of its own in its place.
    """

    __slots__ = ("path", "reason")


class Placeholder(Operation):
    """``target`` does not exist yet and must not be created.

    ``path`` is its first missing component inside a writable root.  The tier
    creates an empty directory there on the host for the life of the sandbox,
    shows it read-only inside, and removes it afterwards.  A directory, even
    where a file is expected: git ignores empty directories, so the placeholder
    can never be committed by an agent's ``git add -A``.
    """

    __slots__ = ("path", "target", "reason")


class Device(Operation):
    """Bind the host's device node ``path`` into the private /dev (only a hypervisor's plan: /dev/kvm)."""

    __slots__ = ("path", "reason")


class Chdir(Operation):
    __slots__ = ("path",)


class IsolateNetwork(Operation):
    """No network interface but loopback."""

    __slots__ = ()


class Egress(Operation):
    """Route network traffic through the egress gateway, which enforces these rules.

    ``resolve`` pins names to addresses; ``trusted`` lists address ranges that
    may be reached although private, loopback or otherwise special.
    """

    __slots__ = ("allow", "deny", "resolve", "trusted", "http_rules", "credentials", "upstream_ca", "unlisted",
                 "passthrough")

    def rules(self) -> dict:
        return {"allow": list(self.allow), "deny": list(self.deny), "resolve": dict(self.resolve),
                "trusted_addresses": list(self.trusted),
                "rules": [dict(rule) for rule in self.http_rules],
                "credentials": [dict(cred) for cred in self.credentials],
                "upstream_ca": self.upstream_ca,
                "unlisted": self.unlisted,
                "passthrough": list(self.passthrough)}


class DenySyscalls(Operation):
    """Refuse these syscall families (names from defaults.DENIED_SYSCALL_FAMILIES)."""

    __slots__ = ("families",)


class AllowUnixSockets(Operation):
    """Unix sockets may be created, and only these socket paths are visible."""

    __slots__ = ("paths",)


class SocketFamilies(Operation):
    """socket(2) succeeds only for these address families; every other one is refused.

    Names: ``inet``, ``inet6``, ``unix`` (the last only with
    ``filesystem.allow_unix_sockets``).  An allowlist: netlink, packet,
    vsock, bluetooth and every family a future kernel adds are refused.
    """

    __slots__ = ("allowed",)


class User(Operation):
    """The uid and gid the command runs as inside: the caller's, and never 0.

    A root caller's commands run as ``defaults.SANDBOX_UID``; each tier maps
    that user onto the owner of the writable roots on the host, so the
    command can write the workspace without being root anywhere.
    """

    __slots__ = ("uid", "gid")


class Environment(Operation):
    """The exact environment of the sandboxed command, and what was dropped."""

    __slots__ = ("variables", "dropped")


class LandlockWrites(Operation):
    """At the LSM level, allow writes only beneath these hierarchies."""

    __slots__ = ("paths",)


class LandlockReads(Operation):
    """At the LSM level, keep the secrets unreadable even when the host replaces or creates them.

    A hidden path is a mount on the host's directory entry as it was at the
    start; the host replacing the file (an atomic rename: ``npm config set``,
    ``git credential-store``, ``passwd``) or creating it later (``aws
    configure`` while a session runs) would show the new one inside.  So the
    files of every directory in ``parents`` (the secrets' ancestors) are
    readable only through a rule on each entry present when the command starts,
    except the entries in ``excluded`` (the secrets, and a secret's first
    missing component) and the parents themselves: whatever appears in such a
    directory later is unreadable inside.  Secrets beneath a writable root or
    a private tmpfs are not here (the sandbox creates files there and must
    read them back); the mounts alone hide those.
    """

    __slots__ = ("parents", "excluded")


class RequireLandlock(Operation):
    """Refuse to run where Landlock cannot be applied."""

    __slots__ = ()


class Resources(Operation):
    """Limits on the whole sandbox; each is None when the policy sets none.

    ``memory_bytes`` (swap included: there is no swap to escape to), ``cpus``
    (a CPU-time quota, 0.5 = half of one CPU), ``pids`` (processes and threads
    at once), ``timeout_seconds`` (wall-clock time from start; then the sandbox
    is killed and the run exits 124).
    """

    __slots__ = ("memory_bytes", "cpus", "pids", "timeout_seconds")

    def limits(self) -> list[str]:
        """The keys set that need a kernel limit (cgroups), as named in [resources]."""
        return [name for name, value in (("memory", self.memory_bytes), ("cpus", self.cpus), ("pids", self.pids))
                if value is not None]


OPERATION_TYPES: tuple[type[Operation], ...] = (
    ReadOnlyRoot,
    PrivateDev,
    PrivateProc,
    PrivateTmp,
    Writable,
    Pin,
    ReadOnly,
    Hide,
    Placeholder,
    Device,
    Chdir,
    IsolateNetwork,
    Egress,
    DenySyscalls,
    SocketFamilies,
    AllowUnixSockets,
    User,
    Environment,
    LandlockWrites,
    LandlockReads,
    RequireLandlock,
    Resources,
)


class Plan:
    """An ordered tuple of operations plus the notes the compiler made."""

    __slots__ = ("operations", "notes", "workspace")

    def __init__(self, operations: tuple[Operation, ...], notes: tuple[str, ...], workspace: str) -> None:
        object.__setattr__(self, "operations", operations)
        object.__setattr__(self, "notes", notes)
        object.__setattr__(self, "workspace", workspace)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a Plan is immutable")

    def of(self, kind: type[Operation]) -> list:
        return [op for op in self.operations if type(op) is kind]

    def shielded(self) -> frozenset[str]:
        """Every path this plan keeps from the sandbox: read-only, held by a placeholder, or hidden."""
        out = {op.path for op in self.of(ReadOnly)} | {op.path for op in self.of(Hide)}
        for op in self.of(Placeholder):
            out |= {op.path, op.target}
        return frozenset(out)

    def still_covers(self, current: "Plan") -> bool:
        """True when a sandbox built from this plan protects everything ``current`` (compiled now) would.

        A long-lived session's plan is compiled once; the host may change since
        (a ``core.hooksPath`` set, a repository created).  Its commands may go on
        only while this holds."""
        mine = self.shielded()
        return all(any(path == p or path.startswith(p.rstrip("/") + "/") for p in mine) for path in current.shielded())

    def __iter__(self):
        return iter(self.operations)

    def __repr__(self) -> str:
        return f"Plan({len(self.operations)} operations, workspace={self.workspace!r})"


class FileProbe:
    """What the compiler may ask of the filesystem.  Tests replace it."""

    def realpath(self, path: str) -> str:
        return os.path.realpath(path)

    def kind(self, path: str) -> str:
        """'dir', 'file', 'missing' or 'other' for ``path`` (following symlinks)."""
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return "missing"
        except OSError:
            return "other"
        import stat

        if stat.S_ISDIR(st.st_mode):
            return "dir"
        if stat.S_ISREG(st.st_mode):
            return "file"
        return "other"

    def islink(self, path: str) -> bool:
        return os.path.islink(path)

    def lexists(self, path: str) -> bool:
        return os.path.lexists(path)

    def read(self, path: str, limit: int) -> bytes | None:
        """Up to ``limit`` bytes of the regular file ``path`` (never through a final symlink); None if it is not one."""
        import stat

        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            chunks, size = [], 0
            while size < limit:
                chunk = os.read(fd, min(1 << 16, limit - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []


class Host:
    """The invoking user and machine: everything the compiler reads besides the policy.

    ``disposable_workspace``: the workspace is destroyed with its sandbox and
    nothing on the host ever runs or reads its files as configuration (the
    service's per-sandbox directories).  The mandatory write-denies protect
    the host from files planted for it to trust later; in such a workspace
    they have nothing to protect, and would only break the sandbox's own home
    (``git init``, ``~/.config``, ``~/.bashrc``).
    """

    __slots__ = ("home", "uid", "gid", "workspace", "cwd", "environ", "protected", "runtime", "hidden", "probe",
                 "disposable_workspace")

    def __init__(
        self,
        *,
        home: str,
        uid: int,
        gid: int | None = None,
        workspace: str,
        cwd: str | None = None,
        environ: dict[str, str],
        protected: tuple[str, ...],
        runtime: tuple[str, ...] = (),
        hidden: tuple[str, ...] = (),
        probe: FileProbe | None = None,
        disposable_workspace: bool = False,
    ) -> None:
        object.__setattr__(self, "home", home)
        object.__setattr__(self, "uid", uid)
        object.__setattr__(self, "gid", uid if gid is None else gid)
        object.__setattr__(self, "workspace", workspace)
        object.__setattr__(self, "cwd", cwd or workspace)
        object.__setattr__(self, "environ", environ)
        object.__setattr__(self, "protected", protected)
        object.__setattr__(self, "runtime", runtime)
        object.__setattr__(self, "hidden", hidden)
        object.__setattr__(self, "probe", probe or FileProbe())
        object.__setattr__(self, "disposable_workspace", disposable_workspace)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a Host is immutable")


# Paths that can never be a workspace: making them writable would give the
# sandbox the machine.
_FORBIDDEN_WORKSPACES = ("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc",
                         "/run", "/sbin", "/sys", "/usr", "/var")


def expand(path: str, *, home: str, base: str, uid: int) -> str:
    """Expand ``~`` and ``{uid}``, anchor relative paths at ``base``, normalise."""
    if path == "~":
        path = home
    elif path.startswith("~/"):
        path = home + path[1:]
    path = path.replace("{uid}", str(uid))
    if not path.startswith("/"):
        path = os.path.join(base, path)
    return os.path.normpath(path)


def is_within(path: str, root: str) -> bool:
    """True when ``path`` is ``root`` or beneath it (both normalised, absolute)."""
    if root == "/":
        return True
    return path == root or path.startswith(root + "/")


def relocate(path: str, root: str, to: str) -> str:
    """``path`` with its ``root`` prefix replaced by ``to`` (where a tier mounts ``root``); else unchanged."""
    if not is_within(path, root):
        return path
    return to if path == root else to.rstrip("/") + path[len(root.rstrip("/")):]


def compile_plan(policy, host: Host) -> Plan:
    """Compile ``policy`` for ``host`` into a Plan.  Pure but for the probe's reads."""
    probe = host.probe
    notes: list[str] = []

    def resolve(raw: str, base: str) -> str:
        return probe.realpath(expand(raw, home=host.home, base=base, uid=host.uid))

    workspace = probe.realpath(host.workspace)
    _check_workspace(workspace, probe)
    fs = policy.filesystem

    # 1. Secrets: built-ins minus exact `reveal` entries, plus the user's deny_read.
    revealed = set(fs.reveal)
    unknown = revealed - set(_defaults.BUILTIN_SECRETS)
    if unknown:
        raise PolicyError(
            f"{sorted(unknown)[0]!r} is not in the built-in secret list; reveal takes entries exactly as listed there",
            key="filesystem.reveal",
        )
    hidden: dict[str, Hide] = {}
    secret_sources = [(p, Reason.SECRET_PATH) for p in _defaults.BUILTIN_SECRETS if p not in revealed]
    secret_sources += [(p, Reason.DENY_READ) for p in fs.deny_read]
    # blastwall's state (audit log, gateway sessions, trust store) is nobody's business inside.
    secret_sources += [(p, Reason.SELF_PROTECTION) for p in host.hidden]
    missing_denied: list[str] = []  # deny_read entries that do not exist (yet): see 3.
    unreadable: list[str] = []  # Every secret's path, present or not, and its target: see 5b.
    for raw, reason in secret_sources:
        expanded = expand(raw, home=host.home, base=workspace, uid=host.uid)
        if host.uid == 0 or raw not in _defaults.ROOT_CALLER_SECRETS:
            unreadable.append(expanded)
        if not probe.lexists(expanded):
            if reason is Reason.DENY_READ:
                missing_denied.append(expanded)
            continue  # Most of the list is absent on any one machine: skip realpath.
        target = probe.realpath(expanded)
        kind = probe.kind(target)
        if kind == "missing":
            continue
        if target == "/" or is_within(workspace, target):
            raise PolicyError(
                f"Refusing to hide {raw!r}: it contains the workspace {workspace}",
                key="filesystem.deny_read",
            )
        hidden[target] = Hide(target, "dir" if kind == "dir" else "file", reason)
        if target != expanded and unreadable and unreadable[-1] == expanded:
            unreadable.append(target)

    def is_hidden(path: str) -> bool:
        return any(is_within(path, h) for h in hidden)

    # 2. Writable roots: the allow_write entries (the workspace is ".").
    writable: dict[str, Writable] = {}
    for raw in fs.allow_write:
        target = resolve(raw, workspace)
        if probe.kind(target) != "dir":
            notes.append(f"allow_write {raw!r}: {target} is not an existing directory; not made writable")
            continue
        if target in _FORBIDDEN_WORKSPACES:
            raise PolicyError(f"Refusing to make {target} writable", key="filesystem.allow_write")
        if is_hidden(target):
            # Deny wins: a hidden path stays hidden, even when also allowed for writing.
            notes.append(f"allow_write {raw!r}: {target} is a denied path; deny wins")
            continue
        reason = Reason.WORKSPACE if target == workspace else Reason.ALLOW_WRITE
        writable[target] = Writable(target, reason)
    roots = sorted(writable)

    def writable_root(path: str) -> str | None:
        best = None
        for root in roots:
            if is_within(path, root) and (best is None or len(root) > len(best)):
                best = root
        return best

    # 3. Write-denies: mandatory entries in every writable root, the user's
    # deny_write, and blastwall's own files (config, trust, audit, the install).
    readonly: dict[str, ReadOnly] = {}
    placeholders: dict[str, Placeholder] = {}

    def deny_write(target: str, reason: Reason) -> None:
        root = writable_root(target)
        if root is None or is_hidden(target):
            return  # Already read-only (or hidden) everywhere.
        kind = probe.kind(target)
        if kind != "missing":
            readonly.setdefault(target, ReadOnly(target, reason))
            return
        blocker, missing = _blocker(target, root, probe)
        if blocker is None or blocker in placeholders or blocker in readonly:
            return
        if missing:
            placeholders[blocker] = Placeholder(blocker, target, reason)
        else:
            # A file stands where a directory of the target's path should be
            # (a worktree's `.git` file, which names the real git directory).
            # Replacing it with a directory would create the target, and
            # rewriting it redirects the host's tools: the file itself is
            # made read-only.
            readonly[blocker] = ReadOnly(blocker, reason)

    def refuse_links(root: str, lexical: str) -> None:
        # A protected path reached through a symlink inside a writable root
        # cannot be protected: mounts land on the link's target, and the
        # sandbox could delete the link and put a real file in its place.
        current = root
        for part in lexical[len(root):].strip("/").split("/"):
            current = os.path.join(current, part)
            if probe.islink(current):
                raise EnforcementError(
                    f"Refusing to run: {current} is a symbolic link inside the writable {root}, "
                    f"so the sandbox could replace {lexical} with a file the host trusts",
                    fix="replace the link with the real directory or file, or use a workspace without it",
                )

    home = probe.realpath(host.home)
    xdg_config = host.environ.get("XDG_CONFIG_HOME") or os.path.join(host.home, ".config")
    git_user_configs = ("/etc/gitconfig", os.path.join(xdg_config, "git/config"), os.path.join(host.home, ".gitconfig"))
    for root in roots:
        if host.disposable_workspace and root == workspace:
            continue
        entries = _defaults.mandatory_write_deny(git_writes=fs.allow_git_writes)
        if is_within(home, root):
            entries = entries + _defaults.MANDATORY_HOME_WRITE_DENY
        for entry in entries:
            lexical = os.path.join(root, entry)
            refuse_links(root, lexical)
            # No component is a link (checked above) and the root is resolved,
            # so the lexical path is the real one.
            deny_write(lexical, Reason.MANDATORY_DENY)
        # What else the host's git obeys in this tree: a separate git directory, submodules' `.git`
        # files, a hooksPath, or (no repository here) the root's HEAD.
        for path in _gitdirs.control_paths(root, probe, home=host.home, git_writes=fs.allow_git_writes,
                                           user_configs=git_user_configs):
            for candidate in dict.fromkeys((path, probe.realpath(path))):  # As named, and where it leads.
                inside = writable_root(candidate)
                if inside is not None:
                    refuse_links(inside, candidate)
                deny_write(candidate, Reason.GIT_METADATA)
    for raw in fs.deny_write:
        lexical = expand(raw, home=host.home, base=workspace, uid=host.uid)
        root = writable_root(lexical)
        if root is not None:
            refuse_links(root, lexical)
        deny_write(probe.realpath(lexical), Reason.DENY_WRITE)
    for raw in host.protected:
        deny_write(probe.realpath(raw), Reason.SELF_PROTECTION)
    # A deny_read path that does not exist yet, inside a writable root, must
    # not be made there either: it is held by a placeholder like a protected
    # path, so nothing -- a command, a file tool -- writes a file the policy
    # says nobody inside may read.
    for lexical in missing_denied:
        root = writable_root(lexical)
        if root is not None:
            refuse_links(root, lexical)
            deny_write(lexical, Reason.DENY_READ)

    # 3b. Pins.  A read-only bind protects a path, not its name: the sandbox
    # could rename the writable directory holding it (`mv .git .old`) and
    # create its own in its place.  Every ancestor of a protected path inside
    # a writable root becomes a mount point, which the kernel refuses to
    # rename or remove.  Ancestors that are themselves read-only or hidden
    # are mount points already, and pinning them would make them writable.
    shielded = (*readonly, *placeholders, *hidden)

    def covered(path: str) -> bool:
        return any(is_within(path, q) for q in shielded)

    pins: dict[str, Pin] = {}
    for path in sorted(shielded):
        outer = min((root for root in roots if is_within(path, root) and root != path), key=len, default=None)
        if outer is None:
            continue
        current = outer
        for part in path[len(outer):].strip("/").split("/")[:-1]:
            current = os.path.join(current, part)
            if current in writable or current in pins or covered(current):
                continue
            if probe.kind(current) == "dir" and not probe.islink(current):
                pins[current] = Pin(current, Reason.PROTECTED_ANCESTOR)

    # 4. Unix sockets.  Creating one is refused by seccomp unless the policy
    # names socket paths; then the host's /run (D-Bus, systemd, docker, ...) is
    # masked and only the named sockets are bound back in.
    sockets = tuple(resolve(raw, workspace) for raw in fs.allow_unix_sockets)
    socket_mounts = []
    if sockets:
        socket_mounts.append(PrivateTmp("/run"))
        for sock in sockets:
            if probe.kind(sock) == "missing":
                notes.append(f"allow_unix_sockets: {sock} does not exist")
            elif not is_hidden(sock):
                socket_mounts.append(ReadOnly(sock, Reason.UNIX_SOCKET))

    # 5. Assemble, in mount order: shallow before deep so that a deeper, stricter
    # mount lands on top of the writable one that contains it; at equal depth
    # writable < read-only < hidden (deny wins).
    ops: list = [ReadOnlyRoot(), PrivateDev(), PrivateProc()]
    tmp_paths = tuple(p for p in ("/tmp", "/var/tmp") if probe.kind(p) == "dir"
                      and probe.realpath(p) == p) if fs.private_tmp else ()
    mounts: list = [PrivateTmp(p) for p in tmp_paths]
    mounts += socket_mounts
    # The interpreter and package that start the sandbox must stay visible
    # (read-only) even when installed under a path replaced by a private tmpfs.
    for raw in host.runtime:
        path = probe.realpath(raw)
        if path not in readonly and probe.kind(path) == "dir" and writable_root(path) is None \
                and any(is_within(path, t) for t in tmp_paths):
            mounts.append(ReadOnly(path, Reason.RUNTIME))
    mounts += writable.values()
    mounts += pins.values()
    mounts += readonly.values()
    mounts += placeholders.values()
    mounts += hidden.values()
    mounts.sort(key=_mount_order)
    ops += mounts

    # 5b. What appears later where the secrets are stays unreadable (LandlockReads).
    private = (*roots, *tmp_paths, *(("/run",) if sockets else ()))
    barrier = _read_barrier(unreadable, private=private, probe=probe)
    ops.append(IsolateNetwork())
    net = policy.network
    credentials = policy.credentials.entries
    known = {dict(c)["name"] for c in credentials}
    for index, rule in enumerate(net.rules):
        name = dict(rule)["credential"]
        if name is not None and name not in known:
            raise PolicyError(f"credential {name!r} is not defined in [credentials]",
                              key=f"network.rules[{index}].credential")
    from blastwall.policy.hosts import patterns_overlap

    granted = [dict(rule)["host"] for rule in net.rules] + [h for c in credentials for h in dict(c)["hosts"]]
    for index, pattern in enumerate(net.passthrough):
        clash = next((g for g in granted if patterns_overlap(pattern, g)), None)
        if clash is not None:
            raise PolicyError(f"{pattern!r} covers {clash!r}, which has rules or a credential: a host the gateway "
                              "must read can never be passed through", key=f"network.passthrough[{index}]")
    if net.allow or net.rules or net.unlisted == "ask":
        upstream_ca = resolve(net.upstream_ca, workspace) if net.upstream_ca else ""
        ops.append(Egress(net.allow, net.deny, net.resolve, net.trusted_addresses, net.rules, credentials,
                          upstream_ca, net.unlisted, net.passthrough))
    ops.append(DenySyscalls(_defaults.DENIED_SYSCALL_FAMILIES))
    ops.append(SocketFamilies(_defaults.SOCKET_FAMILIES + (("unix",) if sockets else ())))
    if sockets:
        ops.append(AllowUnixSockets(sockets))
    if host.uid != 0:
        ops.append(User(host.uid, host.gid if host.gid != 0 else _defaults.SANDBOX_GID))
    else:
        ops.append(User(_defaults.SANDBOX_UID, _defaults.SANDBOX_GID))
    ops.append(_environment(policy, host))
    landlock = ["/dev", *tmp_paths, *roots]
    ops.append(LandlockWrites(tuple(landlock)))
    if barrier is not None:
        ops.append(barrier)
    if "landlock" in policy.sandbox.require:
        ops.append(RequireLandlock())
    res = policy.resources
    if (res.memory, res.cpus, res.pids, res.timeout) != (None, None, None, None):
        ops.append(Resources(res.memory, res.cpus, res.pids, res.timeout))
    cwd = probe.realpath(host.cwd)
    ops.append(Chdir(cwd if is_within(cwd, workspace) and not is_hidden(cwd) else workspace))
    return Plan(tuple(ops), tuple(notes), workspace)


def _read_barrier(secrets: list[str], *, private: tuple[str, ...], probe: FileProbe) -> LandlockReads | None:
    """The LandlockReads of ``secrets`` (paths, present or not); None if none lies outside ``private``.

    For each secret: its nearest existing ancestor (resolved) and every
    directory above it are parents; the entry of that ancestor on the way to
    the secret (the secret itself, or its first missing component) is
    excluded.  Secrets beneath a ``private`` root (writable, or a private
    tmpfs) are left to the mounts.
    """
    parents: set[str] = set()
    excluded: set[str] = set()

    def beneath_private(path: str) -> bool:
        return any(is_within(path, root) for root in private)

    is_dir: dict[str, bool] = {}  # Most secrets share their directories: ask the probe once each.
    resolved: dict[str, str] = {}
    for path in secrets:
        if path == "/" or beneath_private(path):
            continue
        child, directory = path, os.path.dirname(path)
        while directory != "/":
            if directory not in is_dir:
                is_dir[directory] = probe.kind(directory) == "dir"
            if is_dir[directory]:
                break
            child, directory = directory, os.path.dirname(directory)
        if directory not in resolved:
            resolved[directory] = probe.realpath(directory)
        directory = resolved[directory]
        entry = os.path.join(directory, os.path.basename(child))
        if beneath_private(entry):
            continue
        excluded.add(entry)
        while directory not in parents:
            parents.add(directory)
            if directory == "/":
                break
            directory = os.path.dirname(directory)
    # Beneath an excluded entry nothing is readable anyway: no parent there.
    parents = {p for p in parents if not any(is_within(p, e) for e in excluded)}
    if not parents:
        return None
    return LandlockReads(tuple(sorted(parents)), tuple(sorted(excluded)))


_MOUNT_RANK = {PrivateTmp: 0, Device: 0, Writable: 1, Pin: 2, ReadOnly: 3, Placeholder: 4, Hide: 5}


def _mount_order(op) -> tuple:
    """Shallow before deep, so that a deeper, stricter mount lands on top of the
    one that contains it; at equal depth writable < read-only < hidden (deny wins)."""
    return (op.path.rstrip("/").count("/"), _MOUNT_RANK[type(op)], op.path)


def hypervisor_plan(plan: Plan, *, own: str, sockets: tuple[str, ...], devices: tuple[str, ...],
                    environment: dict[str, str]) -> Plan:
    """The plan of the process sandbox a VM's hypervisor (QEMU) runs in, derived from the VM's ``plan``.

    QEMU serves the workspace to the guest, so the guest can reach exactly
    what QEMU can: the same filesystem view as the VM's plan (the workspace
    writable, its protected paths read-only and pinned, the secrets hidden),
    the same user (never root), no network, the same syscall families
    refused (set-id modes and device nodes among them), Landlock writes only
    beneath the workspace and the VM's ``own`` state directory.  On top:
    ``own`` writable (QEMU's control socket and console log), the gateway's
    session ``sockets`` for the guest's forwards, ``devices`` (/dev/kvm), and
    unix and IPv4 sockets allowed (the network namespace holds only loopback)
    with the host's /run masked.  A hidden directory that holds ``own``
    (blastwall's state) becomes an empty private one with ``own`` and the
    sockets bound back into it.
    """
    mounts: list = []
    rest: list = []
    for op in plan.operations:
        kind = type(op)
        if kind is Hide and is_within(own, op.path):
            mounts.append(PrivateTmp(op.path))
        elif kind in (PrivateTmp, Writable, Pin, ReadOnly, Placeholder, Hide):
            mounts.append(op)
        elif kind in (ReadOnlyRoot, PrivateDev, PrivateProc, IsolateNetwork, DenySyscalls, User):
            rest.append(op)
        elif kind is LandlockWrites:
            rest.append(LandlockWrites(tuple(op.paths) + (own,)))
        elif kind is LandlockReads:
            rest.append(_reads_opened(op, (own, *sockets)))
        elif kind is Chdir:
            rest.append(Chdir(own))
        elif kind is Environment:
            rest.append(Environment(tuple(sorted(environment.items())), ()))
        elif kind in (Egress, Resources, SocketFamilies, AllowUnixSockets, RequireLandlock):
            continue  # The guest's egress and resources are QEMU's arguments; sockets are set below.
        else:
            raise PolicyError(f"Can't derive the hypervisor's plan: {kind.__name__} is unknown here")
    # QEMU may create unix sockets, so the host's /run (D-Bus, systemd, docker, ...) is masked as in a
    # process sandbox that allows them; its own directory and the gateway's sockets are bound back in.
    if not any(type(op) is PrivateTmp and op.path == "/run" for op in mounts):
        mounts.append(PrivateTmp("/run"))
    mounts.append(Writable(own, Reason.HYPERVISOR))
    mounts += [ReadOnly(path, Reason.HYPERVISOR) for path in sockets]
    mounts += [Device(path, Reason.HYPERVISOR) for path in devices]
    mounts.sort(key=_mount_order)
    head = [op for op in rest if type(op) in (ReadOnlyRoot, PrivateDev, PrivateProc)]
    tail = [op for op in rest if type(op) not in (ReadOnlyRoot, PrivateDev, PrivateProc)]
    # unix: the control socket and the forwards' connections to the gateway; inet: slirp pairs each forward's
    # command with a TCP connection over the loopback of QEMU's own, empty network namespace.
    tail += [SocketFamilies(("unix", "inet")), AllowUnixSockets(tuple(sockets))]
    return Plan(tuple(head + mounts + tail), (), plan.workspace)


def _reads_opened(reads: LandlockReads, paths: tuple[str, ...]) -> LandlockReads:
    """``reads`` with ``paths`` readable: an excluded entry holding one becomes a parent, and so
    does each directory between it and the path (the mounts still show nothing else there)."""
    parents, excluded = set(reads.parents), set(reads.excluded)
    for path in paths:
        for entry in [e for e in excluded if is_within(path, e)]:
            excluded.discard(entry)
            directory = os.path.dirname(path)
            while is_within(directory, entry):
                parents.add(directory)
                directory = os.path.dirname(directory)
    return LandlockReads(tuple(sorted(parents)), tuple(sorted(excluded)))


class Access:
    """What a sandbox of ``plan`` sees at a path: ``state`` and the ``reason`` for it.

    ``state``: ``"writable"``, ``"read-only"`` or ``"hidden"``; ``mount``: the
    path itself is a mount point inside (a writable root, a pin, a protected or
    hidden path), which the kernel refuses to rename or remove.
    """

    __slots__ = ("state", "reason", "mount")

    def __init__(self, state: str, reason: Reason, mount: bool) -> None:
        object.__setattr__(self, "state", state)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "mount", mount)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("an Access is immutable")

    def __repr__(self) -> str:
        return f"Access({self.state!r}, {self.reason}, mount={self.mount})"


_STATES = {Writable: "writable", Pin: "writable", ReadOnly: "read-only", Placeholder: "read-only",
           Hide: "hidden", PrivateTmp: "hidden", Device: "hidden"}
_UNREADABLE = (Reason.SECRET_PATH, Reason.DENY_READ)  # A placeholder for these stands for a hidden path.


def access(plan: Plan, path: str) -> Access:
    """What the sandbox sees at ``path`` (absolute, normalised, no symlink in it): the last mount covering it.

    The plan's mounts are in mount order, so the last operation whose path
    holds ``path`` is the one on top there; outside every writable root the
    root filesystem is read-only.  A placeholder's path stands for everything
    beneath it, existing or not: the protected path may not be created.
    """
    state, reason, mount = "read-only", Reason.OUTSIDE_WRITABLE, False
    for op in plan.operations:
        kind = type(op)
        if kind in _STATES and is_within(path, op.path):
            state, mount = _STATES[kind], path == op.path
            reason = getattr(op, "reason", Reason.OUTSIDE_WRITABLE)
            if kind is Placeholder and reason in _UNREADABLE:
                state = "hidden"
    return Access(state, reason, mount)


def guarded_beneath(plan: Plan, path: str) -> list:
    """The plan's mount operations strictly beneath ``path``: moving or removing ``path`` would carry them off."""
    return [op for op in plan.operations if type(op) in _STATES and op.path != path and is_within(op.path, path)]


def _check_workspace(workspace: str, probe: FileProbe) -> None:
    if probe.kind(workspace) != "dir":
        raise EnforcementError(f"Can't use {workspace} as the workspace: not an existing directory")
    if workspace in _FORBIDDEN_WORKSPACES:
        raise EnforcementError(
            f"Refusing to use {workspace} as the workspace: it would make system files writable",
            fix="run blastwall from your project directory, or pass --workspace DIR",
        )


def _blocker(target: str, root: str, probe: FileProbe) -> tuple[str | None, bool]:
    """What stops the missing ``target`` from being created: (path, missing).

    The shallowest component between ``root`` (exclusive) and ``target`` that
    is missing (``missing`` true: a placeholder goes there) or is not a
    directory (false: it must stay what it is).
    """
    rel = target[len(root):].lstrip("/")
    if not rel:
        return None, False
    current = root
    for part in rel.split("/"):
        current = os.path.join(current, part)
        kind = probe.kind(current)
        if kind == "missing":
            return current, True
        if kind != "dir":
            return current, False
    return None, False


def secret_env(name: str) -> bool:
    """True when an environment variable name looks like it holds a secret."""
    upper = name.upper()
    if upper in _defaults.SECRET_ENV_NAMES:
        return True
    if upper.startswith(_defaults.SECRET_ENV_PREFIXES) or upper.endswith(_defaults.SECRET_ENV_SUFFIXES):
        return True
    return any(word in upper for word in _defaults.SECRET_ENV_WORDS)


TOOL_HOMES = (("npm_config_cache", "/tmp/.cache/npm"), ("PIP_CACHE_DIR", "/tmp/.cache/pip"))


def _environment(policy, host: Host) -> Environment:
    env_policy = policy.environment
    passed = set(env_policy.pass_)
    denied = set(env_policy.deny)
    # A credential's variable and its source never enter the sandbox, passed or
    # not; the tier sets the credential's variable to a placeholder instead.
    for entry in policy.credentials.entries:
        cred = dict(entry)
        denied.add(cred["name"])
        if cred["from"].startswith("env:"):
            denied.add(cred["from"][4:])
    passed -= denied
    variables: dict[str, str] = {}
    dropped: list[str] = []
    for name, value in host.environ.items():
        if name in denied or (secret_env(name) and name not in passed):
            dropped.append(name)
            continue
        variables[name] = value
    for name, value in env_policy.set:
        variables[name] = value
    variables["BLASTWALL_SANDBOX"] = policy.sandbox.tier
    if policy.filesystem.private_tmp:
        variables["TMPDIR"] = "/tmp"
        # Package caches live under HOME, which is read-only here (the process tier) or the workspace (the
        # image tiers): they go to the sandbox's private /tmp instead, unless the user's environment or
        # policy names a place.  Nothing of the user's home is widened.
        for name, value in TOOL_HOMES:
            variables.setdefault(name, value)
    return Environment(tuple(sorted(variables.items())), tuple(sorted(dropped)))
