"""The engine host's packet filter rules that keep networked sandboxes apart from everything but the
outside world.

Docker already keeps its networks apart from each other, and a network made with
``enable_icc=false`` keeps its containers apart (see :mod:`pydantic_deep.engine.networks`). What
Docker lets through is the host itself and whatever the host can route to: its own addresses and
ports, the private networks it sits on, the cloud metadata address. Chains of the host's
``filter`` table close that, for every bridge whose name starts with ``pdn-`` (the networks
pydantic_deep makes):

- ``PYDANTIC-DEEP``, jumped to from Docker's ``DOCKER-USER`` chain (forwarded traffic, before
  Docker's own rules): refuses private, shared (CGNAT) and link-local destinations, the metadata
  address among them. Let through are DNS to the servers the engine forwards its containers'
  queries to, and the ranges (or the metadata address) a network was made to allow. Out of a
  network made without the network (a shared network of offline sandboxes), everything is refused.
- ``PYDANTIC-DEEP-PROXY``, jumped to from ``DOCKER-USER`` for traffic between two ``pdn-``
  bridges' ports: on the proxied network (host-pattern sandboxes,
  :mod:`pydantic_deep.engine.egress`), whose containers Docker keeps apart, connections to the
  egress proxy's port (and its answers) are the one thing let through between them.
- ``PYDANTIC-DEEP-INPUT``, jumped to from ``INPUT`` (traffic to the host itself, which
  ``DOCKER-USER`` never sees): refuses every new connection from a sandbox bridge to any address of
  the host, the engine's TCP port included.

Refused packets get an ICMP "administratively prohibited" answer, so a connection fails at once
("No route to host") instead of hanging. Every rule carries the comment ``pydantic-deep``.

The rules are computed from the engine's list of pydantic_deep networks and written whole with one
``iptables-restore --noflush`` (one transaction: never a moment with half of them), then the two
jumps are added if missing: applying them again changes nothing. They are the engine host's, out
of any container's reach.

Where this process is root in the engine's network namespace, it runs ``iptables`` itself (tens of
milliseconds, on every networked start, so rules someone flushed are put back). Otherwise (a remote
engine, a non-root user) a short-lived helper container on the host's network runs it, once per
process and rule set: from an image with Debian's ``iptables`` (:mod:`pydantic_deep.images.netfilter`),
with ``NET_ADMIN`` and ``NET_RAW`` (the legacy backend's socket needs it) and no other capability,
and through the backend (nft or legacy) Docker's own chains are in.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import docker

from ..errors import NetworkIsolationError
from . import labels as label
from .api import engine_key

__all__ = ["BLOCKED_RANGES", "BRIDGE_PREFIX", "METADATA_ADDRESS", "HelperImage", "NetworkRules", "apply_rules",
           "remove_rules", "rules_installed"]

logger = logging.getLogger(__name__)

METADATA_ADDRESS = "169.254.169.254"
"""The cloud metadata service: on a cloud VM it answers with the machine's identity and credentials."""

BRIDGE_PREFIX = "pdn-"
"""Every bridge of a pydantic_deep network is named with this prefix; the rules match on it."""

BLOCKED_RANGES = (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # private use (RFC 1918): LANs, Docker's networks
    "100.64.0.0/10",  # shared address space (RFC 6598): carrier-grade NAT, some VPNs and clouds
    "169.254.0.0/16",  # link-local (RFC 3927): the metadata address and its neighbours
    "192.0.0.0/24",  # IETF protocol assignments (RFC 6890)
    "0.0.0.0/8",  # "this network"
)
"""Destinations no networked sandbox reaches unless its network was made to allow them."""

COMMENT = "pydantic-deep"
FORWARD_CHAIN = "PYDANTIC-DEEP"
INPUT_CHAIN = "PYDANTIC-DEEP-INPUT"
PROXY_CHAIN = "PYDANTIC-DEEP-PROXY"
_TAG = f"-m comment --comment {COMMENT}"
_REJECT = "-j REJECT --reject-with icmp-admin-prohibited"
_JUMPS = (f"DOCKER-USER -i {BRIDGE_PREFIX}+ {_TAG} -j {FORWARD_CHAIN}",
          f"INPUT -i {BRIDGE_PREFIX}+ {_TAG} -j {INPUT_CHAIN}",
          f"DOCKER-USER -i {BRIDGE_PREFIX}+ -o {BRIDGE_PREFIX}+ {_TAG} -j {PROXY_CHAIN}")

