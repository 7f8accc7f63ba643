"""Every error pydantic_deep raises on purpose.

One root, so ``except SandboxError`` catches all of them::

    SandboxError
    ├── DockerUnavailableError      the engine does not answer (says how to start one)
    ├── UnknownRuntimeError         a runtime name nobody registered (lists the known ones)
    ├── UnknownBackendError         $PYDANTIC_DEEP_BACKEND names no backend (lists the known ones)
    ├── ImageNotAvailableError      a base image that is neither local, pullable nor bootstrappable
    ├── ImageBuildError             a runtime image failed to build (carries the log tail)
    ├── InvalidArgumentError        an argument that cannot be used as given (names it and the problem)
    ├── PathOutsideSandboxError     a file path that escapes the sandbox's allowed roots
    ├── SandboxFileNotFoundError    a file that is not in the sandbox
    ├── TransferInterruptedError    a file transfer was cut off, its container still running
    ├── DiskFullError               a file API write found the sandbox's disk (disk_size) full
    └── SandboxStateError           the sandbox was used in a state that forbids it
        └── ContainerGoneError      its container died or was removed from outside

Invalid ``RuntimeConfig`` fields raise pydantic's ``ValidationError`` (a ``ValueError``), whose
message names the field and the problem.
"""

from __future__ import annotations

__all__ = [
    "ContainerGoneError",
    "DiskFullError",
    "DockerUnavailableError",
    "ImageBuildError",
    "ImageNotAvailableError",
    "InvalidArgumentError",
    "PathOutsideSandboxError",
    "SandboxError",
    "SandboxFileNotFoundError",
    "SandboxStateError",
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
    positive number. The message names the argument and the problem."""


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


class SandboxStateError(SandboxError, RuntimeError):
    """The sandbox was used in a state that forbids it (for example after ``stop()``)."""


class ContainerGoneError(SandboxStateError):
    """The sandbox's container stopped or was removed from outside (``docker kill``, ``docker rm -f``,
    an engine restart). Its files are gone with it unless they were on named volumes: a
    :class:`SessionManager` replaces the container, files included, on the next ``get_or_create``;
    a plain sandbox needs ``stop()`` and ``start()``."""
