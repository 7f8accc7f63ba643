"""Networked sandboxes on a cluster: the single host's network isolation, on every node.

Swarm attaches a service's task to swarm-scoped networks only, and an overlay network (Swarm's
usual one) joins its containers across nodes and sends their outside traffic through a bridge of
Swarm's own. Neither keeps tenants apart. What does: a swarm-scoped *bridge* network made from a
config-only network (``docker network create --config-only`` on every node, then ``--scope swarm
--config-from`` on the manager). Each node then makes, where a task lands, a bridge of its own
from its config-only network's options: the same bridge a single host gives networked sandboxes
(:mod:`pydantic_deep.engine.networks`), named ``pdn-...`` and with inter-container traffic off
(on a shared network: on), and the same packet filter rules (:mod:`pydantic_deep.engine.firewall`)
are written in each node's own namespace, through its engine, by the short-lived netfilter helper.

So a networked sandbox on a cluster reaches the outside world through its node's route, and not:
its node's neighbours on the bridge, the node itself (its engine's port included), private ranges
(other nodes and their sandboxes among them) or the metadata address. A shared network is a bridge
on one node: its sandboxes are placed on the node its first running sandbox is on, so that they
reach each other (a network across nodes would need an overlay, whose traffic no node's rules see).

The rules must hold before a task can send a packet, and Swarm picks the node only after the
service exists: the config-only networks and the rules are written on every node new sandboxes may
go to, before the service is made (once per process, node and rule set; each node in parallel).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from docker.errors import APIError, DockerException, NotFound
from requests.exceptions import ConnectionError as EngineConnectionError

from ..errors import InvalidArgumentError, NetworkIsolationError
from . import labels as label
from .api import create_network
from .firewall import BRIDGE_PREFIX, apply_rules
from .networks import LABEL, network_rules, remove_network_if_unused, shared_network_name
from .swarm import SwarmCluster

__all__ = ["ensure_swarm_network", "remove_unused_swarm_networks", "shared_network_node", "swarm_network_name"]

NodeImage = Callable[[Mapping[str, Any]], str]
"""Gives the netfilter helper's image on a node (made available there on first need)."""

_BRIDGE_OPTION = "com.docker.network.bridge.name"


def _settings(egress: bool, allow_private: tuple[str, ...], allow_metadata: bool) -> dict[str, str]:
    return {label.NETWORK_EGRESS: str(egress).lower(), label.NETWORK_ALLOW_PRIVATE: json.dumps(list(allow_private)),
            label.NETWORK_ALLOW_METADATA: str(allow_metadata).lower()}


def swarm_network_name(shared: str | None, owner: str | None, allow_private: tuple[str, ...],
                       allow_metadata: bool) -> str:
    """The Docker name of a cluster's network: the egress network of this setting, or the shared one."""
    if shared is not None:
        return "pydantic-deep-swarm-" + shared_network_name(shared, owner).removeprefix("pydantic-deep-")
    if not allow_private and not allow_metadata:
        return "pydantic-deep-swarm-egress"
    digest = hashlib.sha256(json.dumps([allow_private, allow_metadata]).encode()).hexdigest()[:10]
    return f"pydantic-deep-swarm-egress-{digest}"


