"""A real Ray cluster of three nodes on this machine, and service replicas that place sandboxes on it.

The nodes are Ray's own (``ray.cluster_utils.Cluster``: a raylet each, one GCS),
all on 127.0.0.1; each offers two ``blastwall_slot`` (two sandboxes at once).
The head's health checks are fast, so that a node killed without warning is
reported dead within seconds, as on a real cluster whose machine is gone.
"""

from __future__ import annotations

import importlib.util
import os
import time

# Ray on loopback only (its "local cluster" mode, read when ray is imported): nodes, GCS and
# workers listen on 127.0.0.1, never on the machine's own addresses.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
os.environ.update(LOOPBACK_ONLY)

import pytest  # noqa: E402

from tests.service.conftest import HAVE_SERVICE_DEPS, RUNSC, service_images  # noqa: F401 - a fixture

SLOTS_PER_NODE = 2

HAVE_RAY = importlib.util.find_spec("ray") is not None

needs_cluster = [
    pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed (pip install .[cluster])"),
    pytest.mark.skipif(not HAVE_SERVICE_DEPS, reason="fastapi/uvicorn/requests are not installed"),
    pytest.mark.skipif(RUNSC is None, reason="gVisor's runsc is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the container tier needs root on this machine"),
]


class RayCluster:
    def __init__(self) -> None:
        import ray
        from ray.cluster_utils import Cluster

        node = {"num_cpus": 2, "resources": {"blastwall_slot": SLOTS_PER_NODE}, "memory": 8 << 30}
        self.cluster = Cluster(initialize_head=True, head_node_args={
            **node, "include_dashboard": False,
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                               "health_check_initial_delay_ms": 0}})
        self.workers = [self.cluster.add_node(**node) for _ in range(2)]
        self.cluster.wait_for_nodes()
        self.address = self.cluster.address
        ray.init(address=self.address, namespace="blastwall", log_to_driver=False, logging_level="warning")

    def node_ids(self) -> list[str]:
        import ray

        return [n["NodeID"] for n in ray.nodes() if n["Alive"]]

    def kill_node(self, node_id: str) -> None:
        """The node's raylet killed (SIGKILL), nothing else: Ray loses the node, the machine goes on.

        The hard case: whatever ran there (its agent, its sandboxes) may live on, unseen by the
        cluster, which has already declared it lost.  The rest of the node goes at shutdown.
        """
        victim = next(n for n in self.workers if n.node_id == node_id)
        victim.kill_raylet()

    def wait_dead(self, node_id: str, timeout: float = 30) -> float:
        import ray

        start = time.time()
        while True:
            if any(n["NodeID"] == node_id and not n["Alive"] for n in ray.nodes()):
                return time.time() - start
            assert time.time() - start < timeout, f"Ray did not report node {node_id} dead in {timeout} s"
            time.sleep(0.2)

    def close(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()


def pytest_collection_modifyitems(items):
    """The cluster group is among the slowest (a Ray cluster per module, many sandboxes): `-m "not slow"` skips it."""
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.slow)


def close_agents() -> None:
    """Every node agent closes its sandboxes and goes: the next test starts new ones with its own settings."""
    import ray

    from blastwall.ray import cluster

    for agent in cluster.agents().values():
        try:
            ray.get(agent.close.remote(), timeout=120)
        except Exception:  # noqa: BLE001 - a dead node's agent
            pass
        ray.kill(agent)
    with cluster._lock:
        cluster._agents.clear()


@pytest.fixture(scope="module")
def ray_cluster():
    for mark in needs_cluster:
        if mark.args[0]:
            pytest.skip(reason=mark.kwargs["reason"])
    cluster = RayCluster()
    yield cluster
    cluster.close()
