"""Stable reason codes for every refusal and every restriction.

The values are a contract: they appear in messages shown to sandboxed programs,
in the audit log and in scripts that parse either.  Add members; never rename
or reuse one.
"""

from __future__ import annotations

import enum

__all__ = ["Reason"]


class Reason(str, enum.Enum):
    SECRET_PATH = "secret-path"  # On the built-in secret list.
    DENY_READ = "deny-read"  # filesystem.deny_read.
    WORKSPACE = "workspace"  # The workspace itself (why it is writable).
    ALLOW_WRITE = "allow-write"  # filesystem.allow_write.
    MANDATORY_DENY = "mandatory-deny"  # Would give code execution on the host later.
    DENY_WRITE = "deny-write"  # filesystem.deny_write.
    SELF_PROTECTION = "self-protection"  # blastwall's own config, state or installation.
    OUTSIDE_WRITABLE = "outside-writable"  # Not beneath any writable root.
    NETWORK_DENIED = "network-denied"  # No network granted.
    SYSCALL_DENIED = "syscall-denied"  # Refused by the seccomp filter.
    SECRET_ENV = "secret-env"  # Environment variable dropped.
    UNIX_SOCKET = "unix-socket"  # filesystem.allow_unix_sockets.
    RUNTIME = "runtime"  # The interpreter and package that start the sandbox.
    PROTECTED_ANCESTOR = "protected-ancestor"  # Holds a protected path: it cannot be renamed or removed.
    GIT_METADATA = "git-metadata"  # A git directory, submodule link or hooks directory the host's git obeys.
    HYPERVISOR = "hypervisor"  # What a VM's QEMU needs of the host (its state, the gateway's sockets, /dev/kvm).

    def __str__(self) -> str:
        return self.value
