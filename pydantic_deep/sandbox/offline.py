"""Taking a running sandbox off every network, where the engine cannot start it without one.

A Swarm service has no ``none`` network: its task joins the node's default bridge. A sandbox
without network access must not keep that link, so a short-lived helper container joins the
sandbox's network namespace with ``NET_ADMIN`` and sets every link but loopback down, then exits. The sandbox has no
``NET_ADMIN`` to bring a link back up.
"""

from __future__ import annotations

import docker
from docker.errors import ContainerError

from ..errors import SandboxError

__all__ = ["cut_network"]

# RTM_NEWLINK with IFF_UP cleared, for each link but lo; exits with the kernel's first refusal.
_LINKS_DOWN = """
import socket, struct, sys
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
for seq, (index, name) in enumerate(socket.if_nameindex(), start=1):
    if name == "lo":
        continue
    body = struct.pack("=BBHiII", socket.AF_UNSPEC, 0, 0, index, 0, 1)
    sock.send(struct.pack("=IHHII", 16 + len(body), 16, 0x1 | 0x4, seq, 0) + body)
    error = -struct.unpack_from("=i", sock.recv(4096), 16)[0]
    if error:
        sys.exit(error)
"""


def cut_network(client: docker.DockerClient, container_id: str, image: str, python: str | None,
                labels: dict[str, str]) -> None:
    """Set every network link of the running container ``container_id`` but loopback down.

    Args:
        image: An image with ``python`` (the sandbox's own) to run the helper from.
        labels: Labels for the helper container, so a leftover one can be found.

    Raises:
        SandboxError: the image has no Python to run the helper, or a link stayed up.
    """
    if python is None:
        raise SandboxError(f"image {image} has no python3 to take the sandbox off the network with: "
                           "on a cluster, a sandbox without network needs a runtime with Python")
    try:
        client.containers.run(
            image, entrypoint=[python, "-I", "-S", "-c", _LINKS_DOWN], user="0:0",
            network_mode=f"container:{container_id}", cap_drop=["ALL"], cap_add=["NET_ADMIN"],
            labels=labels, remove=True,
        )
    except ContainerError as exc:
        raise SandboxError(f"could not take the sandbox off the network (exit code {exc.exit_status}); "
                           "pass network=True to keep it on") from None
