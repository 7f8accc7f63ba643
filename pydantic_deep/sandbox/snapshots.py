"""Snapshots: a sandbox's files, kept in the engine as an image, to start from, fork or roll back to.

A snapshot is one image, ``pydantic-deep/snapshot:<name>``, made of the sandbox's prepared image plus
one layer of everything its container changed: the ``docker commit`` of the container, and the
content of its named volumes (the work dir and ``/uploads`` of a session), which a commit leaves
out. Those are copied in while the container is paused, so the snapshot is one consistent moment:
a tar stream out of the paused container (the engine reads it from the host side, nothing runs in
the container) straight into a helper container made from the commit, itself committed.

A sandbox with a disk (``disk_size``) keeps its work dir, ``/uploads`` and home on it, not in the
image: the snapshot keeps a copy of the disk's file beside the image (see
:mod:`pydantic_deep.sandbox.snapshot_disks`), made in the same pause, one copy at the disk's speed;
what starts from it gets a copy of that file as its disk. The image then holds the container's own
changes (little: a disk's sandbox has a read-only root) and any named volumes.

Everything about a snapshot lives in its image's labels (name, source container and runtime, user,
which paths were volumes, when), so a new process lists and starts from it with nothing in memory.
A container started from it has its files at once (overlay layers, nothing copied); an empty named
volume mounted on it (a restored session) is filled by the engine from the image, a local copy.

What is *not* kept: memory and processes (``criu``-based ``docker checkpoint`` does not work on
common kernels: see docs/snapshots.md), and ``/tmp`` (a memory filesystem).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import socket
import tarfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, Literal, TypeVar, cast

import docker
from docker.errors import APIError, ImageNotFound, NotFound

from .._html import field_table
from ..config import RuntimeConfig
from ..engine import labels as label
from ..engine.client import docker_client, engine_errors
from ..engine.containers import owner_gone, remove_container
from ..errors import InvalidArgumentError, SandboxStateError, SnapshotNotFoundError, shown
from .snapshot_disks import (
    copy_disk,
    drop_snapshot_disks,
    mark_committed,
    new_snapshot_disk,
    prune_snapshot_disks,
    snapshot_disk_sizes,
)

__all__ = ["SNAPSHOT_REPOSITORY", "Snapshot", "bring_home", "delete_snapshot", "get_snapshot", "list_snapshots",
           "pause_container", "prune_snapshot_files", "prune_snapshot_leftovers", "remove_fork_image",
           "resolve_snapshot", "resume_container", "take_snapshot"]

logger = logging.getLogger("pydantic_deep.snapshots")

SNAPSHOT_REPOSITORY = "pydantic-deep/snapshot"

_T = TypeVar("_T")

# label.KIND of a snapshot's images: snapshot | fork (a fork's, removed with its last sandbox) | snapshot-partial
# Labels a snapshot keeps from its container: what a sandbox needs to start from it. The others
# (session, manager, owner, the user's own) belong to that one container, and are cleared.
_KEPT_LABELS = (label.MANAGED, label.RUNTIME, label.RUNTIME_CONFIG, label.IMAGE, label.PYTHON, label.NODEJS)

_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True)
class Snapshot:
    """A snapshot of a sandbox's files, as the engine holds it.

    Attributes:
        name: Its name, unique on the engine.
        image: The id of its image (what sandboxes start from).
        runtime: The runtime of the sandbox it was taken of (and of sandboxes started from it).
        user: The ``uid:gid`` the files belong to.
        source: The name of the container it was taken of.
        created: When it was taken (UTC).
        size_bytes: What it takes on the host beyond its runtime's image: the files it holds (its
            image's layer and its disk file).
        volume_paths: The paths that were named volumes or on the disk in the source, whose
            content it keeps (in the image, or in its disk file: ``disk_parts``).
        python: The image's ``python3`` (runs the execution channel's supervisor), or ``None``.
        node: The image's ``node`` (runs the supervisor where there is no ``python3``), or ``None``.
        disk_size: The source's disk (``disk_size``) in bytes, which sandboxes started from the
            snapshot get by default; ``None`` when it had none.
        files: The name of its files on the engine's host (in the disk directory's ``snapshots``
            folder): ``<files>.img``, a copy of the source's disk (see ``disk_file``), and
            ``<files>.vol/<n>``, a copy of the named volume at ``volume_copies[n]``; ``None`` when
            it keeps everything in the image (a snapshot of a cluster sandbox, say).
        disk_parts: Where each directory of the source's disk (``work``, ``uploads``, ``home``)
            was mounted in it, as pairs.
        volume_copies: The paths of the source's named volumes whose content is kept as files.
    """

    name: str
    image: str
    runtime: RuntimeConfig
    user: str
    source: str
    created: datetime
    size_bytes: int
    volume_paths: tuple[str, ...]
    python: str | None
    node: str | None = None
    disk_size: int | None = None
    files: str | None = None
    disk_parts: tuple[tuple[str, str], ...] = ()
    volume_copies: tuple[str, ...] = ()

    @property
    def disk_file(self) -> str | None:
        """The name of its copy of the source's disk (``<disk_file>.img`` on the engine's host), or
        ``None``: the source had no disk, or it was out of reach (on a cluster node), and the
        disk's files are in the image."""
        return self.files if self.files and self.disk_parts else None

    @property
    def tag(self) -> str:
        """The image's tag, ``pydantic-deep/snapshot:<name>``."""
        return f"{SNAPSHOT_REPOSITORY}:{self.name}"

    def delete(self) -> None:
        """Delete this snapshot (see :func:`delete_snapshot`)."""
        delete_snapshot(self.name)

    def __repr__(self) -> str:
        return (f"<Snapshot {self.name!r} runtime={self.runtime.name!r} source={self.source!r} "
                f"size={self.size_bytes / 1e6:.1f} MB created={self.created.isoformat(timespec='seconds')}>")

    def _repr_html_(self) -> str:
        return field_table("Snapshot", {
            "Name": self.name, "Runtime": self.runtime.name, "Source": self.source,
            "Created": self.created.isoformat(timespec="seconds"), "Size": f"{self.size_bytes / 1e6:.1f} MB",
            "Image": self.image.removeprefix("sha256:")[:12],
        })

    @classmethod
    def _from_image(cls, attrs: dict[str, Any], base_size: int | None = None, disk_bytes: int = 0) -> Snapshot:
        labels = attrs["Config"]["Labels"] or {}
        size = attrs.get("Size", 0)
        parts = json.loads(labels.get(label.SNAPSHOT_DISK_PARTS) or "{}")
        return cls(
            name=labels[label.SNAPSHOT], image=attrs["Id"],
            runtime=RuntimeConfig.model_validate_json(labels[label.RUNTIME_CONFIG]),
            user=labels.get(label.SNAPSHOT_USER, "1000:1000"), source=labels.get(label.SNAPSHOT_SOURCE, ""),
            created=datetime.fromisoformat(labels[label.SNAPSHOT_CREATED]),
            size_bytes=(size - base_size if base_size is not None and base_size <= size else size) + disk_bytes,
            volume_paths=tuple(json.loads(labels.get(label.SNAPSHOT_VOLUME_PATHS, "[]"))),
            python=labels.get(label.PYTHON) or None,
            node=labels.get(label.NODEJS) or None,
            disk_size=int(labels[label.SNAPSHOT_DISK_SIZE]) if labels.get(label.SNAPSHOT_DISK_SIZE) else None,
            files=labels.get(label.SNAPSHOT_DISK) or None,
            disk_parts=tuple(sorted(parts.items())),
            volume_copies=tuple(json.loads(labels.get(label.SNAPSHOT_VOLUME_COPIES) or "[]")),
        )


