"""The service's settings, its data directory and the machine's pid limits."""

from __future__ import annotations

import os

from blastwall.errors import ContainmentError
from blastwall.service.ceiling import Resources, machine_max_pids

__all__ = ["DEFAULT_PIDS", "Config", "default_pids", "host_pid_limit", "prepare_data_dir"]

DEFAULT_PIDS = 256            # processes and threads of a sandbox that asks for no number


class Config:
    """What ``blastwall serve`` was told; immutable once the manager starts."""

    def __init__(self, *, data_dir: str, environ=None, audit_path: str | None = None, policy_file: str | None = None,
                 warm: int = 0, max_upload: int = 64 << 20, default_ttl: int = 300,
                 default_resources: Resources | None = None, max_sandboxes: int = 100,
                 output_cap: int = 1 << 20, reap_interval: float = 0.5, pid_limit: int | None = None,
                 node: str = "") -> None:
        """``pid_limit``: the machine's pid space (default: read from /proc/sys/kernel); one sandbox may
        hold a quarter of it (``max_pids``), and the default sandbox no more than 256 processes.
        ``node``: the Ray node this manager runs on (a cluster's node agent), written on its rows."""
        self.data_dir = os.path.abspath(data_dir)
        self.environ = dict(os.environ if environ is None else environ)
        self.audit_path = audit_path
        self.policy_file = policy_file
        self.warm = warm
        self.max_upload = max_upload
        self.default_ttl = default_ttl
        self.pid_limit = pid_limit or host_pid_limit()
        self.max_pids = machine_max_pids(self.pid_limit)
        self.default_resources = default_resources or Resources(512 << 20, 1.0, default_pids(self.pid_limit))
        self.max_sandboxes = max_sandboxes
        self.output_cap = output_cap
        self.reap_interval = reap_interval
        self.node = node

    @property
    def sandboxes_dir(self) -> str:
        return os.path.join(self.data_dir, "sandboxes")


def host_pid_limit() -> int:
    """This machine's pid space: the smaller of kernel.pid_max and kernel.threads-max."""
    limits = []
    for name in ("pid_max", "threads-max"):
        try:
            with open(f"/proc/sys/kernel/{name}") as f:
                limits.append(int(f.read().strip()))
        except (OSError, ValueError):
            pass
    return min(limits) if limits else 32768


def default_pids(pid_limit: int | None = None) -> int:
    """The processes of a sandbox that asks for no number: DEFAULT_PIDS, or less on a small machine."""
    return min(DEFAULT_PIDS, machine_max_pids(pid_limit or host_pid_limit()))


def prepare_data_dir(directory: str) -> None:
    """The data directory is the service's alone: made 0700 if new; an existing one must not be writable by others.

    Never chmod'ed: ``--data-dir /var/lib`` must not change /var/lib.
    """
    import stat

    try:
        os.makedirs(directory, mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise ContainmentError(f"Refusing to use {directory} as the service's data directory: it is not a "
                               "directory of this user that only this user can write",
                               fix=f"use a new directory (--data-dir), or chmod go-w {directory}")


# --- commands -----------------------------------------------------------------------------------
