"""What git on the host obeys inside a writable root, found by reading the host's git files.

The parser is judged against git itself (``git config --file F --list``);
the layouts are made by real git, so what is protected is what git would
follow.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from blastwall.errors import EnforcementError
from blastwall.policy import gitdirs
from blastwall.policy import plan as P

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "h", "GIT_AUTHOR_EMAIL": "h@h", "GIT_COMMITTER_NAME": "h",
           "GIT_COMMITTER_EMAIL": "h@h", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}

CONFIGS = [
    "[core]\n\thooksPath = .githooks\n",
    "[Core]\nHooksPath=hooks # comment\n",
    '[core]\n\thookspath = "a dir ; with" ; trailing\n',
    '[core] hooksPath = x\n[remote "origin"]\n\turl = "a\\"b"\n\tfetch = +refs/*:refs/*\n',
    "[core]\n\tbare\n\tfilemode = true\n",
    '[includeIf "gitdir:~/work/"]\n\tpath = ~/work/.gitconfig\n[include]\n\tpath = ../shared\n',
    "[core.sub]\n\tx = 1\n",
    '[section "Sub \\"q\\""]\n\tk = v\n',
    "# a comment\n; another\n\n[user]\n\tname = A   B  \n",
    "[core]\n\tpath = \"tab\\there\"\n",
]


def _git_list(text: str, tmp_path) -> list[str]:
    path = tmp_path / "config"
    path.write_text(text)
    out = subprocess.run(["git", "config", "--file", str(path), "--list"], capture_output=True, text=True,
                         check=True, env=GIT_ENV).stdout
    return out.splitlines()


@pytest.mark.parametrize("text", CONFIGS)
def test_config_entries_read_as_git_reads_them(text, tmp_path):
    ours = [f"{section}.{sub + '.' if sub is not None else ''}{key}" + (f"={value}" if value is not None else "")
            for section, sub, key, value in gitdirs.config_entries(text, source="t")]
    assert ours == _git_list(text, tmp_path)


@pytest.mark.parametrize("text", [
    "[core]\n\thooksPath = a\\\n b\n",  # A continued value.
    '[core]\n\thooksPath = "open\n',  # An unterminated quote.
    "[core\n\thooksPath = a\n",  # An unterminated header.
    "hooksPath = a\n",  # A variable before any section.
    "[core]\n\t!x = 1\n",
    "[core]\n\tx = a\\qb\n",  # An escape git does not know.
    '[core "unterminated]\n',
])
def test_config_entries_refuse_what_they_cannot_read(text):
    with pytest.raises(EnforcementError, match="can't read line"):
        gitdirs.config_entries(text, source="t")


def _git(*args, cwd=None):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=GIT_ENV, timeout=60)


@pytest.fixture
def layout(tmp_path):
    """A repository whose git directory is inside its tree, with hooksPath, an include and a submodule."""
    upstream, ws = tmp_path / "upstream", tmp_path / "ws"
    _git("init", "-q", str(upstream))
    (upstream / "f").write_text("u\n")
    _git("-C", str(upstream), "add", "f")
    _git("-C", str(upstream), "commit", "-qm", "u")
    ws.mkdir()
    _git("init", "-q", f"--separate-git-dir={ws / '.repo'}", str(ws))
    _git("-C", str(ws), "config", "core.hooksPath", ".githooks")
    _git("-C", str(ws), "config", "include.path", "../shared.gitconfig")
    _git("-C", str(ws), "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(upstream), "lib/sub")
    return ws


def test_control_paths_of_a_repository_with_everything(layout):
    paths = gitdirs.control_paths(str(layout), P.FileProbe(), home="/nonexistent")
    assert sorted(paths) == sorted(str(layout / p) for p in (".repo", "shared.gitconfig", ".githooks", "lib/sub/.git"))
    # With git writes allowed, the git directory's data is writable but not what git runs or obeys.
    paths = gitdirs.control_paths(str(layout), P.FileProbe(), home="/nonexistent", git_writes=True)
    assert sorted(paths) == sorted(str(layout / p) for p in (".repo/hooks", ".repo/config", ".repo/modules",
                                                             "shared.gitconfig", ".githooks", "lib/sub/.git"))


def test_user_config_hookspath_is_relative_to_each_worktree(tmp_path):
    ws = tmp_path / "ws"
    _git("init", "-q", str(ws))
    user = tmp_path / "gitconfig"
    user.write_text("[core]\n\thooksPath = .hooks\n[include]\n\tpath = ~/more\n")
    (tmp_path / "more").write_text("[core]\n\thooksPath = ~/global-hooks\n")
    paths = gitdirs.control_paths(str(ws), P.FileProbe(), home=str(tmp_path), user_configs=(str(user),))
    assert paths == [str(tmp_path / "more"), str(ws / ".hooks"), str(tmp_path / "global-hooks")]


def test_no_repository_protects_the_bare_repository_marker(tmp_path):
    assert gitdirs.control_paths(str(tmp_path), P.FileProbe(), home="/nonexistent") == [str(tmp_path / "HEAD")]


def test_a_dot_git_file_that_is_not_a_link_is_refused(tmp_path):
    (tmp_path / ".git").write_text("not a gitdir line\n")
    with pytest.raises(EnforcementError, match="not a git directory link"):
        gitdirs.control_paths(str(tmp_path), P.FileProbe(), home="/nonexistent")


def test_includes_deeper_than_git_follows_are_refused(tmp_path):
    _git("init", "-q", str(tmp_path))
    for n in range(12):
        (tmp_path / f"c{n}").write_text(f"[include]\n\tpath = c{n + 1}\n")
    with open(tmp_path / ".git/config", "a") as config:
        config.write("[include]\n\tpath = ../c0\n")
    with pytest.raises(EnforcementError, match="deeper than git"):
        gitdirs.control_paths(str(tmp_path), P.FileProbe(), home="/nonexistent")


def test_compiled_plan_makes_them_read_only(layout, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    from blastwall.policy.model import merge, parse_layer
    plan = P.compile_plan(merge([parse_layer({}, "test")]),
                          P.Host(home=str(home), uid=1000, workspace=str(layout), environ={"PATH": "/bin"},
                                 protected=(), probe=P.FileProbe()))
    shielded = {op.path: op.reason for op in plan.of(P.ReadOnly)} | {op.target: op.reason for op in plan.of(P.Placeholder)}
    for name in (".repo", "shared.gitconfig", ".githooks", "lib/sub/.git"):
        assert shielded[str(layout / name)] == "git-metadata", name