def checked_snapshot_name(name: str) -> str:
    """``name`` if it can name a snapshot (it becomes an image tag), else a clear error."""
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
        raise InvalidArgumentError(
            f"snapshot name {shown(name) if isinstance(name, str) else repr(name)} must be 1-100 letters, digits, "
            "'_', '.' and '-', starting with a letter or digit (e.g. 'before-cleanup')")
    return name


def _snapshot_attrs(client: docker.DockerClient, name: str) -> dict[str, Any]:
    try:
        attrs: dict[str, Any] = client.api.inspect_image(f"{SNAPSHOT_REPOSITORY}:{name}")
    except ImageNotFound:
        raise SnapshotNotFoundError(name, [s.name for s in list_snapshots()]) from None
    if (attrs["Config"]["Labels"] or {}).get(label.KIND) != "snapshot":
        raise SnapshotNotFoundError(name, [s.name for s in list_snapshots()])
    return attrs


def _size_of(client: docker.DockerClient, attrs: dict[str, Any],
             disk_files: Mapping[str, tuple[int, str]] | None = None) -> Snapshot:
    """The snapshot of the image ``attrs``, with its size (``disk_files``: :func:`snapshot_disk_sizes`,
    asked here when not given and the snapshot has a disk file)."""
    labels = attrs["Config"]["Labels"] or {}
    base = labels.get(label.SNAPSHOT_BASE)
    try:
        base_size = client.api.inspect_image(base)["Size"] if base else None
    except ImageNotFound:
        base_size = None
    disk_file = labels.get(label.SNAPSHOT_DISK)
    if disk_file and disk_files is None:
        disk_files = snapshot_disk_sizes()
    disk_bytes = (disk_files or {}).get(disk_file or "", (0, ""))[0]
    return Snapshot._from_image(attrs, base_size, disk_bytes)


