"""Compiling policies into plans, against a fake filesystem."""

from __future__ import annotations

import os

import pytest

from blastwall.errors import EnforcementError, PolicyError
from blastwall.policy import plan as P
from blastwall.policy.model import merge, parse_layer
from blastwall.policy.reasons import Reason


class FakeFS(P.FileProbe):
    def __init__(self, dirs=(), files=(), links=None):
        self.dirs = {"/"} | set(dirs)
        for d in list(self.dirs):
            while d != "/":
                d = os.path.dirname(d)
                self.dirs.add(d)
        self.files = set(files)
        self.links = links or {}

    def realpath(self, path):
        for src, dst in self.links.items():
            if path == src or path.startswith(src + "/"):
                return dst + path[len(src):]
        return os.path.normpath(path)

    def islink(self, path):
        return path in self.links

    def lexists(self, path):
        return path in self.links or self.kind(path) != "missing"

    def kind(self, path):
        path = self.realpath(path)
        if path in self.dirs:
            return "dir"
        if path in self.files:
            return "file"
        return "missing"


HOME = "/home/u"
WS = "/home/u/proj"


def compile_(doc=None, fs=None, **host):
    fs = fs or FakeFS(dirs=[WS, f"{HOME}/.aws", "/tmp", "/var/tmp"], files=[f"{HOME}/.netrc"])
    policy = merge([parse_layer(doc or {}, "test")])
    args = dict(home=HOME, uid=1000, workspace=WS, environ={"PATH": "/bin", "GITHUB_TOKEN": "x", "HOME": HOME},
                protected=(), probe=fs)
    args.update(host)
    return P.compile_plan(policy, P.Host(**args))


def test_secrets_hidden_with_the_right_kind():
    plan = compile_()
    hides = {op.path: op.kind for op in plan.of(P.Hide)}
    assert hides[f"{HOME}/.aws"] == "dir"
    assert hides[f"{HOME}/.netrc"] == "file"
    assert f"{HOME}/.ssh" not in hides  # Missing: nothing to hide.


def test_workspace_writable_and_mandatory_placeholders():
    plan = compile_()
    assert [op.path for op in plan.of(P.Writable)] == [WS]
    placeholders = {op.path for op in plan.of(P.Placeholder)}
    assert f"{WS}/.git" in placeholders and f"{WS}/.bashrc" in placeholders
    # One placeholder for the git directory.
    assert sum(1 for p in placeholders if p == f"{WS}/.git" or p.startswith(f"{WS}/.git/")) == 1


def test_existing_mandatory_paths_become_read_only():
    fs = FakeFS(dirs=[WS, f"{WS}/.git/hooks", f"{WS}/.vscode"], files=[f"{WS}/.git/config"])
    plan = compile_(fs=fs)
    ro = {op.path for op in plan.of(P.ReadOnly)}
    assert {f"{WS}/.git", f"{WS}/.vscode"} <= ro
    assert not any(p.startswith(f"{WS}/.git/") for p in ro)  # The whole git directory: nothing inside to add.


def test_git_writes_protect_what_git_runs_and_obeys():
    fs = FakeFS(dirs=[WS, f"{WS}/.git/hooks"], files=[f"{WS}/.git/config"])
    plan = compile_({"filesystem": {"allow_git_writes": True}}, fs=fs)
    ro = {op.path for op in plan.of(P.ReadOnly)}
    assert {f"{WS}/.git/hooks", f"{WS}/.git/config"} <= ro and f"{WS}/.git" not in ro
    assert f"{WS}/.git/modules" in {op.path for op in plan.of(P.Placeholder)}
    assert f"{WS}/.git" in {op.path for op in plan.of(P.Pin)}  # Writable inside, but cannot be moved away.


def test_disposable_workspace_has_no_mandatory_denies_but_keeps_the_rest():
    """The service's workspaces die with their sandbox; the host never trusts their files."""
    fs = FakeFS(dirs=[WS, f"{WS}/.git/hooks", "/srv/other"], files=[f"{WS}/.git/config", f"{WS}/secret.txt"])
    plan = compile_({"filesystem": {"allow_write": [".", "/srv/other"], "deny_write": ["notes.txt"],
                                    "deny_read": ["secret.txt"]}}, fs=fs, disposable_workspace=True)
    guarded = {op.path for op in plan.of(P.ReadOnly)} | {op.path for op in plan.of(P.Placeholder)}
    assert not any(p.startswith(WS + "/.") for p in guarded)
    assert f"{WS}/notes.txt" in guarded  # The policy's own deny_write still holds,
    assert "/srv/other/.git" in guarded  # and other writable roots keep their mandatory denies.
    assert f"{WS}/secret.txt" in {op.path for op in plan.of(P.Hide)}  # and deny_read.


