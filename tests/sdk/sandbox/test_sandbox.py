"""The sandbox's life: create with metadata and timeout, get_info, list, connect, is_running, kill by id,
set_timeout (E2B's sandbox tests; both backends)."""

from __future__ import annotations

import datetime
import time

import pytest

from blastwall.client import InvalidArgumentException, Sandbox, SandboxInfo


def test_metadata_and_info(create):
    sandbox = create(metadata={"user": "alice", "run": "42"}, timeout=120)
    info = sandbox.get_info()
    assert isinstance(info, SandboxInfo) and info.sandbox_id == sandbox.sandbox_id
    assert info.metadata == {"user": "alice", "run": "42"}
    now = datetime.datetime.now(datetime.timezone.utc)
    assert info.started_at <= now < info.end_at <= now + datetime.timedelta(seconds=121)


def test_list_and_connect(create, connect_args):
    sandbox = create(metadata={"tag": "listed"}, timeout=120)
    listed = {i.sandbox_id: i for i in Sandbox.list(**connect_args)}
    assert listed[sandbox.sandbox_id].metadata == {"tag": "listed"}
    again = Sandbox.connect(sandbox.sandbox_id, **connect_args)
    sandbox.files.write("shared.txt", "seen by both")
    assert again.commands.run("cat shared.txt").stdout == "seen by both"


def test_kill_by_id_and_is_running(create, connect_args):
    sandbox = create(timeout=120)
    assert sandbox.is_running() is True
    assert Sandbox.kill(sandbox.sandbox_id, **connect_args) is True
    assert sandbox.is_running() is False
    assert Sandbox.kill(sandbox.sandbox_id, **connect_args) is False
    assert sandbox.sandbox_id not in {i.sandbox_id for i in Sandbox.list(**connect_args)}


def test_timeout_ends_the_sandbox_and_set_timeout_extends_it(create):
    short = create(timeout=3)
    kept = create(timeout=3)
    kept.set_timeout(120)
    deadline = time.monotonic() + 30
    while short.is_running() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert short.is_running() is False
    assert kept.is_running() is True and kept.commands.run("echo alive").stdout == "alive\n"


@pytest.mark.parametrize("kwargs", [{"timeout": 0}, {"timeout": True}, {"timeout": "5"},
                                    {"metadata": {"k": 1}}, {"metadata": ["k"]}])
def test_bad_create_arguments_are_refused(create, connect_args, kwargs):
    before = {i.sandbox_id for i in Sandbox.list(**connect_args)}
    with pytest.raises(InvalidArgumentException):
        create(**kwargs)
    assert {i.sandbox_id for i in Sandbox.list(**connect_args)} == before


def test_update_network_on_a_sandbox_without_network_is_refused_clearly(sandbox):
    with pytest.raises(InvalidArgumentException) as info:
        sandbox.update_network(allow=["pypi.org"])
    assert "without network" in str(info.value)
    with pytest.raises(InvalidArgumentException):
        sandbox.update_network(allow="pypi.org")  # a string is not a list of hosts
    assert sandbox.commands.run("echo still").stdout == "still\n"
