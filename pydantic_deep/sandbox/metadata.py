"""Keeping a networked sandbox away from the cloud metadata address, 169.254.169.254.

On a cloud VM that address answers with the machine's identity and, often, credentials: a
sandbox with network access must not reach it. The sandbox cannot change its own routes (it has
no ``NET_ADMIN``), and Docker has no per-container firewall, so a short-lived helper container
joins the sandbox's network namespace with ``NET_ADMIN``, adds a *prohibit* route for the address
there (connections fail at once with "Permission denied"), and exits. The route stays with the
namespace, out of the sandbox's reach. The helper runs the sandbox's own image, with its Python
and nothing else, over a raw netlink socket (no ``ip`` command needed). An image without ``python3``
(the Node.js runtimes: Node.js has no netlink sockets) lends the helper nothing but its network
namespace: the helper then runs from the Python runtimes' base image (:func:`helper_image`).
"""

from __future__ import annotations

import docker
from docker.errors import ContainerError

from ..errors import SandboxError
from ..images.bases import ensure_base_image
from ..runtimes import BUILTIN_RUNTIMES

__all__ = ["METADATA_ADDRESS", "block_metadata", "helper_image"]

METADATA_ADDRESS = "169.254.169.254"

# RTM_NEWROUTE for METADATA_ADDRESS/32, type RTN_PROHIBIT, in the main table; exits with the
# kernel's answer (0, or the errno).
_ADD_ROUTE = """
import socket, struct, sys
body = struct.pack("=BBBBBBBBI", socket.AF_INET, 32, 0, 0, 254, 4, 0, 8, 0)
body += struct.pack("=HH4s", 8, 1, socket.inet_aton(sys.argv[1]))
flags = 0x1 | 0x4 | 0x400 | 0x200  # REQUEST, ACK, CREATE, EXCL
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
sock.send(struct.pack("=IHHII", 16 + len(body), 24, flags, 1, 0) + body)
sys.exit(-struct.unpack_from("=i", sock.recv(4096), 16)[0])
"""


def block_metadata(client: docker.DockerClient, container_id: str, image: str, python: str,
                   labels: dict[str, str]) -> None:
    """Make :data:`METADATA_ADDRESS` unreachable from the running container ``container_id``.

    Args:
        image: An image with ``python`` (the sandbox's own) to run the helper from.
        labels: Labels for the helper container, so a leftover one can be found.

    Raises:
        SandboxError: the route could not be added.
    """
    try:
        client.containers.run(
            image, entrypoint=[python, "-I", "-S", "-c", _ADD_ROUTE, METADATA_ADDRESS], user="0:0",
            network_mode=f"container:{container_id}", cap_drop=["ALL"], cap_add=["NET_ADMIN"],
            labels=labels, remove=True,
        )
    except ContainerError as exc:
        raise SandboxError(f"could not block the metadata address {METADATA_ADDRESS} in the sandbox "
                           f"(exit code {exc.exit_status}); pass block_metadata=False to go without") from None


def helper_image(client: docker.DockerClient) -> tuple[str, str]:
    """An image with ``python3`` for the helper of a sandbox whose own image has none, and its
    ``python3``: the Python runtimes' base (pulled, or its air-gapped stand-in, once).

    Raises:
        ImageNotAvailableError: the base image cannot be had.
    """
    base = BUILTIN_RUNTIMES["python-minimal"].base_image
    assert base is not None
    return ensure_base_image(client, base), "python3"
