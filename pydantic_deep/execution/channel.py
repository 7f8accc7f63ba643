"""Execution channels: how a command gets from the host into a running container and back.

:class:`SupervisorChannel` keeps one stream open to the supervisor inside the container
(``_guest/supervisor.py``, or its Node.js twin ``supervisor.js`` in images without ``python3``): the
socket it dialled in on when the container started (:mod:`.dial_in`), else a ``docker exec -i``'s.
It multiplexes every command over it: well under a millisecond per command instead of a
``docker exec`` each, any number of commands at once, and async callers wait on the event loop
instead of on a thread. :class:`DockerExecChannel` is the fallback for images with neither
``python3`` nor ``node``: one ``docker exec`` per command.

Both run ``sh -c command`` as the sandbox user, in the work dir, with the container's environment;
kill the command's whole process group at its timeout; keep at most ``max_output`` bytes; and
deliver output as it arrives to an ``on_output`` callback.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import itertools
import json
import logging
import socket
import subprocess
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import docker

from .._guest import supervisor as protocol
from ..arguments import checked_text, checked_timeout
from ..engine.api import Exec, docker_frames
from ..engine.containers import container_running
from ..errors import ChannelClosedError, InvalidArgumentError, SandboxError
from ..results import ExecuteResult, OutputChunk
from .terminal import Terminal, checked_terminal_size

__all__ = ["MAX_COMMAND_BYTES", "OOM_NOTE", "Channel", "ChannelClosedError", "CommandStream", "DockerExecChannel",
           "ExecProcess", "OutputCallback", "Process", "RunningCommand", "StreamReceiver", "SupervisorChannel"]

logger = logging.getLogger("pydantic_deep.channel")

OutputCallback = Callable[[OutputChunk], object]
"""Receives output as it is produced, decoded, one chunk of one stream at a time."""

# Extra seconds the host waits past a command's own timeout before it calls the channel dead.
_GRACE = 30.0
_HELLO_TIMEOUT = 15.0
# What `timeout -s KILL` exits with when it had to kill the command (128 + SIGKILL).
_KILLED = 137
OOM_NOTE = ("\n[pydantic-deep] Out of memory: the kernel killed a process of this command at the sandbox's "
            "memory limit (DockerSandbox(memory=...)).\n")
"""The line that ends the output and stderr of a command whose process was killed for lack of memory."""
# `sh -c COMMAND` gets the command as one argument, which Linux limits to 32 pages with its NUL.
MAX_COMMAND_BYTES = 128 * 1024 - 1


def _raw_frames(sock: socket.socket) -> Iterator[tuple[int, bytes]]:
    """A plain stream read as stdout frames (a local supervisor's, without docker's framing)."""
    while chunk := sock.recv(1 << 18):
        yield 1, chunk


class Channel(Protocol):
    """What a sandbox needs from an execution channel."""

    def run(self, command: str, *, timeout: float, max_output: int,
            on_output: OutputCallback | None = None) -> ExecuteResult:
        """Run ``command`` to its end (or its ``timeout``), keeping at most ``max_output`` bytes."""

    async def arun(self, command: str, *, timeout: float, max_output: int,
                   on_output: OutputCallback | None = None) -> ExecuteResult:
        """Async form of :meth:`run`."""

    def spawn(self, command: str, on_output: OutputCallback) -> Process:
        """Start a long-lived command with an open stdin; its output goes to ``on_output`` alone."""

    def terminal(self, command: str | None, *, cols: int, rows: int,
                 on_output: Callable[[str], object] | None = None,
                 on_activity: Callable[[], object] | None = None) -> Terminal:
        """Open a :class:`Terminal`: ``command`` (``None``: an interactive shell) on a new PTY."""

    @property
    def alive(self) -> bool:
        """Whether commands can still run through it."""

    @property
    def multiplexed(self) -> bool:
        """Commands share one stream to the supervisor: :meth:`alive` is known without asking the
        engine, and :meth:`arun` waits on the event loop instead of a thread."""

    def close(self) -> None:
        """Close it; what still runs through it is killed."""


class _OutputBuffer:
    """Collects up to ``limit`` bytes; past that, counts and drops."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = max(self.limit - len(self.data), 0)
        self.data += chunk[:room]
        self.dropped += max(len(chunk) - room, 0)

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


