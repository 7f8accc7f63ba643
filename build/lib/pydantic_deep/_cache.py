"""The host directory where pydantic_deep keeps build locks and materialized CA bundles."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$PYDANTIC_DEEP_CACHE_DIR`` (default ``~/.cache/pydantic-deep``) joined with ``parts``, created."""
    root = Path(os.environ.get("PYDANTIC_DEEP_CACHE_DIR") or Path.home() / ".cache" / "pydantic-deep")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
