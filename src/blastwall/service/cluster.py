"""``blastwall serve --cluster``: the HTTP API over sandboxes that live on a Ray cluster's nodes.

A replica here keeps no sandbox.  It authenticates (the database's keys),
checks a request against the tenant's ceiling (``Manager.resolve_request``,
the same code as one machine), books a node through Ray
(``blastwall.ray.cluster.place``) and asks that node's agent to create the
sandbox; every later request finds the sandbox's node in the database (its
row) and goes to that node's agent.  Any replica serves any sandbox, so a
replica that dies loses nothing.

Each replica also watches the nodes: a node Ray reports dead took its
sandboxes with it.  Their rows are removed (the first replica to remove one
audits it as ``lost``: the quota is freed once), their placements released,
their streamed commands end with ``{"error": {"code": "sandbox_lost"}}``, and
later requests for them answer ``410 sandbox_lost`` until the row is gone,
then 404.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time

from blastwall.service.errors import (Forbidden, Gone, NotFound, QuotaExceeded, ServiceError, Unavailable, Unprocessable,
                                      from_answer)
from blastwall.service.sessions import Manager, check_metadata

__all__ = ["ClusterManager"]

log = logging.getLogger("blastwall.service")

CALL_TIMEOUT = 120.0
WATCH_INTERVAL = 1.0
SWEEP_FOR = 60.0           # seconds a dead node's rows are looked for
STALE_RESERVATION = 900.0  # seconds after which a reservation without a node is a dead replica's

def _raise(error: dict):
    raise from_answer(error)


class _Described:
    __slots__ = ("_data",)

    def __init__(self, data: dict) -> None:
        self._data = data

    def describe(self) -> dict:
        return self._data


class _Status:
    """A background command's status, asked of its node."""

    def __init__(self, manager: "ClusterManager", tenant, sandbox_id: str, command_id: str, status: dict) -> None:
        self._manager, self._tenant, self._sandbox, self.id, self._status = manager, tenant, sandbox_id, command_id, status

    def wait(self, timeout: float, *, stdout_from: int | None = None, stderr_from: int | None = None) -> None:
        self._status = self._manager._call(self._tenant, self._sandbox, "command", self.id, wait=timeout,
                                           stdout_from=stdout_from, stderr_from=stderr_from,
                                           timeout=CALL_TIMEOUT + timeout)
        self._asked = (stdout_from or 0, stderr_from or 0)

    def status(self, *, stdout_from: int = 0, stderr_from: int = 0) -> dict:
        if getattr(self, "_asked", (0, 0)) != (stdout_from, stderr_from):
            self._status = self._manager._call(self._tenant, self._sandbox, "command", self.id,
                                               stdout_from=stdout_from, stderr_from=stderr_from)
            self._asked = (stdout_from, stderr_from)
        return self._status


class _Reservation:
    """What ``Manager._reserve`` needs of a sandbox that has no node yet."""

    def __init__(self, sandbox_id: str) -> None:
        self.id, self.workspace = sandbox_id, ""


class _Started:
    def __init__(self, command_id: str, pid: int = 0) -> None:
        self.id, self.pid = command_id, pid


_LOST_EVENT = {"error": {"code": "sandbox_lost", "message": "the sandbox was lost with its node while the command ran"}}


class RemoteCommand:
    """A streamed command on a node: its events as the application's stream reads them."""

    def __init__(self, manager: "ClusterManager", agent, tenant, sandbox_id: str, generator, command_id: str,
                 node: str) -> None:
        self.id = command_id
        self._node = node
        self.events: queue.Queue = queue.Queue(maxsize=256)
        self.done = threading.Event()
        self.exit_code = None
        self.timed_out = False
        self._manager, self._agent, self._tenant, self._sandbox = manager, agent, tenant, sandbox_id
        self._generator = generator
        threading.Thread(target=self._pump, name=f"blastwall-remote-{command_id}", daemon=True).start()

    def _pump(self) -> None:
        import ray

        try:
            for ref in self._generator:
                event = ray.get(ref)
                if "lost" in event:  # Its agent lost its node and destroyed it.
                    self.events.put(("exit", _LOST_EVENT))
                    return
                if "exit" in event:
                    self.exit_code = event["exit"].get("exit_code")
                    self.timed_out = bool(event["exit"].get("timed_out"))
                    self.events.put(("exit", event["exit"]))
                    return
                (kind, payload), = event.items()
                self.events.put((kind, payload))
        except Exception as exc:  # noqa: BLE001 - which error Ray raises depends on where the object was
            if node_died(self._node):
                self.events.put(("exit", _LOST_EVENT))
            else:
                log.error("sandbox %s: the command's stream from its node broke: %r", self._sandbox, exc)
                self.events.put(("exit", {"error": {"code": "sandbox_unavailable", "message": (
                    "the command's output stream from its node broke; the operator's log has the cause")}}))
        finally:
            self.done.set()

    def abandon(self) -> None:
        if not self.done.is_set():
            try:
                self._agent.abandon.remote(self._tenant, self._sandbox, self.id)
            except Exception:  # noqa: BLE001 - its node is gone: so is the command
                pass


