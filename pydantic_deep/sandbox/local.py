"""LocalSandbox: the sandbox API on this machine's processes, for where Docker cannot run. NOT ISOLATED.

Commands run as the current user in a private directory, with the same execution channel as in a
container (the supervisor, here a local process), so ``execute``, streaming, timeouts, the
notebook interpreter and the file API behave the same. Nothing is isolated: code can read and
write whatever the current user can, and reach the network. It is never chosen for you: create
it by name, set ``%config SandboxMagics.backend = "local"``, or deploy with
``PYDANTIC_DEEP_BACKEND=local`` (:mod:`pydantic_deep.sandbox.backends`, as Binder does). Everything it shows says so.

Paths: the file API takes the container's paths (the runtime's work dir, ``/uploads``) and maps
them into the private directory. Commands run in the mapped work dir; ``$PYDANTIC_DEEP_UPLOADS``
names the mapped ``/uploads``, which is also linked as ``uploads`` in the work dir.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import BinaryIO, Self

from ..arguments import file_content
from ..config import RuntimeConfig
from ..errors import PathOutsideSandboxError, SandboxError, SandboxFileNotFoundError, SandboxStateError
from ..execution.channel import OutputCallback, Process, SupervisorChannel
from ..execution.terminal import Terminal, checked_terminal_size
from ..paths import UPLOADS_DIR, resolve_sandbox_path
from ..results import ExecuteResult, FileInfo, ResourceUsage
from ..runtimes import resolve_runtime
from .base import SandboxBase, SandboxState, tracked

__all__ = ["LocalSandbox"]

logger = logging.getLogger("pydantic_deep.local")


class LocalSandbox(SandboxBase):
    """The :class:`DockerSandbox` API on local processes in a private directory. **Not isolated.**

    Args:
        runtime: A runtime name or config: its work dir and env vars are used, its packages are
            not installed (the packages of the Python running this code are what there is: its
            directory comes first on the commands' ``PATH``).
        command_timeout: Seconds a command may run when :meth:`execute` gets no ``timeout``.
        max_output: Bytes of output kept per command.
    """

    isolated = False

    def __init__(self, runtime: str | RuntimeConfig = "python-minimal", *, command_timeout: float = 600,
                 max_output: int = 1_000_000) -> None:
        self.runtime = resolve_runtime(runtime)
        self._set_command_limits(command_timeout, max_output)
        self.network = True
        self.image = "local (not isolated)"
        self.container_id: str | None = None
        self.state = SandboxState.NEW
        self.directory: Path | None = None
        self.tools_dir = str(files("pydantic_deep._guest"))
        super().__init__()
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: SupervisorChannel | None = None
        self._lock = threading.Lock()

    @property
    def has_python(self) -> bool:
        """Always: commands run through a supervisor on this process's Python."""
        return True

    @property
    def alive(self) -> bool:
        """Running, with its supervisor answering."""
        return self.state is SandboxState.RUNNING and self._channel is not None and self._channel.alive

    def start(self) -> Self:
        """Make the private directory and start the local supervisor; a no-op when running."""
        with self._lock:
            if self.state is SandboxState.RUNNING:
                return self
            logger.warning("LocalSandbox: commands run on this machine as %s, NOT ISOLATED",
                           os.environ.get("USER", "the current user"))
            self.directory = Path(tempfile.mkdtemp(prefix="pydantic-deep-local-"))
            work, uploads = self._real(self.work_dir), self._real(UPLOADS_DIR)
            work.mkdir(parents=True)
            uploads.mkdir(parents=True)
            (work / "uploads").symlink_to(uploads)
            ours, theirs = socket.socketpair()
            # `python` in commands is this process's Python first: the packages a notebook's kernel has.
            path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", os.defpath)])
            environment = {**os.environ, **self.runtime.env_vars, "PYDANTIC_DEEP_UPLOADS": str(uploads),
                           "PATH": path}
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", str(Path(self.tools_dir) / "supervisor.py")],
                stdin=theirs.fileno(), stdout=theirs.fileno(), cwd=work, env=environment, start_new_session=True)
            theirs.close()
            self._channel = SupervisorChannel.open_local(ours, f"local-{self._process.pid}")
            self.container_id = f"local-{self._process.pid}"
            self.state = SandboxState.RUNNING
        return self

    def stop(self) -> None:
        """Stop the supervisor (and what it runs) and delete the private directory. Safe to call
        more than once."""
        self._close_ports()
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            if self._process is not None:
                self._process.wait(timeout=30)
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
            self._channel = self._process = None
            if self.state is SandboxState.RUNNING:
                self.state = SandboxState.STOPPED

    def _live_channel(self) -> SupervisorChannel:
        if self.state is SandboxState.NEW:
            self.start()
        if self._channel is None or not self._channel.alive:
            raise SandboxStateError("this local sandbox was stopped (or its supervisor died); call start()")
        return self._channel

    def _stream_channel(self) -> SupervisorChannel:
        """The local supervisor's channel: it carries connections to ports that are exposed wider
        than loopback, or on another port (a loopback port is given directly: it is on this host)."""
        return self._live_channel()

    def _real(self, virtual: str) -> Path:
        """The local path of a sandbox path, refusing anything outside the private directory."""
        assert self.directory is not None
        absolute = resolve_sandbox_path(virtual, self.work_dir, self.allowed_roots)
        real = (self.directory / absolute.lstrip("/")).resolve()
        if not real.is_relative_to(self.directory.resolve()):  # a symlink that leads out
            raise PathOutsideSandboxError(virtual, self.allowed_roots)
        return real

    # -- commands -----------------------------------------------------------------------------

    def execute(self, command: str, timeout: float | None = None, *,
                on_output: OutputCallback | None = None) -> ExecuteResult:
        """Run ``command`` with ``sh -c`` in the (local) work dir."""
        with self._activity():
            return self._live_channel().run(command, timeout=self._timeout(timeout),
                                            max_output=self.max_output, on_output=on_output)

    async def aexecute(self, command: str, timeout: float | None = None, *,
                       on_output: OutputCallback | None = None) -> ExecuteResult:
        """Async form of :meth:`execute`."""
        with self._activity():
            channel = self._live_channel() if self.state is SandboxState.RUNNING else await asyncio.to_thread(
                self._live_channel)
            return await channel.arun(command, timeout=self._timeout(timeout),
                                      max_output=self.max_output, on_output=on_output)

    @tracked
    def spawn(self, command: str, *, on_output: OutputCallback) -> Process:
        """Start a long-lived ``command`` with an open standard input."""
        return self._live_channel().spawn(command, on_output)

    @tracked
    def terminal(self, cols: int = 80, rows: int = 24, command: str | None = None, *,
                 on_output: Callable[[str], object] | None = None) -> Terminal:
        """Open an interactive terminal on this machine, in the work dir (see :meth:`SandboxBase.terminal`)."""
        checked_terminal_size(cols, rows)
        return self._live_channel().terminal(command, cols=cols, rows=rows, on_output=on_output,
                                             on_activity=self._used)

    # -- files --------------------------------------------------------------------------------

    @tracked
    def write_file(self, path: str, content: bytes | str) -> str:
        """Write ``content`` to ``path``, as :meth:`DockerSandbox.write_file` does."""
        data = file_content(content)
        self._live_channel()
        self._writable(path).write_bytes(data)
        return resolve_sandbox_path(path, self.work_dir, self.allowed_roots)

    @tracked
    def _copy_in(self, source: Path, dest: str) -> str:
        self._live_channel()
        shutil.copyfile(source, self._writable(dest))
        return resolve_sandbox_path(dest, self.work_dir, self.allowed_roots)

    def _writable(self, path: str) -> Path:
        """The local path to write ``path`` at, its parent directories made; errors as in a container."""
        real = self._real(path)
        if real.is_dir():
            raise IsADirectoryError(f"{resolve_sandbox_path(path, self.work_dir, self.allowed_roots)} is a directory")
        try:
            real.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise NotADirectoryError(f"a parent of {path} is not a directory") from None
        return real

    @tracked
    def read_file(self, path: str) -> bytes:
        """The content of the file at ``path``, as :meth:`DockerSandbox.read_file` reads it."""
        self._live_channel()
        real = self._real(path)
        if real.is_dir():
            raise IsADirectoryError(f"{path} is a directory; use list_files()")
        if not real.exists():
            raise SandboxFileNotFoundError(f"no such file in the sandbox: {path}")
        if not real.is_file():
            raise SandboxError(f"{path} is not a regular file (a pipe or a device, say), so it cannot be read")
        return real.read_bytes()

    def _copy_out(self, path: str, target: BinaryIO) -> int:
        return target.write(self.read_file(path))

    @tracked
    def exists(self, path: str) -> bool:
        """Whether a file or directory exists at ``path``."""
        self._live_channel()
        return self._real(path).exists()

    @tracked
    def list_files(self, path: str = ".") -> list[FileInfo]:
        """The entries of the directory ``path``, sorted by name."""
        self._live_channel()
        directory = resolve_sandbox_path(path, self.work_dir, self.allowed_roots)
        real = self._real(path)
        if real.exists() and not real.is_dir():
            raise NotADirectoryError(f"{directory} is not a directory")
        if not real.is_dir():
            raise SandboxFileNotFoundError(f"no such directory in the sandbox: {directory}")
        return sorted((FileInfo(name=p.name, path=f"{directory.rstrip('/')}/{p.name}", size=p.lstat().st_size,
                                is_dir=p.is_dir(), modified=p.lstat().st_mtime) for p in real.iterdir()),
                      key=lambda entry: entry.name)

    def usage(self) -> ResourceUsage:
        """The supervisor's memory and CPU time (its commands are not counted)."""
        self._live_channel()
        assert self._process is not None
        stat = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return ResourceUsage(memory_bytes=int(stat[21]) * os.sysconf("SC_PAGE_SIZE"),
                             cpu_seconds=(int(stat[11]) + int(stat[12])) / ticks)

    # -- life cycle sugar and display ---------------------------------------------------------

    def __repr__(self) -> str:
        return (f"<LocalSandbox NOT ISOLATED runtime={self.runtime.name!r} state={self.state.value} "
                f"directory={str(self.directory) if self.directory else None!r}>")

    def _repr_html_(self) -> str:
        return warning_box(f"<b>LocalSandbox: NOT ISOLATED</b> (runs on this machine as you)<br>Runtime: "
                           f"{self.runtime.name}<br>State: {self.state.value}<br>Directory: {self.directory}")


class LocalBackendBanner:
    """What ``%load_ext pydantic_deep`` shows when the notebook's sandboxes are local (Binder)."""

    why = ("there is no Docker engine here (on Binder, say), so commands run in this machine's processes, "
           "NOT ISOLATED. With Docker, the same cells run in containers.")

    def __repr__(self) -> str:
        return f"This notebook runs its sandboxes as LocalSandbox: {self.why}"

    def _repr_html_(self) -> str:
        return warning_box(f"<b>No Docker here: LocalSandbox, NOT ISOLATED.</b> {self.why}")


def warning_box(inner_html: str) -> str:
    """A red-bordered box: how everything about a local sandbox looks in a notebook."""
    return f"<div style='border:2px solid #b00;padding:4px;color:#600'>{inner_html}</div>"
