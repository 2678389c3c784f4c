"""The VM tier's costs, side by side with a bare QEMU boot (issue 7).

    .venv/bin/python bench/vm.py [--runs 5] [--commands 30]

Needs root, QEMU, the packaged kernel, busybox and the default image
(`blastwall image build`).  Uses the accelerator blastwall picks here
(`blastwall doctor`; BLASTWALL_VM_ACCEL overrides).  Prints:
* boot to first command: a VmSession's boot (QEMU, kernel, initramfs, root
  overlay, workspace share, agent ready, protected paths) plus its first
  `true`, against a bare QEMU boot of the same kernel and initramfs with the
  same machine type and accelerator that runs nothing (``rdinit=/probe``:
  the time to its marker on the serial console), the issue's comparison; and,
  stricter, against a minimal initramfs that only prints the marker;
  interleaved rounds, medians;
* per-command latency on a warm VM (`true` through the agent), median and p90,
  next to the guest's own cost of running `true` from a shell loop (fork,
  exec, wait; timed inside the guest): about what any agent is bound by.
Goals: boot to first command within 1.5x of the bare boot; under 20 ms per
command on a warm VM.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))


def median_p90(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]


def bare_boot(accel: str, *, ours: bool) -> float:
    """Seconds from starting QEMU to the marker on the console: booting blastwall's own initramfs with
    ``rdinit=/probe`` (``ours``: the same kernel and initramfs, nothing run), or the minimal probe initramfs."""
    from blastwall.tiers.vm import PROBE_MARKER, find_qemu
    from blastwall.tiers.vm._raw_qemu import qemu_argv
    from blastwall.tiers.vm.guest import clock_args, find_kernel, initramfs, probe_initramfs

    kernel, version = find_kernel()
    initrd = initramfs(version) if ours else probe_initramfs()
    with tempfile.TemporaryDirectory(prefix="blastwall-bench-") as tmp:
        log = os.path.join(tmp, "console.log")
        argv = qemu_argv(qemu=find_qemu(), accel=accel, kernel=kernel, initrd=initrd,
                         cmdline=" ".join(["console=ttyS0", "quiet", "panic=-1", *clock_args(accel),
                                           *(["rdinit=/probe"] if ours else [])]),
                         root_disk=None, share=None, control=None, console_log=log, memory_mb=512, cpus=1,
                         guestfwd=None)
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    with open(log, "rb") as f:
                        if PROBE_MARKER.encode() in f.read():
                            return time.monotonic() - started
                except FileNotFoundError:
                    pass
                if proc.poll() is not None or time.monotonic() - started > 120:
                    raise SystemExit("bench: the bare guest did not print its marker")
                time.sleep(0.002)
        finally:
            proc.kill()
            proc.wait()


def session(workspace: str, accel: str):
    from blastwall import api
    from blastwall.policy.model import parse_layer
    from blastwall.tiers.vm.session import VmSession

    pol = api.load(None, flags=parse_layer({"sandbox": {"tier": "vm"}}, "bench"), workspace=workspace)
    plan = api.plan_for(pol, workspace=workspace, cwd=workspace)
    return VmSession(plan, workspace=workspace, accel=accel)


def first_command(workspace: str, accel: str) -> tuple[float, float]:
    """(boot to first command's exit, the boot alone) of a VM session, in seconds."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    vm = session(workspace, accel)
    started = time.monotonic()
    try:
        vm.boot()
        booted = time.monotonic() - started
        status = vm.exec(["true"], stdout=devnull, stderr=devnull).wait(60)
        total = time.monotonic() - started
    finally:
        vm.close()
        os.close(devnull)
    assert status == 0
    return total, booted


FLOOR_SCRIPT = 'a=$(date +%s%N); for i in $(seq "$1"); do /bin/true; done; b=$(date +%s%N); echo $(( (b - a) / $1 ))'


def guest_floor(vm, count: int) -> float:
    """Seconds the guest itself takes to run `true` from a shell loop (fork, exec, wait; the mean), timed inside."""
    r, w = os.pipe()
    command = vm.exec(["sh", "-c", FLOOR_SCRIPT, "floor", str(count)], stdout=w, stderr=w)
    os.close(w)
    out = b""
    while chunk := os.read(r, 4096):
        out += chunk
    os.close(r)
    assert command.wait(120) == 0, out
    return int(out) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--commands", type=int, default=30)
    args = parser.parse_args()
    from blastwall.tiers.vm import detect_accel

    accel = detect_accel()
    workspace = tempfile.mkdtemp(prefix="blastwall-bench-ws-", dir=os.path.expanduser("~/.cache"))
    os.chown(workspace, 1000, 1000)
    first_command(workspace, accel)  # Builds the initramfs and the root disk once, outside the figures.
    bare, minimal, ours, boots = [], [], [], []
    for _ in range(args.runs):
        bare.append(bare_boot(accel, ours=True))
        minimal.append(bare_boot(accel, ours=False))
        total, booted = first_command(workspace, accel)
        ours.append(total)
        boots.append(booted)
    devnull = os.open(os.devnull, os.O_WRONLY)
    vm = session(workspace, accel)
    vm.boot()
    try:
        for _ in range(3):
            vm.exec(["true"], stdout=devnull, stderr=devnull).wait(60)
        latencies = []
        for _ in range(args.commands):
            started = time.monotonic()
            assert vm.exec(["true"], stdout=devnull, stderr=devnull).wait(60) == 0
            latencies.append(time.monotonic() - started)
        floor = guest_floor(vm, args.commands)
    finally:
        vm.close()
        os.close(devnull)
        subprocess.run(["rm", "-rf", workspace])
    b, _ = median_p90(bare)
    m, _ = median_p90(minimal)
    o, _ = median_p90(ours)
    boot, _ = median_p90(boots)
    cmd, cmd90 = median_p90(latencies)
    print(f"accelerator: {accel} ({os.cpu_count()} CPUs)")
    print(f"bare QEMU boot, same kernel and initramfs (rdinit=/probe) to its marker  median {b * 1000:7.0f} ms "
          f"({args.runs} runs)")
    print(f"bare QEMU boot, same kernel, a minimal initramfs to its marker         median {m * 1000:7.0f} ms")
    print(f"VmSession boot to first command exit  median {o * 1000:7.0f} ms   ({o / b:.2f}x the bare boot of the "
          f"same kernel and initramfs; goal 1.5x) ({o / m:.2f}x the minimal one)")
    print(f"  of which boot (agent ready, mounts) median {boot * 1000:7.0f} ms")
    print(f"warm VM, `true` through the agent     median {cmd * 1000:7.1f} ms   p90 {cmd90 * 1000:.1f} ms "
          f"({args.commands} commands; goal 20 ms)")
    print(f"  the guest's own shell running `true` (fork, exec, wait; timed inside, mean)  {floor * 1000:7.1f} ms "
          f"-> the agent and the channel add {(cmd - floor) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
