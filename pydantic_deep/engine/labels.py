"""The label keys pydantic_deep puts on what it makes in the engine: containers, images, volumes.

The labels are how a later process (``pydantic-deep prune``, a :class:`SessionManager` after a
crash, ``DockerSandbox.attach``) finds and understands them, so every key is spelled here once.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "CREATED",
    "DIAL_IN",
    "DISK",
    "DISK_KEEP",
    "DISK_SIZE",
    "EGRESS_HOSTS",
    "EGRESS_ID",
    "FROM_SNAPSHOT",
    "IMAGE",
    "KIND",
    "KIND_AIRGAPPED_BASE",
    "KIND_DISK_AGENT",
    "KIND_PREPARED",
    "MANAGED",
    "MANAGED_FILTER",
    "MANAGER",
    "NETWORK",
    "NODE",
    "NODE_ENGINE",
    "NODEJS",
    "NETWORK_ALLOW_METADATA",
    "NETWORK_ALLOW_PRIVATE",
    "NETWORK_EGRESS",
    "NETWORK_PROXY",
    "ROLE",
    "OWNER_HOST",
    "OWNER_PID",
    "POOL",
    "PREFIX",
    "PYTHON",
    "RUNTIME",
    "RUNTIME_CONFIG",
    "SESSION",
    "SERVICE",
    "SWARM_NETWORK",
    "SEEDED",
    "SESSION_CREATED",
    "SNAPSHOT",
    "SNAPSHOT_BASE",
    "SNAPSHOT_CREATED",
    "SNAPSHOT_DISK",
    "SNAPSHOT_DISK_PARTS",
    "SNAPSHOT_DISK_SIZE",
    "SNAPSHOT_RUNTIME",
    "SNAPSHOT_SOURCE",
    "SNAPSHOT_USER",
    "SNAPSHOT_VOLUME_COPIES",
    "SNAPSHOT_VOLUME_PATHS",
    "UPLOADS_VOLUME",
    "USER_ID",
    "WORK_VOLUME",
    "managed",
]

PREFIX = "pydantic-deep."
"""Every key starts with it: labels without it are the user's own."""

# -- on everything pydantic_deep makes ---------------------------------------------------------
MANAGED = PREFIX + "managed"
"""``"true"``: made by pydantic_deep, so ``pydantic-deep prune`` may remove it."""
MANAGED_FILTER = f"{MANAGED}=true"
"""The engine's label filter for everything pydantic_deep made."""

# -- containers --------------------------------------------------------------------------------
SESSION = PREFIX + "session"
"""The sandbox's session id."""
RUNTIME = PREFIX + "runtime"
"""The runtime's name (on runtime images too)."""
RUNTIME_CONFIG = PREFIX + "runtime-config"
"""The whole :class:`RuntimeConfig` as JSON (on session volumes too)."""
IMAGE = PREFIX + "image"
"""The runtime image the container runs."""
CREATED = PREFIX + "created"
"""When the container was made, ISO 8601 in UTC."""
OWNER_PID = PREFIX + "owner-pid"
"""The process that made it, so that an orphan can be told from a live one."""
OWNER_HOST = PREFIX + "owner-host"
"""The host of that process: a pid means something only there."""
FROM_SNAPSHOT = PREFIX + "from-snapshot"
"""The snapshot the container started from."""
POOL = PREFIX + "pool"
"""The session manager whose warm pool made the container."""
DIAL_IN = PREFIX + "dial-in"
"""The directory (in this machine's temporary directory) of the socket its supervisor dialled in on,
kept while the container is: the engine's archive calls need its bind mount's source."""

ROLE = PREFIX + "role"
"""What a short-lived helper container is for (``"firewall-helper"``)."""

# -- disks (see pydantic_deep.sandbox.disk) -------------------------------------------------------
DISK = PREFIX + "disk"
"""The name of the disk (``disk_size``) mounted over the work dir, ``/uploads`` and home; on a session
volume too: the disk that holds the user's files."""
DISK_KEEP = PREFIX + "disk-keep"
"""``"true"`` when the disk outlives the container (a session's): stopping it only unmounts it."""
DISK_SIZE = PREFIX + "disk-size"
"""The disk's size as given (``"10g"``), so that a later process can attach with the same cap."""

# -- clusters (see pydantic_deep.engine.swarm) ---------------------------------------------------
NODE = PREFIX + "node"
"""On a Swarm node: its name as sandboxes report it."""
NODE_ENGINE = PREFIX + "engine"
"""On a Swarm node: the address of its own engine, through which its sandboxes are reached."""
SERVICE = PREFIX + "service"
"""On a sandbox's service and its task's container: the service's name."""
SWARM_NETWORK = PREFIX + "swarm-network"
"""On a sandbox's service: the swarm network it sits on (the tasks of a shared one share a node)."""

