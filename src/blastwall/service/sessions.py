"""The sandbox manager: every sandbox the service runs, for whom, and until when.

Its neighbours: ``config.py`` (the service's settings and data directory),
``commands.py`` (a command's pump and the checks of a command request),
``ceiling.py`` (what a tenant may ask).

One ``Manager`` per service process.  It owns:

* the live sandboxes, each a ``ContainerSession`` (gVisor) or a ``VmSession``
  (QEMU, for tenants whose ceiling allows the VM tier) over a private
  workspace directory mounted at ``/home/user`` inside, and bound to one
  tenant: every lookup is by (tenant, id), so another tenant's id is exactly
  as unknown as an id that never existed;
* quotas: a tenant's (sandboxes, memory) are checked and its sandbox's row
  written in one database transaction before anything boots, so concurrent
  requests, on this replica or another sharing the database, cannot
  overshoot them; the machine's capacity (``max_sandboxes``) under one lock;
* the TTL reaper (a thread that destroys expired sandboxes and those of
  revoked tenants);
* the warm pool: sandboxes of the default configuration booted ahead of
  demand and handed to the first request that asks for exactly that;
* crash recovery: at start, what a previous service process left (its
  containers, its workspaces, its rows) is destroyed before anything new runs.
  A replica is its data directory: its id (``replica`` in it) marks its rows,
  so it reaps only what it ran, never another replica's sandboxes.

Every action is written to the audit log *before* it takes effect; if the log
cannot be written the action is refused (503), so nothing happens unaudited.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time

from blastwall.errors import ContainmentError, PolicyError, Unsupported
from blastwall.service.commands import KILL_GRACE, MOUNT_AT, Command, _argv, _cwd, _envs, new_id
from blastwall.service.config import Config, default_pids, host_pid_limit, prepare_data_dir
from blastwall.service.ceiling import (SERVICE_TIERS, CeilingExceeded, Resources, TenantPolicyError, format_size,
                                       parse_size, tenant_layer)
from blastwall.service.database import RETRY_AFTER, DatabaseUnavailable, database_message
from blastwall.service.errors import (BadRequest, Conflict, Forbidden, InsufficientStorage, NotFound, PayloadTooLarge,
                                     QuotaExceeded, ServiceError, Unauthorized, Unavailable, Unprocessable)

__all__ = ["Config", "Manager", "default_pids", "host_pid_limit", "prepare_data_dir"]

log = logging.getLogger("blastwall.service")

SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_COMMANDS_RUNNING = 16     # per sandbox
MAX_COMMANDS_KEPT = 64        # finished background commands remembered per sandbox





# --- sandboxes ----------------------------------------------------------------------------------

class Sandbox:
    """One tenant's sandbox: its session, workspace, deadline and commands."""

    def __init__(self, sandbox_id: str, tenant: str | None, *, image: str, resources: Resources, expires: float,
                 workspace: str, allow: tuple[str, ...], tier: str = "container") -> None:
        self.id = sandbox_id
        self.tenant = tenant
        self.tier = tier
        self.image = image
        self.resources = resources
        self.created = time.time()
        self.expires = expires
        self.workspace = workspace
        self.allow = allow
        self.session = None
        self.state = "booting"
        self.lock = threading.Lock()
        self.commands: dict[str, Command] = {}
        self.next_pid = 1  # Commands are numbered per sandbox (E2B's pid), under ``lock``.
        self.metadata: dict[str, str] = {}
        self.deny: tuple[str, ...] = ()  # Added by update_network (the policy's own deny list is not shown).
        self.networked = False  # Booted with the gateway (a network namespace whose one way out is it).
        self.on_stopped = None  # Set by the manager: destroy a sandbox that went down by itself.

    def check_alive(self) -> bool:
        """False (and the sandbox on its way out) if its gVisor kernel or its VM is gone."""
        try:
            alive = self.session is not None and self.session.alive()
        except Exception:  # noqa: BLE001 - cannot tell: assume it lives; the TTL ends it anyway
            return True
        if not alive and self.state == "running" and self.on_stopped is not None:
            threading.Thread(target=self.on_stopped, args=(self,), daemon=True).start()
        return alive

    @property
    def label(self) -> str:
        # A warm sandbox has no tenant yet; it has no network either, so no
        # gateway session carries this label.
        return f"{self.tenant}/{self.id}" if self.tenant else f"warm/{self.id}"

    def running_commands(self) -> int:
        return sum(1 for c in self.commands.values() if not c.done.is_set())

    def command_finished(self, command: Command) -> None:
        with self.lock:
            finished = [c for c in self.commands.values() if c.done.is_set() or c is command]
            for old in finished[:-MAX_COMMANDS_KEPT] if len(finished) > MAX_COMMANDS_KEPT else []:
                self.commands.pop(old.id, None)
            if command.events is not None:
                self.commands.pop(command.id, None)  # Streamed: its client has the output.

    def describe(self) -> dict:
        return {"id": self.id, "state": self.state, "image": self.image, "tier": self.tier,
                "created_at": self.created, "expires_at": self.expires,
                "ttl_remaining": max(0, round(self.expires - time.time(), 1)),
                "resources": self.resources.as_dict(), "network": {"allow": list(self.allow), "deny": list(self.deny)},
                "workdir": MOUNT_AT, "metadata": dict(self.metadata)}

    def find_command(self, ref: object) -> Command | None:
        """A command by its id (``cmd_...``) or its number in this sandbox (``pid``, as a string or int)."""
        if isinstance(ref, bool) or not isinstance(ref, (str, int)):
            return None
        with self.lock:
            found = self.commands.get(ref) if isinstance(ref, str) else None
            digits = str(ref)
            if found is None and digits.isascii() and digits.isdigit() and len(digits) <= 9:
                found = next((c for c in self.commands.values() if c.pid == int(digits)), None)
        return found