def test_deny_wins_over_allow_write():
    plan = compile_({"filesystem": {"allow_write": [".", "~/.aws"]}})
    assert f"{HOME}/.aws" not in {op.path for op in plan.of(P.Writable)}
    assert any("deny wins" in n for n in plan.notes)


def test_mount_order_puts_stricter_mounts_on_top():
    plan = compile_({"filesystem": {"deny_read": ["secrets"], "allow_git_writes": True}},
                    fs=FakeFS(dirs=[WS, f"{WS}/.git/hooks", f"{WS}/secrets", "/tmp"]))
    order = [op.path for op in plan.operations if hasattr(op, "path") and not isinstance(op, P.Chdir)]
    assert order.index(WS) < order.index(f"{WS}/.git") < order.index(f"{WS}/.git/hooks")
    assert order.index(WS) < order.index(f"{WS}/secrets")
    assert order.index("/tmp") < order.index(WS)


def test_symlinked_secret_is_hidden_at_its_target():
    fs = FakeFS(dirs=[WS, "/vault/aws"], links={f"{HOME}/.aws": "/vault/aws"})
    plan = compile_(fs=fs)
    assert "/vault/aws" in {op.path for op in plan.of(P.Hide)}


@pytest.mark.parametrize("ws", ["/", "/etc", "/usr"])
def test_forbidden_workspaces(ws):
    with pytest.raises(EnforcementError, match="Refusing"):
        compile_(workspace=ws, fs=FakeFS(dirs=[ws]))


def test_workspace_inside_a_secret_is_refused():
    fs = FakeFS(dirs=[f"{HOME}/.aws/proj"])
    with pytest.raises(PolicyError, match="contains the workspace"):
        compile_(workspace=f"{HOME}/.aws/proj", fs=fs)


def test_reveal_takes_exact_builtin_entries_only():
    plan = compile_({"filesystem": {"reveal": ["~/.netrc"]}})
    assert f"{HOME}/.netrc" not in {op.path for op in plan.of(P.Hide)}
    with pytest.raises(PolicyError, match="reveal"):
        compile_({"filesystem": {"reveal": ["~/.aws/credentials"]}})


def test_environment_drops_secrets_and_passes_named():
    env = compile_().of(P.Environment)[0]
    assert "GITHUB_TOKEN" in env.dropped and "PATH" in dict(env.variables)
    env = compile_({"environment": {"pass": ["GITHUB_TOKEN"]}}).of(P.Environment)[0]
    assert dict(env.variables)["GITHUB_TOKEN"] == "x"


def test_network_allow_compiles_to_egress_with_its_rules():
    plan = compile_({"network": {"allow": ["example.com"], "deny": ["bad.example.com"],
                                 "resolve": {"example.com": "192.0.2.1"}, "trusted_addresses": ["192.0.2.0/24"]}})
    (egress,) = plan.of(P.Egress)
    assert egress.rules() == {"allow": ["example.com"], "deny": ["bad.example.com"],
                              "resolve": {"example.com": "192.0.2.1"}, "trusted_addresses": ["192.0.2.0/24"],
                              "rules": [], "credentials": [], "upstream_ca": "", "unlisted": "deny",
                              "passthrough": []}
    assert not compile_().of(P.Egress)  # No allow list: no gateway, no route out at all.


def test_protected_paths_inside_writable_root():
    fs = FakeFS(dirs=[WS, f"{WS}/.venv"])
    plan = compile_(fs=fs, protected=(f"{WS}/.venv", f"{WS}/.config/blastwall"))
    assert f"{WS}/.venv" in {op.path for op in plan.of(P.ReadOnly)}
    assert any(op.reason is Reason.SELF_PROTECTION for op in plan.of(P.ReadOnly))


def test_operations_are_immutable_values():
    a, b = P.Writable("/x", Reason.WORKSPACE), P.Writable("/x", Reason.WORKSPACE)
    assert a == b and hash(a) == hash(b)
    with pytest.raises(AttributeError):
        a.path = "/"


def test_runtime_under_private_tmp_stays_visible_read_only():
    fs = FakeFS(dirs=[WS, "/tmp", "/var/tmp", "/tmp/venv", "/opt/python"])
    plan = compile_(fs=fs, runtime=("/tmp/venv", "/opt/python"))
    runtime = [op for op in plan.of(P.ReadOnly) if op.reason is Reason.RUNTIME]
    assert [op.path for op in runtime] == ["/tmp/venv"]  # /opt is visible anyway
    order = [op.path for op in plan.operations if isinstance(op, (P.PrivateTmp, P.ReadOnly))]
    assert order.index("/tmp") < order.index("/tmp/venv")


def test_rule_naming_an_undefined_credential_is_refused():
    with pytest.raises(PolicyError, match="not defined"):
        compile_({"network": {"rules": [{"host": "api.example.com", "credential": "NOPE"}]}})


