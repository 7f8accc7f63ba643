"""The host directory where pydantic_deep keeps build locks and the files it binds into containers."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$PYDANTIC_DEEP_CACHE_DIR`` (default ``~/.cache/pydantic-deep``) joined with ``parts``, created."""
    root = Path(os.environ.get("PYDANTIC_DEEP_CACHE_DIR") or Path.home() / ".cache" / "pydantic-deep")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomically(path: Path, content: bytes) -> None:
    """Write ``path`` through a temporary file beside it: a container started meanwhile (bound to
    it) or a concurrent reader never sees half of it."""
    written = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    written.write_bytes(content)
    written.replace(path)
