"""The sandbox contract: what every backend provides, sync and async, with ``with`` and ``async with``."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import os
import posixpath
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Concatenate, ParamSpec, Self, TypeVar

from ..arguments import checked_timeout
from ..config import RuntimeConfig
from ..errors import InvalidArgumentError
from ..execution.channel import CommandStream, OutputCallback
from ..paths import UPLOADS_DIR
from ..results import ExecuteResult, FileInfo

__all__ = ["SandboxBase", "SandboxState"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


class SandboxState(enum.Enum):
    """Where a sandbox is in its life."""

    NEW = "new"
    RUNNING = "running"
    PAUSED = "paused"
    """Frozen in place (the cgroup freezer): no CPU, memory and processes kept; any call resumes it."""
    STOPPED = "stopped"


def _async_twin(method: Callable[Concatenate[SandboxBase, _P], _R]) -> Callable[
    Concatenate[SandboxBase, _P], Awaitable[_R]
]:
    """The async form of a blocking method: the same call, run in a worker thread.

    The call goes to the subclass's own method of that name, so one twin serves every sandbox kind.
    """
    name = method.__name__

    @functools.wraps(method)
    async def twin(self: SandboxBase, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return await asyncio.to_thread(getattr(self, name), *args, **kwargs)

    twin.__doc__ = f"Async form of :meth:`{method.__name__}`; same arguments, same result."
    return twin


class SandboxBase:
    """What every sandbox shares: the runtime's paths, use tracking, streaming, ``with``.

    Subclasses set ``runtime`` and provide ``start``, ``stop`` and ``aexecute``.
    """

    runtime: RuntimeConfig
    command_timeout: float
    max_output: int

    def __init__(self) -> None:
        self._busy = 0
        self._activity_lock = threading.Lock()
        self.last_used = time.monotonic()

    def _set_command_limits(self, command_timeout: float, max_output: int) -> None:
        """Check and keep what every command gets by default: its timeout and its output cap."""
        if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output <= 0:
            raise InvalidArgumentError(f"max_output must be a positive number of bytes, not {max_output!r}")
        self.command_timeout = checked_timeout(command_timeout, "command_timeout")
        self.max_output = max_output

    def _timeout(self, timeout: float | None) -> float:
        """A command's timeout: its own, else :attr:`command_timeout` (the channel checks it)."""
        return self.command_timeout if timeout is None else timeout

    @property
    def work_dir(self) -> str:
        """The working directory of commands, and the base of relative file paths."""
        return self.runtime.work_dir

    @property
    def allowed_roots(self) -> tuple[str, ...]:
        """The directories the file API may read and write."""
        return (self.work_dir, UPLOADS_DIR)

    @property
    def busy(self) -> bool:
        """A command or file transfer is under way."""
        return self._busy > 0

    @property
    def idle_seconds(self) -> float:
        """Seconds since the last command or file operation ended (0 while one runs)."""
        return 0.0 if self._busy else time.monotonic() - self.last_used

    @contextlib.contextmanager
    def _activity(self) -> Iterator[None]:
        with self._activity_lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._activity_lock:
                self._busy -= 1
                self.last_used = time.monotonic()

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    async def aexecute(self, command: str, timeout: float | None = None, *,
                       on_output: OutputCallback | None = None) -> ExecuteResult:
        raise NotImplementedError

    def astream(self, command: str, timeout: float | None = None) -> CommandStream:
        """Run ``command`` and iterate over its output as it is produced.

        Example:
            ```python
            stream = sandbox.astream("pip install rich")
            async for chunk in stream:
                print(chunk.text, end="")
            print(stream.result.exit_code)
            ```
        """
        return CommandStream(lambda on_output: self.aexecute(command, timeout, on_output=on_output))

    def write_file(self, path: str, content: bytes | str) -> str:
        raise NotImplementedError

    def _copy_in(self, source: Path, dest: str) -> str:
        raise NotImplementedError

    def read_file(self, path: str) -> bytes:
        raise NotImplementedError

    def download(self, path: str, dest: str | os.PathLike[str]) -> Path:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def list_files(self, path: str = ".") -> list[FileInfo]:
        raise NotImplementedError

    def upload(self, source: str | os.PathLike[str] | bytes, dest: str | None = None) -> str:
        """Copy a host file, or bytes, into the sandbox.

        Args:
            source: A file on the host, or the content itself.
            dest: Where it goes; default ``/uploads/<the file's name>`` (required for bytes). A
                relative path is taken from the work dir; one ending in ``/`` is a directory.

        Returns:
            The absolute path inside the sandbox.
        """
        if isinstance(source, (bytes, bytearray, memoryview)):
            if not dest or dest.endswith("/"):
                raise InvalidArgumentError(f"uploading bytes needs dest, the file's path in the sandbox, not {dest!r}")
            return self.write_file(dest, bytes(source))
        source_path = Path(source)
        if not source_path.is_file():
            raise FileNotFoundError(f"no such file on the host: {source_path}")
        if dest is None or dest.endswith("/"):
            dest = posixpath.join(dest or UPLOADS_DIR, source_path.name)
        return self._copy_in(source_path, dest)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- async twins --------------------------------------------------------------------------

    astart = _async_twin(start)
    aupload = _async_twin(upload)
    astop = _async_twin(stop)
    awrite_file = _async_twin(write_file)
    aread_file = _async_twin(read_file)
    adownload = _async_twin(download)
    aexists = _async_twin(exists)
    alist_files = _async_twin(list_files)