# -- networks ----------------------------------------------------------------------------------
NETWORK = PREFIX + "network"
"""On every network sandboxes sit on: what the host's packet filter rules are written for."""
NETWORK_EGRESS = PREFIX + "egress"
NETWORK_ALLOW_PRIVATE = PREFIX + "allow-private"
NETWORK_ALLOW_METADATA = PREFIX + "allow-metadata"
NETWORK_PROXY = PREFIX + "egress-proxy"
"""On the proxied network: the name of the egress proxy container, the one peer its sandboxes reach."""

# -- host-pattern sandboxes (see pydantic_deep.engine.egress) -------------------------------------
EGRESS_ID = PREFIX + "egress-id"
"""On a sandbox behind the egress proxy: the id its CA and decisions log have in the proxy."""
EGRESS_HOSTS = PREFIX + "egress-hosts"
"""On a sandbox behind the egress proxy: its allowed host patterns as JSON (never its secrets)."""

# -- images ------------------------------------------------------------------------------------
KIND = PREFIX + "kind"
"""What an image is for: :data:`KIND_PREPARED` or :data:`KIND_AIRGAPPED_BASE`."""
KIND_PREPARED = "prepared"
KIND_AIRGAPPED_BASE = "airgapped-base"
KIND_DISK_AGENT = "disk-agent"
"""On a container: the process's disk agent, which mounts and unmounts disks (it goes with the process)."""
PYTHON = PREFIX + "python"
"""A prepared image's ``python3`` (3.8+) for the supervisor, or empty when it has none."""
NODEJS = PREFIX + "nodejs"
"""A prepared image's ``node``, for the Node.js supervisor where it has no ``python3``; or empty."""
SEEDED = PREFIX + "seeded"
"""A prepared image's sandbox directories (work dir, ``/uploads``, home) that hold files, comma
separated: a new disk mounted over them gets a copy."""

# -- snapshot images (see pydantic_deep.sandbox.snapshots) ---------------------------------------
SNAPSHOT = PREFIX + "snapshot"
"""The snapshot's name."""
SNAPSHOT_SOURCE = PREFIX + "snapshot-source"
"""The container it was taken from."""
SNAPSHOT_RUNTIME = PREFIX + "snapshot-runtime"
SNAPSHOT_CREATED = PREFIX + "snapshot-created"
SNAPSHOT_USER = PREFIX + "snapshot-user"
SNAPSHOT_VOLUME_PATHS = PREFIX + "snapshot-volume-paths"
"""Where the source's named volumes and disk were mounted: their files are in the image at those
paths, but those in the snapshot's disk file (:data:`SNAPSHOT_DISK_PARTS`)."""
SNAPSHOT_DISK = PREFIX + "snapshot-disk"
"""The name of the snapshot's files in the disk directory's ``snapshots`` folder (``NAME.img``, a
copy of the source's disk; ``NAME.vol/N``, its named volumes' content), or empty (see
pydantic_deep.sandbox.snapshot_disks)."""
SNAPSHOT_VOLUME_COPIES = PREFIX + "snapshot-volume-copies"
"""JSON: the paths of the source's named volumes whose content is in ``NAME.vol/N`` (N: the index)."""
SNAPSHOT_DISK_PARTS = PREFIX + "snapshot-disk-parts"
"""JSON: where each directory of that disk file (work, uploads, home) was mounted in the source."""
SNAPSHOT_BASE = PREFIX + "snapshot-base"
SNAPSHOT_DISK_SIZE = PREFIX + "snapshot-disk-size"
"""The source's disk (``disk_size``) in bytes, or empty: sandboxes started from the snapshot get one
of that size, seeded with the files the snapshot holds at the paths it is mounted over."""

# -- session volumes (and their containers) ----------------------------------------------------
MANAGER = PREFIX + "manager"
"""The session manager's name."""
USER_ID = PREFIX + "user-id"
"""The session's user id, as JSON."""
WORK_VOLUME = PREFIX + "work-volume"
UPLOADS_VOLUME = PREFIX + "uploads-volume"
SESSION_CREATED = PREFIX + "session-created"
"""When the session began, seconds since the epoch."""


def managed(more: Mapping[str, str] | None = None) -> dict[str, str]:
    """A new label dict marking something as pydantic_deep's, with the labels of ``more``."""
    return {MANAGED: "true", **(more or {})}
