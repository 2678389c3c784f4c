"""The other commands, run as a user would: policy show, import-srt, doctor, the API surface."""

from __future__ import annotations

import json
import tomllib

import blastwall
from tests.conftest import blastwall as run_cli
from tests.conftest import needs_bwrap


def test_public_api_is_explicit_and_sorted():
    assert blastwall.__all__ == sorted(blastwall.__all__)
    for name in blastwall.__all__:
        assert getattr(blastwall, name) is not None


def test_error_tree():
    from blastwall.errors import ContainmentError, EnforcementError, PolicyError, PolicyViolation, Unsupported

    for cls in (PolicyError, EnforcementError, PolicyViolation, Unsupported):
        assert issubclass(cls, ContainmentError)
    assert PolicyError.exit_status == 2 and EnforcementError.exit_status == 125


def test_policy_show_merges_file_and_flags(home, workspace, scratch):
    policy = scratch / "p.toml"
    policy.write_text('[filesystem]\ndeny_read = ["~/.private"]\n[network]\ndeny = ["evil.example.com"]\n')
    r = run_cli(["policy", "show", "--policy", str(policy), "--deny-read", "extra"], home=home, cwd=workspace)
    assert r.returncode == 0, r.stderr
    body = tomllib.loads(r.stdout)
    assert body["filesystem"]["deny_read"] == ["~/.private", "extra"]
    assert body["network"]["deny"] == ["evil.example.com"]
    assert str(policy) in r.stdout


def test_policy_show_json_and_plan(home, workspace):
    r = run_cli(["policy", "show", "--json", "--plan"], home=home, cwd=workspace)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert "~/.aws" in data["builtin_secrets"]
    assert any("Hide" in op and ".aws" in op for op in data["plan"])


def test_policy_show_never_reads_project_policy(home, workspace):
    (workspace / ".blastwall").mkdir()
    (workspace / ".blastwall" / "policy.toml").write_text("this is not toml [[[")
    r = run_cli(["policy", "show"], home=home, cwd=workspace)
    assert r.returncode == 0, r.stderr


def test_import_srt_writes_and_refuses_to_overwrite(home, workspace, scratch):
    src = scratch / "srt.json"
    src.write_text(json.dumps({"network": {"allowedDomains": ["github.com"], "deniedDomains": []},
                               "filesystem": {"denyRead": ["~/.ssh"], "allowWrite": ["."], "denyWrite": []}}))
    out = scratch / "policy.toml"
    r = run_cli(["policy", "import-srt", str(src), "--output", str(out)], home=home, cwd=workspace)
    assert r.returncode == 0, r.stderr
    assert tomllib.loads(out.read_text())["network"]["allow"] == ["github.com"]
    r = run_cli(["policy", "import-srt", str(src), "--output", str(out)], home=home, cwd=workspace)
    assert r.returncode == 2 and "Refusing to overwrite" in r.stderr
    # The imported policy is usable as is.
    r = run_cli(["policy", "show", "--policy", str(out)], home=home, cwd=workspace)
    assert r.returncode == 0, r.stderr
    # What srt itself refuses, or a deny blastwall cannot express, is refused whole: nothing written.
    for bad in ({"network": {"allowedDomains": ["not-a-domain"], "deniedDomains": []},
                 "filesystem": {"denyRead": [], "allowWrite": [], "denyWrite": []}},
                {"network": {"allowedDomains": []}},
                {"network": {"allowedDomains": [], "deniedDomains": []},
                 "filesystem": {"denyRead": ["~/.secret*"], "allowWrite": [], "denyWrite": []}}):
        src.write_text(json.dumps(bad))
        target = scratch / "refused.toml"
        r = run_cli(["policy", "import-srt", str(src), "--output", str(target)], home=home, cwd=workspace)
        assert r.returncode == 2 and "Traceback" not in r.stderr and not target.exists(), (bad, r.stderr)


@needs_bwrap
def test_doctor_reports_this_machine(home, workspace):
    r = run_cli(["doctor", "--json"], home=home, cwd=workspace)
    data = json.loads(r.stdout)
    names = {c["name"]: c for c in data["checks"]}
    assert {"bubblewrap", "user namespaces", "seccomp", "Landlock", "gVisor (runsc)", "QEMU", "KVM"} <= set(names)
    assert data["process_tier_usable"] is True and r.returncode == 0
    r = run_cli(["doctor"], home=home, cwd=workspace)
    assert "process tier: usable" in r.stdout


def test_doctor_never_opens_project_files(home, workspace):
    (workspace / ".blastwall").mkdir()
    (workspace / ".blastwall" / "policy.toml").write_text("[[[")
    r = run_cli(["doctor", "--json"], home=home, cwd=workspace)
    assert "policy.toml" not in r.stdout + r.stderr


def test_help_and_version(home, workspace):
    assert "blastwall run" in run_cli(["--help"], home=home, cwd=workspace).stdout
    assert run_cli(["version"], home=home, cwd=workspace).stdout.startswith("blastwall ")


@needs_bwrap
def test_every_run_is_audited(home, workspace):
    import time

    r = run_cli(["run", "--", "sh", "-c", "exit 5"], home=home, cwd=workspace)
    assert r.returncode == 5
    deadline = time.monotonic() + 10
    rows = []
    while time.monotonic() < deadline:  # The row is written by a detached child.
        out = run_cli(["audit", "tail", "--json"], home=home, cwd=workspace).stdout
        rows = [json.loads(line) for line in out.splitlines() if '"kind": "run"' in line]
        if rows:
            break
        time.sleep(0.1)
    assert rows and rows[-1]["command"] == "sh -c exit 5"
    assert "exit status 5" in rows[-1]["reason"] and rows[-1]["rule"].startswith("policy sha256:")
    assert run_cli(["audit", "verify"], home=home, cwd=workspace).returncode == 0
