"""The trust store: which workspace's project policy the user has reviewed, by content hash.

It lives in the state directory, outside every workspace and hidden from every
sandbox.  A record binds a workspace's real path to the SHA-256 of the project
policy file's exact bytes; any change to the file needs trust again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from blastwall.policy.load import state_dir

__all__ = ["PROJECT_POLICY", "TrustStore", "project_policy_path"]

PROJECT_POLICY = os.path.join(".blastwall", "policy.toml")
MAX_BYTES = 1 << 20


def project_policy_path(workspace: str) -> str:
    # blastwall.api computes the same path without importing this module (start-up cost).
    return os.path.join(os.path.realpath(workspace), PROJECT_POLICY)


def read_project_bytes(path: str) -> bytes:
    """The project policy's bytes, refusing links and anything but a small regular file.

    Called only for a workspace the user trusted (or is reviewing).
    """
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(22, "not a regular file")
        data = os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise OSError(27, "larger than 1 MiB")
    return data


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class TrustStore:
    def __init__(self, environ=os.environ) -> None:
        self.path = os.path.join(state_dir(environ), "trust.json")

    def _load(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # An unreadable store trusts nothing.
        return data if isinstance(data, dict) else {}

    def _save(self, data: dict) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def lookup(self, workspace: str) -> dict | None:
        record = self._load().get(os.path.realpath(workspace))
        return record if isinstance(record, dict) and "sha256" in record else None

    def trust(self, workspace: str, data: bytes, *, widening_accepted: bool) -> dict:
        store = self._load()
        record = {"sha256": digest(data), "trusted_at": time.time(), "widening_accepted": widening_accepted,
                  "content": data.decode("utf-8", "replace")}
        store[os.path.realpath(workspace)] = record
        self._save(store)
        return record

    def revoke(self, workspace: str) -> bool:
        store = self._load()
        found = store.pop(os.path.realpath(workspace), None) is not None
        self._save(store)
        return found

    def records(self) -> dict:
        return self._load()