def test_credential_variables_never_enter_the_sandbox():
    doc = {"network": {"rules": [{"host": "api.example.com", "credential": "API_TOKEN"}]},
           "credentials": {"API_TOKEN": {"from": "env:REAL_SOURCE", "hosts": ["api.example.com"]}},
           "environment": {"pass": ["API_TOKEN", "REAL_SOURCE"]}}
    plan = compile_(doc, environ={"API_TOKEN": "s3cret", "REAL_SOURCE": "s3cret", "PATH": "/bin"})
    env = dict(plan.of(P.Environment)[0].variables)
    assert "API_TOKEN" not in env and "REAL_SOURCE" not in env
    (egress,) = plan.of(P.Egress)  # Rules alone grant their host: an egress op exists.
    assert egress.rules()["credentials"][0]["name"] == "API_TOKEN"


def test_every_operation_type_is_handled_or_refused_by_the_container_tier():
    from blastwall.tiers import container

    for kind in P.OPERATION_TYPES:
        assert (kind in container.HANDLED) != (kind in container.REFUSED), kind.__name__


def test_home_only_write_denies_apply_where_the_root_is_home():
    plan = compile_()
    assert f"{WS}/.local" not in {op.path for op in plan.of(P.Placeholder)}
    assert f"{WS}/.bashrc" in {op.path for op in plan.of(P.Placeholder)}
    fs = FakeFS(dirs=[HOME])
    plan = compile_(workspace=HOME, fs=fs)
    assert f"{HOME}/.local" in {op.path for op in plan.of(P.Placeholder)}


def test_every_operation_type_is_handled_or_refused_by_the_vm_tier():
    from blastwall.tiers import vm

    for kind in P.OPERATION_TYPES:
        assert (kind in vm.HANDLED) != (kind in vm.REFUSED), kind.__name__


def test_passthrough_never_covers_a_ruled_or_credential_host():
    for pattern in ("api.example.com", "*.example.com"):
        with pytest.raises(PolicyError, match="can never be passed through"):
            compile_({"network": {"passthrough": [pattern], "rules": [{"host": "api.example.com"}]}})
    plan = compile_({"network": {"allow": ["pinned.example.org"], "passthrough": ["pinned.example.org"],
                                 "rules": [{"host": "api.example.com"}]}})
    assert plan.of(P.Egress)[0].rules()["passthrough"] == ["pinned.example.org"]


def test_read_barrier_keeps_what_appears_where_the_secrets_are_unreadable():
    fs = FakeFS(dirs=[WS, f"{HOME}/.aws", f"{HOME}/.config", "/vault/ssh", "/tmp", "/var/tmp", "/etc"],
                files=[f"{HOME}/.netrc"], links={f"{HOME}/.ssh": "/vault/ssh"})
    (reads,) = compile_(fs=fs, doc={"filesystem": {"deny_read": ["./.env"]}}).of(P.LandlockReads)
    # The secrets' directories (resolved) and all above them; never a writable root or a private tmpfs.
    assert {"/", "/home", HOME, f"{HOME}/.config", "/vault"} <= set(reads.parents)
    assert WS not in reads.parents and "/tmp" not in reads.parents
    assert {f"{HOME}/.aws", f"{HOME}/.netrc", f"{HOME}/.ssh", "/vault/ssh"} <= set(reads.excluded)
    assert f"{HOME}/.config/gh" in reads.excluded  # Missing now: its first missing component.
    assert f"{HOME}/.kube" in reads.excluded
    assert f"{HOME}/.docker" in reads.excluded  # ~/.docker/config.json: ~/.docker is missing.
    assert f"{WS}/.env" not in reads.excluded  # Inside the workspace: the mounts' business alone.
    assert not any(p.startswith(f"{HOME}/.aws/") for p in reads.parents)  # Nothing below an excluded entry.
    # A root caller's own secrets only for a root caller; the kernel keeps them from anyone else.
    assert "/etc/shadow" not in reads.excluded and "/etc" not in reads.parents
    (root,) = compile_(fs=fs, uid=0).of(P.LandlockReads)
    assert "/etc/shadow" in root.excluded and "/etc" in root.parents


def test_the_hypervisors_reads_open_its_own_directory_in_a_hidden_one():
    reads = P.LandlockReads(("/", "/home", HOME), (f"{HOME}/.local", f"{HOME}/.aws"))
    opened = P._reads_opened(reads, (f"{HOME}/.local/state/bw/vm/1",))
    assert f"{HOME}/.local" not in opened.excluded and f"{HOME}/.aws" in opened.excluded
    assert {f"{HOME}/.local", f"{HOME}/.local/state", f"{HOME}/.local/state/bw/vm"} <= set(opened.parents)
