"""The sandbox contract: what every backend provides, sync and async, with ``with`` and ``async with``."""

from __future__ import annotations

import abc
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
from typing import BinaryIO, Concatenate, ParamSpec, Self, TypeVar

from ..arguments import checked_timeout
from ..config import RuntimeConfig
from ..errors import InvalidArgumentError
from ..execution.channel import CommandStream, OutputCallback, Process, SupervisorChannel
from ..execution.ports import ExposedPort, PortForwards, checked_port
from ..execution.terminal import Terminal
from ..paths import UPLOADS_DIR
from ..results import ExecuteResult, FileInfo, ResourceUsage
from .preview import Preview, find_jupyter_server, listens_in, preview_of

__all__ = ["SandboxBase", "SandboxState", "tracked"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_S = TypeVar("_S", bound="SandboxBase")


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

    @functools.wraps(method, updated=())  # not __dict__: an abstract method's twin is not abstract
    async def twin(self: SandboxBase, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return await asyncio.to_thread(getattr(self, name), *args, **kwargs)

    twin.__doc__ = f"Async form of :meth:`{method.__name__}`; same arguments, same result."
    return twin


def tracked(method: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
    """Mark the sandbox busy while ``method`` runs: a busy sandbox is never idle."""

    @functools.wraps(method)
    def in_use(self: _S, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._activity():
            return method(self, *args, **kwargs)

    return in_use


class SandboxBase(abc.ABC):
    """The contract every sandbox honours, whatever runs it (a Docker container, local processes).

    Code that accepts any sandbox types against this class: :func:`open_sandbox` returns one.
    Every blocking method has an async twin prefixed with ``a`` (``aexecute``, ``aread_file``,
    ...), and a sandbox is a context manager in both worlds (``with``, ``async with``): entering
    starts it, leaving stops it.

    A sandbox is ``NEW`` until :meth:`start` (or its first use, which starts it), ``RUNNING``, then
    ``STOPPED`` after :meth:`stop`; calls on a stopped sandbox raise :class:`SandboxStateError`
    until :meth:`start` starts a fresh one. File paths are the sandbox's own: relative to
    :attr:`work_dir`, or absolute under one of :attr:`allowed_roots`; any other path raises
    :class:`PathOutsideSandboxError` and nothing is done.

    A backend subclasses it, sets ``runtime``, ``state``, ``image``, ``container_id``,
    ``tools_dir`` and ``network``, and implements the abstract methods (a backend that forgets one
    cannot be instantiated).
    """

    runtime: RuntimeConfig
    """The runtime the sandbox runs: its work dir, environment, packages."""
    state: SandboxState
    """Where the sandbox is in its life."""
    image: str | None
    """What runs the sandbox: the container's image, or a description of a local one."""
    container_id: str | None
    """What identifies the running sandbox (its container id); ``None`` before it started."""
    tools_dir: str
    """Where the supervisor and the notebook interpreters are, as commands see it."""
    network: bool | tuple[str, ...]
    """Whether commands can reach the network; or the host patterns they may reach (through an egress proxy)."""
    command_timeout: float
    """Seconds a command may run when it is given no ``timeout``."""
    max_output: int
    """Bytes of output kept per command; the rest is discarded and the result flagged ``truncated``."""
    isolated: bool = True
    """Whether the sandbox's code is kept away from the host (``False`` only for :class:`LocalSandbox`)."""

    def __init__(self) -> None:
        self._busy = 0
        self._activity_lock = threading.Lock()
        self.last_used = time.monotonic()
        self._ports: PortForwards | None = None

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

    # -- life cycle ---------------------------------------------------------------------------

    @abc.abstractmethod
    def start(self) -> Self:
        """Start the sandbox; a no-op when it runs. After :meth:`stop`, start a fresh one.

        Returns:
            The sandbox itself, so that ``box = Sandbox().start()`` works.
        """

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the sandbox and everything it runs, and remove its files (a backend may keep
        some on request). Safe to call more than once, and before :meth:`start`."""

    @property
    @abc.abstractmethod
    def alive(self) -> bool:
        """Running, with its execution channel open: commands can run now."""

    @property
    @abc.abstractmethod
    def has_python(self) -> bool:
        """Commands run through the supervisor, so ``python3`` (3.8+) is there: the notebook's
        Python interpreter works, and async commands wait on the event loop."""

    @abc.abstractmethod
    def usage(self) -> ResourceUsage:
        """The memory in use and the CPU time used so far (starts a new sandbox first).

        Raises:
            SandboxStateError: the sandbox was stopped.
        """

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await self.astart()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.astop()

    # -- commands -----------------------------------------------------------------------------

    @abc.abstractmethod
    def execute(self, command: str, timeout: float | None = None, *,
                on_output: OutputCallback | None = None) -> ExecuteResult:
        """Run ``command`` with ``sh -c`` in the work dir and return its output and exit code.

        Args:
            command: A shell command line: quoting, pipes and variables work as in ``sh``.
            timeout: Seconds before the command's whole process group is killed (default
                :attr:`command_timeout`, at most 1,000,000); the result then has ``timed_out=True``.
            on_output: Called with each :class:`OutputChunk` as the command produces it. It runs
                on the channel's reader thread: keep it quick, and do not wait in it for another
                command of this sandbox.

        Raises:
            InvalidArgumentError: the command holds a NUL byte or a lone surrogate, or the timeout
                is not a positive number of seconds; nothing ran.
            SandboxStateError: the sandbox was stopped.
        """

    @abc.abstractmethod
    async def aexecute(self, command: str, timeout: float | None = None, *,
                       on_output: OutputCallback | None = None) -> ExecuteResult:
        """Async form of :meth:`execute`."""

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

    @abc.abstractmethod
    def spawn(self, command: str, *, on_output: OutputCallback) -> Process:
        """Start a long-lived ``command`` (an interpreter, say) with an open standard input.

        Its output goes to ``on_output`` as it comes, and nothing is kept; it has no timeout.
        """

    # -- terminals ----------------------------------------------------------------------------

    @abc.abstractmethod
    def terminal(self, cols: int = 80, rows: int = 24, command: str | None = None, *,
                 on_output: Callable[[str], object] | None = None) -> Terminal:
        """Open an interactive terminal: ``command`` on a new pseudo-terminal (PTY) of ``cols`` x ``rows``.

        Type into it with :meth:`Terminal.write` (``"\x03"`` is Ctrl-C), see what it shows with
        :meth:`Terminal.read`, change its size with :meth:`Terminal.resize`, and end it with
        :meth:`Terminal.close` (or a ``with`` block). It ends by itself when its program exits, and
        with the sandbox. Any number may be open at once. Typing into one counts as using the
        sandbox (it is not idle).

        Args:
            cols: Width in characters (1 to 65535).
            rows: Height in lines (1 to 65535).
            command: A shell command line to run on it; ``None``: an interactive shell (``bash``
                where the image has it, else ``sh``).
            on_output: Also called with each piece of output as it comes (on the channel's reader
                thread: keep it quick); what is not read is kept too, up to a megabyte.

        Raises:
            InvalidArgumentError: a size out of range, or a command with a NUL byte; nothing ran.
            SandboxStateError: the sandbox was stopped.
        """

    def _used(self) -> None:
        """Count this moment as use of the sandbox (a terminal was typed into)."""
        self.last_used = time.monotonic()

    # -- files --------------------------------------------------------------------------------

    @abc.abstractmethod
    def write_file(self, path: str, content: bytes | str) -> str:
        """Write ``content`` to ``path`` (relative to the work dir, or under ``/uploads``).

        Missing parent directories are created. Returns the absolute path written.

        Raises:
            InvalidArgumentError: an unusable path (empty, NUL, too long), or text content UTF-8
                cannot hold.
            PathOutsideSandboxError: the path leaves the work dir and ``/uploads``.
            IsADirectoryError: a directory is there (it is left as it is).
            NotADirectoryError: a parent on the path is a file.
        """

    @abc.abstractmethod
    def _copy_in(self, source: Path, dest: str) -> str:
        """Copy the host file ``source`` to the sandbox path ``dest``; return the absolute path."""

    @abc.abstractmethod
    def read_file(self, path: str) -> bytes:
        """The content of the file at ``path``.

        Raises:
            SandboxFileNotFoundError: there is no such file.
            IsADirectoryError: the path is a directory.
            InvalidArgumentError: an unusable path (empty, NUL, too long).
            PathOutsideSandboxError: the path leaves the work dir and ``/uploads``.
        """

    def download(self, path: str, dest: str | os.PathLike[str]) -> Path:
        """Copy the sandbox file ``path`` to the host file ``dest``, streamed. Returns ``dest``; a
        failed copy leaves no ``dest`` (the bytes go to ``dest.part`` first).

        Raises:
            SandboxFileNotFoundError: there is no such file.
        """
        dest_path = Path(dest)
        partial = dest_path.with_name(dest_path.name + ".part")
        try:
            with partial.open("wb") as handle:
                self._copy_out(path, handle)
            partial.replace(dest_path)  # a half-copied file never carries the final name
        finally:
            partial.unlink(missing_ok=True)
        return dest_path

    @abc.abstractmethod
    def _copy_out(self, path: str, target: BinaryIO) -> int:
        """Write the content of the sandbox file ``path`` into ``target``; the number of bytes."""

    @abc.abstractmethod
    def exists(self, path: str) -> bool:
        """Whether a file or directory exists at ``path``."""

    @abc.abstractmethod
    def list_files(self, path: str = ".") -> list[FileInfo]:
        """The entries of the directory ``path``, sorted by name.

        Raises:
            SandboxFileNotFoundError: the directory does not exist.
            NotADirectoryError: the path is a file.
        """

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

    # -- ports --------------------------------------------------------------------------------

    def expose(self, port: int, *, host: str = "127.0.0.1", host_port: int | None = None,
               token: str | None = None) -> str:
        """Open ``port`` of the sandbox on the host, and return its URL (starts a new sandbox first).

        Each connection to the URL is carried over the sandbox's execution channel, as
        ``kubectl port-forward`` does: it works with the sandbox's network off, for HTTP, WebSockets
        and any other TCP protocol, and what a server sends waits in the sandbox, not in the host's
        memory, while the client is slow. The listener closes when the sandbox stops (or on
        :meth:`unexpose`). Exposing an exposed port again the same way returns the same URL.

        Args:
            port: The port a server listens on inside the sandbox (on any of its addresses, or
                its loopback: ``127.0.0.1`` or ``::1``).
            host: The host address to listen on: loopback by default, so that only this machine
                can connect. Any other (``"0.0.0.0"``: every address) requires a token.
            host_port: The port on the host; default a free one.
            token: What a client must show (16+ URL-safe characters); made for you when ``host``
                is not loopback, and then part of the URL (``?pydantic_deep_token=...``). A
                browser that opens that URL gets a cookie and carries the token from then on;
                other clients may send it as the ``X-Pydantic-Deep-Token`` header instead.

        Returns:
            The URL, with the token if there is one. :attr:`exposed` lists the details.

        Raises:
            InvalidArgumentError: a port out of range, a bad token, a host or host port that
                cannot be listened on, or the port exposed already in another way.
            SandboxStateError: the sandbox was stopped.
            SandboxError: the sandbox cannot carry connections (an image with neither
                ``python3`` nor ``node`` for the supervisor).
        """
        return self._port_forwards().expose(port, host=host, host_port=host_port, token=token).url

    def unexpose(self, port: int) -> bool:
        """Close ``port``'s listener on the host and its connections; ``False`` if it was not open."""
        return self._port_forwards().unexpose(port)

    def preview(self, port: int, *, path: str = "/", absolute: bool = False, height: int = 480) -> Preview:
        """Expose ``port`` (see :meth:`expose`) and return a :class:`Preview`: displayed (the last
        line of a notebook cell), it shows the app in an iframe under the cell.

        The iframe goes through the Jupyter server when it has jupyter-server-proxy, so it works
        where the browser cannot reach this host (JupyterHub, Binder, a remote server); else it
        opens the exposed URL directly.

        Args:
            port: The port a server listens on inside the sandbox.
            path: The page to open, from the app's root.
            absolute: Keep the proxy's path in requests (jupyter-server-proxy's ``proxy/absolute``):
                for apps that write absolute paths into their pages and are told the path they are
                served under (:attr:`Preview.base`; Vite's ``--base``).
            height: The iframe's height in pixels.
        """
        self.expose(port)
        exposed = next(item for item in self.exposed if item.port == port)
        return preview_of(exposed, path=path, absolute=absolute, height=height, server=find_jupyter_server())

    def listening(self, port: int) -> bool:
        """Whether a server listens on TCP ``port`` inside the sandbox (on any of its addresses)."""
        port = checked_port(port)
        return listens_in(self.execute("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null", timeout=30).output, port)

    @property
    def exposed(self) -> list[ExposedPort]:
        """The sandbox's ports open on the host (see :meth:`expose`), by port number."""
        return self._ports.exposed if self._ports is not None else []

    def _port_forwards(self) -> PortForwards:
        with self._activity_lock:
            if self._ports is None:
                self._ports = PortForwards(self._channel_for_connection, direct=not self.isolated,
                                           on_traffic=self._used_by_port)
            return self._ports

    def _channel_for_connection(self) -> SupervisorChannel:
        self._used_by_port()
        return self._stream_channel()

    def _used_by_port(self) -> None:
        """A connection to a port opened, or moved bytes: the sandbox is in use, not idle (an open
        connection that moves nothing, a quiet WebSocket, does not keep it from idling)."""
        self.last_used = time.monotonic()

    @abc.abstractmethod
    def _stream_channel(self) -> SupervisorChannel:
        """The live supervisor channel that connections to ports travel on (starts a new sandbox).

        Raises:
            SandboxStateError: the sandbox was stopped.
            SandboxError: the sandbox has no supervisor channel.
        """

    def _close_ports(self) -> None:
        """Close every exposed port: the sandbox stops."""
        if self._ports is not None:
            self._ports.close_all()

    # -- async twins --------------------------------------------------------------------------

    astart = _async_twin(start)
    astop = _async_twin(stop)
    ausage = _async_twin(usage)
    aspawn = _async_twin(spawn)
    aterminal = _async_twin(terminal)
    aupload = _async_twin(upload)
    awrite_file = _async_twin(write_file)
    aread_file = _async_twin(read_file)
    adownload = _async_twin(download)
    aexists = _async_twin(exists)
    alist_files = _async_twin(list_files)
    aexpose = _async_twin(expose)
    aunexpose = _async_twin(unexpose)
    apreview = _async_twin(preview)
    alistening = _async_twin(listening)