@engine_errors()
def get_snapshot(name: str) -> Snapshot:
    """The snapshot called ``name``.

    Raises:
        SnapshotNotFoundError: there is none (the message lists those there are).
    """
    client = docker_client()
    return _size_of(client, _snapshot_attrs(client, checked_snapshot_name(name)))


@engine_errors()
def list_snapshots() -> list[Snapshot]:
    """Every snapshot on the engine (of every process, before and after restarts), oldest first."""
    client = docker_client()
    images = []
    for image in client.api.images(filters={"label": f"{label.KIND}=snapshot"}):
        try:
            images.append(client.api.inspect_image(image["Id"]))
        except ImageNotFound:
            continue  # deleted meanwhile (by another process)
    with_disks = any((attrs["Config"]["Labels"] or {}).get(label.SNAPSHOT_DISK) for attrs in images)
    disk_files = snapshot_disk_sizes() if with_disks else {}  # one look at all the files
    found = [_size_of(client, attrs, disk_files) for attrs in images]
    return sorted(found, key=lambda snapshot: (snapshot.created, snapshot.name))


def resolve_snapshot(snapshot: Snapshot | str) -> Snapshot:
    """A :class:`Snapshot` from itself or its name (checked to still exist)."""
    if isinstance(snapshot, (Snapshot, str)):
        return get_snapshot(snapshot.name if isinstance(snapshot, Snapshot) else snapshot)
    raise InvalidArgumentError(f"snapshot must be a Snapshot or a snapshot's name, not {type(snapshot).__name__}")


@engine_errors()
def delete_snapshot(name: str) -> None:
    """Delete the snapshot ``name`` and the files it holds.

    Sandboxes started from it must be stopped first (their containers stand on its image).

    Raises:
        SnapshotNotFoundError: there is no such snapshot.
        SandboxStateError: sandboxes started from it still exist.
    """
    client = docker_client()
    attrs = _snapshot_attrs(client, checked_snapshot_name(name))
    users = [c["Names"][0].lstrip("/") for c in client.api.containers(all=True, filters={"ancestor": attrs["Id"]})]
    if users:
        raise SandboxStateError(f"snapshot {name!r} is in use by {len(users)} sandbox(es) started from it "
                                f"({', '.join(users[:5])}): stop them first")
    try:
        # By its tag: a snapshot taken of a sandbox started from this one stands on its image,
        # which then stays, untagged, until that one is deleted too.
        client.api.remove_image(f"{SNAPSHOT_REPOSITORY}:{name}")
    except NotFound:
        pass
    disk_file = (attrs["Config"]["Labels"] or {}).get(label.SNAPSHOT_DISK)
    if disk_file:  # sandboxes started from it have copies of their own
        drop_snapshot_disks(disk_file)


# -- taking a snapshot ------------------------------------------------------------------------


