"""Preparing a created container before its first start, whatever image it runs.

A sandbox's image may come from anywhere, so before the container starts, one tar put at ``/``
gives the sandbox user a passwd entry, a home, the work dir and ``/uploads``, and brings the
channel's supervisor. What that tar holds depends only on the image and the user, so it is worked
out once per image and reused: a second sandbox of the same image starts without looking inside.
"""

from __future__ import annotations

import base64
import json
import posixpath
import threading
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import docker
from docker.errors import NotFound

from .archive import entries_tar, iter_single_file

__all__ = ["HOME_DIR", "SUPERVISOR_PATH", "ContainerSetup", "container_setup", "path_stat", "remove_container"]

HOME_DIR = "/home/sandbox"
SUPERVISOR_PATH = "/opt/pydantic-deep/supervisor.py"
_PYTHON_CANDIDATES = ("/usr/local/bin/python3", "/usr/bin/python3")

_setups: dict[tuple[Any, ...], ContainerSetup] = {}
_setups_lock = threading.Lock()


@dataclass(frozen=True)
class ContainerSetup:
    """What a container of one image needs before its first start.

    Attributes:
        archive: A tar to put at ``/``.
        python: The image's ``python3``, which runs the supervisor; ``None`` when it has none.
    """

    archive: bytes
    python: str | None


def path_stat(client: docker.DockerClient, container_id: str, path: str) -> dict[str, Any] | None:
    """The engine's stat of ``path`` in a container (running or not), or ``None`` if absent."""
    api = client.api
    # docker-py has no call for the archive endpoint's HEAD form, which stats without copying.
    response = api.head(api._url("/containers/{0}/archive", container_id), params={"path": path})
    if response.status_code == 404:
        return None
    api._raise_for_status(response)
    return json.loads(base64.b64decode(response.headers["X-Docker-Container-Path-Stat"]))


def remove_container(client: docker.DockerClient, container_id: str) -> None:
    """Remove a container and its anonymous volumes; one that is already gone is fine."""
    try:
        client.api.remove_container(container_id, force=True, v=True)
    except NotFound:
        pass


def container_setup(
    client: docker.DockerClient, container_id: str, image_id: str, uid: int, gid: int, roots: tuple[str, ...]
) -> ContainerSetup:
    """The setup for a created container, worked out once per image, user and directories."""
    key = (image_id, uid, gid, roots)
    with _setups_lock:
        if key in _setups:
            return _setups[key]
    setup = ContainerSetup(
        archive=_setup_archive(client, container_id, uid, gid, roots),
        python=next((p for p in _PYTHON_CANDIDATES if path_stat(client, container_id, p)), None),
    )
    with _setups_lock:
        _setups[key] = setup
    return setup


def _setup_archive(client: docker.DockerClient, container_id: str, uid: int, gid: int,
                   roots: tuple[str, ...]) -> bytes:
    # Parent directories that already exist are left out: writing their entry again would reset
    # their owner and mode (/tmp would lose its sticky bit).
    directories: dict[str, tuple[int, int]] = {}
    wanted = [(d, (uid, gid)) for d in (*roots, HOME_DIR)] + [(posixpath.dirname(SUPERVISOR_PATH), (0, 0))]
    for directory, owner in wanted:
        directories[directory] = owner
        parent = posixpath.dirname(directory)
        while parent != "/" and parent not in directories and path_stat(client, container_id, parent) is None:
            directories[parent] = (0, 0)
            parent = posixpath.dirname(parent)
    entries = {SUPERVISOR_PATH.lstrip("/"): files("pydantic_deep").joinpath("supervisor.py").read_bytes()}
    if uid != 0:
        # Without a passwd entry, `whoami`, getpass.getuser() and git fail for the user.
        for name, number, entry in (
            ("etc/passwd", uid, f"sandbox:x:{uid}:{gid}::{HOME_DIR}:/bin/sh"),
            ("etc/group", gid, f"sandbox:x:{gid}:"),
        ):
            current = _read_file(client, container_id, "/" + name)
            taken = {line.split(b":")[2] for line in current.splitlines() if line.count(b":") >= 2}
            if str(number).encode() not in taken:
                entries[name] = current.rstrip(b"\n") + b"\n" + entry.encode() + b"\n"
    return entries_tar([(path.lstrip("/"), owner, group) for path, (owner, group) in sorted(directories.items())],
                       entries)


def _read_file(client: docker.DockerClient, container_id: str, path: str) -> bytes:
    try:
        chunks, _stat = client.api.get_archive(container_id, path)
    except NotFound:
        return b""
    return b"".join(iter_single_file(chunks))
