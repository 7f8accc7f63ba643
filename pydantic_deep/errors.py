"""Every error pydantic_deep raises on purpose.

One root, so ``except SandboxError`` catches all of them::

    SandboxError
    ├── DockerUnavailableError      the engine does not answer (says how to start one)
    ├── UnknownRuntimeError         a runtime name nobody registered (lists the known ones)
    ├── UnknownBackendError         $PYDANTIC_DEEP_BACKEND names no backend (lists the known ones)
    ├── ImageNotAvailableError      a base image that is neither local, pullable nor bootstrappable
    ├── ImageBuildError             a runtime image failed to build (carries the log tail)
    ├── InvalidArgumentError        an argument that cannot be used as given (names it and the problem)
    │   └── InvalidArgumentTypeError    an argument of the wrong type (also a TypeError)
    ├── PathOutsideSandboxError     a file path that escapes the sandbox's allowed roots
    ├── SandboxFileNotFoundError    a file that is not in the sandbox
    ├── TransferInterruptedError    a file transfer was cut off, its container still running
    ├── DiskFullError               a file API write found the sandbox's disk (disk_size) full
    ├── ChannelClosedError          the execution channel closed (supervisor or container went away)
    ├── SessionLimitError           a SessionManager already holds max_sessions sessions
    ├── CellError                   a notebook cell raised inside the sandbox (carries its traceback)
    ├── NetworkIsolationError       a networked sandbox's isolation rules could not be set (it did not start)
    ├── SnapshotNotFoundError       no snapshot of that name (lists the known ones)
    └── SandboxStateError           the sandbox was used in a state that forbids it
        ├── TerminalClosedError     a terminal was used after it ended
        └── ContainerGoneError      its container died or was removed from outside
            └── NodeLostError       the cluster node running it is lost (names the node)

Every ``InvalidArgumentError`` is raised before anything is done: bad input changes nothing.

Invalid ``RuntimeConfig`` fields raise pydantic's ``ValidationError`` (a ``ValueError``), whose
message names the field and the problem.
"""

from __future__ import annotations

__all__ = [
    "CellError",
    "ChannelClosedError",
    "ContainerGoneError",
    "DiskFullError",
    "DockerUnavailableError",
    "ImageBuildError",
    "ImageNotAvailableError",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "NetworkIsolationError",
    "NodeLostError",
    "PathOutsideSandboxError",
    "SandboxError",
    "SandboxFileNotFoundError",
    "SandboxStateError",
    "SessionLimitError",
    "SnapshotNotFoundError",
    "TerminalClosedError",
    "TransferInterruptedError",
    "UnknownBackendError",
    "UnknownRuntimeError",
]


_SHOWN_CHARS = 80


def shown(value: str) -> str:
    """``repr(value)``, cut short for a message: a megabyte of input must not make a megabyte of error."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}... ({len(value):,} characters)"


class SandboxError(Exception):
    """Root of every error raised by pydantic_deep."""


class DockerUnavailableError(SandboxError):
    """The Docker engine cannot be reached; the message says how to start one."""


class UnknownRuntimeError(SandboxError, KeyError):
    """A runtime name that is neither built in nor registered."""

    def __init__(self, name: str, available: list[str]) -> None:
        self.name = name
        self.available = available
        super().__init__(f"Unknown runtime {name!r}. Available runtimes: {', '.join(available)}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class UnknownBackendError(SandboxError, ValueError):
    """``$PYDANTIC_DEEP_BACKEND`` names no backend; the message lists the known ones."""

    def __init__(self, name: str, available: tuple[str, ...]) -> None:
        super().__init__(f"PYDANTIC_DEEP_BACKEND={name!r} is not a backend; use one of: {', '.join(available)}")


class ImageNotAvailableError(SandboxError):
    """A base image that is not local, cannot be pulled and has no air-gapped equivalent."""


class ImageBuildError(SandboxError):
    """A runtime image failed to build. Nothing was tagged.

    Attributes:
        tag: The tag the image would have had.
        log_tail: The last lines of the build log, including the failing step.
    """

    def __init__(self, tag: str, reason: str, log_tail: list[str]) -> None:
        self.tag = tag
        self.reason = reason
        self.log_tail = log_tail
        tail = "\n".join(f"    {line}" for line in log_tail)
        super().__init__(f"Building image {tag} failed: {reason}\n  Last lines of the build log:\n{tail}")


class InvalidArgumentError(SandboxError, ValueError):
    """An argument that cannot be used as given: a path or command holding a NUL byte or text that
    is not valid Unicode, a path too long for the container's file system, a timeout that is not a
    positive number, a size or user id Docker cannot read. The message names the argument, the
    problem and what to give instead; nothing was changed."""


class InvalidArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument of the wrong type (a number where a name is expected, say). Also a
    ``TypeError``, as Python's own functions raise for one."""


