"""The Docker networks networked sandboxes sit on, and who may talk to whom on them.

- An *egress* network (``pydantic-deep-egress``, bridge ``pdn-egress``) for every sandbox with the
  network on: a bridge with inter-container communication off (``enable_icc=false``), so its
  sandboxes reach the outside world through the host's route but never each other, by address or
  by name. Sandboxes that allow private ranges (``allow_private``) or the metadata address get an
  egress network of their own per such setting (``pydantic-deep-egress-<hash>``), since the rules
  that let them through go by bridge.
- A *shared* network instead, when sandboxes name one (``shared_network="team"``): a bridge with
  inter-container communication on, so its sandboxes reach each other by address and by name, and
  otherwise the same as an egress network (with the network off: an internal bridge, with no route
  out at all). Its sandboxes therefore share one network setting: the first one on it sets it, and
  a sandbox asking for another is refused. A network's Docker name carries its owner
  (``pydantic-deep-shared-<name>``, or ``pydantic-deep-user-<owner>-<name>`` for a session
  manager's user), so different users' sandboxes never meet on one, whatever name they pick.
  A sandbox sits on one network only: with two, Docker's name resolution would answer a peer's name
  with its address on the other network.

- The *proxied* network (``pydantic-deep-proxied``, bridge ``pdn-proxied``) for sandboxes whose
  network is a list of host patterns: an internal bridge (no route out) with inter-container
  communication off, where the egress proxy (:mod:`pydantic_deep.engine.egress`) is the one peer
  its sandboxes reach; the proxy goes out through the egress network.

A sandbox on no network at all, on this machine's engine, is off the engine's networking too
(``network_disabled``): the OCI runtime makes its network namespace, loopback alone, without the
engine's network sandbox and the hook that joins it, which were half the engine's work of a start
(20 containers started at once: 3.4-3.6 s on ``none``, 1.7-1.8 s so). The engine then writes no
``/etc/hosts``: :func:`loopback_hosts_mount` gives it the one the engine would have written.

Every bridge's name starts with ``pdn-``: the host's packet filter rules of
:mod:`pydantic_deep.engine.firewall` go by that prefix. Networks carry the label
``pydantic-deep.network``; :func:`remove_unused_networks` removes those without containers.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Sequence
from typing import Any

import docker
from docker.errors import APIError, NotFound

from .._cache import cache_dir, write_atomically
from ..errors import InvalidArgumentError, shown
from . import labels as label
from .firewall import BRIDGE_PREFIX, HelperImage, NetworkRules, apply_rules, remove_rules

__all__ = ["PROXIED_NETWORK", "PROXY_PORT", "checked_private_ranges", "checked_shared_name", "ensure_egress_network",
           "ensure_proxied_network", "ensure_shared_network", "loopback_hosts_mount", "network_rules",
           "remove_network_if_unused", "remove_unused_networks", "secure", "shared_network_name"]

LABEL = label.NETWORK
_LABEL_EGRESS = label.NETWORK_EGRESS
_LABEL_ALLOW = label.NETWORK_ALLOW_PRIVATE
_LABEL_METADATA = label.NETWORK_ALLOW_METADATA
_BRIDGE_OPTION = "com.docker.network.bridge.name"
PROXY_PORT = 3128
"""The egress proxy's port on the proxied network."""
PROXIED_NETWORK = "pydantic-deep-proxied"
_SHARED_NAME = re.compile(r"[a-z0-9](?:[a-z0-9_.-]{0,61}[a-z0-9])?")
# What the engine writes to /etc/hosts for a container with a network namespace of its own.
_LOOPBACK_HOSTS = (b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n"
                   b"ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n")
# Named by its content, as a CA bundle's file is: a version that writes other lines uses another file.
_LOOPBACK_HOSTS_NAME = f"hosts-{hashlib.sha256(_LOOPBACK_HOSTS).hexdigest()[:12]}"


def loopback_hosts_mount() -> docker.types.Mount:
    """A read-only ``/etc/hosts`` as the engine writes it (``localhost`` and the IPv6 names), for a
    container off the engine's networking (see the module's docstring), from a file of this
    machine's: its engine must be on this machine."""
    path = cache_dir("hosts") / _LOOPBACK_HOSTS_NAME
    if not path.exists():
        write_atomically(path, _LOOPBACK_HOSTS)
    return docker.types.Mount("/etc/hosts", str(path), type="bind", read_only=True)


