"""Which paths inside a sandbox the file API may touch."""

from __future__ import annotations

import posixpath

from .arguments import checked_text
from .errors import InvalidArgumentError, PathOutsideSandboxError, shown

__all__ = ["MAX_NAME_BYTES", "MAX_PATH_BYTES", "MAX_PATH_DEPTH", "TOOLS_DIR", "UPLOADS_DIR", "resolve_sandbox_path"]

UPLOADS_DIR = "/uploads"
TOOLS_DIR = "/opt/pydantic-deep"  # the supervisor and the notebook interpreters
# Linux's limit for one name. The engine resolves a path under its own data root (which takes
# part of Linux's 4096-byte PATH_MAX) and follows at most 255 components: longer or deeper paths
# fail there with an unhelpful server error, so they are refused here with a clear one.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 2048
MAX_PATH_DEPTH = 128


def resolve_sandbox_path(path: str, work_dir: str, allowed_roots: tuple[str, ...]) -> str:
    """The absolute, normalized form of ``path``, checked to lie inside one of ``allowed_roots``.

    A relative path is taken from ``work_dir``. ``..`` is resolved before the check, so
    ``uploads/../../etc/passwd`` is refused like ``/etc/passwd`` is.

    Raises:
        TypeError: the path is not a ``str``.
        InvalidArgumentError: the path is empty, holds a NUL byte or a lone surrogate, or is
            longer or deeper than a container's file system takes (``MAX_NAME_BYTES`` per name,
            ``MAX_PATH_BYTES`` and ``MAX_PATH_DEPTH`` in all).
        PathOutsideSandboxError: the path leaves every allowed root.
    """
    checked_text(path, "sandbox path")
    if not path.strip():
        raise InvalidArgumentError(f"sandbox path {path!r} is empty")
    absolute = posixpath.normpath(posixpath.join(work_dir, path))
    if absolute.startswith("//"):
        absolute = absolute[1:]  # POSIX keeps a leading "//"; it means "/" here
    if not any(absolute == root or absolute.startswith(root + "/") for root in allowed_roots):
        raise PathOutsideSandboxError(path, allowed_roots)
    names = absolute.split("/")[1:]
    longest = max(names, key=lambda name: len(name.encode()))
    if len(longest.encode()) > MAX_NAME_BYTES:
        raise InvalidArgumentError(
            f"sandbox path {shown(path)} has a name of {len(longest.encode())} bytes; at most {MAX_NAME_BYTES} fit")
    if len(absolute.encode()) > MAX_PATH_BYTES or len(names) > MAX_PATH_DEPTH:
        raise InvalidArgumentError(
            f"sandbox path {shown(path)} is too long: at most {MAX_PATH_BYTES} bytes and {MAX_PATH_DEPTH} levels")
    return absolute
