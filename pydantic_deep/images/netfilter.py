"""The image of the short-lived helper that writes a remote engine host's packet filter rules.

Where this process cannot run ``iptables`` in the engine's network namespace itself (a remote
engine, a non-root user), :mod:`pydantic_deep.engine.firewall` runs it in a container on the host's
network with ``NET_ADMIN``: this image, the minimal Debian base plus Debian's ``iptables`` (both
its nft and legacy backends; the helper uses the one the engine's rules are in). Built on first
need, from Debian's archive like the air-gapped bases.
"""

from __future__ import annotations

import docker

from ..engine import labels as label
from .bases import MINBASE, bootstrap_base
from .builder import build_image, image_exists, image_lock

__all__ = ["NETFILTER_IMAGE", "ensure_netfilter_image"]

NETFILTER_IMAGE = "pydantic-deep/netfilter:bookworm"

_DOCKERFILE = f"""FROM {MINBASE.tag}
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends iptables \\
    && rm -rf /var/lib/apt/lists/*
"""


def ensure_netfilter_image(client: docker.DockerClient) -> str:
    """The helper's image, built if missing; returns its tag."""
    bootstrap_base(client, MINBASE)
    with image_lock(NETFILTER_IMAGE):
        if not image_exists(client, NETFILTER_IMAGE):
            build_image(client, NETFILTER_IMAGE, _DOCKERFILE, labels=label.managed())
    return NETFILTER_IMAGE
