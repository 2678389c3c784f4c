"""HAZMAT: QEMU command lines for the VM tier.

Only the VM tier may import this module.  ``qemu_argv`` assembles the command
line of one VM from decisions already made (kernel, initramfs, root disk,
the one shared directory, the control socket, the network); it decides no
policy.

Misuse looks like: a ``guestfwd`` command built from anything but fixed paths, a second ``-fsdev``/``-virtfs`` (more of the host visible
than the workspace), the root disk without ``readonly=on``, ``-netdev user``
without ``restrict=on`` (the guest could reach the host's loopback and the
internet through slirp) or with ``hostfwd``, a monitor or QMP socket the
guest's side could reach, or dropping ``-sandbox on`` (QEMU's own seccomp
filter, which keeps a compromised QEMU from spawning or escalating).
"""

from __future__ import annotations

__all__ = ["QEMU_CANDIDATES", "qemu_argv"]

QEMU_CANDIDATES = ("/usr/bin/qemu-system-x86_64", "/usr/local/bin/qemu-system-x86_64")


def qemu_argv(*, qemu: str, accel: str, kernel: str, initrd: str, cmdline: str, root_disk: str | None,
              share: str | None, control: str | None, console_log: str, memory_mb: int, cpus: int,
              guestfwd: list[str] | None) -> list[str]:
    """One microVM.

    ``accel``: "kvm" or "tcg".  ``root_disk``: attached read-only as the
    first virtio-blk disk.  ``share``: the one host directory the guest sees
    (9p tag ``ws``).  ``control``: the unix socket QEMU listens on for the
    control port, a name in QEMU's working directory (a socket address holds
    107 bytes; the state directory's path may be longer).  ``guestfwd``: None for no network device at all, else
    the ``guestfwd=`` values of a restricted user network: each forwards
    one guest address:port to a command QEMU starts per connection (which is
    why QEMU's seccomp filter then allows spawning, and only then).
    """
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"unknown accelerator {accel!r}")
    argv = [qemu, "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-M", "microvm,x-option-roms=off,rtc=on,isa-serial=on,acpi=on",
            # TCG's translation cache: 64 MiB, not QEMU's 1 GiB default.  Measured here (bench/vm.py and a
            # Python-heavy command): the host's memory per VM 295 MiB instead of 486, a warm `true` 34 ms
            # instead of 43, the heavy command 1.5 s instead of 2.0 (the large cache is spread over more memory).
            "-accel", accel if accel == "kvm" else "tcg,thread=single,tb-size=64",
            "-cpu", "host" if accel == "kvm" else "max",
            "-m", str(memory_mb), "-smp", str(cpus),
            "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
            "-chardev", f"file,id=con,path={_escape(console_log)}", "-serial", "chardev:con",
            # QEMU's own seccomp filter: no spawning, no privilege changes, no obsolete syscalls.
            # With forwards, QEMU must start their commands, whose set-up calls setsid (a set*id call
            # to the filter; "children" does not let it through in QEMU 7.2), so both are allowed then.
            "-sandbox", "on,obsolete=deny,resourcecontrol=deny,"
            + ("spawn=allow,elevateprivileges=allow" if guestfwd else "spawn=deny,elevateprivileges=deny")]
    if root_disk is not None:
        argv += ["-drive", f"id=root,file={_escape(root_disk)},format=raw,if=none,readonly=on,cache=unsafe",
                 "-device", "virtio-blk-device,drive=root"]
    if share is not None:
        argv += ["-fsdev", f"local,id=ws,path={_escape(share)},security_model=passthrough",
                 "-device", "virtio-9p-device,fsdev=ws,mount_tag=ws"]
    if control is not None:
        argv += ["-device", "virtio-serial-device",
                 "-chardev", f"socket,id=ctl,path={_escape(control)},server=on,wait=off",
                 "-device", "virtserialport,chardev=ctl,name=blastwall"]
    if guestfwd is None:
        argv += ["-nic", "none"]
    else:
        if not guestfwd:
            raise ValueError("a user network needs at least one guest forward")
        forwards = "".join(f",guestfwd={_escape(g)}" for g in guestfwd)
        # restrict=on: the guest reaches nothing of the host or beyond except the forwards.
        argv += ["-netdev", f"user,id=net,restrict=on,ipv6=off,net=10.0.2.0/24{forwards}",
                 "-device", "virtio-net-device,netdev=net"]
    return argv


def _escape(value: str) -> str:
    """QEMU option values escape a comma by doubling it."""
    return value.replace(",", ",,")
