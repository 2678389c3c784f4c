"""The node agent: one per Ray node, the service's ``Manager`` over that node's sandboxes.

It is a detached, named Ray actor (``blastwall-node-<node id>``) pinned to its
node, started on demand by the first replica or Ray program that places a
sandbox there (``cluster.agent_for``).  What a one-machine service does, it
does for its node: boots and destroys the sandboxes placed on it, runs their
commands and file operations, keeps the TTL reaper, reaps what a previous
agent on this machine left, and writes the node's own audit log (its own hash
chain, whose head it records in the database every few seconds).  Quotas are
the database's (``Store.reserve_sandbox``), as between replicas.

Callers reach it only through Ray, inside the operator's cluster: whoever can
call a Ray actor there is the operator.  Every method takes the tenant the
caller authenticated and looks sandboxes up by (tenant, id), as the one-machine
service does.  Answers are ``("ok", value)`` or ``("refused", error)`` with the
service error's status, code and message, so that no exception object has to
cross Ray.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading

__all__ = ["NodeAgent", "agent_settings"]

log = logging.getLogger("blastwall.node")

HEAD_INTERVAL = 5.0       # seconds between two records of the audit chain's head
RAYLET_CHECK = 1.0        # seconds between two looks at whether the node's raylet still runs
_EVENT_WAIT = 1.0


def agent_settings(config, database: str) -> dict:
    """What a node agent is started with: the replica's settings (every replica of a cluster has the same)."""
    return {"data_root": config.data_dir, "database": database, "environ": dict(config.environ),
            "policy_file": config.policy_file, "max_upload": config.max_upload, "default_ttl": config.default_ttl,
            "memory": config.default_resources.memory, "cpus": config.default_resources.cpus,
            "max_sandboxes": config.max_sandboxes, "output_cap": config.output_cap}


def _refused(exc) -> tuple:
    from blastwall.service.errors import as_answer

    return ("refused", as_answer(exc))


