"""What a blastwall VM boots: the distribution's kernel, a small initramfs of ours, the image as a disk.

* **Kernel**: Debian's packaged kernel (``linux-image-amd64``), the newest
  ``/boot/vmlinuz-VERSION`` that has its ``/lib/modules/VERSION``.  Never the
  host's running kernel by assumption: the host may be a VM with no modules.
* **Initramfs** (``initramfs()``): busybox (``busybox-static``), the kernel
  modules the guest needs (virtio-mmio, virtio-blk, erofs, overlay, 9p over
  virtio, virtio-console, and virtio-net for VMs with a network; Debian builds
  all of them as modules)
  with their dependencies from ``modules.dep``, an ``/init`` script and the
  guest agent.  Built once per kernel and agent, cached under
  ``~/.cache/blastwall/vm``.
* **Root filesystem** (``root_disk()``): the container tier's image
  (``images.rootfs(NAME)``) as an EROFS file made with ``mkfs.erofs``
  (``erofs-utils``), attached read-only; the init lays a tmpfs over it
  (overlayfs), so every write inside the guest is thrown away with the VM.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess

from blastwall.errors import EnforcementError

__all__ = ["clock_args", "find_busybox", "find_kernel", "find_mkfs_erofs", "initramfs", "probe_initramfs", "root_disk"]

# The guest's modules, loaded in dependency order by /init.
MODULES = ("virtio_mmio", "virtio_blk", "crc32c_generic", "erofs", "overlay", "9pnet_virtio", "9p", "virtio_console")
NET_MODULES = ("virtio_net",)  # Loaded only when the VM has a network (bw.net): each insmod is slow under emulation.
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
MKFS_EROFS_CANDIDATES = ("/usr/bin/mkfs.erofs", "/usr/sbin/mkfs.erofs", "/sbin/mkfs.erofs")

# The init runs from the initramfs as pid 1: modules, the root overlay, then
# the agent becomes pid 1 of the real root.  Any failure powers the VM off
# (the host sees the control channel close without "ready" and says so).
INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
fail() { echo "blastwall-init: $*" >/dev/console; poweroff -f; }
for m in $(cat /modules.order); do insmod "/modules/$m" || fail "can't load $m"; done
if grep -q ' bw.net=' /proc/cmdline; then
  for m in $(cat /modules.net); do insmod "/modules/$m" || fail "can't load $m"; done
fi
i=0
while [ ! -b /dev/vda ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done
mkdir -p /lower /rw /newroot
mount -t erofs -o ro /dev/vda /lower || fail "can't mount the root disk"
mount -t tmpfs -o mode=755 rw /rw || fail "can't mount the writable layer"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work root /newroot || fail "can't mount the overlay"
mkdir -p /newroot/.blastwall
chmod 700 /newroot/.blastwall
cp /agent.py /_spawner.py /newroot/.blastwall/
: > /newroot/.blastwall/empty
chmod 444 /newroot/.blastwall/empty
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot /usr/bin/python3 -I -S /.blastwall/agent.py
"""


def _first(paths) -> str | None:
    for path in paths:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def find_busybox() -> str:
    path = _first(BUSYBOX_CANDIDATES)
    if path is None:
        raise EnforcementError("Can't find busybox for the VM's initramfs", fix="sudo apt-get install busybox-static")
    return path


def _version_key(version: str) -> list:
    import re

    return [int(p) if p.isdigit() else p for p in re.split(r"[.-]", version)]