class _Collector:
    """One command's output as it arrives: capped buffers, and decoded chunks for ``on_output``."""

    def __init__(self, max_output: int, on_output: OutputCallback | None) -> None:
        self.combined = _OutputBuffer(max_output)
        self.streams = {"stdout": _OutputBuffer(max_output), "stderr": _OutputBuffer(max_output)}
        self.on_output = on_output
        self.decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in self.streams} \
            if on_output is not None else {}

    def add(self, stream: str, chunk: bytes) -> None:
        self.combined.add(chunk)
        self.streams[stream].add(chunk)
        if self.on_output is not None:
            text = self.decoders[stream].decode(chunk)
            if text:
                self.on_output(OutputChunk(stream, text))  # type: ignore[arg-type]

    def result(self, exit_code: int, *, timed_out: bool, dropped: int = 0, oom_killed: bool = False) -> ExecuteResult:
        # Said in the output too: that is what an agent reads and a notebook shows.
        note = OOM_NOTE if oom_killed else ""
        return ExecuteResult(
            output=self.combined.text() + note,
            exit_code=exit_code,
            stdout=self.streams["stdout"].text(),
            stderr=self.streams["stderr"].text() + note,
            truncated=dropped > 0 or self.combined.dropped > 0,
            timed_out=timed_out,
            oom_killed=oom_killed,
        )


def _checked_terminal(command: str | None, cols: int, rows: int) -> tuple[int, int]:
    """``(cols, rows)`` of a terminal about to open, its size and command checked as any channel's."""
    size = checked_terminal_size(cols, rows)
    if command is not None:
        _checked_command(command, None)
    return size


def _checked_command(command: str, timeout: float | None) -> None:
    """Refuse, before anything is sent, a command the shell would not get unchanged (a NUL byte,
    a lone surrogate), one too long to start, and a timeout the supervisor cannot wait for."""
    size = len(checked_text(command, "command").encode())
    if size > MAX_COMMAND_BYTES:
        raise InvalidArgumentError(
            f"command is {size:,} bytes; a command line takes at most {MAX_COMMAND_BYTES:,} "
            "(write a longer script to a file, and run the file)")
    if timeout is not None:
        checked_timeout(timeout, "timeout")


def _timeout_argv(command: str, timeout: float) -> list[str]:
    """``sh -c command`` under coreutils ``timeout``, which kills the whole process group."""
    return ["timeout", "-s", "KILL", f"{timeout:.3f}", "sh", "-c", command]


@dataclass
class DockerExecChannel:
    """The fallback: one ``docker exec`` per command (about 50 ms each)."""

    client: docker.DockerClient
    container_id: str
    multiplexed = False

    @property
    def alive(self) -> bool:
        """Whether the container still runs (no stream to tell, so the engine is asked)."""
        return container_running(self.client, self.container_id)

    def run(self, command: str, *, timeout: float, max_output: int,
            on_output: OutputCallback | None = None) -> ExecuteResult:
        _checked_command(command, timeout)
        process = Exec(self.client, self.container_id, _timeout_argv(command, timeout))
        started = time.monotonic()
        collector = _Collector(max_output, on_output)
        for out, err in process.output():
            if out:
                collector.add("stdout", out)
            if err:
                collector.add("stderr", err)
        exit_code = process.exit_code
        timed_out = exit_code == _KILLED and time.monotonic() - started >= timeout
        return collector.result(exit_code, timed_out=timed_out)

    async def arun(self, command: str, *, timeout: float, max_output: int,
                   on_output: OutputCallback | None = None) -> ExecuteResult:
        return await asyncio.to_thread(self.run, command, timeout=timeout, max_output=max_output,
                                       on_output=on_output)

    def spawn(self, command: str, on_output: OutputCallback) -> Process:
        """Start a long-lived command over a ``docker exec -i`` of its own."""
        return ExecProcess(self.client, self.container_id, command, on_output)

    def terminal(self, command: str | None, *, cols: int, rows: int,
                 on_output: Callable[[str], object] | None = None,
                 on_activity: Callable[[], object] | None = None) -> Terminal:
        """Open a :class:`Terminal` over a ``docker exec -it`` of its own (the engine's PTY)."""
        cols, rows = _checked_terminal(command, cols, rows)
        return _ExecTerminalLink(self.client, self.container_id, command, cols, rows, on_output,
                                 on_activity).terminal

    def close(self) -> None:
        pass


