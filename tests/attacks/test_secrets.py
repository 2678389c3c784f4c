"""Reading credentials: incident 1 of the brief (the agent read ~/.aws/credentials).

Every test first shows that an ordinary file beside the secret *is* readable,
so a failure to read the secret is the policy at work, not a broken sandbox.
"""

from __future__ import annotations

import pytest

import os
import subprocess
import sys
import time

from tests.attacks.tiers import tier_run, tiers_for
from tests.conftest import SECRET, assert_no_traceback, blastwall, bw_env, in_sandbox, needs_bwrap

pytestmark = needs_bwrap

READ = """
import sys
for path in sys.argv[1:]:
    try:
        data = open(path).read()
    except OSError as exc:
        print(f"{path}: refused errno={exc.errno}")
    else:
        print(f"{path}: read {len(data)} bytes: {data!r}")
"""


def read_in_sandbox(paths, *, home, workspace, args=()):
    r = blastwall(["run", *args, "--", "python3", "-c", READ, *map(str, paths)], home=home, cwd=workspace)
    assert_no_traceback(r)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("secret", [".aws/credentials", ".ssh/id_ed25519", ".netrc"])
def test_builtin_secret_is_unreadable(home, workspace, secret):
    out = read_in_sandbox([home / "notes.txt", home / secret], home=home, workspace=workspace)
    assert "an ordinary readable file" in out  # The control: home is readable.
    assert SECRET not in out
    assert f"{home / secret}: refused" in out or f"{home / secret}: read 0 bytes" in out


def test_secret_directory_listing_is_empty(home, workspace):
    r = blastwall(["run", "--", "python3", "-c", "import os,sys; print(sorted(os.listdir(sys.argv[1])))",
                   str(home / ".aws")], home=home, cwd=workspace)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_symlink_in_workspace_to_secret(home, workspace):
    (workspace / "innocent.txt").symlink_to(home / ".aws" / "credentials")
    out = read_in_sandbox([workspace / "innocent.txt"], home=home, workspace=workspace)
    assert SECRET not in out


def test_symlink_planted_inside_sandbox_to_secret(home, workspace):
    script = (f"import os; os.symlink({str(home / '.aws' / 'credentials')!r}, 'x');\n"
              "try:\n print(open('x').read())\nexcept OSError as e:\n print('refused', e.errno)")
    r = in_sandbox(script, home=home, cwd=workspace)
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout
    assert "refused" in r.stdout or r.stdout.strip() == ""


def test_user_deny_read_hides_a_workspace_file(home, workspace):
    (workspace / ".env").write_text(f"TOKEN={SECRET}\n")
    out = read_in_sandbox([workspace / "README.md", workspace / ".env"], home=home, workspace=workspace,
                          args=["--deny-read", ".env"])
    assert "project" in out
    assert SECRET not in out


def test_secret_environment_variables_are_dropped(home, workspace):
    env = {"AWS_SECRET_ACCESS_KEY": SECRET, "GITHUB_TOKEN": SECRET, "MY_API_KEY": SECRET,
           "DB_PASSWORD": SECRET, "HARMLESS_SETTING": "visible"}
    r = blastwall(["run", "--", "env"], home=home, cwd=workspace, env=env)
    assert r.returncode == 0, r.stderr
    assert "HARMLESS_SETTING=visible" in r.stdout
    assert SECRET not in r.stdout


def test_env_flag_passes_one_variable_deliberately(home, workspace):
    env = {"GITHUB_TOKEN": "deliberate", "AWS_SECRET_ACCESS_KEY": SECRET}
    r = blastwall(["run", "--env", "GITHUB_TOKEN", "--", "env"], home=home, cwd=workspace, env=env)
    assert r.returncode == 0, r.stderr
    assert "GITHUB_TOKEN=deliberate" in r.stdout
    assert SECRET not in r.stdout