def find_kernel(environ=os.environ) -> tuple[str, str]:
    """(vmlinuz path, version) of the newest packaged kernel with its modules; $BLASTWALL_VM_KERNEL picks one."""
    wanted = environ.get("BLASTWALL_VM_KERNEL")
    versions = []
    for name in os.listdir("/boot") if os.path.isdir("/boot") else []:
        if name.startswith("vmlinuz-"):
            version = name[len("vmlinuz-"):]
            if os.path.isfile(f"/lib/modules/{version}/modules.dep") and (not wanted or wanted == version):
                versions.append(version)
    if not versions:
        which = f" {wanted}" if wanted else ""
        raise EnforcementError(f"Can't find a packaged kernel{which} for the VM (/boot/vmlinuz-* with its modules)",
                               fix="sudo apt-get install linux-image-amd64")
    version = max(versions, key=_version_key)
    return f"/boot/vmlinuz-{version}", version


def clock_args(accel: str) -> list[str]:
    """Kernel parameters for the guest's clock.

    Under software emulation the guest calibrates its TSC against the PIT in
    a tight loop; on a loaded host that loop is preempted, calibration fails
    and microvm offers no other reference (no HPET, no ACPI PM timer), which
    can hang the boot.  The emulated TSC runs at the host's rate, so the
    host's frequency is given instead.
    """
    if accel != "tcg":
        return []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return [f"tsc_early_khz={int(float(line.split(':')[1]) * 1000)}"]
    except (OSError, ValueError):
        pass
    return []


