"""HAZMAT: OCI bundles and runsc command lines for the container tier.

Only the container tier may import this module.  ``oci_config`` turns already
decided mounts into an OCI runtime spec; ``runsc_argv`` assembles the runsc
command.  No policy decisions here.

Misuse looks like: a bind mount of a host path the plan did not name, a mount
without ``ro`` where the plan said read-only, a process with capabilities, or
``--network=host`` (the sandbox must never share a host network stack).
"""

from __future__ import annotations

__all__ = ["RUNSC_CANDIDATES", "oci_config", "runsc_argv"]

RUNSC_CANDIDATES = ("/usr/bin/runsc", "/usr/local/bin/runsc", "/usr/sbin/runsc")


def oci_config(*, rootfs: str, argv: list[str], env: dict[str, str], cwd: str, uid: int, gid: int,
               mounts: list[tuple[str, ...]], seccomp: dict, netns: str | None = None, resources=None,
               cgroups_path: str | None = None) -> dict:
    """The OCI spec.

    ``mounts``: (kind, path) or (kind, host source, destination inside), kind one of
    bind-rw, bind-ro, file-ro, tmpfs, hide-dir, hide-file.  ``netns``: the path of
    the network namespace the sandbox joins (default: a new, empty one).
    ``cgroups_path``: ``/blastwall/ID``, the sandbox's own cgroup, limited by
    ``resources`` (a plan's Resources, or None); see ``_raw_cgroups``.
    ``seccomp``: the ``linux.seccomp`` profile, which gVisor applies to every
    process of the sandbox (``runsc_argv`` passes ``--oci-seccomp``).
    """
    if uid == 0 or gid == 0:
        raise ValueError("the sandbox's user is never root")
    if resources is not None and cgroups_path is None:
        raise ValueError("resource limits need the sandbox's own cgroups path")
    cgroups, rlimits = {}, []
    if cgroups_path is not None:
        from blastwall.tiers.container._raw_cgroups import oci_linux, oci_rlimits

        cgroups = oci_linux(resources=resources, cgroups_path=cgroups_path)
        rlimits = oci_rlimits(resources=resources)
    spec_mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    ]
    for mount in mounts:
        kind, path = mount[0], mount[1]
        source, path = (path, mount[2]) if len(mount) > 2 else (path, path)
        if kind == "bind-rw":
            spec_mounts.append({"destination": path, "type": "bind", "source": source,
                                "options": ["rbind", "rw", "nosuid", "nodev"]})
        elif kind in ("bind-ro", "file-ro"):
            spec_mounts.append({"destination": path, "type": "bind", "source": source,
                                "options": ["rbind", "ro", "nosuid", "nodev"]})
        elif kind == "tmpfs":
            spec_mounts.append({"destination": path, "type": "tmpfs", "source": "tmpfs",
                                "options": ["nosuid", "nodev", "mode=1777"]})
        elif kind == "tmpfs-755":
            spec_mounts.append({"destination": path, "type": "tmpfs", "source": "tmpfs",
                                "options": ["nosuid", "nodev", "mode=755"]})
        elif kind == "hide-dir":
            spec_mounts.append({"destination": path, "type": "tmpfs", "source": "tmpfs",
                                "options": ["nosuid", "nodev", "ro", "mode=0555"]})
        elif kind == "hide-file":
            spec_mounts.append({"destination": path, "type": "bind", "source": "/dev/null", "options": ["rbind", "ro"]})
        else:
            raise ValueError(f"unknown mount kind {kind!r}")
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": list(argv),
            "env": [f"{k}={v}" for k, v in sorted(env.items())],
            "cwd": cwd,
            "noNewPrivileges": True,
            "capabilities": {"bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}, *rlimits],
        },
        # Read-only for gVisor's gofer; the sandbox writes to an in-memory overlay (--overlay2=root:memory).
        "root": {"path": rootfs, "readonly": False},
        "hostname": "blastwall",
        "mounts": spec_mounts,
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
            + [{"type": "network", "path": netns} if netns else {"type": "network"}],
            "seccomp": seccomp,
            **cgroups,
        },
    }


def runsc_argv(*, runsc: str, state: str, platform: str, bundle: str, container_id: str, network: str = "none",
               detach: bool = False) -> list[str]:
    """``runsc run`` with a writable in-memory layer over the read-only image.

    ``network``: "none" (no interface but loopback) or "sandbox" (gVisor's own
    network stack on the interfaces of the namespace in the spec).
    """
    if network not in ("none", "sandbox"):
        raise ValueError(f"network {network!r} is not allowed")
    return [runsc, f"--root={state}", f"--platform={platform}", f"--network={network}", "--overlay2=root:memory",
            "--oci-seccomp", "run", *(["--detach"] if detach else []), f"--bundle={bundle}", container_id]
