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

from ..engine import labels as label
from ..engine.containers import path_stat, remove_container
from ..paths import TOOLS_DIR
from .archive import ChunkReader, entries_tar, iter_single_file
from .builder import image_lock
from .forker import forker_program

__all__ = ["FORKER_PATH", "HOME_DIR", "JS_KERNEL_PATH", "JS_SUPERVISOR_PATH", "KERNEL_PATH", "SUPERVISOR_PATH",
           "TOOLS_DIR", "PreparedImage", "prepare_image"]

HOME_DIR = "/home/sandbox"
SUPERVISOR_PATH = f"{TOOLS_DIR}/supervisor.py"
JS_SUPERVISOR_PATH = f"{TOOLS_DIR}/supervisor.js"
KERNEL_PATH = f"{TOOLS_DIR}/kernel.py"
JS_KERNEL_PATH = f"{TOOLS_DIR}/kernel.js"
FORKER_PATH = f"{TOOLS_DIR}/forker"  # supervisor.js's helper, beside it (see images/forker.py)
_PYTHON_CANDIDATES = ("/usr/local/bin/python3", "/usr/bin/python3")
# What a prepared image holds and records beside the guest files (its labels): a change prepares anew.
_RECIPE = 4
_NODE_CANDIDATES = ("/usr/local/bin/node", "/usr/bin/node", "/usr/bin/nodejs")
# The container's NODE_OPTIONS is moved aside while the supervisor starts (it could make Node.js load
# code or refuse to start); the supervisor gives it back to commands (see supervisor.js).
_NODE_LAUNCH = ('if [ "${NODE_OPTIONS+set}" ]; then export PYDANTIC_DEEP_NODE_OPTIONS="$NODE_OPTIONS"; '
                'unset NODE_OPTIONS; fi; exec "$@"')

# The supervisor is compiled with the image's own Python when the image is prepared (a start then
# skips compiling it: some 8 ms of a cold start), to a .pyc that no source change invalidates
# (the prepared image changes with the source). Python runs the .pyc where it is, else the source.
_COMPILE = ("import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[1] + 'c', doraise=True, "
            "invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)")
_COMPILE_WITH_ANY_PYTHON = (f'for python in {" ".join(_PYTHON_CANDIDATES)}; do '
                            f'[ -x "$python" ] && exec "$python" -I -S -c "$0" "$1"; done')
_PYTHON_LAUNCH = ('python=$0 source=$1; shift; [ -e "${source}c" ] && source="${source}c"; '
                  'exec "$python" -I -S "$source" "$@"')

_prepared: dict[tuple[Any, ...], PreparedImage] = {}
_prepared_lock = threading.Lock()


@dataclass(frozen=True)
class PreparedImage:
    """An image ready for sandboxes.

    Attributes:
        tag: What containers start from.
        python: The image's ``python3`` (which runs the supervisor), or ``None`` when it has none.
        node: The image's ``node``, which runs the supervisor where there is no ``python3``; ``None``
            when it has none.
        seeded: The sandbox's directories (work dir, ``/uploads``, home) that hold files in the
            image: a new disk (``disk_size``), mounted over them, gets a copy.
    """

    tag: str
    python: str | None
    node: str | None = None
    seeded: tuple[str, ...] = ()

    @property
    def supervisor(self) -> str | None:
        """What runs the supervisor: ``python3``, ``node``, or ``None`` (commands then use one
        ``docker exec`` each)."""
        return "python3" if self.python else "node" if self.node else None

    def supervisor_command(self) -> list[str] | None:
        """The argv that starts the supervisor in a container of this image, ``None`` without one."""
        return supervisor_command(self.python, self.node)


def supervisor_command(python: str | None, node: str | None) -> list[str] | None:
    """The argv that starts the supervisor with ``python`` (preferred) or ``node``; ``None`` with neither."""
    if python:
        # -I -S: no site-packages, user site or PYTHON* variables; a quicker start, and nothing
        # of the user's can change how the supervisor runs.
        return ["/bin/sh", "-c", _PYTHON_LAUNCH, python, SUPERVISOR_PATH]
    if node:
        return ["/bin/sh", "-c", _NODE_LAUNCH, "sh", node, JS_SUPERVISOR_PATH]
    return None