# --- the manager --------------------------------------------------------------------------------

class Manager:
    def __init__(self, config: Config, store) -> None:
        self.config = config
        self.store = store
        self._lock = threading.Lock()
        self._sandboxes: dict[str, Sandbox] = {}
        self._warm: list[Sandbox] = []
        self._warm_booting = 0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._audit = None
        self._audit_lock = threading.Lock()
        self._lockfd: int | None = None
        self.replica = ""
        self._rows_to_remove: set[str] = set()  # Sandboxes gone whose row the database did not take yet.
        self.released = None  # Called with a sandbox's id once it is torn down (a cluster frees its placement).
        self.keep_rows = False  # A cluster's node agent cut off from Ray: the replicas remove (and audit) its rows.
        self._base_layers: list = []
        self._default_has_egress = False
        self._warm_wakeup = threading.Event()

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Lock the data directory, reap what a previous process left, start the reaper and the pool."""
        self.open()
        self.reap_leftovers()
        for target, name in ((self._reap_loop, "blastwall-ttl"), (self._warm_loop, "blastwall-warm")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def open(self) -> None:
        """The data directory locked (one process per directory), this replica's id, the audit log, the policy."""
        import fcntl

        prepare_data_dir(self.config.data_dir)
        os.makedirs(self.config.sandboxes_dir, mode=0o700, exist_ok=True)
        os.chmod(self.config.sandboxes_dir, 0o700)
        fd = os.open(os.path.join(self.config.data_dir, "service.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ContainmentError(f"Can't start the service: another `blastwall serve` uses {self.config.data_dir}",
                                   fix="stop it, or give this one its own --data-dir") from None
        self._lockfd = fd
        self.replica = _replica_id(self.config.data_dir)
        from blastwall.audit.log import AuditLog, default_path

        self._audit = AuditLog(self.config.audit_path or self.config.environ.get("BLASTWALL_AUDIT_DB")
                               or default_path(self.config.environ))
        self.load_policy()

    def load_policy(self) -> None:
        """The operator's base policy (``--policy``), or the built-in defaults: never root's personal file."""
        from blastwall.policy.load import user_layers

        self._base_layers = user_layers(self.config.policy_file, environ=self.config.environ) \
            if self.config.policy_file else []
        self._default_has_egress = self._policy_has_egress(self._merge(None, None))

    def close(self) -> None:
        """Destroy every sandbox (they are ephemeral: a stopped service keeps none).  Idempotent."""
        if self._stopping.is_set() and self._audit is None:
            return
        self._stopping.set()
        self._warm_wakeup.set()
        for thread in self._threads:
            thread.join(timeout=30)
        with self._lock:
            victims = list(self._sandboxes.values()) + list(self._warm)
            self._warm.clear()
        workers = [threading.Thread(target=self._destroy, args=(s,), kwargs={"reason": "service stopped"})
                   for s in victims]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if self._audit is not None:
            with self._audit_lock:
                self._audit.close()
                self._audit = None
        if self._lockfd is not None:
            os.close(self._lockfd)
            self._lockfd = None

    def reap_leftovers(self) -> None:
        """Destroy the containers, workspaces and rows a previous (crashed) service process left."""
        from blastwall.tiers._lifecycle import alive
        from blastwall.tiers.container.session import ContainerSession
        from blastwall.tiers.vm.session import VmSession

        # We hold the data directory's lock, so the process that wrote these
        # rows has exited; it may still be a zombie for a moment, and the
        # tier's reaper leaves the containers of a live owner alone.
        # Rows written before replicas had ids (replica "") are ours when their
        # workspace is in our sandboxes directory.
        rows = self.store.sandbox_rows(replica=self.replica) + [
            row for row in self.store.sandbox_rows(replica="")
            if os.path.dirname(row["workspace"]) == self.config.sandboxes_dir]
        deadline = time.time() + 10
        for owner in {row["owner"] for row in rows if row["owner"] != os.getpid()}:
            while alive(owner) and time.time() < deadline:
                time.sleep(0.05)
        for recover, what in ((ContainerSession.recover, "containers"), (VmSession.recover, "VMs")):
            try:
                recover(environ=self.config.environ)
            except Exception:  # noqa: BLE001 - recovery must not keep the service down; say so
                log.exception("reaping leftover %s failed", what)
        for row in rows:
            self._remove_workspace(row["workspace"])
            self.store.remove_sandbox(row["id"])
            self.audit("reap", row["tenant"] or "-", row["id"], decision="destroy",
                       reason=f"left by service process {row['owner']}", strict=False)
            if self.released is not None:
                self.released(row["id"])
        # Workspaces without a row (a crash between mkdir and the insert).
        for name in os.listdir(self.config.sandboxes_dir):
            self._remove_workspace(os.path.join(self.config.sandboxes_dir, name))

    def _remove_workspace(self, path: str) -> None:
        # Only ever inside our own sandboxes directory, whatever a row says.
        base = self.config.sandboxes_dir
        if os.path.dirname(os.path.abspath(path)) != base or os.path.basename(path) in ("", ".", ".."):
            log.error("refusing to remove %r: not a workspace of this service", path)
            return
        shutil.rmtree(path, ignore_errors=True)

    # -- audit ----------------------------------------------------------------------------------
    def audit(self, action: str, tenant: str, sandbox_id: str = "", *, decision: str = "allow", detail: str = "",
              reason: str = "", rule: str = "", strict: bool = True) -> None:
        """One audit row; with ``strict`` an unwritable log refuses the action (503)."""
        try:
            with self._audit_lock:
                if self._audit is None:
                    raise RuntimeError("the audit log is closed")
                self._audit.append(kind="service", session=f"{tenant}/{sandbox_id}" if sandbox_id else tenant,
                                   command=f"{action} {detail}".strip(), decision=decision, rule=rule,
                                   reason=reason)
        except Exception as exc:  # noqa: BLE001
            log.error("audit append failed (%s %s/%s): %r", action, tenant, sandbox_id, exc)
            if strict:
                raise Unavailable("the audit log cannot be written; nothing was done",
                                  code="audit_unavailable") from None

    # -- policy ------------------------------------------------------------------------------------
    def _merge(self, layer, request_layer, resources: Resources | None = None, tier: str = "container"):
        from blastwall.policy.model import SCHEMA, merge, parse_layer

        # The service's own top layer: only the workspace is writable, whatever
        # the base policy or the tenant said, the tier the tenant asked for (a
        # service tier; the base policy's own tier is for its local runs), and
        # the resources it granted.
        forced: dict = {"filesystem": {"allow_write": ["."]}, "sandbox": {"tier": tier}}
        if resources is not None and "resources" in SCHEMA:
            forced["resources"] = {"memory": resources.memory, "cpus": resources.cpus, "pids": resources.pids}
        layers = [*self._base_layers]
        if layer is not None:
            layers.append(layer)
        if request_layer is not None:
            layers.append(request_layer)
        layers.append(parse_layer(forced, "service"))
        return merge(layers)

    @staticmethod
    def _policy_has_egress(policy) -> bool:
        net = policy.network
        return bool(net.allow or net.rules or net.unlisted == "ask")

    def _plan_environ(self) -> dict:
        # The environment the plan is compiled with becomes the sandbox's
        # environment: never the service's own (it may hold the operator's secrets).
        from blastwall.policy.load import _home

        return {"PATH": SANDBOX_PATH, "LANG": "C.UTF-8", "HOME": _home(self.config.environ)}

    def resolve_request(self, tenant, *, policy, image, tier, resources, ttl):
        """Validate a create request against the tenant's ceiling: (policy, resources, ttl, is_default)."""
        from blastwall.policy.load import parse_toml

        layer = None
        if policy is not None and policy != "" and policy != {}:
            if isinstance(policy, str):
                if len(policy.encode()) > 1 << 20:
                    raise Unprocessable("policy: larger than 1 MiB")
                try:
                    document = parse_toml(policy, "policy")
                except PolicyError as exc:
                    raise Unprocessable(exc.message) from None
            else:
                document = policy
            try:
                layer = tenant_layer(document, "policy")
            except TenantPolicyError as exc:
                raise Unprocessable(exc.message) from None
        request_doc: dict = {}
        if image is not None:
            request_doc.setdefault("sandbox", {})["image"] = image
        if tier is not None:
            request_doc.setdefault("sandbox", {})["tier"] = tier
        request_layer = None
        if request_doc:
            try:
                request_layer = tenant_layer(request_doc, "request")
            except TenantPolicyError as exc:
                raise Unprocessable(exc.message) from None
        tier = "container"
        for asked in (layer, request_layer):  # The request's field over the request's policy.
            tier_value = asked.values.get(("sandbox", "tier")) if asked is not None else None
            if tier_value is not None:
                tier = tier_value[1]
        if tier not in SERVICE_TIERS:
            raise Unprocessable(f"sandbox.tier: this service runs sandboxes in the {' or '.join(SERVICE_TIERS)} "
                                f"tier, not {tier!r}")
        merged = self._merge(layer, request_layer, tier=tier)
        # Resources: the service's defaults < the policies' [resources] < the request's.
        requested = {}
        if "resources" in merged.as_dict():
            for key in ("memory", "cpus", "pids"):
                value = getattr(merged.resources, key)
                if value is not None:
                    requested[key] = value
        requested.update(resources or {})
        try:
            wanted = self.config.default_resources.merged(requested)
        except ValueError as exc:
            raise Unprocessable(str(exc), code="invalid_request") from None
        if wanted.pids > self.config.max_pids:
            raise Unprocessable(f"resources.pids: {wanted.pids} processes is more than one sandbox may hold on "
                                f"this machine: at most {self.config.max_pids} (its pid space is "
                                f"{self.config.pid_limit})", code="invalid_request")
        if ttl is None:
            ttl = min(self.config.default_ttl, tenant.ceiling.max_ttl)
        elif isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
            raise Unprocessable("ttl: expected a whole number of seconds > 0", code="invalid_request")
        try:
            tenant.ceiling.check(merged, wanted, ttl)
        except CeilingExceeded as exc:
            raise Forbidden(f"{exc.field}: {exc}") from None
        if tier == "vm":
            from blastwall.tiers.vm import check_resources

            try:
                check_resources(wanted.memory, wanted.cpus)
            except Unsupported as exc:
                raise Unprocessable(f"resources: {exc.message}") from None
        is_default = (layer is None and tier == "container" and merged.sandbox.image == "default"
                      and wanted == self.config.default_resources and not self._default_has_egress)
        try:
            granted = self._merge(layer, request_layer, wanted, tier)
        except PolicyError as exc:  # A resource the policy model refuses (cpus below 0.01, ...).
            raise Unprocessable(exc.message, code="invalid_request") from None
        return granted, wanted, ttl, is_default

    # -- create ----------------------------------------------------------------------------------
    def create(self, tenant, *, policy=None, image=None, tier=None, resources=None, ttl=None,
               client: str = "", sandbox_id: str | None = None, reserved: bool = False, metadata=None) -> Sandbox:
        """``sandbox_id``: the id to give it (a cluster names the placement first); a new one by default.
        ``reserved``: a cluster's replica already paid the tenant's quota for it (its row, without a node)."""
        if self._stopping.is_set():
            raise Unavailable("the service is shutting down", code="shutting_down")
        try:
            metadata = check_metadata(metadata)
            return self._create(tenant, policy=policy, image=image, tier=tier, resources=resources, ttl=ttl,
                                client=client, sandbox_id=sandbox_id, reserved=reserved, metadata=metadata)
        except (Unprocessable, Forbidden, QuotaExceeded) as exc:
            # Refusals are decisions too: the security team sees what was asked and why not.
            self.audit("create", tenant.name, decision="deny", rule=exc.code,
                       reason=f"{exc.message[:500]} (from {client})", strict=False)
            raise

    def _create(self, tenant, *, policy, image, tier, resources, ttl, client: str, sandbox_id: str | None,
                reserved: bool = False, metadata: dict | None = None) -> Sandbox:
        merged, wanted, ttl, is_default = self.resolve_request(tenant, policy=policy, image=image, tier=tier,
                                                               resources=resources, ttl=ttl)
        with self._lock:
            if len(self._sandboxes) >= self.config.max_sandboxes:
                raise QuotaExceeded("the service is at capacity; try again later")
            sandbox = self._warm.pop(0) if is_default and self._warm and sandbox_id is None else None
            if sandbox is None:
                sandbox = Sandbox(sandbox_id or new_id("sbx_"), tenant.name, image=merged.sandbox.image, resources=wanted,
                                  expires=time.time() + ttl, workspace="", allow=tuple(merged.network.allow),
                                  tier=merged.sandbox.tier)
                sandbox.workspace = os.path.join(self.config.sandboxes_dir, sandbox.id)
            self._sandboxes[sandbox.id] = sandbox  # Counted against the capacity from now.
        warm = sandbox.session is not None
        try:
            if reserved:
                self._adopt(sandbox, time.time() + ttl)
            else:
                self._reserve(tenant, sandbox, wanted, time.time() + ttl, claim=warm)
        except BaseException:
            with self._lock:
                self._sandboxes.pop(sandbox.id, None)
                if warm:
                    self._warm.insert(0, sandbox)
            raise
        if warm:
            sandbox.tenant = tenant.name
            sandbox.expires = time.time() + ttl
            self._warm_wakeup.set()
        try:
            self.audit("create", tenant.name, sandbox.id, rule=f"key {tenant.key_id}",
                       detail=f"tier={sandbox.tier} image={sandbox.image} memory={format_size(wanted.memory)} cpus={wanted.cpus:g} "
                              f"ttl={ttl}s allow={','.join(merged.network.allow) or '-'}",
                       reason=f"from {client}{' (warm)' if warm else ''}")
            if not warm:
                self._boot(sandbox, merged)
        except BaseException as exc:
            with self._lock:
                self._sandboxes.pop(sandbox.id, None)
            self._teardown(sandbox)
            if isinstance(exc, ServiceError) and exc.code == "audit_unavailable":
                raise
            self.audit("create", tenant.name, sandbox.id, decision="failed", reason=_reason(exc), strict=False)
            raise _translate(exc) from None
        sandbox.on_stopped = self._stopped
        with sandbox.lock:
            sandbox.metadata = dict(metadata or {})
            sandbox.state = "running"
        return sandbox

    def _adopt(self, sandbox: Sandbox, expires: float) -> None:
        try:
            self.store.adopt_sandbox(sandbox.id, replica=self.replica, node=self.config.node,
                                     workspace=sandbox.workspace, expires=expires)
        except ValueError:
            raise Unavailable("the sandbox's reservation is gone (its create took too long); try again") from None
        except DatabaseUnavailable as exc:
            raise _unavailable(exc) from None

    def _reserve(self, tenant, sandbox: Sandbox, resources: Resources, expires: float, *, claim: bool) -> None:
        """The tenant's quota checked and the sandbox's row written, in one database transaction."""
        from blastwall.service.store import QuotaFull

        ceiling = tenant.ceiling
        try:
            self.store.reserve_sandbox(sandbox.id, tenant=tenant.name, workspace=sandbox.workspace, expires=expires,
                                       memory=resources.memory, replica=self.replica, node=self.config.node,
                                       max_sessions=ceiling.max_sessions, max_memory=ceiling.max_memory, claim=claim)
        except QuotaFull as full:
            if full.sandboxes >= ceiling.max_sessions:
                raise QuotaExceeded(f"this tenant already has {full.sandboxes} sandboxes (at most "
                                    f"{ceiling.max_sessions}); delete one or wait for one to expire") from None
            raise QuotaExceeded(f"this tenant's sandboxes use {format_size(full.memory)} of "
                                f"{format_size(ceiling.max_memory)} memory; {format_size(resources.memory)} more "
                                "does not fit") from None
        except ValueError:
            raise Unauthorized("the API key is invalid, revoked or expired") from None
        except DatabaseUnavailable as exc:
            if exc.unknown and not claim:  # The row may have been written: it goes when the database is back.
                with self._lock:
                    self._rows_to_remove.add(sandbox.id)
            raise _unavailable(exc) from None

    def _stopped(self, sandbox: Sandbox) -> None:
        self._destroy(sandbox, reason="the sandbox stopped by itself (its memory limit, or a crash)")

    def _boot(self, sandbox: Sandbox, policy) -> None:
        """Workspace, plan, container id, boot: in that order, after the row, so a crash leaves something to reap."""
        from blastwall import api
        from blastwall.tiers.container.session import ContainerSession
        from blastwall.tiers.vm.session import VmSession

        sandbox.networked = self._policy_has_egress(policy)
        # The row is written first (a reservation, or a spare's): then the workspace.
        os.mkdir(sandbox.workspace, 0o700)
        # Disposable: the workspace dies with the sandbox and the host never runs
        # or trusts its files, so the sandbox's home is its own (git init, ~/.config).
        plan = api.plan_for(policy, workspace=sandbox.workspace, cwd=sandbox.workspace, environ=self._plan_environ(),
                            disposable_workspace=True)
        kind = VmSession if sandbox.tier == "vm" else ContainerSession
        session = kind(plan, image=sandbox.image, environ=self.config.environ, workspace=sandbox.workspace,
                       mount_at=MOUNT_AT, label=sandbox.label)
        # The workspace belongs to whoever the sandbox's user is on the host, before it boots.
        os.chown(sandbox.workspace, *session.host_owner)
        sandbox.session = session
        self.store.update_sandbox(sandbox.id, container=session.id)
        session.boot()

    def _teardown(self, sandbox: Sandbox) -> None:
        """Everything of ``sandbox`` gone: commands, container, workspace, row.

        Its commands end with the container; their pumps still deliver each
        one's last event to a client that is reading (only a client that went
        away abandons a command).
        """
        if sandbox.session is not None:
            try:
                sandbox.session.close()
            except Exception:  # noqa: BLE001 - keep tearing down; the reaper gets the rest at the next start
                log.exception("closing sandbox %s failed", sandbox.id)
        if sandbox.workspace:
            self._remove_workspace(sandbox.workspace)
        self._remove_row(sandbox.id)
        if self.released is not None:
            try:
                self.released(sandbox.id)
            except Exception:  # noqa: BLE001
                log.exception("releasing sandbox %s failed", sandbox.id)

    def _remove_row(self, sandbox_id: str) -> None:
        """The row goes (the tenant's quota is freed); with the database away, the reaper retries."""
        if self.keep_rows:
            return
        try:
            self.store.remove_sandbox(sandbox_id)
        except DatabaseUnavailable as exc:
            log.warning("sandbox %s is gone, but its row stays until the database is back: %s", sandbox_id,
                        exc.message)
            with self._lock:
                self._rows_to_remove.add(sandbox_id)
            return
        except Exception:  # noqa: BLE001
            log.exception("removing the row of sandbox %s failed", sandbox_id)
        with self._lock:
            self._rows_to_remove.discard(sandbox_id)

    def _destroy(self, sandbox: Sandbox, *, reason: str) -> bool:
        """Take ``sandbox`` out of service and tear it down; False if someone else already did."""
        with sandbox.lock:
            if sandbox.state in ("closing", "closed"):
                return False
            sandbox.state = "closing"
        with self._lock:
            if self._sandboxes.get(sandbox.id) is sandbox:
                del self._sandboxes[sandbox.id]
        self._teardown(sandbox)
        with sandbox.lock:
            sandbox.state = "closed"
        if sandbox.tenant is not None:
            self.audit("destroy", sandbox.tenant, sandbox.id, decision="destroy", reason=reason, strict=False)
        return True

    # -- lookups ---------------------------------------------------------------------------------
    def get(self, tenant, sandbox_id: str) -> Sandbox:
        """The tenant's running sandbox; NotFound for anything else, with the same answer either way."""
        with self._lock:
            sandbox = self._sandboxes.get(sandbox_id) if isinstance(sandbox_id, str) else None
        if sandbox is None or sandbox.tenant != tenant.name or sandbox.state != "running":
            raise NotFound(f"no sandbox {sandbox_id[:64]!r}" if isinstance(sandbox_id, str) else "no such sandbox")
        return sandbox

    def list(self, tenant) -> list[Sandbox]:
        with self._lock:
            return [s for s in self._sandboxes.values() if s.tenant == tenant.name and s.state == "running"]

    def delete(self, tenant, sandbox_id: str, *, client: str = "") -> None:
        sandbox = self.get(tenant, sandbox_id)
        self.audit("delete", tenant.name, sandbox.id, decision="allow", reason=f"from {client}")
        self._destroy(sandbox, reason="deleted by the tenant")

    def set_ttl(self, tenant, sandbox_id: str, ttl: object) -> Sandbox:
        sandbox = self.get(tenant, sandbox_id)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
            raise Unprocessable("ttl: expected a whole number of seconds > 0", code="invalid_request")
        if ttl > tenant.ceiling.max_ttl:
            raise Forbidden(f"ttl: a TTL of {ttl}s is more than this tenant's {tenant.ceiling.max_ttl}s")
        self.audit("set-ttl", tenant.name, sandbox.id, detail=f"ttl={ttl}s")
        expires = time.time() + ttl
        try:
            self.store.update_sandbox(sandbox.id, expires=expires)
        except DatabaseUnavailable as exc:
            raise _unavailable(exc) from None
        sandbox.expires = expires
        return sandbox

    def update_network(self, tenant, sandbox_id: str, allow=None, deny=None) -> Sandbox:
        """New requests of a running sandbox may reach ``allow`` (replacing its list; None: unchanged) and
        never ``deny`` (added).  Narrowing is always allowed; a host not covered by the sandbox's list is a
        widening, allowed only within the tenant's ceiling (403 otherwise).  Audited; at once."""
        from blastwall.errors import ContainmentError
        from blastwall.service.ceiling import covers

        sandbox = self.get(tenant, sandbox_id)
        if not sandbox.networked:
            raise Unprocessable("this sandbox was created without network access, so it has no way out to "
                                "change; create it with the hosts it may need (network.allow), then narrow them",
                                code="invalid_request")
        new_allow = list(sandbox.allow) if allow is None else check_hosts(allow, "allow")
        added_deny = [] if deny is None else check_hosts(deny, "deny")
        wider = [h for h in new_allow if not any(covers(granted, h) for granted in sandbox.allow)]
        beyond = [h for h in wider if not any(covers(grant, h) for grant in tenant.ceiling.allow_domains)]
        detail = f"allow={','.join(new_allow) or '-'} deny+={','.join(added_deny) or '-'}"
        if beyond:
            self.audit("network", tenant.name, sandbox.id, decision="deny", rule="ceiling_exceeded", detail=detail)
            raise Forbidden(f"network.allow: {beyond[0]!r} is not within the domains allowed for this tenant "
                            f"(allowed: {', '.join(tenant.ceiling.allow_domains) or 'none'})")
        with sandbox.lock:
            self.audit("network", tenant.name, sandbox.id, detail=detail,
                       reason="widened within the ceiling" if wider else "narrowed")
            try:
                sandbox.session.update_network(new_allow, added_deny)
            except ContainmentError as exc:
                raise Unprocessable(str(exc), code="invalid_request") from None
            except (OSError, ValueError) as exc:
                log.error("sandbox %s: updating its network failed: %r", sandbox.id, exc)
                raise Unavailable("the gateway did not take the new rules; the operator's log has the cause") \
                    from None
            sandbox.allow = tuple(new_allow)
            sandbox.deny = tuple(dict.fromkeys((*sandbox.deny, *added_deny)))
        return sandbox

    # -- commands ----------------------------------------------------------------------------------
    def run(self, tenant, sandbox_id: str, cmd, *, envs=None, cwd=None, timeout=60.0, background=False,
            stdin=False, user=None) -> Command:
        sandbox = self.get(tenant, sandbox_id)
        argv = _argv(cmd)
        env = _envs(envs)
        workdir = _cwd(cwd)
        _user(user)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 86400:
            raise Unprocessable("timeout: expected seconds between 0 and 86400", code="invalid_request")
        if not isinstance(stdin, bool) or (stdin and not background):
            raise Unprocessable("stdin: true only for a background command (send it with .../stdin)",
                                code="invalid_request")
        with sandbox.lock:
            if sandbox.state != "running":
                raise NotFound(f"no sandbox {sandbox_id!r}")
            if sandbox.running_commands() >= MAX_COMMANDS_RUNNING:
                raise QuotaExceeded(f"this sandbox already runs {MAX_COMMANDS_RUNNING} commands")
            self.audit("exec", tenant.name, sandbox.id, detail=_shorten(argv),
                       reason=f"cwd={workdir} timeout={timeout:g}s{' background' if background else ''}")
            try:
                command = Command(sandbox, argv, env=env, cwd=workdir, timeout=float(timeout),
                                  stream=not background, cap=self.config.output_cap, pid=sandbox.next_pid,
                                  stdin=stdin, cmd=cmd if isinstance(cmd, str) else None)
                sandbox.next_pid += 1
            except ContainmentError as exc:
                raise _translate(exc) from None
            except (OSError, RuntimeError) as exc:
                if not sandbox.check_alive():
                    raise NotFound(f"the sandbox {sandbox.id} stopped by itself (its memory limit, or a crash) "
                                   "and was destroyed; create another") from None
                log.error("sandbox %s: starting a command failed: %r", sandbox.id, exc)
                raise Unavailable("the command could not be started; the operator's log has the cause") from None
            # Registered before its pump starts, so that it is counted while it
            # runs and its end always finds it.
            sandbox.commands[command.id] = command
            command.start()
        return command

    def command(self, tenant, sandbox_id: str, command_id: str, *, streamed: bool = False) -> Command:
        """A command by id or pid.  A streamed one's output is its stream's alone: only ``streamed`` finds it."""
        command = self.get(tenant, sandbox_id).find_command(command_id)
        if command is None or (command.events is not None and not streamed):
            raise NotFound(f"no command {str(command_id)[:64]!r} in this sandbox", code="command_not_found")
        return command

    def list_commands(self, tenant, sandbox_id: str) -> list[dict]:
        """The commands running now (background and streamed), oldest first."""
        sandbox = self.get(tenant, sandbox_id)
        with sandbox.lock:
            running = [c for c in sandbox.commands.values() if not c.done.is_set()]
        return [c.info() for c in sorted(running, key=lambda c: c.pid)]

    def kill_command(self, tenant, sandbox_id: str, command_id: str) -> dict:
        """Kill a command (by id or pid); its status then, with ``killed``: it was still running."""
        command = self.command(tenant, sandbox_id, command_id, streamed=True)
        running = not command.done.is_set()
        self.audit("kill", tenant.name, sandbox_id, detail=command.id)
        command.kill()
        command.wait(KILL_GRACE)
        return {**command.status(), "killed": running}

    def send_stdin(self, tenant, sandbox_id: str, command_id: str, data: bytes) -> None:
        command = self.command(tenant, sandbox_id, command_id)
        self.audit("stdin", tenant.name, sandbox_id, detail=f"{command.id} {len(data)} bytes")
        command.send_stdin(data)

    def close_stdin(self, tenant, sandbox_id: str, command_id: str) -> None:
        self.command(tenant, sandbox_id, command_id).close_stdin()

    # -- files --------------------------------------------------------------------------------------
    def _files(self, sandbox: Sandbox):
        """The sandbox's files, held to its plan; what it creates belongs to its user on the host."""
        from blastwall.tiers.files import Files

        return Files(sandbox.session.plan, owner=sandbox.session.host_owner, limit=self.config.max_upload)

    def _file_op(self, tenant, sandbox_id: str, verb: str, paths: tuple, operation, *, detail: str = ""):
        """Run ``operation(files, *relative paths)`` on a running sandbox, under its lock, audited."""
        from blastwall.errors import FileError, PathRefused

        sandbox = self.get(tenant, sandbox_id)
        relative = tuple(_workspace_path(p, root=verb in ("list", "stat")) for p in paths)
        # Under the sandbox's lock: a sandbox being destroyed never gets a file
        # written into its half-removed workspace.
        with sandbox.lock:
            if sandbox.state != "running":
                raise NotFound(f"no sandbox {sandbox_id!r}")
            files = self._files(sandbox)
            try:
                files.check(verb, *relative)
            except (PathRefused, FileError) as exc:
                self.audit(verb, tenant.name, sandbox.id, decision="deny", detail=" ".join(relative),
                           rule=getattr(exc, "state", "invalid"), reason=exc.message[:300], strict=False)
                raise _file_error(exc) from None
            # Recorded before it happens: with the audit log down, nothing is done (503).
            self.audit(verb, tenant.name, sandbox.id, detail=" ".join(relative), reason=detail)
            try:
                return operation(files, *relative)
            except (PathRefused, FileError) as exc:
                raise _file_error(exc) from None

    def write_file(self, tenant, sandbox_id: str, path: str, data: bytes) -> int:
        if len(data) > self.config.max_upload:
            raise PayloadTooLarge(f"the file is larger than {format_size(self.config.max_upload)}")
        return self._file_op(tenant, sandbox_id, "write", (path,), lambda files, p: files.write(p, data),
                             detail=f"{len(data)} bytes")

    def open_file(self, tenant, sandbox_id: str, path: str) -> tuple[int, int]:
        """(fd, size) of a file in the sandbox's workspace; the caller closes fd."""
        return self._file_op(tenant, sandbox_id, "read", (path,), lambda files, p: files.open(p))

    def list_files(self, tenant, sandbox_id: str, path: str) -> dict:
        def listing(files, p):
            entries, truncated = files.list(p)
            return {"entries": [_entry(e) for e in entries], "truncated": truncated}

        return self._file_op(tenant, sandbox_id, "list", (path,), listing)

    def stat_file(self, tenant, sandbox_id: str, path: str) -> dict:
        return self._file_op(tenant, sandbox_id, "stat", (path,), lambda files, p: _entry(files.stat(p)))

    def make_dir(self, tenant, sandbox_id: str, path: str) -> dict:
        return self._file_op(tenant, sandbox_id, "mkdir", (path,), lambda files, p: {"created": files.make_dir(p)})

    def remove_file(self, tenant, sandbox_id: str, path: str) -> None:
        self._file_op(tenant, sandbox_id, "remove", (path,), lambda files, p: files.remove(p))

    def rename_file(self, tenant, sandbox_id: str, source: str, target: str) -> dict:
        def rename(files, src, dst):
            files.rename(src, dst)
            return _entry(files.stat(dst))

        return self._file_op(tenant, sandbox_id, "rename", (source, target), rename)

    # -- background threads --------------------------------------------------------------------------
    def _reap_loop(self) -> None:
        last_revoked_check = 0.0
        while not self._stopping.wait(self.config.reap_interval):
            try:
                now = time.time()
                with self._lock:
                    live = list(self._sandboxes.values())
                doomed = [(s, "TTL expired") for s in live if s.state == "running" and s.expires <= now]
                if now - last_revoked_check >= 2.0:
                    last_revoked_check = now
                    with self._lock:
                        unremoved = list(self._rows_to_remove)
                    for sandbox_id in unremoved:
                        self._remove_row(sandbox_id)
                    try:
                        revoked = self.store.revoked_tenants()
                    except DatabaseUnavailable as exc:
                        log.warning("revocations not checked: %s", exc.message)
                        revoked = set()
                    doomed += [(s, "tenant revoked") for s in live if s.tenant in revoked and s.state == "running"]
                # In parallel: a tear-down takes a while, and one slow sandbox
                # must not keep the others alive past their time.
                workers = [threading.Thread(target=self._destroy, args=(s,), kwargs={"reason": why}, daemon=True)
                           for s, why in doomed]
                for worker in workers:
                    worker.start()
                for worker in workers:
                    worker.join()
            except Exception:  # noqa: BLE001 - the reaper must keep running
                log.exception("the TTL reaper failed; retrying")

    def _warm_loop(self) -> None:
        """Keep ``config.warm`` default sandboxes booted and unclaimed."""
        if self.config.warm <= 0:
            return
        if self._default_has_egress:
            log.warning("warm pool disabled: the base policy allows network access, and a pooled sandbox's "
                        "gateway session cannot be moved to a tenant")
            return
        failures = 0
        while not self._stopping.is_set():
            with self._lock:
                missing = self.config.warm - len(self._warm)
            if missing <= 0:
                self._warm_wakeup.wait(5)
                self._warm_wakeup.clear()
                continue
            defaults = self.config.default_resources
            sandbox = Sandbox(new_id("sbx_"), None, image="default", resources=defaults,
                              expires=time.time() + 86400, workspace="", allow=())
            sandbox.workspace = os.path.join(self.config.sandboxes_dir, sandbox.id)
            try:
                self.store.add_sandbox(sandbox.id, tenant="", container="", workspace=sandbox.workspace,
                                       expires=sandbox.expires, memory=defaults.memory, replica=self.replica,
                                       node=self.config.node)
            except DatabaseUnavailable as exc:
                log.warning("warm pool: waiting for the database: %s", exc.message)
                if self._stopping.wait(5):
                    return
                continue
            try:
                self._boot(sandbox, self._merge(None, None, defaults))
            except Exception as exc:  # noqa: BLE001
                self._teardown(sandbox)
                failures += 1
                log.error("warm pool: booting a sandbox failed (%s); retrying in %ss", _reason(exc),
                          min(60, 2 ** failures))
                if self._stopping.wait(min(60, 2 ** failures)):
                    return
                continue
            failures = 0
            with self._lock:
                if self._stopping.is_set():
                    stop = True
                else:
                    stop = False
                    self._warm.append(sandbox)
            if stop:
                self._teardown(sandbox)
                return

    def warm_count(self) -> int:
        with self._lock:
            return len(self._warm)


MAX_METADATA = 64              # entries of a sandbox's metadata
MAX_METADATA_BYTES = 1 << 10  # each key and each value


def check_metadata(metadata: object) -> dict[str, str]:
    """A sandbox's metadata (E2B's): a table of at most 64 short strings, kept as given, never interpreted."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA:
        raise Unprocessable(f"metadata: expected a table of at most {MAX_METADATA} string: string pairs",
                            code="invalid_request")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str) or not key \
                or len(key.encode()) > MAX_METADATA_BYTES or len(value.encode()) > MAX_METADATA_BYTES:
            raise Unprocessable(f"metadata: {str(key)[:64]!r}: keys and values are strings of 1 KiB at most "
                                "(a key not empty)", code="invalid_request")
    return dict(metadata)


def check_hosts(hosts: object, field: str) -> list[str]:
    """A list of host patterns as the policy's network lists take them (``*.example.com``, ``host:443``)."""
    from blastwall.policy.hosts import normalize_host_pattern

    if not isinstance(hosts, list) or len(hosts) > 256 or not all(isinstance(h, str) for h in hosts):
        raise Unprocessable(f"{field}: expected a list of at most 256 host patterns", code="invalid_request")
    normal = []
    for host in hosts:
        try:
            normal.append(normalize_host_pattern(host))
        except ValueError as exc:
            raise Unprocessable(f"{field}: {exc}", code="invalid_request") from None
    return list(dict.fromkeys(normal))


def _user(user: object) -> None:
    """``run(user=)``: a command runs as the sandbox's one user; E2B's "root" is not given."""
    if user is not None and user != "user":
        raise Unprocessable(f"user: commands run as 'user', the sandbox's only user (not {str(user)[:32]!r}); "
                            "root is not available in a sandbox", code="invalid_request")


def _workspace_path(path: object, *, root: bool = False) -> str:
    """The workspace-relative form of a files API path: relative, or absolute under /home/user.

    ``root``: the workspace itself ("", "/home/user") is a path too (to list or look at).
    """
    if not isinstance(path, str) or "\x00" in path or len(path) > 4096 or (not path and not root):
        raise BadRequest("invalid file path", code="invalid_path")
    relative = path
    if path.startswith("/"):
        prefix = MOUNT_AT + "/"
        if root and path.rstrip("/") == MOUNT_AT:
            return ""
        if not path.startswith(prefix):
            raise BadRequest(f"{path[:200]!r} is not inside {MOUNT_AT}", code="invalid_path")
        relative = path[len(prefix):]
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if (not parts and not root) or ".." in parts:
        raise BadRequest(f"{path[:200]!r} is not a file path inside {MOUNT_AT}", code="invalid_path")
    return "/".join(parts)


def _entry(entry) -> dict:
    """A file's description in the API: its path as the sandbox names it."""
    data = entry.as_dict()
    data["path"] = f"{MOUNT_AT}/{entry.path}" if entry.path else MOUNT_AT
    return data


def _file_error(exc) -> ServiceError:
    """A file tool's refusal (PathRefused) or failure (FileError) as the API answers it."""
    from blastwall.errors import PathRefused

    if isinstance(exc, PathRefused):
        return Forbidden(exc.message, code="path_refused", details=[{"reason": str(exc.reason), "state": exc.state,
                                                                     "path": exc.path}])
    if exc.code == "not_found":
        return NotFound(exc.message, code="file_not_found")
    if exc.code == "too_large":
        return PayloadTooLarge(exc.message)
    if exc.code == "exists":
        return Conflict(exc.message, code="file_exists")
    if exc.code == "no_space":
        return InsufficientStorage(exc.message)
    return BadRequest(exc.message, code="invalid_path")


def _replica_id(data_dir: str) -> str:
    """This data directory's replica id: made once, kept in the directory (which only we can write)."""
    path = os.path.join(data_dir, "replica")
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
        if text.startswith("rep_") and len(text) == 20 and all(c in "0123456789abcdef" for c in text[4:]):
            return text
        log.warning("%s does not hold a replica id; making a new one", path)
    except FileNotFoundError:
        pass
    text = new_id("rep_")[:20]
    temporary = f"{path}.{os.getpid()}"
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "w") as f:
        f.write(text + "\n")
    os.replace(temporary, path)
    return text


def _unavailable(exc: DatabaseUnavailable) -> Unavailable:
    log.error("%s", exc.message)
    return Unavailable(database_message(exc), code="database_unavailable", retry_after=RETRY_AFTER)


def _translate(exc: BaseException) -> BaseException:
    """A failure while creating or running, as the client should see it."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, DatabaseUnavailable):
        return _unavailable(exc)
    if isinstance(exc, PolicyError):
        return Unprocessable(exc.message)
    if isinstance(exc, ContainmentError):
        log.error("sandbox set-up failed: %s", exc)
        return Unavailable("the sandbox could not be started on this service; the operator's log has the cause")
    if isinstance(exc, Exception):
        log.error("sandbox set-up failed", exc_info=exc)
        return Unavailable("the sandbox could not be started on this service; the operator's log has the cause")
    return exc


def _reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return message.splitlines()[0][:300]


def _shorten(argv: list[str]) -> str:
    text = json.dumps(argv)
    return text if len(text) <= 1000 else text[:1000] + "..."


__all__ += ["parse_size"]  # re-exported for the CLI's --max-upload