def test_proc_of_host_processes_is_invisible(home, workspace):
    # A secret in the environment of a *host* process must not be reachable
    # through /proc: the sandbox has its own pid namespace.
    r = in_sandbox("import os; print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))",
                   home=home, cwd=workspace)
    assert r.returncode == 0, r.stderr
    pids = eval(r.stdout)  # noqa: S307 - our own output
    assert len(pids) <= 4, pids  # bwrap's pid 1, the launcher/python, nothing from the host


@pytest.mark.parametrize("tier", tiers_for("secrets-stay-out"))
def test_secrets_stay_out_in_every_tier(tier, home, workspace, tier_env):
    """A denied workspace file, a link to a host secret, the secret itself, secret variables: in every tier."""
    (workspace / ".env").write_text(f"TOKEN={SECRET}\n")
    (workspace / "innocent.txt").symlink_to(home / ".aws" / "credentials")
    script = (f"cat README.md; cat .env; cat innocent.txt; cat {home / '.aws' / 'credentials'}; "
              f"ls -a {home / '.aws'}; env; echo CONTROL")
    r = tier_run(tier, script, home=home, workspace=workspace, args=["--deny-read", ".env"],
                 env={**tier_env, "GITHUB_TOKEN": SECRET, "AWS_SECRET_ACCESS_KEY": SECRET, "MY_API_KEY": SECRET})
    assert_no_traceback(r)
    assert "project" in r.stdout and "CONTROL" in r.stdout, (r.stdout, r.stderr)  # The control: the workspace reads.
    assert SECRET not in r.stdout and SECRET not in r.stderr



@pytest.mark.parametrize("tier", tiers_for("secrets-the-host-changes-later"))
def test_a_secret_the_host_replaces_or_creates_while_the_sandbox_runs_stays_unreadable(
        tier, home, workspace, tier_env):
    """The hide was a mount on the file as it was: the host renaming a new one over it (``npm config
    set``, ``git credential-store``, ``passwd``) or creating a missing one (``aws configure`` while a
    session runs) must not show the new file inside."""
    (home / "projects").mkdir()
    later = "AKIA-WRITTEN-BY-THE-HOST-LATER"
    script = ("cat README.md; touch started; i=0; while [ ! -e go ] && [ $i -lt 4000 ]; do sleep 0.05; "
              "i=$((i+1)); done; "
              f"for f in {home}/.netrc {home}/.pypirc {home}/.config/gh/hosts.yml {home}/notes.txt "
              f"{home}/projects/new.txt; do echo \"== $f\"; cat \"$f\"; done; echo CONTROL")
    run = subprocess.Popen([sys.executable, "-m", "blastwall", "run", "--tier", tier, "--", "sh", "-c", script],
                           cwd=workspace, env=bw_env(home, tier_env), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 200
        while not (workspace / "started").exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (workspace / "started").exists(), run.communicate(timeout=10)
        # The host, meanwhile: a secret replaced by rename, two created, and two controls.
        (home / ".netrc.new").write_text(f"machine example.com password {later}\n")
        os.rename(home / ".netrc.new", home / ".netrc")
        (home / ".pypirc").write_text(f"[pypi]\npassword = {later}\n")
        (home / ".config" / "gh").mkdir(parents=True)
        (home / ".config" / "gh" / "hosts.yml").write_text(f"oauth_token: {later}\n")
        (home / "projects" / "new.txt").write_text("a file the host wrote meanwhile\n")
        (workspace / "go").touch()
        out, err = run.communicate(timeout=200)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert "project" in out and "CONTROL" in out, (out, err)  # The sandbox ran it all.
    if tier == "process":  # The other tiers show none of the host's home at all.
        assert "an ordinary readable file" in out, out  # The control: what was there is readable,
        assert "a file the host wrote meanwhile" in out, out  # and so is what appears beside no secret.
    assert later not in out and later not in err, out
    assert later in (home / ".netrc").read_text()  # The host's files are as the host wrote them.
