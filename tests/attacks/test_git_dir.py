"""The git directory is the host's: nothing a sandbox writes there is obeyed or written through by git outside.

Protecting ``.git/config`` and ``.git/hooks`` file by file was not enough.
A sandbox wrote ``.git/commondir`` naming a directory of its own with a
config (``core.fsmonitor``) and hooks: the host's next ``git status`` ran the
fsmonitor command and ``git commit`` the hook, as root.  And git on the host
writes some of its files by following symbolic links: a ``COMMIT_EDITMSG`` or
``logs/HEAD`` planted as a link lets the next host commit write, into any
file the caller can write, a message the sandbox prepared in ``SQUASH_MSG``.
So all of ``.git`` is read-only inside, in every tier; each attack is judged
by running git on the host afterwards.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.attacks.host import snapshot
from tests.attacks.tiers import tier_run, tiers_for
from tests.conftest import needs_bwrap

pytestmark = needs_bwrap

PLANT = r"""
mkdir -p evil/hooks && cp -r .git/objects .git/refs .git/HEAD evil/
printf '[core]\n\tfsmonitor = "echo FSMONITOR > MARKS/fsmonitor; false"\n' > evil/config
printf '#!/bin/sh\necho HOOK > MARKS/hook\n' > evil/hooks/pre-commit && chmod +x evil/hooks/pre-commit
echo ../evil > .git/commondir && echo PLANTED-commondir
ln -sf VICTIM .git/COMMIT_EDITMSG && echo PLANTED-editmsg
ln -sf VICTIM .git/logs/HEAD && echo PLANTED-logs
printf '$(touch MARKS/squash)\n' > .git/SQUASH_MSG && echo PLANTED-squash
mkdir .git/rebase-merge && printf 'exec touch MARKS/rebase\n' > .git/rebase-merge/git-rebase-todo && echo PLANTED-rebase
printf 'pwn\n' > .git/info/exclude && echo PLANTED-info
mv .git .git.moved && echo PLANTED-moved
rm -rf .git/hooks .git/config 2>/dev/null; [ -e .git/config ] || echo PLANTED-removed
echo 'from inside' > work.txt
"""


def _git(workspace, *args, env=None):
    return subprocess.run(["git", "-C", str(workspace), "-c", "user.name=h", "-c", "user.email=h@h", *args],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("tier", tiers_for("plant-git-control-files"))
def test_planted_git_control_files_are_not_obeyed_on_the_host(tier, home, workspace, scratch, tier_env):
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    assert _git(workspace, "add", "README.md").returncode == 0
    assert _git(workspace, "commit", "-qm", "first").returncode == 0
    marks = scratch / "marks"
    marks.mkdir()
    victim = scratch / "victim"
    victim.write_text("the host's own file\n")
    before = snapshot(workspace / ".git")
    script = PLANT.replace("MARKS", str(marks)).replace("VICTIM", str(victim))
    r = tier_run(tier, script, home=home, workspace=workspace, env=tier_env)
    assert (workspace / "work.txt").read_text() == "from inside\n", r.stderr  # The control: the tree is writable.
    assert "PLANTED" not in r.stdout, r.stdout
    assert snapshot(workspace / ".git") == before
    # The host's git, as root, afterwards: a status, a commit with an editor, a rebase in progress or not.
    env = {**os.environ, "GIT_EDITOR": "echo host-commit >>"}
    assert _git(workspace, "status", "--short", env=env).returncode == 0
    assert _git(workspace, "add", "work.txt", env=env).returncode == 0
    assert _git(workspace, "commit", "-q", env=env).returncode == 0
    _git(workspace, "rebase", "--continue", env=env)
    assert sorted(os.listdir(marks)) == []
    assert victim.read_text() == "the host's own file\n"
    assert _git(workspace, "config", "--show-origin", "core.fsmonitor").stdout == ""


# What git obeys beyond `.git`: the git directory a `.git` file names, a submodule's `.git` file,
# a config the repository includes, the hooksPath directory.  Each plant works on an unprotected
# copy (git runs the fsmonitor or the hook it names).
BEYOND = r"""
mkdir -p evil && cp -r .repo/modules/lib/sub/HEAD .repo/modules/lib/sub/objects .repo/modules/lib/sub/refs evil/
printf '[core]\n\tfsmonitor = "echo X > MARKS/submodule; false"\n\tworktree = ../lib/sub\n' > evil/config
echo 'gitdir: ../../evil' > lib/sub/.git && echo PLANTED-submodule
printf '[core]\n\tfsmonitor = "echo X > MARKS/include; false"\n' > shared.gitconfig && echo PLANTED-include
printf '#!/bin/sh\necho X > MARKS/hookspath\n' > .githooks/pre-commit && chmod +x .githooks/pre-commit \
    && echo PLANTED-hookspath
