"""Running one attack in every tier that claims to stop it.

``CLAIMS`` is the table: technique -> the tiers that claim a defence against
it.  ``tier_run`` runs a shell script through the real command line
(``blastwall run --tier T``), so an attack is written once and judged on the
host for each tier.  A tier is skipped only when this machine lacks its
primitive, and the skip says which.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import BWRAP, blastwall

TIERS = ("process", "container", "vm")

CLAIMS = {
    "rename-protected-ancestor": TIERS,
    "replace-gitdir-file": TIERS,
    "setid-and-device-files": TIERS,
    "never-root-inside": TIERS,
    "socket-family-allowlist": ("process",),  # The others' sockets are their own kernel's.
    "guest-root-held-on-the-host": ("vm",),  # Only the VM has a root of its own to lose.
}


def missing(tier: str) -> str | None:
    """Why this machine cannot run ``tier`` (None: it can)."""
    if BWRAP is None:
        return "bubblewrap is not installed"
    if tier == "process":
        return None
    if os.geteuid() != 0:
        return f"the {tier} tier needs root on this machine"
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed (it builds the image)"
    if tier == "container":
        return None if shutil.which("runsc", path="/usr/bin:/usr/local/bin:/usr/sbin") else "gVisor's runsc is not installed"
    if not any(os.access(p, os.X_OK) for p in ("/usr/bin/qemu-system-x86_64", "/usr/local/bin/qemu-system-x86_64")):
        return "QEMU is not installed (apt-get install qemu-system-x86)"
    if not any(n.startswith("vmlinuz-") for n in (os.listdir("/boot") if os.path.isdir("/boot") else [])):
        return "no packaged guest kernel in /boot (apt-get install linux-image-amd64)"
    if not any(os.access(p, os.X_OK) for p in ("/bin/busybox", "/usr/bin/busybox")):
        return "busybox is not installed (apt-get install busybox-static)"
    if shutil.which("mkfs.erofs", path="/usr/bin:/usr/sbin:/sbin") is None:
        return "mkfs.erofs is not installed (apt-get install erofs-utils)"
    return None


def tiers_for(technique: str):
    """pytest parameters: every tier claiming a defence against ``technique``, marked to skip where missing."""
    return [pytest.param(tier, id=tier, marks=[pytest.mark.skipif(missing(tier) is not None,
                                                                  reason=missing(tier) or "")]
                         + ([pytest.mark.slow] if tier == "vm" else []))
            for tier in CLAIMS[technique]]


def tier_run(tier: str, script: str, *, home, workspace, env, args=(), timeout: float = 240):
    """``script`` under ``sh`` in a one-shot sandbox of ``tier`` over ``workspace``; the CompletedProcess."""
    return blastwall(["run", "--tier", tier, *args, "--", "sh", "-c", script], home=home, cwd=workspace,
                     env=env, timeout=timeout)
