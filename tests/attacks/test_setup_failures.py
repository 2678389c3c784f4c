"""When the sandbox cannot be set up exactly, nothing runs: fail closed, loudly.

Every test has the command create a marker file; the marker must not exist
afterwards, the exit status is 125 (set-up) or 2 (policy), and the message
says what to do, with no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import assert_no_traceback, blastwall, bw_env, needs_bwrap, needs_root

MARKER = "ran-unsandboxed"


def assert_did_not_run(workspace):
    assert not (workspace / MARKER).exists()


@pytest.mark.parametrize("text,expect", [
    ("[filesystem\ndeny_read = [", "not valid TOML"),
    ("[filesystem]\ndeny_raed = []\n", "filesystem.deny_raed: unknown key 'deny_raed' (did you mean 'deny_read'?)"),
    ("[filesystem]\ndeny_read = '~/.aws'\n", "filesystem.deny_read: expected a list of strings, got a string"),
    ("[filesystem]\nallow_write = [1]\n", "filesystem.allow_write[0]: expected a string, got an integer"),
    ("[network]\nallow = ['https://example.com/']\n", "network.allow[0]"),
    ("[network]\nallow = ['*']\n", "network.allow[0]: '*' would allow every host"),
    ("[network]\nallow = ['0x7f.1']\n", "canonical dotted-quad"),
    ("[sandbox]\ntier = 'docker'\n", "sandbox.tier: expected one of process, container, vm"),
    ("[bogus]\n", "unknown section 'bogus'"),
    ("\x00\x01binary", "not valid TOML"),
])
def test_malformed_policy_file(home, workspace, scratch, text, expect):
    policy = scratch / "policy.toml"
    policy.write_text(text)
    r = blastwall(["run", "--policy", str(policy), "--", "touch", MARKER], home=home, cwd=workspace)
    assert r.returncode == 2
    assert expect in r.stderr
    assert str(policy) in r.stderr
    assert_no_traceback(r)
    assert_did_not_run(workspace)


def test_missing_policy_file_named_explicitly(home, workspace, scratch):
    r = blastwall(["run", "--policy", str(scratch / "nope.toml"), "--", "touch", MARKER], home=home, cwd=workspace)
    assert r.returncode == 2 and "no such file" in r.stderr
    assert_did_not_run(workspace)


def test_malformed_user_policy_file_is_not_ignored(home, workspace):
    config = home / ".config" / "blastwall"
    config.mkdir(parents=True)
    (config / "policy.toml").write_text("[filesystem]\nallow_write = 'everything'\n")
    r = blastwall(["run", "--", "touch", MARKER], home=home, cwd=workspace)
    assert r.returncode == 2 and "allow_write" in r.stderr
    assert_did_not_run(workspace)


def test_huge_policy_file(home, workspace, scratch):
    policy = scratch / "policy.toml"
    policy.write_text("# " + "x" * (2 << 20))
    r = blastwall(["run", "--policy", str(policy), "--", "touch", MARKER], home=home, cwd=workspace)
    assert r.returncode == 2 and "larger than" in r.stderr
    assert_did_not_run(workspace)


@pytest.mark.parametrize("args,expect", [
    (["run"], "no command given"),
    (["run", "--bogus", "--", "true"], "unknown option --bogus"),
    (["run", "--allow-domain"], "needs a value"),
    (["frobnicate"], "unknown command"),
    (["run", "--env", "1BAD", "--", "touch", MARKER], "not an environment variable name"),
    (["run", "--allow-domain", "exa mple.com", "--", "touch", MARKER], "not a host name"),
])
def test_bad_command_line(home, workspace, args, expect):
    r = blastwall(args, home=home, cwd=workspace)
    assert r.returncode == 2, r.stderr
    assert expect in r.stderr
    assert_no_traceback(r)
    assert_did_not_run(workspace)


@pytest.mark.parametrize("tier", ["container", "vm"])
def test_tier_without_its_image_is_refused_with_a_fix(home, workspace, tier):
    r = blastwall(["run", "--tier", tier, "--", "touch", MARKER], home=home, cwd=workspace)
    assert r.returncode == 125, r.stderr
    assert "image" in r.stderr and "fix:" in r.stderr, r.stderr
    assert_no_traceback(r)
    assert_did_not_run(workspace)


def test_bubblewrap_override_missing(home, workspace):
    r = blastwall(["run", "--", "touch", MARKER], home=home, cwd=workspace,
                  env={"BLASTWALL_BWRAP": "/nonexistent/bwrap"})
    assert r.returncode == 125
    assert "Can't find bubblewrap" in r.stderr and "apt-get install bubblewrap" in r.stderr
    assert_no_traceback(r)
    assert_did_not_run(workspace)


def test_bwrap_on_path_is_never_used(home, workspace, scratch):
    # A `bwrap` planted in a PATH directory (say, by an earlier sandbox that
    # could write there) must not be executed: it would run unsandboxed.
    planted = scratch / "bin"
    planted.mkdir()
    fake = planted / "bwrap"
    fake.write_text(f"#!/bin/sh\ntouch {workspace / MARKER}\n")
    fake.chmod(0o755)
    env = {"PATH": f"{planted}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    blastwall(["run", "--", "true"], home=home, cwd=workspace, env=env)
    assert_did_not_run(workspace)


@needs_root
@needs_bwrap
def test_bubblewrap_not_installed(home, workspace, scratch):
    # Hide the real /usr/bin/bwrap in a private mount namespace.
    empty = scratch / "empty"
    empty.write_text("")
    script = (f"mount --bind {empty} /usr/bin/bwrap && "
              f"{sys.executable} -m blastwall run -- touch {MARKER}")
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                       cwd=workspace, env=bw_env(home), capture_output=True, text=True, timeout=60)
    assert r.returncode == 125, r.stderr
    assert "Can't find bubblewrap" in r.stderr
    assert_did_not_run(workspace)


@needs_bwrap
def test_user_namespaces_blocked(home, workspace):
    # Inside a user namespace whose limit is 0, bubblewrap cannot create its
    # own: blastwall must stop with a fix, never run the command unsandboxed.
    script = f"echo 0 > /proc/sys/user/max_user_namespaces && exec {sys.executable} -m blastwall run -- touch {MARKER}"
    r = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c", script],
                       cwd=workspace, env=bw_env(home), capture_output=True, text=True, timeout=60)
    if "max_user_namespaces" in r.stderr and "Permission denied" in r.stderr and "blastwall" not in r.stderr:
        pytest.skip(reason="this kernel does not let a user namespace lower its own namespace limit")
    assert r.returncode == 125, r.stderr
    assert "user namespace" in r.stderr and "fix:" in r.stderr
    assert_no_traceback(r)
    assert_did_not_run(workspace)


@needs_root
def test_a_placeholder_that_cannot_be_made_refuses_the_run_and_leaves_nothing(home, workspace):
    import shutil

    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(workspace)]).returncode != 0:
        pytest.skip(reason="this file system has no immutable attribute (chattr +i) to make mkdir fail")
    try:
        r = blastwall(["run", "--", "touch", MARKER], home=home, cwd=workspace)
    finally:
        subprocess.run(["chattr", "-i", str(workspace)], check=True)
    assert_no_traceback(r)
    assert r.returncode == 125, r.stderr
    assert "Can't create the placeholder" in r.stderr and "Operation not permitted" in r.stderr
    assert_did_not_run(workspace)
    assert sorted(p.name for p in workspace.iterdir()) == ["README.md"]
    journals = home / ".local" / "state" / "blastwall" / "placeholders"
    assert not journals.exists() or not list(journals.iterdir())
    ok = blastwall(["run", "--", "touch", "made"], home=home, cwd=workspace)  # The control.
    assert ok.returncode == 0 and (workspace / "made").exists(), ok.stderr
