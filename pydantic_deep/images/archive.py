"""Tar streams for Docker's archive API, used to prepare images (never on a running sandbox: see transfer)."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Collection, Iterable, Iterator, Mapping

__all__ = ["ChunkReader", "entries_tar", "iter_single_file"]

_COPY_CHUNK = 1024 * 1024


def _directory_info(name: str, uid: int, gid: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = tarfile.DIRTYPE, 0o755, uid, gid, time.time()
    return info


def entries_tar(directories: Iterable[tuple[str, int, int]], files: Mapping[str, bytes] = {},
                executables: Collection[str] = ()) -> bytes:
    """A small in-memory tar: ``directories`` as ``(relative name, uid, gid)`` with mode 0755,
    then root-owned ``files`` (relative name to content) with mode 0644, or 0755 for those named
    in ``executables``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, uid, gid in directories:
            tar.addfile(_directory_info(name, uid, gid))
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o755 if name in executables else 0o644, time.time()
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


class ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (what ``get_archive`` returns)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def iter_single_file(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The content of the one regular file in a streamed tar, in chunks.

    Raises:
        IsADirectoryError: the archive holds a directory, not a file.
    """
    reader = io.BufferedReader(ChunkReader(chunks), buffer_size=_COPY_CHUNK)
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        member = tar.next()
        if member is None or not member.isfile():
            raise IsADirectoryError(member.name if member else "")
        extracted = tar.extractfile(member)
        assert extracted is not None
        while chunk := extracted.read(_COPY_CHUNK):
            yield chunk