def recorded_interpreters(labels: dict[str, str]) -> tuple[str | None, str | None]:
    """The ``python3`` and ``node`` a prepared image's labels record (``None`` for none)."""
    return labels.get(label.PYTHON) or None, labels.get(label.NODEJS) or None


def recorded_seeded(labels: dict[str, str]) -> tuple[str, ...]:
    """The sandbox directories that hold files in an image, as its labels record them."""
    return tuple(filter(None, labels.get(label.SEEDED, "").split(",")))


def prepare_image(client: docker.DockerClient, image: str, uid: int, gid: int,
                  roots: tuple[str, ...], *, image_id: str | None = None) -> PreparedImage:
    """The prepared form of ``image`` (whose id is ``image_id``, when the caller knows it) for a
    sandbox user and its directories, made once."""
    image_id = image_id or str(client.images.get(image).id)
    key = (image_id, uid, gid, roots)
    with _prepared_lock:
        if key in _prepared:
            return _prepared[key]
    tools = {path: files("pydantic_deep._guest").joinpath(path.rsplit("/", 1)[1]).read_bytes()
             for path in (SUPERVISOR_PATH, JS_SUPERVISOR_PATH, KERNEL_PATH, JS_KERNEL_PATH)}
    if (forker := forker_program(client)) is not None:
        tools[FORKER_PATH] = forker
    setup_hash = hashlib.sha256(json.dumps([_RECIPE, uid, gid, roots]).encode() + b"".join(tools.values())).hexdigest()
    tag = f"pydantic-deep/prepared:{image_id.removeprefix('sha256:')[:12]}-{setup_hash[:12]}"
    with image_lock(tag):
        try:
            labels = client.images.get(tag).labels
        except ImageNotFound:
            labels = _commit_prepared(client, image_id, tag, uid, gid, roots, tools)
    prepared = PreparedImage(tag, *recorded_interpreters(labels), seeded=recorded_seeded(labels))
    with _prepared_lock:
        _prepared[key] = prepared
    return prepared


def _commit_prepared(client: docker.DockerClient, image_id: str, tag: str, uid: int, gid: int,
                     roots: tuple[str, ...], tools: dict[str, bytes]) -> dict[str, str]:
    # Run, it compiles the supervisor (where there is a python3); committed, it is the image's own
    # entrypoint and command again.
    config = client.api.inspect_image(image_id)["Config"]
    container = client.api.create_container(image_id, [_COMPILE_WITH_ANY_PYTHON, _COMPILE, SUPERVISOR_PATH],
                                            entrypoint=["/bin/sh", "-c"], user="0:0", labels=label.managed(),
                                            host_config=client.api.create_host_config(network_mode="none"))["Id"]
    try:
        client.api.put_archive(container, "/", _setup_archive(client, container, uid, gid, roots, tools))
        python = next((p for p in _PYTHON_CANDIDATES if path_stat(client, container, p)), "")
        node = next((p for p in _NODE_CANDIDATES if path_stat(client, container, p)), "")
        seeded = ",".join(d for d in (*roots, HOME_DIR) if _holds_files(client, container, d))
        image_labels = label.managed({label.KIND: label.KIND_PREPARED, label.PYTHON: python, label.NODEJS: node,
                                      label.SEEDED: seeded})
        if python:  # a Python too old to compile it runs the source (or, older still, nothing)
            client.api.start(container)
            client.api.wait(container, timeout=120)
        repository, version = tag.rsplit(":", 1)
        client.api.commit(container, repository=repository, tag=version, changes=[
            *(f'LABEL {name}="{value}"' for name, value in image_labels.items()),
            f"ENTRYPOINT {json.dumps(config.get('Entrypoint') or [])}", f"CMD {json.dumps(config.get('Cmd') or [])}",
            f"USER {config.get('User') or '0'}"])
    finally:
        remove_container(client, container)
    return image_labels


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
                       entries, executables={FORKER_PATH.lstrip("/")})


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