def checked_private_ranges(ranges: Sequence[str]) -> tuple[str, ...]:
    """``ranges`` as IPv4 networks in CIDR form, checked.

    Raises:
        InvalidArgumentError: not a list of IPv4 networks like ``"10.1.0.0/16"``.
    """
    if isinstance(ranges, str):
        raise InvalidArgumentError(f"allow_private must be a list of IPv4 ranges like ['10.1.0.0/16'], "
                                   f"not the string {shown(ranges)}")
    checked = []
    for item in ranges:
        try:
            network = ipaddress.IPv4Network(item, strict=True)
        except (ValueError, TypeError) as exc:
            raise InvalidArgumentError(f"allow_private: {shown(str(item))} is not an IPv4 range like "
                                       f"'10.1.0.0/16' or '10.1.2.3/32' ({exc})") from None
        if network.prefixlen == 0:
            raise InvalidArgumentError("allow_private: 0.0.0.0/0 would open every private network; list the "
                                       "ranges the sandbox needs")
        checked.append(str(network))
    return tuple(sorted(set(checked)))


def checked_shared_name(name: str) -> str:
    """A shared network's name as given, checked (1-63 lowercase letters, digits, ``.``, ``_``, ``-``).

    Raises:
        InvalidArgumentError: any other name.
    """
    if not isinstance(name, str) or not _SHARED_NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"shared_network {shown(str(name))} must be 1-63 lowercase letters, digits, '.', '_' and '-', "
            "starting and ending with a letter or digit (e.g. 'team')")
    return name


def shared_network_name(name: str, owner: str | None = None) -> str:
    """The Docker name of the shared network ``name`` of ``owner`` (no owner: the application's)."""
    return f"pydantic-deep-shared-{name}" if owner is None else f"pydantic-deep-user-{owner}-{name}"


def _bridge(kind: str, docker_name: str) -> str:
    return f"{BRIDGE_PREFIX}{kind}{hashlib.sha256(docker_name.encode()).hexdigest()[:10]}"


def _ensure_network(client: docker.DockerClient, name: str, bridge: str, *, internal: bool, icc: bool,
                    labels: dict[str, str]) -> str:
    try:
        return str(client.api.inspect_network(name)["Name"])
    except NotFound:
        pass
    try:
        client.api.create_network(
            name, driver="bridge", internal=internal, check_duplicate=True,
            options={_BRIDGE_OPTION: bridge, "com.docker.network.bridge.enable_icc": str(icc).lower()},
            labels=label.managed(labels))
    except APIError as exc:
        if exc.status_code != 409:  # made meanwhile by another process: use it
            raise
    return name


def _setting_labels(egress: bool, allow_private: tuple[str, ...], allow_metadata: bool) -> dict[str, str]:
    return {_LABEL_EGRESS: str(egress).lower(), _LABEL_ALLOW: json.dumps(list(allow_private)),
            _LABEL_METADATA: str(allow_metadata).lower()}


def ensure_egress_network(client: docker.DockerClient, allow_private: tuple[str, ...] = (),
                          allow_metadata: bool = False) -> str:
    """The egress network for this setting (made if missing); returns its Docker name."""
    if not allow_private and not allow_metadata:
        name, bridge = "pydantic-deep-egress", f"{BRIDGE_PREFIX}egress"
    else:
        digest = hashlib.sha256(json.dumps([allow_private, allow_metadata]).encode()).hexdigest()[:10]
        name = f"pydantic-deep-egress-{digest}"
        bridge = _bridge("e", name)
    return _ensure_network(client, name, bridge, internal=False, icc=False,
                           labels={LABEL: "egress", **_setting_labels(True, allow_private, allow_metadata)})


def ensure_proxied_network(client: docker.DockerClient, proxy: str) -> str:
    """The proxied network (made if missing), whose one reachable peer is the container ``proxy``."""
    return _ensure_network(client, PROXIED_NETWORK, f"{BRIDGE_PREFIX}proxied", internal=True, icc=False,
                           labels={LABEL: "proxied", label.NETWORK_PROXY: proxy,
                                   **_setting_labels(False, (), False)})


def _proxy_address(client: docker.DockerClient, network: dict[str, Any]) -> str | None:
    """``address:port`` of the proxy on a proxied network, or ``None`` while it is not on it."""
    proxy = (network.get("Labels") or {}).get(label.NETWORK_PROXY)
    if proxy is None:
        return None
    containers = client.api.inspect_network(network["Id"]).get("Containers") or {}
    for container in containers.values():
        if container.get("Name") == proxy and container.get("IPv4Address"):
            return f"{container['IPv4Address'].split('/')[0]}:{PROXY_PORT}"
    return None