def _looks_like_id(sandbox_id: object) -> bool:
    return isinstance(sandbox_id, str) and len(sandbox_id) == 28 and sandbox_id.startswith("sbx_") and \
        all(c in "0123456789abcdef" for c in sandbox_id[4:])


def node_died(node: str, *, wait: float = 60.0) -> bool:
    """Did ``node`` die?  Asked after a call to it failed: Ray may take a few health checks to say so."""
    import time

    from blastwall.ray import cluster

    deadline = time.monotonic() + wait
    while True:
        try:
            if node in cluster.dead_nodes():
                return True
            if node not in cluster.alive_nodes():
                return False
        except Exception:  # noqa: BLE001 - the cluster itself is unreachable: not this node's death
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


class ClusterManager(Manager):
    """The Manager's verbs, each sent to the agent of the sandbox's node."""

    def __init__(self, config, store, *, address: str, database: str) -> None:
        super().__init__(config, store)
        self.address = address
        self._settings = None
        self._database = database
        self._nodes: dict[str, tuple[str, str]] = {}   # sandbox id -> (tenant, node)
        self._dead: frozenset[str] = frozenset()       # as of the watcher's last look (each second)
        self._swept: dict[str, float] = {}             # dead node -> when its rows were first swept

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        from blastwall.ray import cluster
        from blastwall.ray.agent import agent_settings

        if self.store.db.kind != "postgresql":
            from blastwall.errors import ContainmentError

            raise ContainmentError("A cluster's service keeps its state in PostgreSQL: every node's agent and "
                                   "every replica share it", fix="give --database postgresql://...")
        self.open()
        cluster.connect(self.address)
        if cluster.slots_offered() <= 0:
            log.warning("no node of the Ray cluster offers %r: no sandbox can be placed (start nodes with "
                        "--resources '{\"%s\": N}')", cluster.SLOT, cluster.SLOT)
        self._settings = agent_settings(self.config, self._database)
        thread = threading.Thread(target=self._watch_nodes, name="blastwall-nodes", daemon=True)
        thread.start()
        self._threads.append(thread)

    # close(): the Manager's.  This replica holds no sandbox, so it destroys none: a replica's end
    # changes nothing on the nodes (their sandboxes are every replica's).

    def warm_count(self) -> int:
        return 0

    # -- routing -------------------------------------------------------------------------------------
    def _node_of(self, tenant, sandbox_id: object) -> str:
        if not _looks_like_id(sandbox_id):  # Not even asked of the database (a NUL is a driver error there).
            raise NotFound(f"no sandbox {str(sandbox_id)[:64]!r}")
        known = self._nodes.get(sandbox_id)
        if known is None:
            row = self.store.sandbox_row(sandbox_id)
            if row is not None and row["node"]:
                known = (row["tenant"], row["node"])
                self._nodes[sandbox_id] = known
        if known is None or known[0] != tenant.name:
            raise NotFound(f"no sandbox {sandbox_id!r}")
        if known[1] in self._dead:
            raise Gone(f"the sandbox {sandbox_id} was lost with its node; create another")
        return known[1]

    def _agent(self, node: str):
        from blastwall.ray import cluster

        return cluster.agent_for(node, self._settings)

    def _call(self, tenant, sandbox_id: str, verb: str, *args, timeout: float = CALL_TIMEOUT, **kwargs):
        node = self._node_of(tenant, sandbox_id)
        return self._ask(node, verb, tenant, sandbox_id, *args, timeout=timeout, **kwargs)

    def _ask(self, node: str, verb: str, tenant, *args, timeout: float = CALL_TIMEOUT, **kwargs):
        import ray

        try:
            answer, value = ray.get(self._agent(node).call.remote(verb, tenant, *args, **kwargs), timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise Unavailable("the sandbox's node did not answer in time; try again") from None
        except ray.exceptions.RayError as exc:
            raise self._failed(node, exc) from None
        if answer != "ok":
            _raise(value)
        return value

    @staticmethod
    def _failed(node: str, exc: BaseException) -> ServiceError:
        """A call to a node's agent that Ray could not complete: lost with its node, or unavailable."""
        from blastwall.ray import cluster

        cluster.forget(node)
        if node_died(node, wait=10.0):
            return Gone("the sandbox was lost with its node; create another")
        log.error("a call to the agent of node %s failed: %r", node, exc)
        return Unavailable("the sandbox's node could not be reached; try again shortly", retry_after=5)

    # -- verbs -----------------------------------------------------------------------------------------
    def create(self, tenant, *, policy=None, image=None, tier=None, resources=None, ttl=None, client: str = "",
               sandbox_id: str | None = None, metadata=None):
        import ray

        from blastwall.ray import cluster

        if self._stopping.is_set():
            raise Unavailable("the service is shutting down", code="shutting_down")
        def reserve(new_id: str, wanted, granted_ttl: int) -> None:
            self._reserve(tenant, _Reservation(new_id), wanted, time.time() + granted_ttl, claim=False)

        try:
            node, described = cluster.create_sandbox(self, self._settings, tenant, policy=policy, image=image,
                                                     tier=tier, resources=resources, ttl=ttl, client=client,
                                                     metadata=check_metadata(metadata),
                                                     reserve=reserve, unreserve=self._remove_row)
        except (Unprocessable, Forbidden, QuotaExceeded) as exc:
            self.audit("create", tenant.name, decision="deny", rule=exc.code,
                       reason=f"{exc.message[:500]} (from {client})", strict=False)
            raise
        except Unavailable as exc:
            if exc.code == "cluster_full":
                self.audit("create", tenant.name, decision="deny", rule=exc.code,
                           reason=f"{exc.message[:300]} (from {client})", strict=False)
            raise
        except cluster.AgentFailed as exc:
            raise self._failed(exc.node, exc.__cause__) from None
        except ray.exceptions.RayError as exc:
            log.error("placing a sandbox failed: %r", exc)
            raise Unavailable("the cluster could not place the sandbox; the operator's log has the cause") from None
        self._nodes[described["id"]] = (tenant.name, node)
        return _Described(described)

    def get(self, tenant, sandbox_id):
        return _Described(self._call(tenant, sandbox_id, "get"))

    def list(self, tenant) -> list:
        nodes = {row["node"] for row in self.store.sandbox_rows(tenant=tenant.name) if row["node"]}
        out = []
        for node in sorted(nodes - self._dead):
            try:
                out += [_Described(d) for d in self._ask(node, "list", tenant)]
            except Gone:
                continue
        return out

    def delete(self, tenant, sandbox_id: str, *, client: str = "") -> None:
        self._call(tenant, sandbox_id, "delete", client=client)
        self._nodes.pop(sandbox_id, None)

    def set_ttl(self, tenant, sandbox_id: str, ttl: object):
        return _Described(self._call(tenant, sandbox_id, "set_ttl", ttl))

    def run(self, tenant, sandbox_id: str, cmd, *, envs=None, cwd=None, timeout=60.0, background=False,
            stdin=False, user=None):
        import ray

        if background:
            return _Started(*self._call(tenant, sandbox_id, "start", cmd, envs, cwd, timeout, stdin=stdin, user=user))
        if stdin:
            raise Unprocessable("stdin: true only for a background command (send it with .../stdin)",
                                code="invalid_request")
        node = self._node_of(tenant, sandbox_id)
        try:
            agent = self._agent(node)
            generator = agent.run.options(num_returns="streaming").remote(tenant, sandbox_id, cmd, envs, cwd,
                                                                           timeout, user)
            first = ray.get(next(generator), timeout=CALL_TIMEOUT)
        except (ray.exceptions.RayError, StopIteration) as exc:
            raise self._failed(node, exc) from None
        if "refused" in first:
            _raise(first["refused"])
        return RemoteCommand(self, agent, tenant, sandbox_id, generator, first["id"], node)

    def command(self, tenant, sandbox_id: str, command_id: str):
        return _Status(self, tenant, sandbox_id, command_id, self._call(tenant, sandbox_id, "command", command_id))

    def update_network(self, tenant, sandbox_id: str, allow=None, deny=None):
        return _Described(self._call(tenant, sandbox_id, "update_network", allow, deny))

    def list_commands(self, tenant, sandbox_id: str) -> list[dict]:
        return self._call(tenant, sandbox_id, "list_commands")

    def send_stdin(self, tenant, sandbox_id: str, command_id: str, data: bytes) -> None:
        self._call(tenant, sandbox_id, "send_stdin", command_id, data)

    def close_stdin(self, tenant, sandbox_id: str, command_id: str) -> None:
        self._call(tenant, sandbox_id, "close_stdin", command_id)

    def kill_command(self, tenant, sandbox_id: str, command_id: str) -> dict:
        return self._call(tenant, sandbox_id, "kill_command", command_id)

    def write_file(self, tenant, sandbox_id: str, path: str, data: bytes) -> int:
        return self._call(tenant, sandbox_id, "write_file", path, data)

    def open_file(self, tenant, sandbox_id: str, path: str) -> tuple[int, int]:
        import ray

        node = self._node_of(tenant, sandbox_id)
        try:
            answer, value = ray.get(self._agent(node).read_file.remote(tenant, sandbox_id, path), timeout=CALL_TIMEOUT)
        except ray.exceptions.RayError as exc:
            raise self._failed(node, exc) from None
        if answer != "ok":
            _raise(value)
        fd = os.memfd_create("blastwall-file", os.MFD_CLOEXEC)
        os.write(fd, value)
        os.lseek(fd, 0, os.SEEK_SET)
        return fd, len(value)

    def list_files(self, tenant, sandbox_id: str, path: str) -> dict:
        return self._call(tenant, sandbox_id, "list_files", path)

    def stat_file(self, tenant, sandbox_id: str, path: str) -> dict:
        return self._call(tenant, sandbox_id, "stat_file", path)

    def make_dir(self, tenant, sandbox_id: str, path: str) -> dict:
        return self._call(tenant, sandbox_id, "make_dir", path)

    def remove_file(self, tenant, sandbox_id: str, path: str) -> None:
        self._call(tenant, sandbox_id, "remove_file", path)

    def rename_file(self, tenant, sandbox_id: str, source: str, target: str) -> dict:
        return self._call(tenant, sandbox_id, "rename_file", source, target)

    # -- nodes that die ----------------------------------------------------------------------------
    def _watch_nodes(self) -> None:
        while not self._stopping.wait(WATCH_INTERVAL):
            try:
                self.mark_lost()
            except Exception as exc:  # noqa: BLE001 - the watcher must keep running
                log.warning("checking the cluster's nodes failed: %s", exc)

    def mark_lost(self) -> list[str]:
        """Rows of sandboxes whose node Ray reports dead: removed, audited once, their placements released.

        Also reservations no create finished (their replica died in between): removed after STALE_RESERVATION.
        """
        from blastwall.ray import cluster

        with self._lock:
            unremoved = list(self._rows_to_remove)
        for sandbox_id in unremoved:  # Rows the database could not take when their create failed.
            self._remove_row(sandbox_id)
        for sandbox_id in self.store.remove_stale_reservations(time.time() - STALE_RESERVATION):
            cluster.release(sandbox_id)
            self.audit("reap", "-", sandbox_id, decision="destroy", reason="a reservation no create finished",
                       strict=False)
        lost = []
        self._dead = frozenset(cluster.dead_nodes())
        now = time.monotonic()
        for node in self._dead:
            # Swept for a minute after it was seen dead (a row committed as it died), then never
            # again: Ray keeps dead nodes in its table, and the database is not asked about each forever.
            if now - self._swept.setdefault(node, now) > SWEEP_FOR:
                continue
            for row in self.store.sandbox_rows(node=node):
                if self.store.remove_sandbox(row["id"]):  # Only the replica that removed it reports it.
                    lost.append(row["id"])
                    self.audit("lost", row["tenant"] or "-", row["id"], decision="destroy",
                               reason=f"its node {node} died", strict=False)
                    log.warning("sandbox %s of %s was lost with node %s", row["id"], row["tenant"] or "-", node)
                cluster.release(row["id"])
                cluster.forget(node)
        return lost
