"""The service's store: keys hashed at rest, shown once, revoked and expired for good; the tenant CLI."""

from __future__ import annotations

import hashlib
import os
import stat
import time

import pytest

from blastwall.service.ceiling import Ceiling
from blastwall.service.store import AuthFailure, Store
from tests.conftest import blastwall


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, scratch):
    """The same tests on either database the service can keep its state in."""
    if request.param == "sqlite":
        s = Store(str(scratch / "db" / "service.sqlite"))
    else:
        s = Store(request.getfixturevalue("postgres").new_database(), upgrade=True)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(scratch):
    s = Store(str(scratch / "db" / "service.sqlite"))
    yield s
    s.close()


def test_key_is_stored_only_as_a_digest(sqlite_store, scratch):
    store = sqlite_store
    key_id, key = store.add_tenant("acme", Ceiling.from_dict({}))
    assert key.startswith(f"bwk_{key_id}_") and len(key) > 50
    raw = (scratch / "db" / "service.sqlite").read_bytes() + b"".join(
        p.read_bytes() for p in (scratch / "db").iterdir() if p.name.endswith("-wal"))
    secret = key.split("_", 2)[2]
    assert secret.encode() not in raw and key.encode() not in raw
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in raw
    mode = stat.S_IMODE(os.stat(scratch / "db" / "service.sqlite").st_mode)
    assert mode == 0o600 and stat.S_IMODE(os.stat(scratch / "db").st_mode) == 0o700
    assert store.authenticate(key).name == "acme"


@pytest.mark.parametrize("mangle", [
    lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),     # wrong secret, right id
    lambda k: k.replace("bwk_", "bwk_0"),                   # malformed id
    lambda k: "bwk_" + "0" * 12 + "_" + k.split("_", 2)[2],  # unknown id, right secret
    lambda k: k.split("_", 2)[0] + "_" + k.split("_", 2)[1],  # no secret
    lambda k: "",
    lambda k: "Bearer " + k,
    lambda k: k + "\x00",
    lambda k: k * 10,
])
def test_wrong_keys_fail(store, mangle):
    _, key = store.add_tenant("acme", Ceiling.from_dict({}))
    with pytest.raises(AuthFailure):
        store.authenticate(mangle(key))


def test_revoked_key_stays_revoked_and_other_keys_live(store):
    first_id, first = store.add_tenant("acme", Ceiling.from_dict({}))
    _, second = store.add_key("acme")
    store.revoke(f"bwk_{first_id}")
    with pytest.raises(AuthFailure) as info:
        store.authenticate(first)
    assert info.value.reason == "revoked key"
    assert store.authenticate(second).name == "acme"
    store.revoke("acme")  # The tenant: all its keys.
    with pytest.raises(AuthFailure):
        store.authenticate(second)
    with pytest.raises(ValueError):
        store.add_key("acme")
    assert store.revoked_tenants() == {"acme"}


def test_expired_key(store):
    _, key = store.add_tenant("acme", Ceiling.from_dict({}), expires=time.time() + 60)
    assert store.authenticate(key).name == "acme"
    with pytest.raises(AuthFailure) as info:
        store.authenticate(key, now=time.time() + 61)
    assert info.value.reason == "expired key"


def test_names(store):
    for bad in ("", "a b", "../x", "bwk_abc", "x" * 65, "é", "-x"):
        with pytest.raises(ValueError):
            store.add_tenant(bad, Ceiling.from_dict({}))
    store.add_tenant("acme", Ceiling.from_dict({}))
    with pytest.raises(ValueError):
        store.add_tenant("acme", Ceiling.from_dict({}))


def test_tenant_named_like_a_key_id_is_revoked_as_a_tenant(store):
    store.add_tenant("abcdef012345", Ceiling.from_dict({}))
    other_id, other = store.add_tenant("other", Ceiling.from_dict({}))
    assert store.revoke("abcdef012345") == "tenant abcdef012345 and all its keys"
    assert store.authenticate(other).name == "other"


def test_tenant_cli(home, workspace, scratch):
    db = str(scratch / "svc" / "service.sqlite")
    r = blastwall(["tenant", "add", "acme", "--db", db, "--max-sessions", "3", "--max-memory", "2G",
                   "--allow-domain", "*.example.com", "--expires", "30d"], home=home, cwd=workspace)
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("bwk_") and "\n" not in key  # Only the key on stdout: KEY=$(blastwall tenant add ...)
    assert "printed once" in r.stderr
    listed = blastwall(["tenant", "list", "--db", db], home=home, cwd=workspace)
    assert "acme  active  sessions<=3 memory<=2G" in listed.stdout and "*.example.com" in listed.stdout
    assert key not in listed.stdout and key.split("_", 2)[2] not in listed.stdout
    bad = blastwall(["tenant", "add", "x", "--db", db, "--max-memory", "lots"], home=home, cwd=workspace)
    assert bad.returncode == 2 and "--max-memory" in bad.stderr and "Traceback" not in bad.stderr
    bad = blastwall(["tenant", "add", "y", "--db", db, "--allow-domain", "http://evil"], home=home, cwd=workspace)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "tiers=container " in listed.stdout  # VMs are opt-in ...
    r = blastwall(["tenant", "add", "vms", "--db", db, "--tier", "container", "--tier", "vm"], home=home, cwd=workspace)
    assert r.returncode == 0, r.stderr
    assert "vms  active" in blastwall(["tenant", "list", "--db", db], home=home, cwd=workspace).stdout \
        and "tiers=container,vm " in blastwall(["tenant", "list", "--db", db], home=home, cwd=workspace).stdout
    bad = blastwall(["tenant", "add", "z", "--db", db, "--tier", "process"], home=home, cwd=workspace)
    assert bad.returncode == 2 and "tiers" in bad.stderr and "Traceback" not in bad.stderr  # ... and never the process tier.
    revoked = blastwall(["tenant", "revoke", "--db", db, key.rsplit("_", 1)[0]], home=home, cwd=workspace)
    assert revoked.returncode == 0 and "revoked key" in revoked.stdout
    store = Store(db)
    try:
        with pytest.raises(AuthFailure):
            store.authenticate(key)
    finally:
        store.close()
    missing = blastwall(["tenant", "revoke", "--db", db, "nobody"], home=home, cwd=workspace)
    assert missing.returncode == 1 and "no tenant or key" in missing.stderr