@dataclass
class _Pending:
    """A command sent down the channel and not yet finished."""

    collector: _Collector
    result: ExecuteResult | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    _callbacks: list[Callable[[], object]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def finish(self, result: ExecuteResult | None = None, error: BaseException | None = None) -> None:
        with self._lock:
            if self.done.is_set():
                return
            self.result, self.error = result, error
            self.done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_done(self, callback: Callable[[], object]) -> None:
        with self._lock:
            if not self.done.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def outcome(self) -> ExecuteResult:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class SupervisorChannel:
    """Commands multiplexed over one open stream to the supervisor inside the container.

    Use :meth:`open`. A reader thread demultiplexes frames; writers share a lock. When the stream
    closes, every pending command fails with :class:`ChannelClosedError` and :attr:`alive` turns
    false, so the owner can open a new channel.
    """

    multiplexed = True

    def __init__(self, sock: socket.socket, client: docker.DockerClient | None, container_id: str, *,
                 framed: bool = True) -> None:
        self._sock = sock
        self._client = client  # None: a local supervisor (LocalSandbox), not in a container
        # docker's stdout/stderr framing around the supervisor's frames (none on a dialled socket)
        self._framed = framed
        self.container_id = container_id
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._closed = False
        self._hello: _Pending = _Pending(_Collector(0, None))
        self._streams: dict[int, StreamReceiver] = {}  # connections to the sandbox's ports, by stream id
        self._reader = threading.Thread(target=self._read_loop, name=f"pydantic-deep-channel-{container_id[:12]}",
                                        daemon=True)
        self._reader.start()

    @classmethod
    def open(cls, client: docker.DockerClient, container_id: str, command: list[str]) -> SupervisorChannel:
        """Start the supervisor with ``docker exec -i command`` and wait until it says hello.

        Args:
            command: The supervisor's argv (see :meth:`PreparedImage.supervisor_command`).

        Raises:
            ChannelClosedError: the supervisor did not start (too old a Python, for example).
        """
        sock = Exec(client, container_id, list(command), stdin=True).open_socket()
        return cls(sock, client, container_id)._said_hello()

    @classmethod
    def open_dialled(cls, sock: socket.socket, client: docker.DockerClient, container_id: str) -> SupervisorChannel:
        """A channel over ``sock``, the connection a container's supervisor dialled in on (see
        :mod:`~pydantic_deep.execution.dial_in`), once the supervisor says hello."""
        return cls(sock, client, container_id, framed=False)._said_hello()

    @classmethod
    def open_local(cls, sock: socket.socket, label: str) -> SupervisorChannel:
        """A channel over ``sock``, connected to a supervisor that runs on this machine."""
        return cls(sock, None, label, framed=False)._said_hello()

    def _said_hello(self) -> SupervisorChannel:
        if not self._hello.done.wait(_HELLO_TIMEOUT) or self._hello.error is not None:
            self.close()
            raise ChannelClosedError(f"the supervisor did not start in {self.container_id[:12]}")
        return self

    @property
    def alive(self) -> bool:
        return not self._closed

    @property
    def on_reader_thread(self) -> bool:
        """Whether the caller is this channel's reader thread (an ``on_output`` callback): it cannot
        wait for an answer of this channel, which only it would deliver."""
        return threading.current_thread() is self._reader

    # -- commands -----------------------------------------------------------------------------

    def _submit(self, command: str, timeout: float | None, max_output: int | None,
                on_output: OutputCallback | None, *, stdin: bool = False) -> tuple[int, _Pending]:
        _checked_command(command, timeout)
        request_id = next(self._ids)
        # max_output None: everything goes to on_output and nothing is kept (a long-lived process).
        pending = _Pending(_Collector(max_output if max_output is not None else 0, on_output))
        with self._state_lock:
            if self._closed:
                raise ChannelClosedError("the execution channel is closed")
            self._pending[request_id] = pending
        spec = {"command": command, "timeout": timeout, "max_output": max_output, "stdin": stdin}
        self._send(protocol.RUN, request_id, json.dumps(spec).encode())
        return request_id, pending

    def spawn(self, command: str, on_output: OutputCallback) -> RunningCommand:
        """Start a long-lived command with an open stdin; its output goes to ``on_output`` alone."""
        request_id, pending = self._submit(command, None, None, on_output, stdin=True)
        return RunningCommand(self, request_id, pending)

    def run(self, command: str, *, timeout: float, max_output: int,
            on_output: OutputCallback | None = None) -> ExecuteResult:
        request_id, pending = self._submit(command, timeout, max_output, on_output)
        try:
            answered = pending.done.wait(timeout + _GRACE)
        except BaseException:  # KeyboardInterrupt: the command must not outlive the caller
            self.kill(request_id)
            raise
        if not answered:
            self._give_up(timeout)
        return pending.outcome()

    async def arun(self, command: str, *, timeout: float, max_output: int,
                   on_output: OutputCallback | None = None) -> ExecuteResult:
        request_id, pending = self._submit(command, timeout, max_output, on_output)
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        pending.on_done(functools.partial(_LoopWakeups.of(loop).wake, finished))
        deadline = loop.call_later(timeout + _GRACE, _resolve, finished)
        try:
            await finished
        except asyncio.CancelledError:
            self.kill(request_id)
            raise
        finally:
            deadline.cancel()
        if not pending.done.is_set():
            self._give_up(timeout)
        return pending.outcome()

    def kill(self, request_id: int, signum: int = 9) -> None:
        """Send ``signum`` to a command's process group, if the channel is still open."""
        try:
            self._send(protocol.SIGNAL, request_id, json.dumps({"signal": signum}).encode())
        except ChannelClosedError:
            pass

    def _give_up(self, timeout: float) -> None:
        self.close()
        # A supervisor that stopped answering (frozen, say) cannot act on the closed stream: kill
        # the process group of each of its commands (each leads its own), then the supervisor.
        pid = json.loads(self._hello.outcome().output)["pid"]
        script = (f'for p in /proc/[0-9]*; do [ "$(cut -d" " -f4 $p/stat)" = {pid} ] && '
                  f'kill -9 -${{p#/proc/}}; done; kill -9 {pid}')
        if self._client is None:
            subprocess.run(["sh", "-c", script], check=False)
        else:
            with contextlib.suppress(docker.errors.DockerException):
                Exec(self._client, self.container_id, ["sh", "-c", script]).run()
        raise ChannelClosedError(
            f"the sandbox did not answer within {timeout + _GRACE:.0f} s of starting a command "
            f"with a {timeout:.0f} s timeout; the channel was closed"
        )

    # -- the stream ---------------------------------------------------------------------------

    def _send(self, kind: int, request_id: int, payload: bytes) -> None:
        frame = protocol.HEADER.pack(kind, request_id, len(payload)) + payload
        try:
            with self._write_lock:
                self._sock.sendall(frame)
        except OSError as exc:
            self.close()
            raise ChannelClosedError(f"the execution channel broke: {exc}") from None

    def _read_loop(self) -> None:
        """Demultiplex docker's stream, then the supervisor's frames, until the stream ends."""
        frames = bytearray()
        try:
            source = docker_frames(self._sock) if self._framed else _raw_frames(self._sock)
            for stream, payload in source:
                if stream == 1:
                    frames += payload
                    self._dispatch(frames)
                else:
                    logger.warning("supervisor in %s: %s", self.container_id[:12],
                                   payload.decode(errors="replace").rstrip())
        except OSError:
            pass
        finally:
            self.close()

    def _dispatch(self, frames: bytearray) -> None:
        header = protocol.HEADER
        while len(frames) >= header.size:
            kind, request_id, length = header.unpack_from(frames)
            if len(frames) < header.size + length:
                return
            payload = bytes(frames[header.size:header.size + length])
            del frames[:header.size + length]
            if kind == protocol.HELLO:
                self._hello.finish(result=ExecuteResult(output=payload.decode(), exit_code=0))
                continue
            if kind in protocol.PORT_FRAMES:
                self._stream_frame(kind, request_id, payload)
                continue
            pending = self._pending.get(request_id)
            if pending is None:
                continue
            if kind in (protocol.STDOUT, protocol.STDERR):
                pending.collector.add("stdout" if kind == protocol.STDOUT else "stderr", payload)
            elif kind == protocol.EXIT:
                status = json.loads(payload)
                self._pending.pop(request_id, None)
                pending.finish(result=pending.collector.result(
                    status["exit_code"], timed_out=status["timed_out"], dropped=status["dropped"],
                    oom_killed=status["oom_killed"]))
            elif kind == protocol.ERROR:
                self._pending.pop(request_id, None)
                pending.finish(error=SandboxError(json.loads(payload)["message"]))

    # -- terminals ----------------------------------------------------------------------------

    def terminal(self, command: str | None, *, cols: int, rows: int,
                 on_output: Callable[[str], object] | None = None,
                 on_activity: Callable[[], object] | None = None) -> Terminal:
        """Open a :class:`Terminal`: ``command`` (``None``: an interactive shell) on a new PTY."""
        cols, rows = _checked_terminal(command, cols, rows)
        request_id = next(self._ids)
        terminal = Terminal(_ChannelTerminalLink(self, request_id), cols=cols, rows=rows, on_output=on_output,
                            on_activity=on_activity)
        # Its output is decoded as a command's is, and kept by the terminal, not the collector.
        pending = _Pending(_Collector(0, lambda chunk: terminal._feed(chunk.text)))
        pending.on_done(lambda: terminal._finish(pending.result.exit_code if pending.result else None, pending.error))
        with self._state_lock:
            if self._closed:
                raise ChannelClosedError("the execution channel is closed")
            self._pending[request_id] = pending
        self._send(protocol.TERMINAL, request_id, json.dumps({"command": command, "cols": cols, "rows": rows}).encode())
        return terminal

    def close(self) -> None:
        """Close the stream (the supervisor then kills what still runs) and fail what is pending."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            pending, self._pending = self._pending, {}
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        error = ChannelClosedError("the execution channel closed while the command ran")
        self._hello.finish(error=error)
        for item in pending.values():
            item.finish(error=error)
        self._close_streams()

    # -- streams to the sandbox's ports (execution/ports.py) -------------------------------------

    def open_stream(self, port: int, receiver: StreamReceiver) -> int:
        """Connect to ``port`` on the sandbox's loopback; the stream's frames go to ``receiver``.

        Returns:
            The stream's id, for :meth:`send_stream`.

        Raises:
            ChannelClosedError: the channel is closed.
        """
        stream_id = next(self._ids)
        with self._state_lock:
            if self._closed:
                raise ChannelClosedError("the execution channel is closed")
            self._streams[stream_id] = receiver
        self._send(protocol.PORT_OPEN, stream_id, json.dumps({"port": port}).encode())
        return stream_id

    def send_stream(self, stream_id: int, kind: int, payload: bytes = b"") -> None:
        """Send a PORT_DATA, PORT_ACK, PORT_END or PORT_CLOSE frame of a stream."""
        if kind == protocol.PORT_CLOSE:
            self._streams.pop(stream_id, None)
        self._send(kind, stream_id, payload)

    def forget_stream(self, stream_id: int) -> None:
        """Drop a stream that ended both ways: its frames, if any come, are ignored."""
        self._streams.pop(stream_id, None)

    def _stream_frame(self, kind: int, stream_id: int, payload: bytes) -> None:
        receiver = self._streams.get(stream_id)
        if receiver is None:
            return
        if kind == protocol.PORT_CLOSE:
            self._streams.pop(stream_id, None)
        receiver.stream_frame(kind, payload)

    def _close_streams(self) -> None:
        with self._state_lock:
            streams, self._streams = self._streams, {}
        for receiver in streams.values():
            receiver.stream_frame(protocol.PORT_CLOSE, b'{"error": "the execution channel closed"}')


class StreamReceiver(Protocol):
    """Where a stream's frames from the supervisor go (on the channel's reader thread: be quick)."""

    def stream_frame(self, kind: int, payload: bytes) -> None: ...


@dataclass
class _ChannelTerminalLink:
    """One terminal's frames on a :class:`SupervisorChannel`."""

    channel: SupervisorChannel
    request_id: int

    def send_input(self, data: bytes) -> None:
        self.channel._send(protocol.TERMINAL_INPUT, self.request_id, data)

    def send_resize(self, cols: int, rows: int) -> None:
        self.channel._send(protocol.TERMINAL_RESIZE, self.request_id, json.dumps({"cols": cols, "rows": rows}).encode())

    def send_close(self) -> None:
        self.channel._send(protocol.TERMINAL_CLOSE, self.request_id, b"")


