"""The resource part of the OCI spec and the cgroup helpers, without running anything."""

from __future__ import annotations

import pytest

from blastwall.policy import plan as P
from blastwall.tiers.container import _raw_cgroups as C
from blastwall.tiers.container._raw_oci import oci_config

MiB = 1024 * 1024


def config(resources, cgroups_path="/blastwall/blastwall-0123456789ab"):
    return oci_config(rootfs="/r", argv=["true"], env={}, cwd="/", uid=1000, gid=1000, mounts=[], seccomp={}, resources=resources,
                      cgroups_path=cgroups_path)


def test_every_limit_reaches_the_spec():
    spec = config(P.Resources(512 * MiB, 0.5, 64, 600))
    assert spec["linux"]["cgroupsPath"] == "/blastwall/blastwall-0123456789ab"
    assert spec["linux"]["resources"] == {
        "memory": {"limit": 512 * MiB, "swap": 512 * MiB},  # memory+swap = memory: no swap to escape to
        "cpu": {"quota": 50_000, "period": 100_000},
        "pids": {"limit": C.host_pids(64)},
    }
    assert {"type": "RLIMIT_NPROC", "hard": 64, "soft": 64} in spec["process"]["rlimits"]
    assert spec["process"]["capabilities"]["bounding"] == []  # Nothing may raise RLIMIT_NPROC.


def test_unset_limits_are_left_out():
    spec = config(P.Resources(None, None, None, 30))  # A timeout alone: the tier's, not the kernel's.
    assert "resources" not in spec["linux"]
    assert [r["type"] for r in spec["process"]["rlimits"]] == ["RLIMIT_NOFILE"]
    spec = config(None)
    assert spec["linux"]["cgroupsPath"] == "/blastwall/blastwall-0123456789ab"  # Always its own cgroup.
    assert "resources" not in spec["linux"]


@pytest.mark.parametrize("cpus,quota", [(0.01, 1000), (0.015, 1500), (1, 100_000), (2.5, 250_000),
                                        (1024, 102_400_000)])
def test_cpu_quota(cpus, quota):
    assert config(P.Resources(None, cpus, None, None))["linux"]["resources"]["cpu"]["quota"] == quota


def test_host_backstop_grows_with_pids_and_stays_a_valid_pids_max():
    assert C.host_pids(8) < C.host_pids(64) < C.host_pids(1000)
    assert C.host_pids(64) > 1900  # Measured: a fork bomb held to 64 inside made ~1900 host tasks.
    assert C.host_pids(1_000_000) == C.PID_MAX_LIMIT


@pytest.mark.parametrize("path", ["/", "/blastwall", "/blastwall/", "/blastwall/..", "/blastwall/a/b", "/system.slice",
                                  "/blastwall/x y", "blastwall/x", "/blastwall-12345", "/user.slice/blastwall/x"])
def test_only_blastwall_leaves_are_touched(path):
    with pytest.raises(ValueError):
        C.remove_cgroup(path, timeout=0)
    if path.startswith("/blastwall"):
        with pytest.raises(ValueError):
            config(None, cgroups_path=path)


def test_limits_without_a_cgroup_of_their_own_are_refused():
    with pytest.raises(ValueError):
        oci_config(rootfs="/r", argv=["true"], env={}, cwd="/", uid=1000, gid=1000, mounts=[], seccomp={},
                   resources=P.Resources(64 * MiB, None, None, None), cgroups_path=None)


def test_expected_limits_round_memory_to_pages():
    wanted = C.expected_limits(P.Resources(64 * MiB + 1, 1, 8, None))
    assert wanted == {"memory": 64 * MiB, "memsw": 64 * MiB, "cpu_quota": 100_000, "cpu_period": 100_000,
                      "pids": C.host_pids(8)}


def test_a_missing_cgroup_reads_as_none():
    assert C.read_limits("/blastwall/blastwall-000000000000") is None
