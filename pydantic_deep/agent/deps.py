"""DeepAgentDeps: what an agent run needs — the sandbox its tools act in, and the files handed to it."""

from __future__ import annotations

import asyncio
import mimetypes
import posixpath
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import InvalidArgumentError
from ..paths import UPLOADS_DIR
from ..sandbox.base import SandboxBase

__all__ = ["DeepAgentDeps", "UploadedFile"]


@dataclass(frozen=True)
class UploadedFile:
    """A file put into ``/uploads`` for the agent, as its system prompt lists it."""

    name: str
    path: str
    size: int
    media_type: str


def safe_upload_name(name: str) -> str:
    """The last path component of ``name``, so ``../../etc/passwd`` becomes ``passwd``.

    Raises:
        InvalidArgumentError: nothing usable is left, or the name holds control characters.
    """
    if any(unicodedata.category(char) == "Cc" for char in name):
        raise InvalidArgumentError(f"upload name {name!r} contains control characters")
    base = posixpath.basename(name.replace("\\", "/").rstrip("/"))
    if base in ("", ".", ".."):
        raise InvalidArgumentError(f"upload name {name!r} has no file name in it")
    return base


@dataclass
class DeepAgentDeps:
    """The dependencies of a deep agent run: the sandbox its tools act in, and its uploads.

    Example:
        ```python
        deps = DeepAgentDeps(backend=sandbox)
        deps.upload_file("data.csv", csv_bytes)        # -> /uploads/data.csv
        result = await agent.run("Summarise /uploads/data.csv", deps=deps)
        ```

    Attributes:
        backend: The sandbox every tool of the agent acts in.
        max_upload_bytes: The largest file :meth:`upload_file` accepts.
        uploads: What :meth:`upload_file` put into ``/uploads``, by name.
    """

    backend: SandboxBase
    max_upload_bytes: int = 100 * 1024 * 1024
    uploads: dict[str, UploadedFile] = field(default_factory=dict)

    def upload_file(self, name: str, content: bytes | str) -> UploadedFile:
        """Put ``content`` into ``/uploads/<name>`` and list it in the agent's system prompt.

        The name is reduced to its last path component (no ``../``).

        Raises:
            InvalidArgumentError: the name is unusable, or the content is larger than ``max_upload_bytes``.
        """
        return self._write(*self._checked(name, content))

    def upload_files(self, files: Mapping[str, bytes | str]) -> list[UploadedFile]:
        """:meth:`upload_file` for each ``{name: content}``; all are checked before any is written."""
        checked = [self._checked(name, content) for name, content in files.items()]
        return [self._write(name, data) for name, data in checked]

    def _checked(self, name: str, content: bytes | str) -> tuple[str, bytes]:
        data = content.encode() if isinstance(content, str) else bytes(content)
        safe = safe_upload_name(name)
        if len(data) > self.max_upload_bytes:
            raise InvalidArgumentError(
                f"{safe} is {len(data):,} bytes; uploads are limited to {self.max_upload_bytes:,} bytes")
        return safe, data

    def _write(self, name: str, data: bytes) -> UploadedFile:
        path = self.backend.write_file(posixpath.join(UPLOADS_DIR, name), data)
        uploaded = UploadedFile(name, path, len(data), mimetypes.guess_type(name)[0] or "application/octet-stream")
        self.uploads[name] = uploaded
        return uploaded

    async def aupload_file(self, name: str, content: bytes | str) -> UploadedFile:
        """Async form of :meth:`upload_file`."""
        return await asyncio.to_thread(self.upload_file, name, content)

    async def aupload_files(self, files: Mapping[str, bytes | str]) -> list[UploadedFile]:
        """Async form of :meth:`upload_files`."""
        return await asyncio.to_thread(self.upload_files, files)
