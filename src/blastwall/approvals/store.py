"""Remembered answers with workspace scope: exact host and port, one workspace, an expiry.

Kept in the state directory, outside every workspace and hidden from sandboxes.
"""

from __future__ import annotations

import json
import os
import secrets
import time

from blastwall.policy.load import state_dir

__all__ = ["DEFAULT_TTL", "ApprovalStore"]

DEFAULT_TTL = 30 * 24 * 3600


class ApprovalStore:
    def __init__(self, environ=os.environ) -> None:
        self.path = os.path.join(state_dir(environ), "approvals.json")

    def _load(self) -> list[dict]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return []
        return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []

    def _save(self, entries: list[dict]) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=1)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def entries(self, workspace: str | None = None) -> list[dict]:
        """Unexpired entries, for one workspace (real path) or all."""
        now = time.time()
        real = os.path.realpath(workspace) if workspace else None
        return [e for e in self._load() if e.get("expires", 0) > now and (real is None or e.get("workspace") == real)]

    def remember(self, workspace: str, host: str, port: int, allowed: bool, ttl: float = DEFAULT_TTL) -> dict:
        entries = [e for e in self._load() if e.get("expires", 0) > time.time()]
        real = os.path.realpath(workspace)
        entries = [e for e in entries if (e.get("workspace"), e.get("host"), e.get("port")) != (real, host, port)]
        entry = {"id": secrets.token_hex(4), "workspace": real, "host": host, "port": port,
                 "decision": "allow" if allowed else "deny", "created": time.time(), "expires": time.time() + ttl}
        entries.append(entry)
        self._save(entries)
        return entry

    def revoke(self, entry_id: str) -> bool:
        entries = self._load()
        kept = [e for e in entries if e.get("id") != entry_id]
        self._save(kept)
        return len(kept) != len(entries)