# The DNS servers the engine forwards its containers' queries to (from the containers' own network
# namespaces, so through the forward path): the host's, or systemd-resolved's upstream ones.
_RESOLVERS = ("awk '$1 == \"nameserver\" { print $2 }' /etc/resolv.conf /run/systemd/resolve/resolv.conf "
              "2>/dev/null | sort -u")


@dataclass(frozen=True)
class NetworkRules:
    """What one pydantic_deep network's bridge may reach beyond the rules every bridge gets."""

    bridge: str
    allow_private: tuple[str, ...] = ()
    allow_metadata: bool = False
    egress: bool = True  # False: peers only (Docker drops the rest silently; this refuses it at once)
    proxy: str | None = None  # "address:port" of the egress proxy: the one peer its sandboxes reach


@dataclass
class _Applied:
    lock: threading.Lock = field(default_factory=threading.Lock)
    digests: set[tuple[str, str]] = field(default_factory=set)


_applied = _Applied()


def _restore_input(networks: Iterable[NetworkRules]) -> str:
    """A shell snippet printing the ``iptables-restore`` input of the chains (the resolvers are
    read on the engine's host, where the snippet runs)."""
    networks = sorted(networks, key=lambda n: n.bridge)
    forward = [f"-A {FORWARD_CHAIN} -o {BRIDGE_PREFIX}+ {_TAG} -j RETURN"]  # Docker's ICC rules decide
    forward += [rule for n in networks if n.proxy for rule in _proxy_rules(n.bridge, n.proxy)]
    forward += [f"-A {FORWARD_CHAIN} -i {n.bridge} {_TAG} {_REJECT}" for n in networks if not n.egress]
    forward += [f"-A {FORWARD_CHAIN} -i {n.bridge} -d {METADATA_ADDRESS}/32 {_TAG} -j RETURN"
                for n in networks if n.allow_metadata]
    after_resolvers = [f"-A {FORWARD_CHAIN} -d {METADATA_ADDRESS}/32 {_TAG} {_REJECT}"]
    after_resolvers += [f"-A {FORWARD_CHAIN} -i {n.bridge} -d {cidr} {_TAG} -j RETURN"
                        for n in networks for cidr in n.allow_private]
    after_resolvers += [f"-A {FORWARD_CHAIN} -d {cidr} {_TAG} {_REJECT}" for cidr in BLOCKED_RANGES]
    after_resolvers += [f"-A {INPUT_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED {_TAG} -j RETURN",
                        f"-A {INPUT_CHAIN} {_TAG} {_REJECT}"]
    head = ["*filter", f":{FORWARD_CHAIN} - [0:0]", f":{INPUT_CHAIN} - [0:0]", f":{PROXY_CHAIN} - [0:0]", *forward]
    resolver = (f"-A {FORWARD_CHAIN} -d $ns/32 -p %s --dport 53 {_TAG} -j RETURN")
    return "\n".join([
        "{",
        *(f"echo '{line}'" for line in head),
        f"for ns in $({_RESOLVERS}); do",
        "  case $ns in *:*|127.*) continue;; esac",  # IPv6 (no IPv6 in sandboxes) and the host's own
        *(f"  echo \"{resolver % proto}\"" for proto in ("udp", "tcp")),
        "done",
        *(f"echo '{line}'" for line in [*after_resolvers, "COMMIT"]),
        "} | iptables-restore -w --noflush",
    ])


def _proxy_rules(bridge: str, proxy: str) -> list[str]:
    """On a bridge with inter-container traffic off: connections to the proxy's port, and its
    answers, pass (before Docker's rule that drops the rest between containers)."""
    address, port = proxy.rsplit(":", 1)
    both = f"-A {PROXY_CHAIN} -i {bridge} -o {bridge} -p tcp"
    return [f"{both} -d {address}/32 --dport {port} {_TAG} -j ACCEPT",
            f"{both} -s {address}/32 --sport {port} -m conntrack --ctstate ESTABLISHED {_TAG} -j ACCEPT"]


def _apply_script(networks: Iterable[NetworkRules]) -> str:
    checks = [
        "set -eu",
        "command -v iptables >/dev/null || { echo 'iptables is not installed' >&2; exit 3; }",
        "iptables -w -S DOCKER-USER >/dev/null 2>&1 || { echo 'there is no DOCKER-USER chain: the engine does "
        "not manage iptables (dockerd --iptables=false, rootless, or another firewall backend)' >&2; exit 4; }",
    ]
    jumps = [f"iptables -w -C {jump} 2>/dev/null || iptables -w -I {jump.replace(' ', ' 1 ', 1)}" for jump in _JUMPS]
    return "\n".join([*checks, _restore_input(networks), *jumps])


