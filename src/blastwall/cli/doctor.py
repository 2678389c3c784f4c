"""``blastwall doctor``: what this machine supports for each tier, and what to install.

Each check *tries* the primitive rather than looking for a file: a bubblewrap
that cannot create a user namespace, or a /dev/kvm that opens but refuses to
create a VM, is reported as unusable.  Nothing here reads a workspace.
"""

from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["checks", "run_doctor"]


class Check:
    __slots__ = ("tier", "name", "ok", "detail", "fix")

    def __init__(self, tier: str, name: str, ok: bool, detail: str, fix: str = "") -> None:
        self.tier, self.name, self.ok, self.detail, self.fix = tier, name, ok, detail, fix

    def as_dict(self) -> dict:
        return {"tier": self.tier, "name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix}


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unusable ({exc})"
    text = (out.stdout or out.stderr).strip().splitlines()
    versioned = [line for line in text if "version" in line.lower()]
    return (versioned or text or [f"exit status {out.returncode}"])[0].strip()


def _first(paths) -> str | None:
    for path in paths:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def check_bwrap() -> list[Check]:
    from blastwall.errors import EnforcementError
    from blastwall.tiers.process import find_bwrap, translate_bwrap_error

    try:
        bwrap = find_bwrap()
    except EnforcementError as exc:
        return [Check("process", "bubblewrap", False, exc.message, exc.fix or ""),
                Check("process", "user namespaces", False, "not checked: no bubblewrap")]
    out = [Check("process", "bubblewrap", True, f"{bwrap}: {_version([bwrap, '--version'])}")]
    try:
        probe = subprocess.run([bwrap, "--unshare-user", "--unshare-net", "--disable-userns", "--ro-bind", "/", "/",
                                "--", "/bin/true"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        out.append(Check("process", "user namespaces", False, str(exc)))
        return out
    if probe.returncode == 0:
        out.append(Check("process", "user namespaces", True, "bubblewrap created a user and network namespace"))
    else:
        err = translate_bwrap_error(probe.stderr)
        out.append(Check("process", "user namespaces", False, err.message, err.fix or ""))
    return out


def check_seccomp() -> Check:
    try:
        from blastwall.tiers.process import seccomp_instructions

        size = seccomp_instructions()
    except OSError as exc:
        return Check("process", "seccomp", False, str(exc), "sudo apt-get install libseccomp2")
    with open("/proc/self/status") as f:
        has_field = any(line.startswith("Seccomp:") for line in f)
    if not has_field:
        return Check("process", "seccomp", False, "the kernel has no seccomp support", "use a kernel with CONFIG_SECCOMP_FILTER")
    return Check("process", "seccomp", True, f"libseccomp built a {size}-instruction filter")


def check_landlock() -> Check:
    from blastwall.tiers.process import landlock_abi

    abi = landlock_abi()
    if abi:
        extras = []
        if abi >= 6:
            extras.append("abstract unix socket and signal scoping")
        if abi >= 5:
            extras.append("device ioctl control")
        detail = f"ABI {abi}" + (f" ({', '.join(extras)})" if extras else "")
        return Check("process", "Landlock", True, detail)
    return Check("process", "Landlock", False, "not available: the process tier runs with bubblewrap and seccomp only",
                 "kernel >= 5.13 with CONFIG_SECURITY_LANDLOCK=y and 'landlock' in the lsm= boot parameter")


def check_egress() -> list[Check]:
    import importlib.util

    from blastwall.tiers.process import find_socat

    out = []
    socat = find_socat()
    out.append(Check("egress", "socat", socat is not None,
                     f"{socat}: {_version([socat, '-V']) if socat else ''}".strip(": ") if socat else "not installed",
                     "" if socat else "sudo apt-get install socat"))
    spec = importlib.util.find_spec("mitmproxy")
    out.append(Check("egress", "mitmproxy", spec is not None,
                     f"importable from {spec.submodule_search_locations[0]}" if spec else "not installed",
                     "" if spec else "pip install 'mitmproxy>=11,<12' into blastwall's environment"))
    return out


def check_runsc() -> list[Check]:
    path = _first(["/usr/bin/runsc", "/usr/local/bin/runsc", "/usr/sbin/runsc"])
    if path is None:
        return [Check("container", "gVisor (runsc)", False, "not installed", "sudo apt-get install runsc")]
    out = [Check("container", "gVisor (runsc)", True, f"{path}: {_version([path, '--version'])}")]
    from blastwall.errors import ContainmentError
    from blastwall.tiers.container import detect_platform

    if os.geteuid() != 0:
        out.append(Check("container", "runsc platform", False, "not probed: the container tier needs root here",
                         "run blastwall as root for the container tier"))
    else:
        try:
            platform = detect_platform()
        except ContainmentError as exc:
            out.append(Check("container", "runsc platform", False, str(exc), getattr(exc, "fix", "") or ""))
        else:
            out.append(Check("container", "runsc platform", True, f"{platform}: a sandbox ran `true`"))
    nft = _first(["/usr/sbin/nft", "/sbin/nft"])
    out.append(Check("container", "nftables (session networks)", nft is not None,
                     nft or "not installed: container sessions with network access are refused",
                     "" if nft else "sudo apt-get install nftables"))
    from blastwall.tiers.container.images import list_images

    images = list_images()
    out.append(Check("container", "images", bool(images),
                     ", ".join(m.get("name", "?") for m in images) or "none built",
                     "" if images else "blastwall image build"))
    # gVisor of 2022 refuses statx(AT_NO_AUTOMOUNT), which `ls -l` and `stat` pass; images built by this
    # blastwall preload a layer that clears the flag.  An image built before it (or imported) lacks it.
    from blastwall.tiers.container.images import has_compat

    built = [m.get("name", "?") for m in images if m.get("source") == "mmdebstrap"]
    lacking = [name for name in built if not has_compat(name)]
    if lacking:
        out.append(Check("container", "statx compatibility", False,
                         f"image {', '.join(lacking)} lacks it: `ls -l` and `stat` fail on gVisor releases of 2022",
                         "rebuild: blastwall image build " + lacking[0]))
    elif built:
        out.append(Check("container", "statx compatibility", True, "preloaded in every built image"))
    return out


def check_vm() -> list[Check]:
    """QEMU, the guest kernel and busybox, then which accelerator actually boots a guest.

    A /dev/kvm that opens and creates a VM can still hang or fail on the first
    guest instruction (nested virtualisation): KVM counts only if a probe guest
    boots and prints its marker within a bounded time.
    """
    from blastwall.errors import ContainmentError
    from blastwall.tiers import vm
    from blastwall.tiers.vm import guest

    out = []
    try:
        qemu = vm.find_qemu()
    except ContainmentError as exc:
        return [Check("vm", "QEMU", False, "not installed", exc.fix or "")]
    out.append(Check("vm", "QEMU", True, f"{qemu}: {_version([qemu, '--version'])}"))
    ready = True
    try:
        kernel, version = guest.find_kernel()
        out.append(Check("vm", "guest kernel", True, f"{kernel} (modules {version})"))
    except ContainmentError as exc:
        out.append(Check("vm", "guest kernel", False, exc.message, exc.fix or ""))
        ready = False
    for name, find in (("busybox (initramfs)", guest.find_busybox), ("mkfs.erofs (root disk)", guest.find_mkfs_erofs)):
        try:
            out.append(Check("vm", name, True, find()))
        except ContainmentError as exc:
            out.append(Check("vm", name, False, "not installed", exc.fix or ""))
            ready = False
    why = vm.kvm_opens()
    report = vm.accel_report() if ready else {}
    if why is None and ready:
        why = report["kvm"]
    if why is None and ready:
        out.append(Check("vm", "KVM", True, "a KVM guest booted"))
    elif ready and os.path.exists("/dev/kvm"):
        out.append(Check("vm", "KVM", False, f"{why}; the VM tier uses software emulation (slow)",
                         "check nested virtualisation on the host; BLASTWALL_VM_ACCEL=tcg skips the probe"))
    else:
        out.append(Check("vm", "KVM", False, f"{why or 'not probed'}: the VM tier uses software emulation (slow)",
                         "enable virtualisation in firmware, load kvm_intel/kvm_amd"))
    if ready and why is not None:
        tcg = report.get("tcg")
        out.append(Check("vm", "software emulation (tcg)", tcg is None, tcg or "a tcg guest booted"))
    if ready:
        usable = [a for a in vm.ACCELERATORS if report.get(a) is None]
        out.append(Check("vm", "accelerator", bool(usable), usable[0] if usable else "none boots a guest",
                         "" if usable else "run `blastwall doctor` as root; check the kernel and QEMU"))
    return out


def check_database(target: str) -> list[Check]:
    """The service's database: reachable, and its schema this blastwall's."""
    from blastwall.errors import ContainmentError
    from blastwall.service import migrations
    from blastwall.service.database import describe_target, open_database

    name = describe_target(target)
    path = target[len("sqlite://"):] if target.startswith("sqlite://") else None if "://" in target else target
    if path is not None and not os.path.exists(path):  # Looked at, never made: the service makes it.
        return [Check("service", "database", True, f"{name}: not created yet (the service makes it at its start)")]
    try:
        database = open_database(target, check=False)
        try:
            found = migrations.version(database)
        finally:
            database.close()
    except ContainmentError as exc:
        return [Check("service", "database", False, f"{name}: {exc.message}", exc.fix or "")]
    if found != migrations.LATEST:
        return [Check("service", "database", False, f"{name}: schema version {found}, this blastwall needs "
                      f"{migrations.LATEST}", "blastwall db upgrade --database URL" if found < migrations.LATEST
                      else "upgrade blastwall")]
    return [Check("service", "database", True, f"{name}: schema version {found}")]


def check_cluster(address: str) -> list[Check]:
    """The Ray cluster: joinable, its nodes, and the blastwall slots they offer."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return [Check("service", "Ray cluster", False, "Ray is not installed", "pip install 'blastwall[cluster]'")]
    from blastwall.errors import ContainmentError
    from blastwall.ray import cluster

    try:
        cluster.connect(address)
    except ContainmentError as exc:
        return [Check("service", "Ray cluster", False, exc.message, exc.fix or "")]
    import ray

    nodes = cluster.nodes()
    slots = sum(n["slots"] for n in nodes)
    out = [Check("service", "Ray cluster", True, f"{address}: Ray {ray.__version__}, {len(nodes)} nodes alive")]
    out.append(Check("service", "blastwall slots", slots > 0, f"{slots:g} sandboxes at once over the cluster",
                     "" if slots else f"start nodes with --resources '{{\"{cluster.SLOT}\": N}}'"))
    return out


def checks(*, database: str | None = None, cluster: str | None = None) -> list[Check]:
    out = check_bwrap()
    out.append(check_seccomp())
    out.append(check_landlock())
    out.extend(check_egress())
    out.extend(check_runsc())
    out.extend(check_vm())
    if database:
        out.extend(check_database(database))
    if cluster:
        out.extend(check_cluster(cluster))
    return out


def run_doctor(*, json_output: bool, database: str | None = None, cluster: str | None = None) -> int:
    """``database``, ``cluster``: the service's, checked when given (a service on one machine needs neither)."""
    results = checks(database=database, cluster=cluster)
    essential = [c for c in results if c.tier == "process" and c.name != "Landlock"]
    process_ok = all(c.ok for c in essential)
    service_ok = all(c.ok for c in results if c.tier == "service")
    if json_output:
        import json

        sys.stdout.write(json.dumps({"process_tier_usable": process_ok, "service_usable": service_ok,
                                     "checks": [c.as_dict() for c in results]}, indent=2) + "\n")
        return 0 if process_ok and service_ok else 1
    width = max(len(c.name) for c in results)
    tier = None
    for c in results:
        if c.tier != tier:
            tier = c.tier
            sys.stdout.write({"egress": "egress gateway", "service": "service state and cluster"}.get(
                tier, f"{tier} tier") + "\n")
        mark = "ok" if c.ok else "MISSING" if "not installed" in c.detail or "Can't find" in c.detail else "NO"
        sys.stdout.write(f"  {mark:<7} {c.name:<{width}}  {c.detail}\n")
        if not c.ok and c.fix:
            sys.stdout.write(f"  {'':<7} {'':<{width}}  fix: {c.fix}\n")
    sys.stdout.write(f"\nprocess tier: {'usable' if process_ok else 'NOT usable'}\n")
    if database or cluster:
        sys.stdout.write(f"service database and cluster: {'usable' if service_ok else 'NOT usable'}\n")
    return 0 if process_ok and service_ok else 1
