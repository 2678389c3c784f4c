"""Workspace trust (incident 3): a repository's policy file is not even opened before trust.

"Not opened" is checked with Python's audit hooks in the blastwall process
itself: every open() of the project file would be recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import blastwall, bw_env, needs_bwrap

HOOKED = r"""
import json, sys
opened = []
target = sys.argv[1]
def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes)) and str(args[0]).endswith(target):
        opened.append(str(args[0]))
sys.addaudithook(hook)
from blastwall.cli.main import main
try:
    status = main(sys.argv[2:])
finally:
    with open(sys.argv[1] + ".opened.json", "w") as f:
        json.dump(opened, f)
sys.exit(status)
"""

MALICIOUS = {
    "network": '[network]\nallow = ["evil.example.com"]\n',
    "writable": '[filesystem]\nallow_write = ["{outside}"]\n',
    "credential": ('[credentials.STOLEN]\nfrom = "env:HOME"\nhosts = ["evil.example.com"]\n'
                   '[[network.rules]]\nhost = "evil.example.com"\ncredential = "STOLEN"\n'),
    "not-toml": "[[[ this is not toml\n",
}


def plant(workspace, scratch, kind):
    (workspace / ".blastwall").mkdir()
    outside = scratch / "outside"
    outside.mkdir(exist_ok=True)
    path = workspace / ".blastwall" / "policy.toml"
    path.write_text(MALICIOUS[kind].format(outside=outside))
    return path, outside


def hooked(args, *, home, workspace, marker_dir):
    target = str(workspace / ".blastwall" / "policy.toml")
    r = subprocess.run([sys.executable, "-c", HOOKED, target, *args], cwd=workspace, env=bw_env(home),
                       capture_output=True, text=True, timeout=60)
    with open(target + ".opened.json") as f:
        opened = json.load(f)
    os.unlink(target + ".opened.json")
    return r, opened


@needs_bwrap
@pytest.mark.parametrize("kind", sorted(MALICIOUS))
def test_untrusted_project_policy_is_never_opened(home, workspace, scratch, kind):
    plant(workspace, scratch, kind)
    for args in (["run", "--", "true"], ["policy", "show"], ["doctor", "--json"]):
        r, opened = hooked(args, home=home, workspace=workspace, marker_dir=scratch)
        assert opened == [], (args, opened)
        assert "Traceback" not in r.stderr
    r = blastwall(["run", "--", "sh", "-c", "echo ${HTTP_PROXY:-no-proxy}; touch ../outside/pwned"],
                  home=home, cwd=workspace)
    assert "no-proxy" in r.stdout and "not trusted" in r.stderr
    assert not (scratch / "outside" / "pwned").exists()


@needs_bwrap
@pytest.mark.parametrize("kind", ["network", "writable", "credential"])
def test_trusted_widening_still_needs_an_explicit_yes(home, workspace, scratch, kind):
    plant(workspace, scratch, kind)
    r = blastwall(["trust", "--yes"], home=home, cwd=workspace)
    assert r.returncode == 0 and "MORE than your own policy" in r.stdout, r.stdout + r.stderr
    r = blastwall(["run", "--", "sh", "-c", "echo ${HTTP_PROXY:-no-proxy} ${STOLEN:-no-credential}; "
                   "touch ../outside/pwned"], home=home, cwd=workspace)
    assert "no-proxy no-credential" in r.stdout, r.stdout + r.stderr
    assert not (scratch / "outside" / "pwned").exists()
    assert "widening part(s) were not accepted" in r.stderr


def test_invalid_project_policy_cannot_be_trusted(home, workspace, scratch):
    plant(workspace, scratch, "not-toml")
    r = blastwall(["trust", "--yes"], home=home, cwd=workspace)
    assert r.returncode == 2 and "not valid TOML" in r.stderr
    assert blastwall(["trust", "--list"], home=home, cwd=workspace).stdout == ""


@needs_bwrap
def test_narrowing_applies_after_trust_and_a_change_needs_trust_again(home, workspace, scratch):
    (workspace / ".blastwall").mkdir()
    policy = workspace / ".blastwall" / "policy.toml"
    policy.write_text('[filesystem]\ndeny_write = ["locked"]\n')
    (workspace / "locked").mkdir()
    assert blastwall(["trust", "--yes"], home=home, cwd=workspace).returncode == 0
    r = blastwall(["run", "--", "sh", "-c", "touch locked/x; echo done"], home=home, cwd=workspace)
    assert "done" in r.stdout and not (workspace / "locked" / "x").exists()
    policy.write_text('[filesystem]\ndeny_write = []\n')  # Someone edits the trusted file.
    r = blastwall(["run", "--", "true"], home=home, cwd=workspace)
    assert "changed since you trusted it" in r.stderr
    r = blastwall(["trust", "--yes"], home=home, cwd=workspace)
    assert "changed since you trusted it" in r.stdout and "-deny_write" in r.stdout  # The user sees the diff.


@needs_bwrap
def test_explicit_yes_to_widening_applies_it(home, workspace, scratch):
    plant(workspace, scratch, "writable")
    assert blastwall(["trust", "--yes", "--allow-widening"], home=home, cwd=workspace).returncode == 0
    r = blastwall(["run", "--", "sh", "-c", "touch ../outside/allowed && echo ok"], home=home, cwd=workspace)
    assert "ok" in r.stdout and (scratch / "outside" / "allowed").exists()


def test_trust_is_bound_to_the_real_path(home, workspace, scratch):
    (workspace / ".blastwall").mkdir()
    (workspace / ".blastwall" / "policy.toml").write_text('[network]\ndeny = ["x.example.com"]\n')
    link = scratch / "link"
    link.symlink_to(workspace)
    assert blastwall(["trust", "--yes"], home=home, cwd=link).returncode == 0
    listing = blastwall(["trust", "--list"], home=home, cwd=workspace).stdout
    assert listing.startswith(str(workspace) + " ")
    twin = scratch / "twin"
    (twin / ".blastwall").mkdir(parents=True)
    (twin / ".blastwall" / "policy.toml").write_text('[network]\ndeny = ["x.example.com"]\n')
    r = blastwall(["policy", "show"], home=home, cwd=twin)
    assert "not trusted" in r.stderr  # Same content, other workspace: not trusted.


@needs_bwrap
def test_trust_store_is_out_of_reach_of_sandboxes(home, workspace, scratch):
    (workspace / ".blastwall").mkdir()
    (workspace / ".blastwall" / "policy.toml").write_text('[network]\ndeny = ["x.example.com"]\n')
    assert blastwall(["trust", "--yes"], home=home, cwd=workspace).returncode == 0
    store = home / ".local" / "state" / "blastwall" / "trust.json"
    before = store.read_text()
    r = blastwall(["run", "--", "sh", "-c", f"ls -A {store.parent}; echo '{{}}' > {store}; echo rc=$?"],
                  home=home, cwd=workspace)
    assert "trust.json" not in r.stdout.split("rc=")[0]  # Hidden inside.
    assert "rc=0" not in r.stdout
    assert store.read_text() == before


@needs_bwrap
def test_interactive_no_means_not_trusted(home, workspace, scratch):
    from tests.cli.test_terminal import Terminal

    plant(workspace, scratch, "network")
    term = Terminal(["trust"], home=home, cwd=workspace)
    term.expect("Trust this project policy? [y/N]")
    term.send("n\n")
    assert term.wait() == 1
    assert blastwall(["trust", "--list"], home=home, cwd=workspace).stdout == ""
    term = Terminal(["trust"], home=home, cwd=workspace)
    term.expect("Trust this project policy? [y/N]")
    term.send("y\n")
    term.expect("Also apply the parts that widen your policy? [y/N]")
    term.send("\n")
    assert term.wait() == 0
    assert "narrowing only" in blastwall(["trust", "--list"], home=home, cwd=workspace).stdout


@needs_bwrap
def test_a_project_cannot_open_its_own_git_directory_without_a_yes(home, workspace, scratch):
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    (workspace / ".blastwall").mkdir()
    (workspace / ".blastwall" / "policy.toml").write_text("[filesystem]\nallow_git_writes = true\n")
    description = workspace / ".git" / "description"
    before = description.read_bytes()
    r = blastwall(["trust", "--yes"], home=home, cwd=workspace)
    assert "allow_git_writes" in r.stdout, r.stdout + r.stderr  # Listed as a widening, not applied.
    r = blastwall(["run", "--", "sh", "-c", "echo changed > .git/description; echo ok > control"], home=home,
                  cwd=workspace)
    assert (workspace / "control").read_text() == "ok\n" and description.read_bytes() == before
    assert blastwall(["trust", "--yes", "--allow-widening"], home=home, cwd=workspace).returncode == 0
    r = blastwall(["run", "--", "sh", "-c", "echo changed > .git/description"], home=home, cwd=workspace)
    assert r.returncode == 0 and description.read_text() == "changed\n", r.stderr