printf '[core]\n\tfsmonitor = "echo X > MARKS/gitdir; false"\n' >> .repo/config && echo PLANTED-gitdir
mv .githooks .githooks.old && echo PLANTED-moved
echo 'from inside' > work.txt
"""


def _beyond_layout(workspace, scratch):
    upstream = scratch / "upstream"
    subprocess.run(["git", "init", "-q", str(upstream)], check=True)
    (upstream / "f").write_text("u\n")
    assert _git(upstream, "add", "f").returncode == 0
    assert _git(upstream, "commit", "-qm", "u").returncode == 0
    subprocess.run(["git", "init", "-q", f"--separate-git-dir={workspace / '.repo'}", str(workspace)], check=True)
    (workspace / ".githooks").mkdir()
    (workspace / "shared.gitconfig").write_text("[user]\n")
    (workspace / ".gitignore").write_text(".repo\n")
    for args in (("config", "core.hooksPath", ".githooks"), ("config", "include.path", "../shared.gitconfig"),
                 ("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(upstream), "lib/sub"),
                 ("add", "-A"), ("commit", "-qm", "first")):
        r = _git(workspace, *args)
        assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("tier", tiers_for("git-control-beyond-dot-git"))
def test_what_git_obeys_beyond_dot_git_is_read_only(tier, home, workspace, scratch, tier_env):
    _beyond_layout(workspace, scratch)
    marks = scratch / "marks"
    marks.mkdir()
    protected = [workspace / p for p in (".repo", ".githooks", "shared.gitconfig", "lib/sub/.git")]
    before = [snapshot(p) for p in protected]
    r = tier_run(tier, BEYOND.replace("MARKS", str(marks)), home=home, workspace=workspace, env=tier_env)
    assert (workspace / "work.txt").read_text() == "from inside\n", r.stderr  # The control: the tree is writable.
    assert "PLANTED" not in r.stdout, r.stdout
    assert [snapshot(p) for p in protected] == before
    assert _git(workspace, "status", "--short").returncode == 0  # Recurses into the submodule.
    assert _git(workspace, "add", "work.txt").returncode == 0
    assert _git(workspace, "commit", "-qm", "after").returncode == 0
    assert sorted(os.listdir(marks)) == []


def test_the_beyond_plants_work_without_the_sandbox(workspace, scratch):
    """The positive control for the test above: unprotected, every plant is obeyed by the host's git."""
    _beyond_layout(workspace, scratch)
    marks = scratch / "marks"
    marks.mkdir()
    script = BEYOND.replace("MARKS", str(marks)).replace("mv .githooks .githooks.old && echo PLANTED-moved\n", "")
    r = subprocess.run(["sh", "-c", script], cwd=workspace, capture_output=True, text=True, timeout=60)
    assert r.stdout.count("PLANTED") == 4, r.stderr
    _git(workspace, "status", "--short")
    _git(workspace, "add", "work.txt")
    _git(workspace, "commit", "-qm", "after")
    # The include and the hooksPath config both run their fsmonitor; either shows the config was obeyed.
    assert {"submodule", "hookspath"} <= set(os.listdir(marks)) and {"include", "gitdir"} & set(os.listdir(marks))


NOT_A_REPO = r"""
mkdir -p objects refs/heads && echo PLANTED-dirs
echo 'ref: refs/heads/main' > HEAD && echo PLANTED-HEAD
echo 'from inside' > work.txt
"""


@pytest.mark.parametrize("tier", tiers_for("git-control-beyond-dot-git"))
def test_a_workspace_that_is_not_a_repository_cannot_become_a_bare_one(tier, home, workspace, scratch, tier_env):
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(workspace.parent)}
    assert _git(workspace, "rev-parse", "--absolute-git-dir", env=env).returncode != 0
    r = tier_run(tier, NOT_A_REPO, home=home, workspace=workspace, env=tier_env)
    assert (workspace / "work.txt").read_text() == "from inside\n", r.stderr
    assert "PLANTED-dirs" in r.stdout and "PLANTED-HEAD" not in r.stdout, r.stdout
    # Unprotected, the same three writes make git take the workspace for a repository.
    probe = _git(workspace, "rev-parse", "--absolute-git-dir", env=env)
    assert probe.returncode != 0, probe.stdout
    control = scratch / "control"
    control.mkdir()
    subprocess.run(["sh", "-c", NOT_A_REPO], cwd=control, check=True, capture_output=True)
    assert _git(control, "rev-parse", "--absolute-git-dir", env=env).stdout.strip() == str(control)