def _module_order(version: str, modules: tuple[str, ...] = MODULES, loaded: tuple[str, ...] = ()) -> list[str]:
    """``modules`` and their dependencies not in ``loaded``, each after what it needs (paths relative to
    /lib/modules/VERSION)."""
    deps: dict[str, list[str]] = {}
    with open(f"/lib/modules/{version}/modules.dep") as f:
        for line in f:
            path, _, rest = line.partition(":")
            deps[path.strip()] = rest.split()
    by_name = {os.path.basename(p).split(".ko")[0].replace("-", "_"): p for p in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order or path in loaded:
            return
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in modules:
        if name not in by_name:
            raise EnforcementError(f"Can't find the kernel module {name} for kernel {version}",
                                   fix="use a Debian kernel (sudo apt-get install linux-image-amd64)")
        visit(by_name[name])
    return order


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (name, mode, data) entries (directories have no data)."""
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        out.write(b"070701" + b"".join(b"%08X" % v for v in fields) + encoded)
        out.write(b"\0" * (-(110 + len(encoded)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))
    return out.getvalue()


PROBE_INIT = """#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev
echo blastwall-probe-ok > /dev/ttyS0
/bin/busybox poweroff -f
"""


def probe_initramfs(environ=os.environ) -> str:
    """An initramfs whose init only prints the probe's marker and powers off (see ``detect_accel``)."""
    busybox = find_busybox()
    digest = hashlib.sha256(PROBE_INIT.encode() + str(os.stat(busybox).st_mtime_ns).encode()).hexdigest()[:16]
    path = os.path.join(_cache(environ), f"probe-{digest}.cpio")
    if not os.path.isfile(path):
        with open(busybox, "rb") as f:
            data = _cpio([("bin", 0o040755, b""), ("dev", 0o040755, b""), ("bin/busybox", 0o100755, f.read()),
                          ("init", 0o100755, PROBE_INIT.encode())])
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return path


def _cache(environ) -> str:
    from blastwall.policy.load import cache_dir

    path = os.path.join(cache_dir(environ), "vm")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def initramfs(version: str, environ=os.environ) -> str:
    """The initramfs for kernel ``version`` (built on first use; the name carries a hash of its inputs)."""
    from blastwall.tiers import _spawner
    from blastwall.tiers.vm import agent

    busybox = find_busybox()
    with open(agent.__file__, "rb") as f:
        agent_src = f.read()
    with open(_spawner.__file__, "rb") as f:
        spawner_src = f.read()
    order = _module_order(version)
    net_order = _module_order(version, NET_MODULES, tuple(order))
    digest = hashlib.sha256(INIT.encode() + PROBE_INIT.encode() + agent_src + spawner_src
                            + "\n".join(order + ["net"] + net_order).encode()
                            + str(os.stat(busybox).st_mtime_ns).encode()).hexdigest()[:16]
    cache = _cache(environ)
    path = os.path.join(cache, f"initramfs-{version}-{digest}.cpio")
    if os.path.isfile(path):
        return path
    for name in os.listdir(cache):  # Those of an older agent or kernel package: QEMU reads its copy at start.
        if name.startswith("initramfs-") and name.endswith(".cpio"):
            try:
                os.unlink(os.path.join(cache, name))
            except OSError:
                pass
    with open(busybox, "rb") as f:
        busybox_bin = f.read()
    entries: list[tuple[str, int, bytes]] = [(d, 0o040755, b"") for d in ("bin", "dev", "proc", "sys", "modules")]
    entries += [("bin/busybox", 0o100755, busybox_bin), ("init", 0o100755, INIT.encode()),
                ("agent.py", 0o100644, agent_src), ("_spawner.py", 0o100644, spawner_src),
                # rdinit=/probe: the same kernel and initramfs, only printing the probe's marker (bench/vm.py's
                # bare boot).
                ("probe", 0o100755, PROBE_INIT.encode())]
    for listing, rels in (("modules.order", order), ("modules.net", net_order)):
        names = []
        for rel in rels:
            with open(f"/lib/modules/{version}/{rel}", "rb") as f:
                data = f.read()
            name = os.path.basename(rel)
            if name.endswith(".xz") or name.endswith(".zst") or name.endswith(".gz"):
                raise EnforcementError(f"Can't use the compressed kernel module {rel} in the VM's initramfs yet")
            entries.append((f"modules/{name}", 0o100644, data))
            names.append(name)
        entries.append((listing, 0o100644, ("\n".join(names) + "\n").encode()))
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(_cpio(entries))
    os.replace(tmp, path)
    return path


def root_disk(image: str, environ=os.environ) -> str:
    """The image ``image`` as an EROFS file (made on first use and again after the image is rebuilt)."""
    from blastwall.tiers.container.images import image_dir, rootfs

    root = rootfs(image, environ)
    meta = os.path.join(image_dir(image, environ), "meta.json")
    stamp = str(os.stat(meta).st_mtime_ns if os.path.exists(meta) else os.stat(root).st_mtime_ns)
    path = os.path.join(image_dir(image, environ), "vm-root.erofs")
    stamp_path = path + ".stamp"
    try:
        with open(stamp_path) as f:
            if f.read() == stamp and os.path.isfile(path):
                return path
    except OSError:
        pass
    mkfs = find_mkfs_erofs()
    tmp = f"{path}.{os.getpid()}"
    # EROFS: a read-only filesystem by design (no journal, nothing to replay), and a kernel module a
    # tenth of ext4's size, which the guest loads at every boot.  Uncompressed: reads cost no emulated
    # decompression.
    result = subprocess.run([mkfs, "--quiet", tmp, root], capture_output=True, text=True)
    if result.returncode != 0:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise EnforcementError(f"Can't make the VM's root disk from image {image!r}: "
                               f"{(result.stderr or result.stdout).strip()[:300]}")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)  # A VM already running keeps the disk it opened.
    with open(stamp_path, "w") as f:
        f.write(stamp)
    for old in ("vm-root.ext4", "vm-root.ext4.stamp"):  # The ext4 disks of earlier versions.
        try:
            os.unlink(os.path.join(image_dir(image, environ), old))
        except OSError:
            pass
    return path


def find_mkfs_erofs() -> str:
    path = _first(MKFS_EROFS_CANDIDATES)
    if path is None:
        raise EnforcementError("Can't make the VM's root disk: mkfs.erofs is not installed",
                               fix="sudo apt-get install erofs-utils")
    return path


def clean(environ=os.environ) -> None:
    """Remove cached initramfs files (they are rebuilt on demand)."""
    shutil.rmtree(os.path.join(_cache(environ), ""), ignore_errors=True)