def ensure_swarm_network(cluster: SwarmCluster, *, shared: str | None, owner: str | None, egress: bool,
                         allow_private: tuple[str, ...], allow_metadata: bool, helper_image: NodeImage) -> str:
    """The swarm network a networked sandbox's service joins (made if missing), with its config-only
    network and the packet filter rules on every node sandboxes may go to; returns its name.

    Raises:
        InvalidArgumentError: a shared network of that name exists with another setting.
        NetworkIsolationError: the rules could not be written on a node.
    """
    name = swarm_network_name(shared, owner, allow_private, allow_metadata)
    wanted = _settings(egress, allow_private, allow_metadata)
    config: dict[str, Any] = {
        "ConfigOnly": True, "CheckDuplicate": True,
        "Options": {"com.docker.network.bridge.enable_icc": str(shared is not None).lower()},
        "Labels": label.managed({LABEL: "shared" if shared is not None else "egress", **wanted}),
    }

    def on_node(node: Mapping[str, Any]) -> None:
        try:
            secure_node(node)
        except (DockerException, EngineConnectionError):
            if cluster.unreachable(node):  # lost, and so kept out of this sandbox's placement
                return
            raise

    def secure_node(node: Mapping[str, Any]) -> None:
        client = cluster.engine(cluster.node_address(node))
        _create(client, {**config, "Options": {**config["Options"], _BRIDGE_OPTION: _bridge_of(config["Name"])}})
        labels = client.api.inspect_network(config["Name"]).get("Labels") or {}
        if any(labels.get(key) != value for key, value in wanted.items()):
            raise InvalidArgumentError(
                f"the shared network {shared!r} was made for sandboxes with another network, allow_private or "
                f"block_metadata setting ({_described(labels)}): every sandbox of a shared network has the same "
                "(or name another shared network)")
        # Every network of ours on the node, each once: the config-only network and the bridge made
        # from it both carry the bridge's name.
        apply_rules(client, list(dict.fromkeys(network_rules(client))), helper_image=lambda: helper_image(node))

    # Each making of the swarm network gets config-only networks (and so bridges) of new names: a
    # node may keep its local copy of an earlier one, removed meanwhile (a node that was down when
    # it went), and two bridges of one name cannot be.
    for _attempt in range(3):
        made = _config_of(cluster, name)
        config["Name"] = made or f"{name}-{uuid.uuid4().hex[:8]}"
        nodes = cluster.ready_nodes()
        with ThreadPoolExecutor(max(1, len(nodes))) as threads:
            list(threads.map(on_node, nodes))
        if made is not None or _create(cluster.client, {"Name": name, "Driver": "bridge", "Scope": "swarm",
                                                        "CheckDuplicate": True,
                                                        "ConfigFrom": {"Network": config["Name"]}}):
            return name
        # Made meanwhile by another process, from config-only networks of its own: secure those.
    raise NetworkIsolationError(f"the cluster network {name} kept changing while it was being secured")


def _bridge_of(config_name: str) -> str:
    return f"{BRIDGE_PREFIX}c{hashlib.sha256(config_name.encode()).hexdigest()[:10]}"


def _config_of(cluster: SwarmCluster, name: str) -> str | None:
    """The config-only network the swarm network ``name`` is made from, or ``None`` without one."""
    try:
        return str(cluster.client.api.inspect_network(name)["ConfigFrom"]["Network"])
    except NotFound:
        return None


def _create(client: Any, body: dict[str, Any]) -> bool:
    """Make the network ``body`` describes unless one of its name exists; whether it was made."""
    try:
        client.api.inspect_network(body["Name"])
        return False
    except NotFound:
        pass
    try:
        create_network(client, body)
    except APIError as exc:
        if exc.status_code != 409:  # made meanwhile by another process: use it
            raise
        return False
    return True


def _described(labels: Mapping[str, str]) -> str:
    allowed = json.loads(labels.get(label.NETWORK_ALLOW_PRIVATE) or "[]")
    return (f"network={labels.get(label.NETWORK_EGRESS) == 'true'}, allow_private={allowed}, "
            f"block_metadata={labels.get(label.NETWORK_ALLOW_METADATA) != 'true'}")


def shared_network_node(cluster: SwarmCluster, network: str) -> str | None:
    """The id of the node a running sandbox of the shared swarm network ``network`` is on, or ``None``."""
    for service in cluster.client.api.services(filters={"label": f"{label.SWARM_NETWORK}={network}"}):
        for task in cluster.client.api.tasks(filters={"service": service["ID"], "desired-state": "running"}):
            if task.get("NodeID") and task["Status"]["State"] in ("running", "starting", "preparing", "assigned"):
                return str(task["NodeID"])
    return None


def remove_unused_swarm_networks(cluster: SwarmCluster) -> int:
    """Remove the cluster's sandbox networks no service is on (from the manager), then each ready
    node's config-only networks whose swarm network is gone. Returns how many swarm networks went."""
    in_use = {service["Spec"].get("Labels", {}).get(label.SWARM_NETWORK)
              for service in cluster.client.api.services(filters={"label": label.SWARM_NETWORK})}
    ours = [n["Name"] for n in cluster.client.api.networks(filters={"scope": "swarm"})
            if n["Name"].startswith("pydantic-deep-swarm-")]
    removed = sum(_remove(cluster.client, name) for name in ours if name not in in_use)
    used = {(n.get("ConfigFrom") or {}).get("Network") for n in cluster.client.api.networks(filters={"scope": "swarm"})}
    for node in cluster.ready_nodes():
        client = cluster.engine(cluster.node_address(node))
        for network in client.api.networks(filters={"label": LABEL}):
            if network.get("ConfigOnly") and network["Name"] not in used:
                _remove(client, network["Name"])
    return removed


def _remove(client: Any, name: str) -> bool:
    """Remove the network ``name`` unless in use; whether it was. One that another process (or
    the manager, for the node) is removing at the same time is not an error."""
    try:
        return remove_network_if_unused(client, name)
    except APIError as exc:
        if "not found" in str(exc.explanation) or "in use" in str(exc.explanation):
            return False
        raise
