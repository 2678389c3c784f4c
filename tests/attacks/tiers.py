"""Running one attack in every tier that claims to stop it.

``CLAIMS`` is the table: technique -> the tiers that claim a defence against
it.  ``tier_run`` runs a shell script through the real command line
(``blastwall run --tier T``), so an attack is written once and judged on the
host for each tier.  A tier is skipped only when this machine lacks its
primitive, and the skip says which.
"""

from __future__ import annotations

import pytest

from tests.conftest import blastwall, tier_missing as missing

TIERS = ("process", "container", "vm")

CLAIMS = {
    "rename-protected-ancestor": TIERS,
    "replace-gitdir-file": TIERS,
    "plant-git-control-files": TIERS,
    "git-control-beyond-dot-git": TIERS,
    "mandatory-write-denies": TIERS,
    "secrets-stay-out": TIERS,
    "secrets-the-host-changes-later": TIERS,
    "no-network-without-a-grant": TIERS,
    "setid-and-device-files": TIERS,
    "never-root-inside": TIERS,
    "socket-family-allowlist": ("process",),  # The others' sockets are their own kernel's.
    "guest-root-held-on-the-host": ("vm",),  # Only the VM has a root of its own to lose.
}


def tier_params(tiers=TIERS):
    """pytest parameters, one per tier: skipped, saying why, where this machine lacks it; the VM marked slow."""
    params = []
    for tier in tiers:
        why = missing(tier)
        marks = ([pytest.mark.skip(reason=why)] if why is not None else []) + \
            ([pytest.mark.slow] if tier == "vm" else [])
        params.append(pytest.param(tier, id=tier, marks=marks))
    return params


def tiers_for(technique: str):
    """pytest parameters: every tier claiming a defence against ``technique``."""
    return tier_params(CLAIMS[technique])


def tier_run(tier: str, script: str, *, home, workspace, env, args=(), timeout: float = 240):
    """``script`` under ``sh`` in a one-shot sandbox of ``tier`` over ``workspace``; the CompletedProcess."""
    return blastwall(["run", "--tier", tier, *args, "--", "sh", "-c", script], home=home, cwd=workspace,
                     env=env, timeout=timeout)
