"""The forker program: Node.js sandboxes' fast path, built once on this machine.

``supervisor.js`` hands its commands to a helper process that forks their shells and runs the
commonest ones from end to end (see FORKER in ``supervisor.js``). Its perl form needs perl in the
image and costs 0.7 ms of a core per command in perl's ``fork()`` alone; its C form
(``_guest/forker.c``) is a static program that needs nothing from the image and forks with
``vfork()``. It is compiled here, with the machine's C compiler, the first time an image is
prepared, and kept in the cache (``$PYDANTIC_DEEP_CACHE_DIR``) under its source's hash. Where it
cannot be built (no compiler, no static C library) or the engine runs another architecture,
prepared images go without it and Node.js sandboxes use the perl forker; this is logged once.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from importlib.resources import files

import docker

from .._cache import cache_dir

__all__ = ["forker_program"]

logger = logging.getLogger("pydantic_deep.images")

# Docker's names for this machine's architectures (platform.machine() -> the engine's `Arch`).
_ENGINE_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def forker_program(client: docker.DockerClient) -> bytes | None:
    """The forker program for ``client``'s engine, or ``None`` where it cannot run there or cannot
    be built here (the reason is logged once)."""
    engine_arch = str(client.version().get("Arch", ""))
    here = _ENGINE_ARCH.get(platform.machine().lower(), platform.machine().lower())
    if engine_arch != here:
        _unavailable(f"the engine runs {engine_arch or 'an unknown architecture'}, this machine {here}")
        return None
    return _built()


@functools.cache
def _built() -> bytes | None:
    source = files("pydantic_deep._guest").joinpath("forker.c").read_bytes()
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        _unavailable("no C compiler (cc) on this machine")
        return None
    target = cache_dir("forker") / f"forker-{hashlib.sha256(source).hexdigest()[:16]}-{platform.machine()}"
    if not target.exists():
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            source_path = os.path.join(scratch, "forker.c")
            with open(source_path, "wb") as file:
                file.write(source)
            built = os.path.join(scratch, "forker")
            try:
                result = subprocess.run([compiler, "-static", "-O2", "-s", "-o", built, source_path],
                                        capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as error:
                _unavailable(f"{compiler} failed to run: {error}")
                return None
            if result.returncode != 0:
                _unavailable(f"{compiler} -static failed (the static C library, libc6-dev, may be missing): "
                             f"{result.stderr.strip()[-300:]}")
                return None
            os.replace(built, target)  # atomic: a process building it at the same time loses nothing
    return target.read_bytes()


@functools.cache
def _unavailable(reason: str) -> None:
    logger.warning("The forker program cannot be used (%s): Node.js sandboxes fork their commands' shells "
                   "with perl instead, about 0.3 ms slower a command", reason)
