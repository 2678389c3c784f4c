"""blastwall inside a Ray program: the same E2B-shaped SDK, sandboxes placed on the cluster's nodes.

::

    import ray
    from blastwall.ray import Sandbox, run_batch

    ray.init()                                   # or let blastwall join "auto"
    with Sandbox.create(policy={"network": {"allow": ["pypi.org"]}}) as sbx:
        print(sbx.commands.run("python3 -c 'print(6*7)'").stdout)
    for result in run_batch(["echo one", "echo two"], concurrency=8):
        print(result.index, result.exit_code, result.stdout)

No HTTP service is needed: a sandbox is placed by Ray (``cluster.place``) and
run by the node agent of the node Ray chose, exactly as for ``blastwall serve
--cluster``; the program holds its node and talks to that agent.  What a
program may ask is a tenant's ceiling (``Cluster(ceiling=...)``; its tenant is
``ray`` by default, without an API key), checked by the same code as the
service.  Without a database each node keeps its state in its own SQLite
file; with ``database="postgresql://..."`` the program shares the service's
tenants and quotas.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading

from blastwall.client._errors import CommandResult, ServiceError, error_for
from blastwall.client._sync import Sandbox as _Sandbox

__all__ = ["BatchResult", "Cluster", "Sandbox", "run_batch"]

CALL_TIMEOUT = 120.0
DEFAULT_CEILING = {"max_sessions": 100_000, "max_memory": 1 << 50, "max_cpus": 64.0, "max_ttl": 7 * 86400,
                   "tiers": ["container", "vm"]}


class Cluster:
    """A Ray program's view of blastwall: where the agents keep data, its tenant and ceiling.

    ``address``: joined if this process has not called ``ray.init`` yet
    ("auto" by default).  ``data_dir``: the agents' data directory on every
    node (default: the service's, ``~/.local/share/blastwall/service`` of the
    user Ray runs as).  ``environ``: what the agents see for images and
    state (``XDG_CACHE_HOME``, ``XDG_STATE_HOME``; default this process's).
    The first program or service to place a sandbox on a node starts its agent
    with its settings; the others share it.
    """

    def __init__(self, *, address: str = "auto", data_dir: str | None = None, database: str = "",
                 environ=None, tenant: str = "ray", ceiling: dict | None = None, policy_file: str | None = None,
                 placement_timeout: float = 10.0) -> None:
        import ray

        from blastwall.ray import cluster
        from blastwall.ray.agent import agent_settings
        from blastwall.service.ceiling import Ceiling, Resources
        from blastwall.service.config import Config, default_pids
        from blastwall.service.sessions import Manager
        from blastwall.service.store import Tenant, check_tenant_name, data_dir as default_data_dir

        if not ray.is_initialized():
            cluster.connect(address)
        environ = dict(os.environ if environ is None else environ)
        config = Config(data_dir=data_dir or default_data_dir(environ), environ=environ, policy_file=policy_file,
                        default_resources=Resources(512 << 20, 1.0, default_pids()))
        self.settings = agent_settings(config, database)
        self.tenant = Tenant(check_tenant_name(tenant), Ceiling.from_dict({**DEFAULT_CEILING, **(ceiling or {})}),
                             key_id="ray")
        self.placement_timeout = placement_timeout
        # Checks requests as the service does (policy layers, ceiling); runs no sandbox itself.
        self.planner = Manager(config, store=None)
        self.planner.load_policy()
        self._tenant_on: set[str] = set()
        self._lock = threading.Lock()

    def agent(self, node: str):
        import ray

        from blastwall.ray import cluster

        agent = cluster.agent_for(node, self.settings)
        with self._lock:
            known = node in self._tenant_on
        if not known:
            ray.get(agent.ensure_tenant.remote(self.tenant.name, self.tenant.ceiling), timeout=CALL_TIMEOUT)
            with self._lock:
                self._tenant_on.add(node)
        return agent

    def create(self, **request) -> tuple[str, dict]:
        """(node, description) of a new sandbox; the SDK's errors for a refusal."""
        from blastwall.ray import cluster
        from blastwall.service.errors import ServiceError as Refused

        try:
            return cluster.create_sandbox(self.planner, self.settings, self.tenant, before=self._before_create,
                                          placement_timeout=self.placement_timeout, client="ray", **request)
        except Refused as exc:
            raise error_for(exc.status, exc.code, exc.message, exc.details) from None
        except cluster.AgentFailed as exc:
            raise ServiceError(f"the node {exc.node} failed while creating the sandbox: {exc.__cause__!r}",
                               code="sandbox_lost") from None

    def _before_create(self, node: str) -> None:
        self.agent(node)


_default: Cluster | None = None
_default_lock = threading.Lock()


def default_cluster() -> Cluster:
    global _default
    with _default_lock:
        if _default is None:
            _default = Cluster()
        return _default


class RayBackend:
    """One sandbox on a node: every verb is a call to that node's agent."""

    def __init__(self, cluster: Cluster, node: str, info: dict) -> None:
        self._cluster, self.node, self.info = cluster, node, info
        self.sandbox_id = info["id"]

    def _agent(self):
        return self._cluster.agent(self.node)

    def _call(self, verb: str, *args, timeout: float = CALL_TIMEOUT, **kwargs):
        import ray

        try:
            answer, value = ray.get(self._agent().call.remote(verb, self._cluster.tenant, self.sandbox_id, *args,
                                                              **kwargs), timeout=timeout)
        except ray.exceptions.RayError as exc:
            raise self._lost(exc) from None
        if answer != "ok":
            raise error_for(value["status"], value["code"], value["message"], value.get("details"))
        return value

    def _lost(self, exc: BaseException):
        from blastwall.ray import cluster
        from blastwall.service.cluster import node_died

        cluster.forget(self.node)
        if node_died(self.node, wait=10.0):
            return error_for(410, "sandbox_lost", f"the sandbox {self.sandbox_id} was lost with its node")
        return ServiceError(f"the agent of node {self.node} could not be reached: {type(exc).__name__}",
                            code="sandbox_unavailable")

    # -- commands ----------------------------------------------------------------------------------
    def run(self, cmd, *, timeout: float, envs, cwd, on_stdout=None, on_stderr=None) -> CommandResult:
        import ray

        from blastwall.client._remote import take_output

        stdout, stderr = [], []
        generator = self._agent().run.options(num_returns="streaming").remote(
            self._cluster.tenant, self.sandbox_id, cmd, envs, cwd, timeout)
        try:
            for ref in generator:
                event = ray.get(ref)
                if "refused" in event:
                    error = event["refused"]
                    raise error_for(error["status"], error["code"], error["message"], error.get("details"))
                if "lost" in event:
                    raise error_for(410, "sandbox_lost", f"the sandbox {self.sandbox_id} was lost with its node")
                if "exit" in event:
                    final = event["exit"]
                    return CommandResult("".join(stdout), "".join(stderr), int(final["exit_code"]),
                                         timed_out=bool(final.get("timed_out")))
                take_output(event, stdout, stderr, on_stdout, on_stderr)
        except ray.exceptions.RayError as exc:
            raise self._lost(exc) from None
        raise ServiceError("the command's stream ended without an exit status", code="stream")

    def _command(self, command_id: str, pid: int):
        from blastwall.client._remote import PolledCommand

        return PolledCommand(
            command_id, pid,
            status=lambda wait, out, err: self._call("command", command_id, wait=wait, stdout_from=out,
                                                     stderr_from=err, timeout=CALL_TIMEOUT + wait),
            kill=lambda: self._call("kill_command", command_id),
            send_stdin=lambda data: self._call("send_stdin", command_id, data),
            close_stdin=lambda: self._call("close_stdin", command_id))

    def start(self, cmd, *, timeout: float, envs, cwd, stdin: bool = False):
        command_id, pid = self._call("start", cmd, envs, cwd, timeout, stdin=stdin)
        return self._command(command_id, pid)

    def commands(self) -> list[dict]:
        return self._call("list_commands")

    def connect_command(self, pid: int):
        status = self._call("command", str(int(pid)))
        return self._command(status["id"], int(status.get("pid", pid)))

    def kill_command(self, pid: int) -> bool:
        return bool(self._call("kill_command", str(int(pid))).get("killed"))

    # -- files --------------------------------------------------------------------------------------
    def write(self, path: str, data: bytes) -> dict:
        self._call("write_file", path, data)
        return self.stat(path)

    def read(self, path: str) -> bytes:
        import ray

        try:
            answer, value = ray.get(self._agent().read_file.remote(self._cluster.tenant, self.sandbox_id, path),
                                    timeout=CALL_TIMEOUT)
        except ray.exceptions.RayError as exc:
            raise self._lost(exc) from None
        if answer != "ok":
            raise error_for(value["status"], value["code"], value["message"], value.get("details"), files=True)
        return value

    def read_stream(self, path: str):
        return iter([self.read(path)])  # A cluster moves a file through Ray in one piece.

    def list(self, path: str) -> list[dict]:
        return self._call("list_files", path or "/home/user")["entries"]

    def stat(self, path: str) -> dict:
        return self._call("stat_file", path or "/home/user")

    def make_dir(self, path: str) -> bool:
        return self._call("make_dir", path)["created"]

    def remove(self, path: str) -> None:
        self._call("remove_file", path)

    def rename(self, source: str, target: str) -> dict:
        return self._call("rename_file", source, target)

    # -- life ---------------------------------------------------------------------------------------
    def describe(self) -> dict:
        self.info = self._call("get")
        return self.info

    refresh = describe

    def set_timeout(self, ttl: int) -> None:
        self.info = self._call("set_ttl", int(ttl))

    def update_network(self, allow, deny) -> None:
        self.info = self._call("update_network", allow, deny)

    def kill(self) -> bool:
        from blastwall.client._errors import SandboxNotFoundError

        try:
            self._call("delete")
        except SandboxNotFoundError:
            return False  # Expired, killed elsewhere, or lost with its node: the goal is met.
        return True


class Sandbox(_Sandbox):
    """A sandbox on a Ray cluster's node; the client SDK's ``Sandbox`` in every verb."""

    @classmethod
    def create(cls, template: str | None = None, timeout: int | None = None, metadata: dict[str, str] | None = None,
               envs: dict[str, str] | None = None, *, image: str | None = None, policy=None, resources=None,
               ttl: int | None = None, tier: str | None = None, allow_domains=(),
               cluster: Cluster | None = None) -> "Sandbox":
        """Placed by Ray from its resources (``{"memory": "1G", "cpus": 1}``); the rest as the client SDK's."""
        from blastwall.client._errors import InvalidRequestError
        from blastwall.client._remote import with_allow_domains
        from blastwall.client._sync import with_envs

        if timeout is not None and ttl is not None and timeout != ttl:
            raise InvalidRequestError("give timeout or ttl, not both")
        try:
            policy = with_allow_domains(with_envs(policy, envs), allow_domains)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None
        where = cluster or default_cluster()
        node, info = where.create(policy=policy, image=image if image is not None else template, tier=tier,
                                  resources=dict(resources) if resources else None,
                                  ttl=ttl if ttl is not None else timeout, metadata=metadata)
        return cls(RayBackend(where, node, info))

    @property
    def node(self) -> str:
        """The Ray node it runs on."""
        return self._backend.node


class BatchResult:
    """One item of ``run_batch``: its index and item, and its output, exit code and node, or its error."""

    __slots__ = ("index", "item", "stdout", "stderr", "exit_code", "node", "error")

    def __init__(self, index: int, item, *, stdout: str = "", stderr: str = "", exit_code: int | None = None,
                 node: str = "", error: BaseException | None = None) -> None:
        self.index, self.item, self.stdout, self.stderr = index, item, stdout, stderr
        self.exit_code, self.node, self.error = exit_code, node, error

    @property
    def ok(self) -> bool:
        return self.error is None and self.exit_code == 0

    def __repr__(self) -> str:
        outcome = f"error={self.error!r}" if self.error is not None else f"exit_code={self.exit_code}"
        return f"BatchResult({self.index}, {outcome}, node={self.node[:8]})"


def run_batch(items, *, policy=None, image: str | None = None, resources=None, concurrency: int = 8,
              timeout: float = 60.0, cluster: Cluster | None = None, placement_timeout: float = 600.0):
    """Run each item (a shell command or an argv list) in its own new sandbox, under one policy; results as they finish.

    At most ``concurrency`` sandboxes exist at once; each is destroyed after
    its command.  A sandbox that cannot be made or is lost gives its item a
    ``BatchResult`` with ``error`` set; the batch goes on.  Results come in the
    order they finish: ``result.index`` is the item's place in ``items``.
    """
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError("concurrency: a whole number >= 1")
    where = cluster or default_cluster()
    patient = Cluster.__new__(Cluster)  # The same cluster, waiting longer for a free slot.
    patient.__dict__.update(where.__dict__)
    patient.placement_timeout = placement_timeout

    def one(index: int, item) -> BatchResult:
        try:
            sandbox = Sandbox.create(policy=policy, image=image, resources=resources, cluster=patient)
        except Exception as exc:  # noqa: BLE001 - this item's failure, reported in its result
            return BatchResult(index, item, error=exc)
        try:
            result = sandbox.commands.run(item, timeout=timeout)
            return BatchResult(index, item, stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code,
                               node=sandbox.node)
        except Exception as exc:  # noqa: BLE001
            failed = getattr(exc, "result", None)
            if failed is not None:  # Exited non-zero: a result, not an error.
                return BatchResult(index, item, stdout=failed.stdout, stderr=failed.stderr,
                                   exit_code=failed.exit_code, node=sandbox.node)
            return BatchResult(index, item, node=sandbox.node, error=exc)
        finally:
            try:
                sandbox.kill()
            except Exception:  # noqa: BLE001 - its TTL ends it anyway
                pass

    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="blastwall-batch") as pool:
        futures = [pool.submit(one, index, item) for index, item in enumerate(items)]
        try:
            for future in concurrent.futures.as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()