class NodeAgent:
    """A ``Manager`` for this node, called through Ray (made an actor by ``cluster.agent_for``)."""

    def __init__(self, settings: dict) -> None:
        import ray

        from blastwall.service.ceiling import Resources
        from blastwall.service.config import Config, default_pids, prepare_data_dir
        from blastwall.service.sessions import Manager
        from blastwall.service.store import Store

        logging.basicConfig(level=logging.INFO, format="%(asctime)s blastwall-node %(levelname)s %(message)s")
        self.node = ray.get_runtime_context().get_node_id()
        root = settings["data_root"]
        prepare_data_dir(root)
        self.data_dir = os.path.join(root, "nodes", self.node)
        os.makedirs(os.path.dirname(self.data_dir), mode=0o700, exist_ok=True)
        self._reap_dead_siblings(os.path.dirname(self.data_dir))
        environ = dict(settings["environ"])
        config = Config(data_dir=self.data_dir, environ=environ, audit_path=os.path.join(self.data_dir, "audit.sqlite"),
                        policy_file=settings["policy_file"], warm=0, max_upload=settings["max_upload"],
                        default_ttl=settings["default_ttl"], max_sandboxes=settings["max_sandboxes"],
                        default_resources=Resources(settings["memory"], settings["cpus"], default_pids()),
                        output_cap=settings["output_cap"], node=self.node)
        # No database given (a Ray program on its own): each node keeps its state in its own file.
        self.store = Store(settings["database"] or os.path.join(self.data_dir, "service.sqlite"))
        self.manager = Manager(config, self.store)
        self.manager.released = self._release
        self.manager.start()
        self._stopping = threading.Event()
        self._heads = threading.Thread(target=self._record_heads, name="blastwall-heads", daemon=True)
        self._heads.start()
        self._raylet = os.getppid()
        self._lost = threading.Event()
        threading.Thread(target=self._watch_raylet, name="blastwall-raylet", daemon=True).start()

    def _watch_raylet(self) -> None:
        """The node's raylet gone (this process re-parented): the cluster has declared these sandboxes lost
        and freed their quota, so they must not run on unseen.  Destroy them all, then exit."""
        while not self._stopping.wait(RAYLET_CHECK):
            if os.getppid() != self._raylet:
                log.error("the raylet of node %s is gone: destroying this node's sandboxes", self.node)
                self._lost.set()  # Their commands end as lost, which is what the replicas say of them.
                # No Ray call from here on: without a raylet it would block for ever.  The replicas
                # release the placements of a dead node's sandboxes themselves.
                self.manager.released = None
                self.manager.keep_rows = True  # The replicas mark them lost (audited, quota freed) from the rows.
                try:
                    self.manager.close()
                finally:
                    os._exit(1)

    # -- placement ----------------------------------------------------------------------------------
    @staticmethod
    def _release(sandbox_id: str) -> None:
        """The sandbox's resources go back to Ray's scheduler."""
        from blastwall.ray.cluster import release

        release(sandbox_id)

    def _reap_dead_siblings(self, nodes_dir: str) -> None:
        """Data directories of earlier agents on this machine whose node is gone (a restarted Ray): removed.

        Their containers are reaped by the tier's recovery (their owner is dead);
        their rows were marked lost by the replicas when the node died.
        """
        import ray

        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        for name in os.listdir(nodes_dir):
            path = os.path.join(nodes_dir, name)
            if name == self.node or name in alive or not os.path.isdir(path):
                continue
            try:
                fd = os.open(os.path.join(path, "service.lock"), os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                fd = None
            try:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # Nobody runs there now.
                shutil.rmtree(path, ignore_errors=True)
                log.info("removed %s: left by an agent of node %s, which is gone", path, name)
            except BlockingIOError:
                pass
            finally:
                if fd is not None:
                    os.close(fd)

    # -- audit heads --------------------------------------------------------------------------------
    def _record_heads(self) -> None:
        last = None
        while not self._stopping.wait(HEAD_INTERVAL):
            try:
                head = self.audit_head()
                if head is not None and head != last:
                    self.store.record_audit_head(replica=self.manager.replica, node=self.node, seq=head[0],
                                                 digest=head[1])
                    last = head
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("recording the audit head failed: %s", exc)

    def audit_head(self) -> tuple[int, str] | None:
        """(seq, hash) of the node's newest audit row."""
        with self.manager._audit_lock:
            return self.manager._audit.head() if self.manager._audit is not None else None

    def verify_audit(self, recorded: list[dict]) -> dict:
        """The node's chain checked end to end, and against the heads the database recorded for it."""
        with self.manager._audit_lock:
            ok, detail = self.manager._audit.verify()
            by_seq = {row["seq"]: row["hash"] for row in self.manager._audit.rows()}
        mismatched = [head["seq"] for head in recorded if by_seq.get(head["seq"]) != head["hash"]]
        return {"node": self.node, "replica": self.manager.replica, "chain_ok": ok, "detail": detail,
                "rows": len(by_seq), "heads_checked": len(recorded), "heads_mismatched": mismatched}

    # -- the service's verbs ------------------------------------------------------------------------
    def ready(self) -> str:
        return self.node

    def ensure_tenant(self, name: str, ceiling) -> None:
        """A Ray program's tenant (no API key: it never comes through HTTP), made if missing."""
        if not any(t["name"] == name for t in self.store.tenants()):
            try:
                self.store.add_tenant(name, ceiling, key=False)
            except ValueError:
                pass  # Made by another node's agent meanwhile (a shared database).

    def status(self) -> dict:
        with self.manager._lock:
            sandboxes = [s for s in self.manager._sandboxes.values() if s.state == "running"]
        return {"node": self.node, "replica": self.manager.replica, "sandboxes": len(sandboxes),
                "memory": sum(s.resources.memory for s in sandboxes), "warm": self.manager.warm_count(),
                "max_sandboxes": self.manager.config.max_sandboxes, "pid": os.getpid()}

    def call(self, verb: str, tenant, *args, **kwargs) -> tuple:
        """One of the manager's verbs for ``tenant``; sandboxes come back described, commands as their status."""
        from blastwall.service.errors import ServiceError

        if verb not in _VERBS:
            return ("refused", {"status": 400, "code": "invalid_request", "message": f"no verb {verb!r}",
                                "details": None, "retry_after": None})
        try:
            return ("ok", _VERBS[verb](self.manager, tenant, *args, **kwargs))
        except ServiceError as exc:
            return _refused(exc)

    def read_file(self, tenant, sandbox_id: str, path: str) -> tuple:
        """A file's bytes, at most the upload limit (a cluster moves a file through Ray in one piece)."""
        from blastwall.service.errors import PayloadTooLarge, ServiceError

        try:
            fd, size = self.manager.open_file(tenant, sandbox_id, path)
        except ServiceError as exc:
            return _refused(exc)
        try:
            if size > self.manager.config.max_upload:
                return _refused(PayloadTooLarge(f"the file is larger than {self.manager.config.max_upload} bytes, "
                                                "the most a cluster's service reads in one piece"))
            chunks, total = [], 0
            while total < size:
                chunk = os.read(fd, min(1 << 20, size - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            return ("ok", b"".join(chunks))
        finally:
            os.close(fd)

    def run(self, tenant, sandbox_id: str, cmd, envs, cwd, timeout, user=None):
        """A streamed command: yields {"id"}, then {"stdout"|"stderr": text}..., then its exit (or a refusal)."""
        from blastwall.service.errors import ServiceError

        try:
            command = self.manager.run(tenant, sandbox_id, cmd, envs=envs, cwd=cwd, timeout=timeout, user=user)
        except ServiceError as exc:
            yield {"refused": _refused(exc)[1]}
            return
        finished = False
        try:
            yield {"id": command.id}
            while True:
                try:
                    kind, payload = command.events.get(timeout=_EVENT_WAIT)
                except Exception:  # noqa: BLE001 - queue.Empty
                    if command.done.is_set() and command.events.empty():
                        finished = True
                        yield {"lost": True} if self._lost.is_set() else \
                            {"exit": {"exit_code": command.exit_code, "timed_out": command.timed_out}}
                        return
                    continue
                if kind == "exit":
                    finished = True
                    yield {"lost": True} if self._lost.is_set() else {"exit": payload}
                    return
                yield {kind: payload}
        finally:
            if not finished:
                command.abandon()

    def abandon(self, tenant, sandbox_id: str, command_id: str) -> None:
        """The caller of a streamed command went away: the command stops."""
        sandbox = self.manager.get(tenant, sandbox_id)
        with sandbox.lock:
            command = sandbox.commands.get(command_id)
        if command is not None:
            threading.Thread(target=command.abandon, daemon=True).start()

    def close(self) -> None:
        self._stopping.set()
        self.manager.close()
        self.store.close()


def _describe(sandbox) -> dict:
    data = sandbox.describe()
    data["node"] = sandbox_node()
    return data


def sandbox_node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _wait_status(command, wait: float, stdout_from: int | None = None, stderr_from: int | None = None) -> dict:
    if wait > 0:
        command.wait(min(wait, 60.0), stdout_from=stdout_from, stderr_from=stderr_from)
    return command.status(stdout_from=stdout_from or 0, stderr_from=stderr_from or 0)


def _start(manager, tenant, sandbox_id, cmd, envs, cwd, timeout, stdin=False, user=None) -> tuple[str, int]:
    command = manager.run(tenant, sandbox_id, cmd, envs=envs, cwd=cwd, timeout=timeout, background=True,
                          stdin=stdin, user=user)
    return command.id, command.pid


_VERBS = {
    "create": lambda m, t, **kw: _describe(m.create(t, **kw)),
    "get": lambda m, t, sid: _describe(m.get(t, sid)),
    "list": lambda m, t: [_describe(s) for s in m.list(t)],
    "delete": lambda m, t, sid, client="": m.delete(t, sid, client=client),
    "set_ttl": lambda m, t, sid, ttl: _describe(m.set_ttl(t, sid, ttl)),
    "start": _start,
    "command": lambda m, t, sid, cid, wait=0, stdout_from=None, stderr_from=None: _wait_status(
        m.command(t, sid, cid), wait, stdout_from, stderr_from),
    "list_commands": lambda m, t, sid: m.list_commands(t, sid),
    "update_network": lambda m, t, sid, allow, deny: _describe(m.update_network(t, sid, allow, deny)),
    "send_stdin": lambda m, t, sid, cid, data: m.send_stdin(t, sid, cid, data),
    "close_stdin": lambda m, t, sid, cid: m.close_stdin(t, sid, cid),
    "kill_command": lambda m, t, sid, cid: m.kill_command(t, sid, cid),
    "write_file": lambda m, t, sid, path, data: m.write_file(t, sid, path, data),
    "list_files": lambda m, t, sid, path: m.list_files(t, sid, path),
    "stat_file": lambda m, t, sid, path: m.stat_file(t, sid, path),
    "make_dir": lambda m, t, sid, path: m.make_dir(t, sid, path),
    "remove_file": lambda m, t, sid, path: m.remove_file(t, sid, path),
    "rename_file": lambda m, t, sid, src, dst: m.rename_file(t, sid, src, dst),
}
