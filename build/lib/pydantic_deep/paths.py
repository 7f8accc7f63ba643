"""Which paths inside a sandbox the file API may touch."""

from __future__ import annotations

import posixpath

from .errors import PathOutsideSandboxError

__all__ = ["UPLOADS_DIR", "resolve_sandbox_path"]

UPLOADS_DIR = "/uploads"


def resolve_sandbox_path(path: str, work_dir: str, allowed_roots: tuple[str, ...]) -> str:
    """The absolute, normalized form of ``path``, checked to lie inside one of ``allowed_roots``.

    A relative path is taken from ``work_dir``. ``..`` is resolved before the check, so
    ``uploads/../../etc/passwd`` is refused like ``/etc/passwd`` is.

    Raises:
        PathOutsideSandboxError: the path leaves every allowed root, or holds a NUL byte.
    """
    if not isinstance(path, str):
        raise TypeError(f"a sandbox path must be a str, not {type(path).__name__}")
    if "\0" in path or not path.strip():
        raise PathOutsideSandboxError(path, allowed_roots)
    absolute = posixpath.normpath(posixpath.join(work_dir, path))
    if absolute.startswith("//"):
        absolute = absolute[1:]  # POSIX keeps a leading "//"; it means "/" here
    if not any(absolute == root or absolute.startswith(root + "/") for root in allowed_roots):
        raise PathOutsideSandboxError(path, allowed_roots)
    return absolute
