"""Splitting a project policy into what narrows the user's policy and what widens it.

Pure.  A project policy (``.blastwall/policy.toml``, once trusted) may always
make the sandbox *stricter*.  Anything that would give the sandbox more than
the user's own policy does — another host, a writable path outside what the
user allows, a credential, a trusted address range — is a *widening*: it is
listed for the user and applied only on an explicit yes.
"""

from __future__ import annotations

import os

from blastwall.policy.model import Layer, Policy, format_duration, format_size

__all__ = ["split"]

# Keys whose project value only ever adds restrictions.
_ALWAYS_NARROWING = {
    ("filesystem", "deny_read"), ("filesystem", "deny_write"), ("network", "deny"),
    ("environment", "deny"), ("environment", "set"), ("sandbox", "require"),
}
# Keys that widen whenever the project sets anything there.
_ALWAYS_WIDENING = {
    ("filesystem", "reveal"): "reveals paths from the built-in secret list",
    ("filesystem", "allow_unix_sockets"): "allows unix sockets",
    ("network", "resolve"): "pins host names to addresses",
    ("network", "trusted_addresses"): "allows reaching private address ranges",
    ("network", "upstream_ca"): "adds a CA to trust for upstream servers",
    ("environment", "pass"): "passes secret-looking variables into the sandbox",
    ("credentials", "entries"): "uses credentials",
}


def _covered(host: str, patterns) -> bool:
    """True when the allow entry ``host`` is granted by one of the user's ``patterns``."""
    from blastwall.policy.hosts import covers

    return any(covers(pattern, host) for pattern in patterns)


def _expand(path: str, workspace: str, home: str) -> str:
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    return os.path.normpath(os.path.join(workspace, path))


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def split(base: Policy, project: Layer, *, workspace: str, home: str) -> tuple[Layer, list[str]]:
    """The narrowing part of ``project`` (relative to ``base``) and the widenings, described."""
    narrowing: dict = {}
    widening: list[str] = []
    for slot, (op, value) in project.values.items():
        section, key = slot
        if slot in _ALWAYS_NARROWING:
            narrowing[slot] = ("set", value) if slot == ("environment", "set") else ("add", value)
            continue
        if slot in _ALWAYS_WIDENING:
            if value:
                widening.append(f"{section}.{key}: {_ALWAYS_WIDENING[slot]} ({_show(value)})")
            continue
        if slot == ("filesystem", "allow_write"):
            roots = [_expand(p, workspace, home) for p in base.filesystem.allow_write]
            keep = []
            for entry in value:
                if any(_within(_expand(entry, workspace, home), r) for r in roots):
                    keep.append(entry)
                else:
                    widening.append(f"filesystem.allow_write: makes {entry!r} writable")
            if keep or not value:
                narrowing[slot] = ("set", tuple(keep))
            continue
        if slot == ("network", "allow"):
            keep = [h for h in value if _covered(h, base.network.allow)]
            widening += [f"network.allow: allows {h!r}" for h in value if h not in keep]
            if keep or not value:
                narrowing[slot] = ("set", tuple(keep))
            continue
        if slot == ("network", "rules"):
            keep = []
            for rule in value:
                data = dict(rule)
                if data["credential"]:
                    widening.append(f"network.rules: uses credential {data['credential']!r} on {data['host']!r}")
                elif _covered(data["host"], base.network.allow):
                    keep.append(rule)  # Restricts a host the user already allows.
                else:
                    widening.append(f"network.rules: grants {data['host']!r}")
            narrowing[slot] = ("set", tuple(list(base.network.rules) + keep))
            continue
        if slot == ("filesystem", "private_tmp"):
            if value is False and base.filesystem.private_tmp:
                widening.append("filesystem.private_tmp: shares the host's /tmp")
            continue
        if slot == ("filesystem", "allow_git_writes"):
            if value is True and not base.filesystem.allow_git_writes:
                widening.append("filesystem.allow_git_writes: lets the sandbox write the git directory")
            elif value is False:
                narrowing[slot] = ("set", value)
            continue
        if slot == ("network", "unlisted"):
            if value != base.network.unlisted:
                if value == "deny":
                    narrowing[slot] = ("set", value)
                else:
                    widening.append(f"network.unlisted: asks instead of denying ({value!r})")
            continue
        if slot == ("sandbox", "image"):
            if value != base.sandbox.image:
                widening.append(f"sandbox.image: runs in image {value!r}")
            continue
        if section == "resources":
            # A limit narrows when it is at most the user's (or the user sets none).
            current = getattr(base.resources, key)
            if current is None or value <= current:
                narrowing[slot] = ("set", value)
            else:
                show = {"memory": format_size, "timeout": format_duration}.get(key, str)
                widening.append(f"resources.{key}: raises the limit from {show(current)} to {show(value)}")
            continue
        if slot == ("sandbox", "tier"):
            if value != base.sandbox.tier:
                widening.append(f"sandbox.tier: changes the tier to {value!r}")
            continue
        widening.append(f"{section}.{key}: not understood as narrowing ({_show(value)})")
    return Layer(project.source + " (narrowing part)", narrowing), widening


def _show(value) -> str:
    text = repr(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= 120 else text[:117] + "..."