def take_snapshot(container_id: str, *, runtime: RuntimeConfig, user: str, volume_paths: list[str],
                  disk_size: int | None = None, name: str | None = None,
                  kind: Literal["snapshot", "fork"] = "snapshot",
                  client: docker.DockerClient | None = None, disk: str | None = None,
                  disk_parts: Mapping[str, str] | None = None, fork_disk: str | None = None,
                  volume_sources: Mapping[str, str] | None = None) -> Snapshot:
    """Snapshot the container's files (its filesystem and the content of ``volume_paths``: its
    named volumes and its disk, which ``docker commit`` does not keep); ``disk_size`` is recorded.

    The container is paused for the copy and resumed after it, unless it was paused already.

    Args:
        client: The engine holding the container (a cluster node's), where the snapshot is made;
            by default this host's.
        disk: The container's disk (on this host's engine), kept whole as the snapshot's disk file;
            the paths of ``disk_parts`` (its directories' mount points) then are not copied into
            the image. Without it, every path of ``volume_paths`` is.
        fork_disk: For a fork: the disk is copied as this new disk (the first fork's) instead of
            a snapshot's file.
        volume_sources: Named volumes (path → where the volume's files are on the engine's host)
            copied as files beside the image (a snapshot's, not a fork's), not into it.
    """
    client = client or docker_client()
    created = datetime.now(UTC)
    if name is None:
        name = f"{kind}-{runtime.name.lower()}-{created:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    tag = f"{SNAPSHOT_REPOSITORY}:{checked_snapshot_name(name)}"
    with engine_errors():
        try:
            client.api.inspect_image(tag)
        except ImageNotFound:
            pass
        else:
            raise InvalidArgumentError(f"a snapshot named {name!r} exists already: delete it "
                                       "(pydantic_deep.delete_snapshot) or choose another name")
        attrs = client.api.inspect_container(container_id)
        base = client.api.inspect_image(attrs["Image"])
        container_labels = attrs["Config"]["Labels"] or {}
        mine = {label.OWNER_PID: str(os.getpid()), label.OWNER_HOST: socket.gethostname()}
        labels = {
            **{key: "" for key in container_labels if key not in _KEPT_LABELS},
            label.SNAPSHOT: name,
            label.SNAPSHOT_SOURCE: attrs["Name"].lstrip("/"),
            label.SNAPSHOT_RUNTIME: runtime.name,
            label.RUNTIME_CONFIG: runtime.model_dump_json(),
            label.SNAPSHOT_USER: user,
            label.SNAPSHOT_CREATED: created.isoformat(timespec="seconds"),
            label.SNAPSHOT_VOLUME_PATHS: json.dumps(sorted(volume_paths)),
            label.SNAPSHOT_DISK_SIZE: str(disk_size or ""),
            label.SNAPSHOT_BASE: base["Id"],
            label.KIND: kind,
            **(mine if kind == "fork" else {label.OWNER_PID: "", label.OWNER_HOST: ""}),
        }
        # The image's own settings, not the container's (the CA bundle's variables, say).
        conf = {"Labels": labels, "Env": base["Config"].get("Env") or []}
        volume_copies = sorted(volume_sources or {}) if kind == "snapshot" else []
        files = new_snapshot_disk(name) if kind == "snapshot" and (disk is not None or volume_copies) else None
        disk_file = files if disk is not None else None
        on_disk = set((disk_parts or {}).values()) if disk is not None else set()
        copied_paths = [path for path in volume_paths if path not in on_disk and path not in volume_copies]
        if disk is not None:
            labels[label.SNAPSHOT_DISK_PARTS] = json.dumps(dict(disk_parts or {}), sort_keys=True)
        labels[label.SNAPSHOT_DISK] = files or ""
        labels[label.SNAPSHOT_VOLUME_COPIES] = json.dumps(volume_copies)
        was_paused = attrs["State"]["Paused"]
        if not was_paused:
            pause_container(client, container_id)
        repository, version = tag.rsplit(":", 1)
        helper = partial = None
        disk_copy = None
        try:
            try:
                if disk is not None or volume_copies:  # beside the commit, in the same pause
                    disk_copy = _background(lambda: copy_disk(
                        disk, snapshot_file=disk_file, fork_disk=fork_disk, volume_files=files,
                        volumes=[(volume_sources or {})[path] for path in volume_copies]))
                if not copied_paths:
                    image_id = client.api.commit(container_id, repository=repository, tag=version, conf=conf,
                                                 pause=False)["Id"]
                else:
                    # Commit the container's own changes, then copy the volumes' content over it in a
                    # helper made from that commit (never started): all while the source is paused.
                    partial = client.api.commit(container_id, pause=False, conf={
                        **conf, "Labels": {**labels, label.KIND: "snapshot-partial", **mine}})["Id"]
                    helper = _helper_from(client, partial, copied_paths, mine)
                    into = helper
                    _side_by_side(lambda path: _copy_path(client, container_id, into, path), copied_paths)
            finally:
                try:
                    if disk_copy is not None:
                        disk_copy.result()
                finally:
                    if not was_paused:
                        resume_container(client, container_id)
            if helper is not None:
                image_id = client.api.commit(helper, repository=repository, tag=version, conf=conf,
                                             pause=False)["Id"]
        except BaseException:
            if partial is not None:
                _remove_quietly(client, helper, partial)
            elif helper is None and disk_copy is not None:  # the image may be committed already
                _remove_image_quietly(client, tag)
            if files is not None:
                _drop_quietly(files)
            raise
        finally:
            if helper is not None:
                remove_container(client, helper)
        if files is not None:
            mark_committed(files)
        return _size_of(client, client.api.inspect_image(image_id))


