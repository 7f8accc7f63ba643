"""Interactive terminals in a sandbox: a program on a pseudo-terminal (PTY), typed into and read from.

A :class:`Terminal` is what :meth:`SandboxBase.terminal` returns. Its bytes travel over the
sandbox's execution channel (the supervisor's TERMINAL frames, see ``_guest/supervisor.py``); the
program runs in a session of its own on a PTY of the given size, so whatever a terminal does works:
line editing, prompts, full-screen programs (``top``, ``vi``), Ctrl-C (``"\\x03"``, which the PTY
turns into SIGINT for the foreground process), and SIGWINCH on :meth:`Terminal.resize`.

The terminal ends when its program exits, when :meth:`Terminal.close` kills its session, or when
the sandbox stops; :attr:`Terminal.exit_code` then says how, and what it showed last can still be
read.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, Self

from ..errors import (
    ChannelClosedError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    SandboxError,
    TerminalClosedError,
)

__all__ = ["MAX_BUFFERED", "Terminal", "TerminalLink", "checked_terminal_size"]

logger = logging.getLogger("pydantic_deep.terminal")

MAX_BUFFERED = 1 << 20
"""Characters of output a terminal keeps until they are read; past that the oldest are dropped."""
_CLOSE_WAIT = 10.0  # seconds close() waits for the supervisor to report the session killed


def checked_terminal_size(cols: object, rows: object) -> tuple[int, int]:
    """``(cols, rows)`` when both are whole numbers from 1 to 65535 (a PTY's limits).

    Raises:
        InvalidArgumentTypeError: one is not an ``int``.
        InvalidArgumentError: one is out of range.
    """
    for name, value in (("cols", cols), ("rows", rows)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgumentTypeError(f"{name} must be a whole number of characters, not {value!r}")
        if not 0 < value < 65536:
            raise InvalidArgumentError(f"{name} must be from 1 to 65535, not {value}")
    return cols, rows  # type: ignore[return-value]


class TerminalLink(Protocol):
    """How a :class:`Terminal` reaches its program: the channel's side of one terminal."""

    def send_input(self, data: bytes) -> None: ...

    def send_resize(self, cols: int, rows: int) -> None: ...

    def send_close(self) -> None: ...


class Terminal:
    """A program on a pseudo-terminal in a sandbox: :meth:`write` to type, :meth:`read` to see.

    Made by :meth:`SandboxBase.terminal`. Use it as a context manager (``with`` or
    ``async with``) to close it at the end.

    Example:
        ```python
        with sandbox.terminal() as term:
            term.write("python3\\n")
            term.write("1+1\\n")
            print(term.read_until("2\\r\\n"))  # the prompts, the echo of 1+1, its answer
            term.write("\\x03")  # Ctrl-C
        ```
    """

    def __init__(self, link: TerminalLink, *, cols: int, rows: int,
                 on_output: Callable[[str], object] | None = None,
                 on_activity: Callable[[], object] | None = None) -> None:
        self._link = link
        self._cols, self._rows = cols, rows
        self._on_output = on_output
        self._on_activity = on_activity
        self._buffer: list[str] = []
        self._buffered = 0
        self._changed = threading.Condition()
        self._ended = False
        self._exit_code: int | None = None
        self._error: BaseException | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    # -- what the channel reports (on its reader thread) --------------------------------------

    def _feed(self, text: str) -> None:
        """Output the program showed."""
        with self._changed:
            self._buffer.append(text)
            self._buffered += len(text)
            while self._buffered > MAX_BUFFERED and len(self._buffer) > 1:
                self._buffered -= len(self._buffer.pop(0))
            self._wake()
        if self._on_output is not None:
            try:
                self._on_output(text)
            except Exception:  # on the channel's reader thread: raising there would end the channel
                logger.exception("a terminal's on_output callback failed")

    def _finish(self, exit_code: int | None, error: BaseException | None) -> None:
        """The program exited with ``exit_code``, or the terminal failed with ``error``."""
        with self._changed:
            self._ended, self._exit_code, self._error = True, exit_code, error
            self._wake()

    def _wake(self) -> None:
        self._changed.notify_all()
        waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)

    # -- state --------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Whether its program still runs."""
        return not self._ended

    @property
    def exit_code(self) -> int | None:
        """How its program ended (128+n after signal n: 137 after :meth:`close`); ``None`` while it
        runs, or when the sandbox stopped under it."""
        return self._exit_code

    @property
    def size(self) -> tuple[int, int]:
        """``(cols, rows)``, as last set."""
        return self._cols, self._rows

    def _check_open(self) -> None:
        if self._error is not None and not isinstance(self._error, ChannelClosedError):
            raise self._error  # it could not open: the sandbox's reason (its process limit, say)
        if self._ended:
            how = (f"its program exited with code {self._exit_code}" if self._exit_code is not None
                   else "its sandbox stopped")
            raise TerminalClosedError(f"the terminal has ended: {how}; open a new one with sandbox.terminal()")

    # -- typing and reading -------------------------------------------------------------------

    def write(self, data: str | bytes) -> None:
        """Type ``data`` (text is sent as UTF-8): ``"ls\\n"`` runs ``ls``, ``"\\x03"`` is Ctrl-C.

        Raises:
            TerminalClosedError: the terminal has ended.
        """
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        elif not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidArgumentTypeError(f"write() takes str or bytes, not {type(data).__name__}")
        self._check_open()
        if self._on_activity is not None:
            self._on_activity()
        if data:
            self._link.send_input(bytes(data))

    def _take(self) -> str:
        text = "".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        return text

    def read(self, timeout: float | None = None) -> str:
        """What the terminal showed since the last read (escape sequences included).

        Args:
            timeout: Seconds to wait for output when there is none yet; ``0``: do not wait;
                ``None``: until there is some, or the terminal ends.

        Returns:
            The output, or ``""`` when none came in time or the terminal ended with nothing unread.
            Check :attr:`alive` to tell these apart.
        """
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0)
        with self._changed:
            while not self._buffer and not self._ended:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._changed.wait(remaining)
            return self._take()

    def read_until(self, text: str, timeout: float | None = 30) -> str:
        """What the terminal shows up to and including the first ``text`` (say, a prompt); what
        follows stays to be read.

        When ``text`` does not come within ``timeout`` seconds (``None``: no limit), or the terminal
        ends first, returns everything unread instead (as :mod:`telnetlib`'s ``read_until`` did):
        check ``text in result``.
        """
        if not text:
            raise InvalidArgumentError("read_until() needs the text to wait for, not an empty string")
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0)
        with self._changed:
            while True:
                shown = "".join(self._buffer)
                found = shown.find(text)
                if found >= 0:
                    end = found + len(text)
                    self._buffer[:] = [shown[end:]] if end < len(shown) else []
                    self._buffered = len(shown) - end
                    return shown[:end]
                remaining = None if deadline is None else deadline - time.monotonic()
                if self._ended or (remaining is not None and remaining <= 0):
                    return self._take()
                self._changed.wait(remaining)

    def resize(self, cols: int, rows: int) -> None:
        """Change the terminal's size; its foreground program gets SIGWINCH.

        Raises:
            InvalidArgumentError: a size that is not 1 to 65535; nothing changed.
            TerminalClosedError: the terminal has ended.
        """
        cols, rows = checked_terminal_size(cols, rows)
        self._check_open()
        self._link.send_resize(cols, rows)
        self._cols, self._rows = cols, rows

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait until the program ends (at most ``timeout`` seconds); :attr:`exit_code`."""
        with self._changed:
            self._changed.wait_for(lambda: self._ended, timeout)
        return self._exit_code

    def close(self) -> None:
        """Kill every process of the terminal's session and wait until they are gone. Safe to call
        more than once, and after the terminal ended."""
        if self._ended:
            return
        try:
            self._link.send_close()
        except SandboxError:
            return  # the channel closed: the supervisor kills what ran through it
        self.wait(_CLOSE_WAIT)

    # -- async twins --------------------------------------------------------------------------

    async def awrite(self, data: str | bytes) -> None:
        """Async form of :meth:`write`."""
        await asyncio.to_thread(self.write, data)

    async def aread(self, timeout: float | None = None) -> str:
        """Async form of :meth:`read`: waits on the event loop, not in a thread."""
        loop = asyncio.get_running_loop()
        with self._changed:
            if self._buffer or self._ended or timeout == 0:
                return self._take()
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        with self._changed:
            return self._take()

    async def aread_until(self, text: str, timeout: float | None = 30) -> str:
        """Async form of :meth:`read_until` (in a worker thread)."""
        return await asyncio.to_thread(self.read_until, text, timeout)

    async def aresize(self, cols: int, rows: int) -> None:
        """Async form of :meth:`resize`."""
        await asyncio.to_thread(self.resize, cols, rows)

    async def aclose(self) -> None:
        """Async form of :meth:`close`."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "running" if self.alive else f"ended, exit code {self._exit_code}"
        return f"<Terminal {self._cols}x{self._rows} {state}>"


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