class _ExecTerminalLink:
    """A terminal over a ``docker exec`` with a tty, for images without a supervisor.

    The engine makes the PTY and sizes it (``exec_resize``). Its processes carry a marker in their
    environment, by which :meth:`send_close` finds and kills them (and the rest of their session).
    """

    def __init__(self, client: docker.DockerClient, container_id: str, command: str | None, cols: int, rows: int,
                 on_output: Callable[[str], object] | None, on_activity: Callable[[], object] | None) -> None:
        self._client, self._container_id = client, container_id
        self._marker = f"PYDANTIC_DEEP_TERMINAL={uuid.uuid4().hex}"
        name, value = self._marker.split("=")
        program = protocol._TERMINAL_SHELL.decode() if command is None else command
        self._exec = Exec(client, container_id, ["/bin/sh", "-c", program], stdin=True, tty=True,
                          environment={name: value, "TERM": protocol._TERMINAL_TYPE.decode()})
        self._sock = self._exec.open_socket()
        self.terminal = Terminal(self, cols=cols, rows=rows, on_output=on_output, on_activity=on_activity)
        with contextlib.suppress(docker.errors.DockerException):
            self._exec.resize(cols, rows)
        threading.Thread(target=self._read, name=f"pydantic-deep-terminal-{container_id[:12]}", daemon=True).start()

    def _read(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        try:
            while chunk := self._sock.recv(1 << 16):
                if text := decoder.decode(chunk):
                    self.terminal._feed(text)
        except OSError:
            pass
        exit_code: int | None = None
        with contextlib.suppress(docker.errors.DockerException, TypeError, ValueError):
            exit_code = self._exec.exit_code
        self._sock.close()
        self.terminal._finish(exit_code, None)

    def send_input(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise ChannelClosedError(f"the terminal's stream broke: {exc}") from None

    def send_resize(self, cols: int, rows: int) -> None:
        self._exec.resize(cols, rows)

    def send_close(self) -> None:
        # Every process with the marker, and every member of their sessions.
        script = (f'for p in /proc/[0-9]*; do grep -qs "{self._marker}" "$p/environ" && '
                  'echo "${p#/proc/} $(cut -d" " -f6 "$p/stat")"; done | while read -r pid session; do '
                  'for q in /proc/[0-9]*; do [ "$(cut -d" " -f6 "$q/stat" 2>/dev/null)" = "$session" ] && '
                  'kill -9 "${q#/proc/}" 2>/dev/null; done; kill -9 "$pid" 2>/dev/null; done; true')
        try:
            Exec(self._client, self._container_id, ["sh", "-c", script]).run()
        except docker.errors.DockerException as exc:
            raise ChannelClosedError(f"the terminal could not be closed: {exc}") from None


class Process(Protocol):
    """A long-lived command in a sandbox: write to it, signal it, see whether it finished."""

    def write(self, data: bytes) -> None: ...

    def close_stdin(self) -> None: ...

    def signal(self, signum: int) -> None: ...

    @property
    def finished(self) -> bool: ...


class ExecProcess:
    """A long-lived command over a ``docker exec -i`` of its own, for images without a supervisor.

    The command is started as ``sh -c 'echo $$; exec COMMAND'``: the first line names its pid in
    the container, so that a signal can reach it.
    """

    def __init__(self, client: docker.DockerClient, container_id: str, command: str, on_output: OutputCallback) -> None:
        self._client, self._container_id, self._on_output = client, container_id, on_output
        _checked_command(command, None)
        self._sock = Exec(client, container_id, ["sh", "-c", f"echo $$; exec {command}"], stdin=True).open_socket()
        self._pid: str | None = None
        self._pid_known = threading.Event()
        self._done = threading.Event()
        threading.Thread(target=self._read, name=f"pydantic-deep-exec-{container_id[:12]}", daemon=True).start()

    def _read(self) -> None:
        decoders = {1: codecs.getincrementaldecoder("utf-8")("replace"),
                    2: codecs.getincrementaldecoder("utf-8")("replace")}
        try:
            for stream, payload in docker_frames(self._sock):
                text = decoders[2 if stream == 2 else 1].decode(payload)
                if stream == 1 and self._pid is None:
                    self._pid, _, text = text.partition("\n")
                    self._pid_known.set()
                if text:
                    self._on_output(OutputChunk("stdout" if stream == 1 else "stderr", text))
        except OSError:
            pass
        finally:
            self._done.set()
            self._pid_known.set()

    def write(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise ChannelClosedError(f"the process's stream broke: {exc}") from None

    def close_stdin(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def signal(self, signum: int) -> None:
        self._pid_known.wait(10)
        if self._pid and not self._done.is_set():
            Exec(self._client, self._container_id, ["sh", "-c", f"kill -{signum} {self._pid}"]).run()

    @property
    def finished(self) -> bool:
        return self._done.is_set()


class RunningCommand:
    """A command started with :meth:`SupervisorChannel.spawn`: write to it, signal it, see whether it finished."""

    def __init__(self, channel: SupervisorChannel, request_id: int, pending: _Pending) -> None:
        self._channel, self._request_id, self._pending = channel, request_id, pending

    def write(self, data: bytes) -> None:
        """Send ``data`` to the command's standard input."""
        if data:
            self._channel._send(protocol.STDIN, self._request_id, data)

    def close_stdin(self) -> None:
        """Close the command's standard input (it sees end of file)."""
        self._channel._send(protocol.STDIN, self._request_id, b"")

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the command's process group."""
        self._channel.kill(self._request_id, signum)

    @property
    def finished(self) -> bool:
        return self._pending.done.is_set()


_END = object()


class CommandStream:
    """A running command's output as an async iterator of :class:`OutputChunk`.

    The command starts when iteration starts. After the last chunk, :attr:`result` holds the
    :class:`ExecuteResult` (whose ``output`` has the same text, capped). Leaving the loop early
    kills the command.
    """

    def __init__(self, start: Callable[[OutputCallback], Awaitable[ExecuteResult]]) -> None:
        self._start = start
        self._result: ExecuteResult | None = None

    @property
    def result(self) -> ExecuteResult:
        """The finished command's result.

        Raises:
            RuntimeError: the stream was not iterated to its end.
        """
        if self._result is None:
            raise RuntimeError("the command has not finished: iterate over the stream first")
        return self._result

    async def __aiter__(self) -> AsyncIterator[OutputChunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        # Chunks arrive from a reader thread; call_soon_threadsafe keeps them in order, and ahead
        # of the command's completion, which is scheduled the same way.
        task = asyncio.ensure_future(self._start(lambda chunk: loop.call_soon_threadsafe(queue.put_nowait, chunk)))
        task.add_done_callback(lambda _: queue.put_nowait(_END))
        try:
            while (item := await queue.get()) is not _END:
                yield item
            self._result = task.result()
        finally:
            if not task.done():
                task.cancel()


def _resolve(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)


class _LoopWakeups:
    """Wakes one event loop's waiters for finished commands, a batch at a time.

    Under a burst (a hundred users' first commands), answers come in while the loop is still busy
    sending the next commands. One ``call_soon_threadsafe`` per batch rather than per answer spares
    each reader thread but the first a write to the loop's self-pipe (another turn at the GIL,
    which the loop is waiting for) and the loop as many wake-ups.
    """

    _by_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWakeups]] = \
        weakref.WeakKeyDictionary()
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        # No reference to the loop: it would keep the loop, this one's key, forever.
        self._finished: list[asyncio.Future[Any]] = []
        self._lock = threading.Lock()

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _LoopWakeups:
        with cls._guard:
            wakeups = cls._by_loop.get(loop)
            if wakeups is None:
                wakeups = cls._by_loop[loop] = cls()
            return wakeups

    def wake(self, future: asyncio.Future[Any]) -> None:
        """Resolve ``future`` on its loop, soon (from any thread)."""
        with self._lock:
            self._finished.append(future)
            if len(self._finished) > 1:  # a wake-up is on its way already
                return
        try:
            future.get_loop().call_soon_threadsafe(self._resolve_finished)
        except RuntimeError:  # the loop is closed: nobody waits any more
            with self._lock:
                self._finished.clear()

    def _resolve_finished(self) -> None:
        with self._lock:
            finished, self._finished = self._finished, []
        for future in finished:
            _resolve(future)
