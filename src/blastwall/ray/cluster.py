"""Ray as blastwall's placement: where a sandbox goes, which agent runs it, which nodes are gone.

Nothing here schedules: a sandbox is a placement group of one bundle,
``{"CPU": cpus, "memory": bytes, "blastwall_slot": 1}``, and Ray's scheduler
picks the node.  A node offers sandboxes by declaring the custom resource
(``ray start --resources '{"blastwall_slot": 20}'``: at most 20 at once).  The
group lives as long as the sandbox (its resources stay booked), is named after
it (``blastwall-<sandbox id>``, so any replica can release it), and is removed
by the node agent when the sandbox is torn down, or by a replica when the
node died with it.
"""

from __future__ import annotations

import threading

__all__ = ["NAMESPACE", "SLOT", "AgentFailed", "Placement", "agent_for", "alive_nodes", "connect", "create_sandbox",
           "dead_nodes", "place", "release"]

NAMESPACE = "blastwall"
SLOT = "blastwall_slot"
AGENT_PREFIX = "blastwall-node-"
PLACEMENT_PREFIX = "blastwall-"

_lock = threading.Lock()
_agents: dict[str, object] = {}


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` ("auto", "HOST:PORT" or "ray://HOST:PORT"), once per process."""
    import ray

    from blastwall.errors import ContainmentError

    with _lock:
        if ray.is_initialized():
            return
        try:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level="warning",
                     configure_logging=False)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, ValueError, RuntimeError
            raise ContainmentError(f"Can't join the Ray cluster at {address}: {str(exc).splitlines()[0][:300]}",
                                   fix="start one (`ray start --head --resources '{\"blastwall_slot\": 20}'`) or "
                                       "give its address to --cluster") from None


def slots_offered() -> float:
    import ray

    return float(ray.cluster_resources().get(SLOT, 0))


class Placement:
    """A sandbox's booked resources on the node Ray chose."""

    def __init__(self, sandbox_id: str, group, node: str) -> None:
        self.sandbox_id, self.group, self.node = sandbox_id, group, node


def place(sandbox_id: str, *, cpus: float, memory: int, timeout: float) -> Placement | None:
    """Book a node for the sandbox; None (nothing booked) if no node has room within ``timeout`` seconds."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    bundle = {"CPU": float(cpus), "memory": int(memory), SLOT: 1}
    group = placement_group([bundle], name=PLACEMENT_PREFIX + sandbox_id, lifetime="detached")
    try:
        ray.get(group.ready(), timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        return None
    except BaseException:
        remove_placement_group(group)
        raise
    node = placement_group_table(group)["bundles_to_node_id"][0]
    return Placement(sandbox_id, group, node)


PLACEMENT_TIMEOUT = 10.0   # seconds to wait for a node with room
CREATE_TIMEOUT = 600.0     # a VM boots for minutes under TCG


class AgentFailed(Exception):
    """Ray could not complete a call to ``node``'s agent (its cause says how)."""

    def __init__(self, node: str) -> None:
        super().__init__(node)
        self.node = node


def create_sandbox(planner, settings: dict, tenant, *, placement_timeout: float = PLACEMENT_TIMEOUT,
                   before=None, reserve=None, unreserve=None, **request) -> tuple[str, dict]:
    """Check the request (``planner.resolve_request``), book a node, have its agent create it: (node, description).

    A refusal raises the service's error (422/403 before anything is booked;
    ``cluster_full`` when no node has room; the agent's own, such as a quota);
    nothing stays booked after a failure.  ``before(node)`` runs once the
    node is known, before the agent is asked.  ``reserve(sandbox_id,
    resources, ttl)``: pay the tenant's quota before anything is booked (a
    tenant at its quota books nothing, not even for a moment); undone by
    ``unreserve(sandbox_id)`` when the create fails.
    """
    import ray

    from blastwall.service.ceiling import format_size
    from blastwall.service.commands import new_id
    from blastwall.service.errors import Unavailable, from_answer

    _policy, wanted, ttl, _default = planner.resolve_request(
        tenant, policy=request.get("policy"), image=request.get("image"), tier=request.get("tier"),
        resources=request.get("resources"), ttl=request.get("ttl"))
    sandbox_id = new_id("sbx_")
    if reserve is not None:
        reserve(sandbox_id, wanted, ttl)
        request["reserved"] = True
    try:
        placement = place(sandbox_id, cpus=wanted.cpus, memory=wanted.memory, timeout=placement_timeout)
    except BaseException:
        if unreserve is not None:
            unreserve(sandbox_id)
        raise
    if placement is None:
        if unreserve is not None:
            unreserve(sandbox_id)
        raise Unavailable(f"no node of the cluster has room for a sandbox of {format_size(wanted.memory)} and "
                          f"{wanted.cpus:g} CPUs now; try again later", code="cluster_full", retry_after=5)
    try:
        agent = agent_for(placement.node, settings)
        if before is not None:
            before(placement.node)
        try:
            answer, value = ray.get(agent.call.remote("create", tenant, sandbox_id=sandbox_id, **request),
                                    timeout=CREATE_TIMEOUT)
        except ray.exceptions.RayError as exc:
            raise AgentFailed(placement.node) from exc
        if answer != "ok":
            raise from_answer(value)
    except BaseException:
        release(sandbox_id)
        if unreserve is not None:
            unreserve(sandbox_id)
        raise
    return placement.node, value


def release(sandbox_id: str) -> bool:
    """The sandbox's placement group removed, if it still exists."""
    from ray.util.placement_group import get_placement_group, remove_placement_group

    try:
        group = get_placement_group(PLACEMENT_PREFIX + sandbox_id)
    except ValueError:
        return False
    remove_placement_group(group)
    return True


def agent_for(node: str, settings: dict):
    """The node's agent (started there if it does not run yet); ready when this returns."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from blastwall.ray.agent import NodeAgent

    with _lock:
        handle = _agents.get(node)
    if handle is not None:
        return handle
    actor = ray.remote(NodeAgent).options(
        name=AGENT_PREFIX + node, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        max_concurrency=512, num_cpus=0, max_restarts=-1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
    handle = actor.remote(settings)
    ray.get(handle.ready.remote(), timeout=180)
    with _lock:
        _agents[node] = handle
    return handle


def forget(node: str) -> None:
    with _lock:
        _agents.pop(node, None)


def agents() -> dict[str, object]:
    """{node id: agent} of every agent that runs now, whoever started it."""
    import ray

    found = {}
    for node in alive_nodes():
        try:
            found[node] = ray.get_actor(AGENT_PREFIX + node, namespace=NAMESPACE)
        except ValueError:
            continue
    return found


def alive_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def dead_nodes() -> set[str]:
    """Nodes the cluster knows and reports dead (a node it does not list is not judged)."""
    import ray

    return {n["NodeID"] for n in ray.nodes() if not n.get("Alive")}


def nodes() -> list[dict]:
    """Each alive node's id, address and the blastwall slots it offers and has free."""
    import ray

    available: dict = {}
    try:
        from ray._private.state import state

        available = state._available_resources_per_node()
    except Exception:  # noqa: BLE001 - an internal API: without it, no free figures
        pass
    out = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        total = n.get("Resources", {})
        free = available.get(n["NodeID"], {})
        out.append({"node": n["NodeID"], "address": n.get("NodeManagerAddress", ""),
                    "slots": total.get(SLOT, 0), "slots_free": free.get(SLOT), "cpus": total.get("CPU", 0),
                    "memory": total.get("memory", 0)})
    return out