def _remove_script() -> str:
    lines = [f"while iptables -w -C {jump} 2>/dev/null; do iptables -w -D {jump}; done" for jump in _JUMPS]
    lines += [f"iptables -w -F {chain} 2>/dev/null && iptables -w -X {chain} || true"
              for chain in (FORWARD_CHAIN, INPUT_CHAIN, PROXY_CHAIN)]
    return "\n".join(lines)


def _runs_here(bridges: Sequence[str]) -> bool:
    """Whether this process can run the engine host's ``iptables`` itself: it is root, has
    ``iptables``, and sees the networks' bridges (so it is in the engine's network namespace)."""
    return (os.geteuid() == 0 and shutil.which("iptables") is not None and bool(bridges)
            and all(Path("/sys/class/net", bridge).exists() for bridge in bridges))


# In the helper: `iptables` and `iptables-restore` of the backend whose tables hold Docker's chains
# (a host's iptables may be nft or legacy; rules written through the other would never be seen).
_PICK_BACKEND = """mode=nft
iptables-nft -w -S DOCKER-USER >/dev/null 2>&1 || ! iptables-legacy -w -S DOCKER-USER >/dev/null 2>&1 || mode=legacy
mkdir -p /tmp/backend
ln -sf "$(command -v iptables-$mode)" /tmp/backend/iptables
ln -sf "$(command -v iptables-$mode-restore)" /tmp/backend/iptables-restore
PATH=/tmp/backend:$PATH
"""

HelperImage = Callable[[], str]
"""Gives the helper's image (built on first need), for engines this process cannot reach with iptables."""


def _run(client: docker.DockerClient, script: str, *, local: bool, helper_image: HelperImage) -> None:
    if local:
        process = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
        if process.returncode:
            raise NetworkIsolationError(f"could not set the sandbox network rules: {process.stderr.strip()}")
        return
    image = helper_image()
    container = client.containers.create(
        image, ["sh", "-c", _PICK_BACKEND + script], network_mode="host", cap_drop=["ALL"],
        cap_add=["NET_ADMIN", "NET_RAW"], user="0:0",
        labels=label.managed({label.ROLE: "firewall-helper"}))
    try:
        container.start()
        status = container.wait(timeout=120)["StatusCode"]
        if status:
            detail = container.logs(stdout=False, stderr=True).decode(errors="replace").strip()
            raise NetworkIsolationError(f"could not set the sandbox network rules on the engine's host through a "
                                        f"helper container ({image}, exit code {status}): {detail}")
    finally:
        container.remove(force=True)


def apply_rules(client: docker.DockerClient, networks: Sequence[NetworkRules], *,
                helper_image: HelperImage) -> None:
    """Write the rules for ``networks`` (every pydantic_deep network of the engine) on its host.

    Raises:
        NetworkIsolationError: the rules could not be written (the message says why); a networked
            sandbox must then not start.
    """
    # Processes that write at once, each from its own view of the networks, leave the last one's:
    # a network it did not see yet loses its allowances (never gains any) until the next start.
    script = _apply_script(networks)
    local = _runs_here([n.bridge for n in networks])
    key = (engine_key(client), hashlib.sha256(script.encode()).hexdigest())
    with _applied.lock:
        if not local and key in _applied.digests:
            return
        _run(client, script, local=local, helper_image=helper_image)
        _applied.digests.add(key)


def remove_rules(client: docker.DockerClient, *, helper_image: HelperImage) -> None:
    """Remove the chains and the jumps to them (when no pydantic_deep network is left)."""
    local = (os.geteuid() == 0 and shutil.which("iptables") is not None
             and client.api.base_url.startswith("http+docker://localhost") and _docker_user_here())
    with _applied.lock:
        _run(client, _remove_script(), local=local, helper_image=helper_image)
        _applied.digests.clear()


def _docker_user_here() -> bool:
    return subprocess.run(["iptables", "-w", "-S", "DOCKER-USER"], capture_output=True).returncode == 0


def rules_installed() -> list[str]:
    """The rules tagged ``pydantic-deep`` in this host's filter table (for tests and ``prune``)."""
    if shutil.which("iptables-save") is None:
        return []
    dump = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True).stdout
    return [line for line in dump.splitlines() if COMMENT in line or FORWARD_CHAIN in line]