def _background(work: Callable[[], _T]) -> Future[_T]:
    """``work`` run in a thread of its own, now."""
    future: Future[_T] = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name="pydantic-deep-snapshot-disk", daemon=True).start()
    return future


def _remove_image_quietly(client: docker.DockerClient, tag: str) -> None:
    try:
        client.api.remove_image(tag)
    except (NotFound, ImageNotFound):
        pass
    except Exception:
        logger.warning("Could not remove the image of a failed snapshot (%s)", tag, exc_info=True)


def _drop_quietly(disk_file: str) -> None:
    try:
        drop_snapshot_disks(disk_file)
    except Exception:
        logger.warning("Could not remove the disk file of a failed snapshot; `pydantic-deep prune` will",
                       exc_info=True)


def _copy_path(client: docker.DockerClient, source: str, target: str, path: str) -> None:
    """Stream the directory ``path`` of ``source`` into ``target`` (through this process, as a tar)."""
    chunks, _stat = client.api.get_archive(source, path)
    client.api.put_archive(target, posixpath.dirname(path) or "/", chunks)


def _side_by_side(work: Callable[[str], _T], paths: list[str]) -> list[_T]:
    """``work`` for each path, all at once: each is a round trip to the engine or two, mostly
    waiting when the files are few (a fork's, often)."""
    with ThreadPoolExecutor(len(paths) or 1, thread_name_prefix="pydantic-deep-snapshot") as executor:
        return list(executor.map(work, paths))


def _remove_quietly(client: docker.DockerClient, helper: str | None, image: str) -> None:
    """Clean up after a snapshot that failed (what fails here, ``pydantic-deep prune`` removes)."""
    try:
        if helper is not None:
            remove_container(client, helper)
        client.api.remove_image(image)
    except Exception:
        logger.warning("Could not remove the parts of a failed snapshot; `pydantic-deep prune` will", exc_info=True)


def pause_container(client: docker.DockerClient, container_id: str, attempts: int = 3) -> None:
    """Freeze the container (the cgroup freezer), trying again when a moment's work in the kernel
    kept one of its processes from freezing in time ("unable to freeze": seen on a loaded host
    right after a burst of writes); runc has thawed it again then."""
    for attempt in range(1, attempts + 1):
        try:
            client.api.pause(container_id)
            return
        except APIError as exc:
            if attempt == attempts or "unable to freeze" not in str(exc.explanation):
                raise
            logger.info("Pausing %s failed (%s); trying again", container_id[:12], exc.explanation)


def resume_container(client: docker.DockerClient, container_id: str) -> None:
    try:
        client.api.unpause(container_id)
    except NotFound:
        pass  # removed meanwhile: the caller's next call says so
    except APIError as exc:
        if "not paused" not in str(exc.explanation):
            raise


