"""Preparing an image for sandboxes: their user, directories and supervisor, whatever the image.

A sandbox's image may come from anywhere. Once per image, user and directories, a thin layer is
committed on top of it: a passwd entry for the sandbox user, a home, the work dir and ``/uploads``
owned by that user, and the channel's supervisor. Containers then start from that *prepared* image
with nothing to copy in (a copy into a container costs about 50 ms: the engine runs a helper
process for it). Prepared images are tagged ``pydantic-deep/prepared:<image id>-<setup hash>``,
so a change of image, user, directories or supervisor prepares anew.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
import threading
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import docker
from docker.errors import ImageNotFound, NotFound

from ..engine.containers import path_stat, remove_container
from ..paths import TOOLS_DIR
from .archive import ChunkReader, entries_tar, iter_single_file
from .builder import image_lock

__all__ = ["HOME_DIR", "JS_KERNEL_PATH", "KERNEL_PATH", "SUPERVISOR_PATH", "TOOLS_DIR", "PreparedImage",
           "prepare_image"]

HOME_DIR = "/home/sandbox"
SUPERVISOR_PATH = f"{TOOLS_DIR}/supervisor.py"
KERNEL_PATH = f"{TOOLS_DIR}/kernel.py"
JS_KERNEL_PATH = f"{TOOLS_DIR}/kernel.js"
_PYTHON_CANDIDATES = ("/usr/local/bin/python3", "/usr/bin/python3")
_PYTHON_LABEL = "pydantic-deep.python"
_SEEDED_LABEL = "pydantic-deep.seeded"

_prepared: dict[tuple[Any, ...], PreparedImage] = {}
_prepared_lock = threading.Lock()


@dataclass(frozen=True)
class PreparedImage:
    """An image ready for sandboxes.

    Attributes:
        tag: What containers start from.
        python: The image's ``python3``, which runs the supervisor; ``None`` when it has none.
        seeded: The sandbox's directories (work dir, ``/uploads``, home) that hold files in the
            image: a new disk (``disk_size``), mounted over them, gets a copy.
    """

    tag: str
    python: str | None
    seeded: tuple[str, ...] = ()


def prepare_image(client: docker.DockerClient, image: str, uid: int, gid: int,
                  roots: tuple[str, ...]) -> PreparedImage:
    """The prepared form of ``image`` for a sandbox user and its directories, made once."""
    image_id = client.images.get(image).id
    key = (image_id, uid, gid, roots)
    with _prepared_lock:
        if key in _prepared:
            return _prepared[key]
    tools = {path: files("pydantic_deep._guest").joinpath(path.rsplit("/", 1)[1]).read_bytes()
             for path in (SUPERVISOR_PATH, KERNEL_PATH, JS_KERNEL_PATH)}
    # The last item versions what a prepared image records in its labels.
    setup_hash = hashlib.sha256(json.dumps([uid, gid, roots, 2]).encode() + b"".join(tools.values())).hexdigest()
    tag = f"pydantic-deep/prepared:{image_id.removeprefix('sha256:')[:12]}-{setup_hash[:12]}"
    with image_lock(tag):
        try:
            labels = client.images.get(tag).labels
        except ImageNotFound:
            labels = _commit_prepared(client, image_id, tag, uid, gid, roots, tools)
    prepared = PreparedImage(tag, labels.get(_PYTHON_LABEL) or None,
                             tuple(filter(None, labels.get(_SEEDED_LABEL, "").split(","))))
    with _prepared_lock:
        _prepared[key] = prepared
    return prepared


def _commit_prepared(client: docker.DockerClient, image_id: str, tag: str, uid: int, gid: int,
                     roots: tuple[str, ...], tools: dict[str, bytes]) -> dict[str, str]:
    container = client.api.create_container(image_id, labels={"pydantic-deep.managed": "true"})["Id"]
    try:
        client.api.put_archive(container, "/", _setup_archive(client, container, uid, gid, roots, tools))
        python = next((p for p in _PYTHON_CANDIDATES if path_stat(client, container, p)), "")
        seeded = ",".join(d for d in (*roots, HOME_DIR) if _holds_files(client, container, d))
        labels = {"pydantic-deep.managed": "true", "pydantic-deep.kind": "prepared", _PYTHON_LABEL: python,
                  _SEEDED_LABEL: seeded}
        repository, version = tag.rsplit(":", 1)
        client.api.commit(container, repository=repository, tag=version,
                          changes=[f'LABEL {name}="{value}"' for name, value in labels.items()])
    finally:
        remove_container(client, container)
    return labels


def _setup_archive(client: docker.DockerClient, container_id: str, uid: int, gid: int,
                   roots: tuple[str, ...], tools: dict[str, bytes]) -> bytes:
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
    entries = {path.lstrip("/"): content for path, content in tools.items()}
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


def _holds_files(client: docker.DockerClient, container_id: str, directory: str) -> bool:
    """Whether ``directory`` of the container holds anything."""
    chunks, _stat = client.api.get_archive(container_id, directory)
    with tarfile.open(fileobj=io.BufferedReader(ChunkReader(chunks)), mode="r|") as tar:
        entries = sum(1 for _ in tar)
    return entries > 1  # the directory itself, and more


def _read_file(client: docker.DockerClient, container_id: str, path: str) -> bytes:
    try:
        chunks, _stat = client.api.get_archive(container_id, path)
    except NotFound:
        return b""
    return b"".join(iter_single_file(chunks))
