"""Capped disks on a cluster: a sandbox's disk on the node that runs its task.

On one host, a sandbox's disk (:mod:`pydantic_deep.sandbox.disk`) is made and mounted before its
container is created, which bind-mounts the disk's directories. On a cluster Swarm picks the node
only once the service exists, and creates the container there at once: there is no moment in
between to make the disk on that node. So the disk is made, under the same name, on every node
the sandbox may go to (each node's own disk agent, through its engine, the nodes in parallel; a
disk costs about 10 ms and 4 MB there until written), in a folder named by the node's Swarm id.
The service's bind mounts name that folder with Swarm's template ``{{.Node.ID}}``, so the task
mounts the disk of the node it lands on; the disks of the other nodes are released and deleted as
soon as it runs. The disk of the running task is released (and deleted) with its service.

Only disks that go with their sandbox: a session's disk, which outlives containers, would stay on
one node's disk while the session moves to another (sessions on a cluster keep their files on
volumes, shared across nodes with a ``volume_driver``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..engine.swarm import NODE_ID_TEMPLATE, SwarmCluster
from ..images.bases import MINBASE
from .disk import DISK_DIR, _Agent

__all__ = ["node_disk_dir", "open_on_nodes", "release_on_node", "release_on_nodes"]

logger = logging.getLogger("pydantic_deep.disk")

_agents: dict[tuple[str, str], _Agent] = {}
_agents_lock = threading.Lock()


def node_disk_dir(name: str, node_id: str = NODE_ID_TEMPLATE) -> str:
    """Where the disk ``name`` is mounted on the node ``node_id`` (by default Swarm's template, for
    a service's mounts)."""
    return f"{DISK_DIR}/swarm-{node_id}/{name}"


def _agent(cluster: SwarmCluster, node: Mapping[str, Any]) -> _Agent:
    """The disk agent of this process on ``node`` (its image, the minimal base, loaded there first)."""
    address = cluster.node_address(node)
    with _agents_lock:
        agent = _agents.get((address, node["ID"]))
        if agent is None:
            cluster.provide(node, MINBASE.tag)
            agent = _agents[(address, node["ID"])] = _Agent(cluster.engine(address),
                                                            host_dir=f"{DISK_DIR}/swarm-{node['ID']}")
        return agent


def open_on_nodes(cluster: SwarmCluster, name: str, size: int, uid: int, gid: int) -> list[Mapping[str, Any]]:
    """Make and mount the disk ``name`` on every node a sandbox may go to; returns those nodes.

    Raises:
        SandboxError: a node could not make it (the disks made on the others are released).
    """
    nodes: list[Mapping[str, Any]] = list(cluster.ready_nodes())
    owner = f"{socket.gethostname()} {os.getpid()}"

    def open_on(node: Mapping[str, Any]) -> bool:
        """Whether the disk is on ``node`` now (not when the node is found lost: no sandbox goes there)."""
        try:
            _agent(cluster, node).run("open", name, str(size), str(uid), str(gid), "0", owner)
        except Exception:
            if cluster.unreachable(node):
                return False
            raise
        return True

    with ThreadPoolExecutor(max(1, len(nodes))) as threads:
        outcomes = [threads.submit(open_on, node) for node in nodes]
    failures = [f.exception() for f in outcomes if f.exception() is not None]
    if failures:
        release_on_nodes(cluster, name, nodes)
        raise failures[0]  # type: ignore[misc]
    return [node for node, outcome in zip(nodes, outcomes, strict=True) if outcome.result()]


def release_on_node(cluster: SwarmCluster, name: str, node: Mapping[str, Any]) -> None:
    """Unmount and delete the disk ``name`` on ``node`` (its task's container going or gone)."""
    _agent(cluster, node).run("release", name, "1")


def release_on_nodes(cluster: SwarmCluster, name: str, nodes: Sequence[Mapping[str, Any]], *,
                     but: str | None = None) -> None:
    """Release and delete the disk ``name`` on ``nodes``, but the node ``but`` (whose task uses it).
    A node that does not answer keeps its disk until ``pydantic-deep prune`` runs on it."""

    def release(node: Mapping[str, Any]) -> None:
        try:
            release_on_node(cluster, name, node)
        except Exception:  # a node lost meanwhile
            logger.warning("Could not release the disk %s on node %s", name, cluster.node_name(node), exc_info=True)

    others = [node for node in nodes if node["ID"] != but]
    with ThreadPoolExecutor(max(1, len(others))) as threads, contextlib.suppress(Exception):
        list(threads.map(release, others))