def _helper_from(client: docker.DockerClient, image_id: str, volume_paths: list[str],
                 owner: dict[str, str]) -> str:
    """A container of ``image_id`` (never started) whose ``volume_paths`` are empty, to copy into."""
    labels = label.managed({label.KIND: "snapshot-helper", **owner})
    helper: str = client.api.create_container(image_id, labels=labels)["Id"]
    try:
        filled = _side_by_side(lambda path: _has_entries(client, helper, path), volume_paths)
        leftovers = [path for path, full in zip(volume_paths, filled, strict=True) if full]
        if leftovers:
            # The image has files under a path that was a volume in the source: a sandbox started
            # from a snapshot, whose volumes were filled from the image. A copy cannot delete
            # them, so one short run as root clears them.
            remove_container(client, helper)
            helper = client.api.create_container(
                image_id, labels=labels, user="0:0", network_disabled=True,
                entrypoint=["find", *leftovers, "-mindepth", "1", "-delete"])["Id"]
            client.api.start(helper)
            if client.api.wait(helper, timeout=120)["StatusCode"] != 0:
                raise SandboxStateError(f"could not clear {', '.join(leftovers)} for the snapshot")
    except BaseException:
        remove_container(client, helper)
        raise
    return helper


def _has_entries(client: docker.DockerClient, container_id: str, path: str) -> bool:
    """Whether the directory ``path`` of the (created) container holds anything."""
    try:
        chunks, _stat = client.api.get_archive(container_id, path)
    except NotFound:
        return False
    with tarfile.open(fileobj=cast(IO[bytes], _ChunkReader(chunks)), mode="r|") as archive:
        return sum(1 for _ in zip(archive, range(2), strict=False)) > 1  # more than the directory itself


class _ChunkReader:
    """A file-like view of an iterator of byte chunks (for tarfile's stream mode)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._buffer = iter(chunks), b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def remove_fork_image(image: str) -> None:
    """Remove a fork's image once no sandbox of the fork uses it (else leave it to the last one)."""
    try:
        docker_client().api.remove_image(image)
    except (NotFound, ImageNotFound):
        pass
    except APIError as exc:
        if exc.status_code != 409:  # 409: another fork's container still stands on it
            raise


@engine_errors()
def prune_snapshot_leftovers(*, everything: bool = False) -> int:
    """Remove what failed snapshots and ended forks left: half-made images and fork images of
    processes that are gone (or all, with ``everything``) that no container uses. Never a named
    snapshot. Helper containers go with the other containers of processes that are gone.

    Returns:
        How many images were removed.
    """
    client = docker_client()
    removed = 0
    for kind in ("snapshot-partial", "fork"):
        for image in client.api.images(all=True, filters={"label": f"{label.KIND}={kind}"}):
            labels = image.get("Labels") or {}
            if not everything and not owner_gone(labels):
                continue
            try:
                client.api.remove_image(image["Id"], force=False)
            except (NotFound, ImageNotFound):
                continue
            except APIError as exc:
                if exc.status_code == 409:  # in use: by a container, or a snapshot made from it
                    continue
                raise
            removed += 1
    return removed


@engine_errors()
def prune_snapshot_files(*, everything: bool = False) -> int:
    """Remove the disk files of snapshots that failed half-way (their process gone; with
    ``everything``, any process's) or whose image is gone: any file no snapshot's image names.

    Returns:
        How many files were removed.
    """
    client = docker_client()
    kept = {image["Labels"].get(label.SNAPSHOT_DISK) for image in client.api.images(
        all=True, filters={"label": f"{label.KIND}=snapshot"}) if image.get("Labels")}
    return prune_snapshot_disks({file for file in kept if file}, everything=everything)


def bring_home(snapshot: Snapshot, client: docker.DockerClient) -> Snapshot:
    """Load ``snapshot``, made on the engine of ``client`` (a cluster node's), into this host's
    engine, where snapshots live (and from where a cluster hands images to its nodes)."""
    home = docker_client()
    with engine_errors():
        home.images.load(client.api.get_image(snapshot.tag))
        return _size_of(home, home.api.inspect_image(snapshot.tag))