def ensure_shared_network(client: docker.DockerClient, name: str, owner: str | None = None, *, egress: bool,
                          allow_private: tuple[str, ...] = (), allow_metadata: bool = False) -> str:
    """The shared network ``name`` of ``owner`` (made if missing, with this setting); returns its
    Docker name.

    Raises:
        InvalidArgumentError: the network exists with another setting (its sandboxes share one).
    """
    docker_name = shared_network_name(checked_shared_name(name), owner)
    wanted = _setting_labels(egress, allow_private, allow_metadata)
    _ensure_network(client, docker_name, _bridge("s", docker_name), internal=not egress, icc=True,
                    labels={LABEL: "shared", **wanted})
    labels = client.api.inspect_network(docker_name).get("Labels") or {}
    if any(labels.get(key) != value for key, value in wanted.items()):
        raise InvalidArgumentError(
            f"the shared network {name!r} was made for sandboxes with {_describe(labels)}, and this one has "
            f"{_describe(wanted)}: every sandbox of a shared network has the same network, allow_private and "
            "block_metadata (or name another shared network)")
    return docker_name


def _describe(labels: dict[str, str]) -> str:
    allowed = json.loads(labels.get(_LABEL_ALLOW) or "[]")
    return (f"network={labels.get(_LABEL_EGRESS) == 'true'}, allow_private={allowed}, "
            f"block_metadata={labels.get(_LABEL_METADATA) != 'true'}")


def _ours(client: docker.DockerClient) -> list[dict[str, Any]]:
    return list(client.api.networks(filters={"label": LABEL}))


def network_rules(client: docker.DockerClient) -> list[NetworkRules]:
    """The firewall's view of every pydantic_deep network of the engine."""
    rules = []
    for network in _ours(client):
        labels = network.get("Labels") or {}
        bridge = (network.get("Options") or {}).get(_BRIDGE_OPTION, "")
        if not bridge.startswith(BRIDGE_PREFIX):
            continue
        rules.append(NetworkRules(bridge, tuple(json.loads(labels.get(_LABEL_ALLOW) or "[]")),
                                  labels.get(_LABEL_METADATA) == "true", labels.get(_LABEL_EGRESS) != "false",
                                  proxy=_proxy_address(client, network)))
    return rules


def secure(client: docker.DockerClient, *, helper_image: HelperImage) -> None:
    """Write the host's rules for every pydantic_deep network (see :func:`firewall.apply_rules`)."""
    apply_rules(client, network_rules(client), helper_image=helper_image)


def remove_network_if_unused(client: docker.DockerClient, name: str) -> bool:
    """Remove the network ``name`` unless a container is on it; whether it was removed."""
    try:
        client.api.remove_network(name)
    except NotFound:
        return False
    except APIError as exc:
        if exc.status_code in (403, 409) or "active endpoints" in str(exc.explanation):
            return False
        raise
    return True


def _remove_proxy_if_alone(client: docker.DockerClient, network: dict[str, Any]) -> None:
    """Remove the egress proxy of a proxied network that no sandbox is on any more."""
    proxy = (network.get("Labels") or {}).get(label.NETWORK_PROXY)
    if proxy is None:
        return
    containers = (client.api.inspect_network(network["Id"]).get("Containers") or {}).values()
    if all(container.get("Name") == proxy for container in containers):
        try:
            client.api.remove_container(proxy, force=True)
        except NotFound:
            pass


def remove_unused_networks(client: docker.DockerClient, *, helper_image: HelperImage) -> int:
    """Remove every pydantic_deep network without containers (and the egress proxy when no sandbox
    is behind it), then the host's rules of those gone (all of them when no network is left).
    Returns how many networks were removed."""
    for network in _ours(client):
        _remove_proxy_if_alone(client, network)
    removed = sum(remove_network_if_unused(client, network["Name"]) for network in _ours(client))
    if not _ours(client):
        remove_rules(client, helper_image=helper_image)
    # A sandbox may have made its network (and written the rules) since we looked: look again, so
    # its rules are back before its container can start (it writes them before creating it).
    if _ours(client):
        secure(client, helper_image=helper_image)
    return removed

