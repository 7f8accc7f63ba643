"""Building one image from a Dockerfile: streamed log, one build per tag at a time, nothing tagged on failure."""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import tarfile
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import docker
from docker.errors import APIError, ImageNotFound

from .._cache import cache_dir
from ..errors import ImageBuildError

__all__ = ["Progress", "build_image", "image_exists", "image_id", "image_lock"]

logger = logging.getLogger("pydantic_deep.images")

Progress = Callable[[str], None]
"""Receives each line of build output as it is produced."""

_LOG_TAIL = 30
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@contextlib.contextmanager
def image_lock(tag: str) -> Iterator[None]:
    """Hold the build of ``tag`` for this thread, against other threads and other processes.

    Whoever gets the lock second finds the image built by the first and does not build it again.
    """
    with _thread_locks_guard:
        thread_lock = _thread_locks.setdefault(tag, threading.Lock())
    lock_path = cache_dir("locks") / (tag.replace("/", "_").replace(":", "_") + ".lock")
    with thread_lock, open(lock_path, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    """Whether ``tag`` names an image in the local engine."""
    return image_id(client, tag) is not None


def image_id(client: docker.DockerClient, ref: str) -> str | None:
    """The id of the image ``ref`` names in the local engine, or ``None`` when there is none."""
    try:
        return str(client.images.get(ref).id)
    except ImageNotFound:
        return None


def build_image(
    client: docker.DockerClient,
    tag: str,
    dockerfile: str,
    *,
    files: Mapping[str, bytes | Path] | None = None,
    labels: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    nocache: bool = False,
) -> str:
    """Build ``dockerfile`` with ``files`` as its context and tag the result ``tag``.

    The log streams line by line to ``progress`` and to the ``pydantic_deep.images`` logger (at
    DEBUG). The engine tags only a finished build, and intermediate containers are always removed,
    so a failure leaves no tag and no container behind.

    Returns:
        The new image's id.

    Raises:
        ImageBuildError: a step failed; the error carries the last lines of the log.
    """
    tail: deque[str] = deque(maxlen=_LOG_TAIL)
    with tempfile.TemporaryFile() as context:
        _write_context(context, dockerfile, files or {})
        context.seek(0)
        try:
            stream = client.api.build(
                fileobj=context, custom_context=True, tag=tag, labels=dict(labels or {}),
                rm=True, forcerm=True, nocache=nocache, decode=True,
            )
            image_id = None
            for chunk in stream:
                for line in chunk.get("stream", "").splitlines():
                    _emit(line, tail, progress)
                if "error" in chunk:
                    _emit(chunk["error"].strip(), tail, progress)
                    raise ImageBuildError(tag, chunk["error"].strip().splitlines()[-1], list(tail))
                image_id = chunk.get("aux", {}).get("ID", image_id)
        except APIError as exc:
            raise ImageBuildError(tag, exc.explanation or str(exc), list(tail)) from exc
    if image_id is None:
        raise ImageBuildError(tag, "the engine reported no image id", list(tail))
    return image_id


def _emit(line: str, tail: deque[str], progress: Progress | None) -> None:
    if not line.strip():
        return
    tail.append(line)
    logger.debug("%s", line)
    if progress is not None:
        progress(line)


def _write_context(target: io.IOBase, dockerfile: str, files: Mapping[str, bytes | Path]) -> None:
    with tarfile.open(fileobj=target, mode="w") as tar:
        for name, content in {"Dockerfile": dockerfile.encode(), **files}.items():
            if isinstance(content, Path):
                tar.add(content, arcname=name)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