class PathOutsideSandboxError(SandboxError, ValueError):
    """A path that resolves outside the directories the file API may touch.

    Attributes:
        path: The path as given.
        allowed_roots: The directories the file API may touch.
        resolved: Where symbolic links inside the sandbox lead ``path``, when they are what leads it out.
    """

    def __init__(self, path: str, allowed_roots: tuple[str, ...], *, resolved: str | None = None) -> None:
        self.path = path
        self.allowed_roots = allowed_roots
        self.resolved = resolved
        via = f" (symbolic links lead it to {resolved!r})" if resolved else ""
        super().__init__(
            f"Path {shown(path)} is outside the sandbox{via}: file access is limited to {', '.join(allowed_roots)}"
        )


class SandboxFileNotFoundError(SandboxError, FileNotFoundError):
    """A file or directory that does not exist inside the sandbox."""


class TransferInterruptedError(SandboxError):
    """A file transfer was cut off (its process killed, or its stream stalled) while the container
    went on running; nothing was written. When the container is what went, the error is
    :class:`ContainerGoneError` instead."""


class DiskFullError(SandboxError, OSError):
    """A write through the file API found the sandbox's disk (``disk_size``) full; nothing was written."""


class ChannelClosedError(SandboxError):
    """The execution channel closed (the supervisor or the container went away)."""


class SessionLimitError(SandboxError):
    """A :class:`SessionManager` already holds ``max_sessions`` sessions."""


class CellError(SandboxError):
    """A cell raised an exception inside the sandbox; the message is the sandbox's traceback.

    Attributes:
        ename: The exception's class name.
        evalue: Its message.
        traceback: The traceback, as the sandbox's interpreter printed it.
    """

    def __init__(self, ename: str, evalue: str, traceback: str) -> None:
        self.ename, self.evalue, self.traceback = ename, evalue, traceback
        super().__init__(traceback or f"{ename}: {evalue}")


class NetworkIsolationError(SandboxError):
    """The packet filter rules that keep a networked sandbox away from other sandboxes, the host and
    private networks could not be set on the engine's host; the sandbox was not started. The
    message says why (no ``iptables``, an engine that does not manage iptables, no permission)."""


class SandboxStateError(SandboxError, RuntimeError):
    """The sandbox was used in a state that forbids it (for example after ``stop()``)."""


class TerminalClosedError(SandboxStateError):
    """A :class:`Terminal` was typed into or resized after it ended (its program exited, it was
    closed, or its sandbox stopped)."""


class ContainerGoneError(SandboxStateError):
    """The sandbox's container stopped or was removed from outside (``docker kill``, ``docker rm -f``,
    an engine restart). Its files are gone with it unless they were on named volumes: a
    :class:`SessionManager` replaces the container, files included, on the next ``get_or_create``;
    a plain sandbox needs ``stop()`` and ``start()``."""


class SnapshotNotFoundError(SandboxError, KeyError):
    """No snapshot of that name: it was never taken, or was deleted."""

    def __init__(self, name: str, available: list[str]) -> None:
        self.name, self.available = name, available
        known = ", ".join(available[:20]) or "none yet: take one with sandbox.snapshot(name)"
        super().__init__(f"no snapshot named {shown(name)}; known snapshots: {known}")

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0])
class NodeLostError(ContainerGoneError):
    """The cluster node running the sandbox is lost: its engine does not answer (it crashed, or
    the host went down). The sandbox's processes went with it, and its files too unless they were
    on shared storage; a :class:`SessionManager` starts a new sandbox on another node on the next
    ``get_or_create``.

    Attributes:
        node: The node's name.
    """

    def __init__(self, node: str, message: str) -> None:
        self.node = node
        super().__init__(message)
