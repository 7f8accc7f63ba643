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

A session's disk, which outlives containers, cannot be on a node: it would stay there while the
session moves to another. It lives where the session's files live, on the storage every node
mounts through the cluster's ``volume_driver`` (an NFS export), when that storage is a directory
on this host (``SwarmCluster(session_storage=...)``): the disk is made and mounted there by this
host's disk agent, as on one host, at ``<storage>/<disk>``, so each session's directory in the
export *is* its size-capped filesystem. The task mounts its ``work``, ``uploads`` and ``home``
as volumes of the driver whose device is ``<export>/<disk>/work``..., on whichever node it runs:
every node writes into the one capped filesystem, gets ENOSPC at the quota, and a node's loss
loses nothing. The disk stays mounted while the session exists (an NFS server cannot serve a
directory that comes and goes under a client; mounting its file a second time while a lingering
client still uses the first mount would corrupt it): :func:`release_in_storage` unmounts and
deletes it when the session's files go.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from docker.errors import APIError, NotFound
from requests.exceptions import ConnectionError as EngineConnectionError

from ..engine.client import docker_client
from ..engine.swarm import NODE_ID_TEMPLATE, SwarmCluster
from ..errors import SandboxError
from ..images.bases import MINBASE
from .disk import DISK_DIR, _Agent, disk_owner

__all__ = ["DISK_PARTS", "node_disk_dir", "open_in_storage", "open_on_nodes", "release_in_storage",
           "release_on_node", "release_on_nodes"]

DISK_PARTS = ("work", "uploads", "home", "tmp")
"""The directories of a disk that a sandbox mounts (``tmp`` only when ``/tmp`` is on disk)."""

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
    owner = disk_owner()

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


def _storage_agent(storage: str) -> _Agent:
    """The disk agent of this process for the session storage ``storage`` (on this host's engine)."""
    client = docker_client()
    with _agents_lock:
        agent = _agents.get(("", storage))
        if agent is None:
            agent = _agents[("", storage)] = _Agent(client, host_dir=storage)
        return agent


def open_in_storage(cluster: SwarmCluster, name: str, size: int, uid: int, gid: int) -> tuple[str, bool]:
    """Make the session disk ``name`` in the cluster's session storage (unless it exists) and mount it there.

    Returns:
        Its directory (the mount point, in the export), and whether it was made now (it is empty).

    Raises:
        SandboxError: this host's engine could not make it, or made it on another host (the
            session storage must be on the engine's host).
    """
    storage = cluster.session_storage
    assert storage is not None
    agent = _storage_agent(storage)
    said = agent.run("open", name, str(size), str(uid), str(gid), "1", disk_owner())
    if not os.path.exists(f"{storage}/{name}.img"):  # the engine's host is another one
        if said.strip() == "new":
            agent.release(name, True)
        raise SandboxError(f"session_storage {storage} is not on the host of the Docker engine "
                           f"({agent.client.api.base_url}), which made the disk {name} in its own {storage}: run this "
                           f"process on the storage's host, with its engine, or leave session_storage out")
    return f"{storage}/{name}", said.strip() == "new"


def release_in_storage(cluster: SwarmCluster, name: str, *, timeout: float = 60) -> None:
    """Delete the session disk ``name`` (its files) from the cluster's session storage, once the
    volumes serving it on the nodes are gone: removing them waits for the session's last task's
    container to go, so the filesystem is unmounted when nothing uses it. A node that does not
    answer keeps its volume (a record that mounts nothing until used)."""
    storage = cluster.session_storage
    assert storage is not None
    volumes = [cluster.storage_volume(f"{storage}/{name}/{part}") for part in DISK_PARTS]
    deadline = time.monotonic() + timeout
    for node in cluster.ready_nodes():
        try:
            engine = cluster.engine(cluster.node_address(node)).api
        except SandboxError:
            continue
        for volume in volumes:
            while True:
                try:
                    engine.remove_volume(volume, force=True)
                except NotFound:
                    pass
                except EngineConnectionError:
                    break
                except APIError as exc:  # in use, by a task whose removal is under way
                    if exc.status_code == 409 and time.monotonic() < deadline:
                        time.sleep(0.1)
                        continue
                    logger.warning("Could not remove the volume %s on node %s: %s", volume, cluster.node_name(node),
                                   exc.explanation)
                break
    _storage_agent(storage).release(name, True)
