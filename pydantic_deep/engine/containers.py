"""Containers as the engine sees them: alive or not, removed, stat of a path, their owner."""

from __future__ import annotations

import os
import posixpath
import socket
from collections.abc import Mapping
from typing import Any

import docker
from docker.errors import APIError, NotFound
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import ReadTimeout

from .api import archive_stat
from .dial_in_dirs import remove_dial_in_dir
from .labels import DIAL_IN, OWNER_HOST, OWNER_PID

__all__ = ["container_running", "container_stops_within", "is_directory", "owner_gone", "path_stat",
           "remove_container"]

# Go's os.ModeDir, as the engine reports it in a path's stat.
_GO_MODE_DIR = 1 << 31


def path_stat(client: docker.DockerClient, container_id: str, path: str) -> dict[str, Any] | None:
    """The engine's stat of ``path`` in a container (running or not), or ``None`` if absent.

    A path through a file (``file.txt/x``) is absent too.
    """
    try:
        return archive_stat(client, container_id, path)
    except APIError as exc:
        if exc.status_code == 500 and path != "/" and _through_a_file(client, container_id, path):
            return None  # the engine answers ENOTDIR with a bare 500
        raise


def _through_a_file(client: docker.DockerClient, container_id: str, path: str) -> bool:
    """Whether an ancestor of ``path`` is something other than a directory."""
    parent = posixpath.dirname(path)
    stat = path_stat(client, container_id, parent)
    return stat is None or not is_directory(stat)


def is_directory(stat: Mapping[str, Any]) -> bool:
    """Whether an engine's path stat (see :func:`path_stat`) is of a directory."""
    return bool(stat["mode"] & _GO_MODE_DIR)


def owner_gone(labels: Mapping[str, str]) -> bool:
    """Whether the process that made a sandbox container has ended.

    Only a process on this host can be checked: a container made elsewhere, or whose owner is
    alive (or another user's to signal), is not taken for orphaned.
    """
    if labels.get(OWNER_HOST) != socket.gethostname():
        return False
    try:
        os.kill(int(labels.get(OWNER_PID, "")), 0)
    except (ProcessLookupError, ValueError):
        return True
    except PermissionError:
        return False
    return False


def container_running(client: docker.DockerClient, container_id: str) -> bool:
    """Whether the container exists and runs."""
    try:
        return bool(client.api.inspect_container(container_id)["State"]["Running"])
    except NotFound:
        return False


def container_stops_within(client: docker.DockerClient, container_id: str, seconds: float) -> bool:
    """Whether the container is gone, or stops within ``seconds``."""
    try:
        client.api.wait(container_id, timeout=seconds)
    except NotFound:
        pass
    except (ReadTimeout, RequestsConnectionError):
        # The wait timed out (over a unix socket, requests calls that a ConnectionError): ask again,
        # which also tells a lost engine (DockerUnavailableError, through engine_errors) from a slow one.
        return not container_running(client, container_id)
    return True


def remove_container(client: docker.DockerClient, container_id: str) -> None:
    """Remove a container and its anonymous volumes, then the directory of the socket its
    supervisor dialled in on; one that is already gone, or going, is fine."""
    try:
        dial_in = (client.api.inspect_container(container_id)["Config"]["Labels"] or {}).get(DIAL_IN)
        client.api.remove_container(container_id, force=True, v=True)
        if dial_in:
            remove_dial_in_dir(dial_in)
    except NotFound:
        pass
    except APIError as exc:
        # A container started with auto-remove that died is being removed by the engine itself,
        # which refuses a second removal.
        if exc.status_code != 409 or "already in progress" not in str(exc.explanation):
            raise
