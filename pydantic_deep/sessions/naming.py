"""How a session manager names what it makes in the engine, encoded and decoded in one place.

A user's session is ``pd-<manager>-<key>`` (its container, and the never-mounted volume that
records it), where ``<key>`` is a hash of the user id, never the id itself; its files live in the
disk ``<that>-disk`` (``disk_size``), or with ``disk_size=None`` in the volumes ``<that>-work`` and
``<that>-uploads``. A warm pool's sandbox is ``pd-<manager>-pool-<random>``
until a user gets it and it is renamed to the user's session.
"""

from __future__ import annotations

import hashlib
import re
import uuid

__all__ = ["disk_name", "is_pool_disk", "network_owner", "pool_name", "session_key", "session_name", "user_key",
           "volume_names"]

_PREFIX = "pd-"
_KEY = re.compile(r"[0-9a-f]{32}")
_POOL_DISK = re.compile(r"pd-[a-z0-9-]+-pool-[0-9a-f]{12}-disk")


def user_key(user_id: str) -> str:
    """The key that names a user's session: 32 hex digits of the user id's SHA-256 (any string,
    even one with lone surrogates, has one)."""
    return hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def session_name(manager: str, key: str) -> str:
    """The name of the session ``key`` of ``manager``: its container's and its session volume's."""
    return f"{_PREFIX}{manager}-{key}"


def session_key(manager: str, name: str) -> str | None:
    """The key of ``manager``'s session called ``name``; ``None`` when ``name`` is not one (a
    pool's sandbox, another manager's session, one of the session's file volumes)."""
    key = name.removeprefix(f"{_PREFIX}{manager}-")
    return key if key != name and _KEY.fullmatch(key) else None


def pool_name(manager: str) -> str:
    """A new, unique name for a sandbox of ``manager``'s warm pool."""
    return f"{_PREFIX}{manager}-pool-{uuid.uuid4().hex[:12]}"


def is_pool_disk(name: str) -> bool:
    """Whether ``name`` is the disk of a warm pool's sandbox (which keeps that name when a user
    gets it: only the session volume that records the session tells them apart)."""
    return _POOL_DISK.fullmatch(name) is not None


def volume_names(name: str) -> tuple[str, str]:
    """The (work dir, ``/uploads``) volumes of the sandbox called ``name``."""
    return f"{name}-work", f"{name}-uploads"


def disk_name(name: str) -> str:
    """The disk (``disk_size``) that keeps the files of the sandbox called ``name``."""
    return f"{name}-disk"


def network_owner(key: str) -> str:
    """The owner of a user's shared networks: another hash than the names', of the user's whole key,
    so no name the application gives (``shared_network``, the manager's name) makes two users' one."""
    return hashlib.sha256(f"network:{key}".encode()).hexdigest()[:24]
