"""Which kind of sandbox this process makes: Docker, or local processes where no Docker engine can run.

Docker is the default. ``PYDANTIC_DEEP_BACKEND=local`` is for places such as Binder, which has no
Docker engine: the deployer sets it (``binder/start`` does), and then :func:`open_sandbox` and the
``%%sandbox`` magics make a :class:`LocalSandbox`, which is NOT isolated and says so. Code that
must be isolated creates :class:`DockerSandbox` itself and never reads this setting.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from ..config import RuntimeConfig
from ..errors import UnknownBackendError
from .base import SandboxBase
from .docker import DockerSandbox
from .local import LocalSandbox

__all__ = ["BACKEND_VARIABLE", "Backend", "default_backend", "open_sandbox"]

BACKEND_VARIABLE = "PYDANTIC_DEEP_BACKEND"

Backend = Literal["docker", "local"]
BACKENDS: tuple[Backend, ...] = ("docker", "local")
LOCAL_OPTIONS = frozenset({"command_timeout", "max_output"})  # what LocalSandbox takes of DockerSandbox's


def default_backend() -> Backend:
    """``"docker"``, or what ``$PYDANTIC_DEEP_BACKEND`` names.

    Raises:
        UnknownBackendError: the variable names neither ``docker`` nor ``local``.
    """
    value = os.environ.get(BACKEND_VARIABLE, "docker").strip().lower() or "docker"
    for backend in BACKENDS:
        if value == backend:
            return backend
    raise UnknownBackendError(value, BACKENDS)


def open_sandbox(runtime: str | RuntimeConfig = "python-minimal", *, backend: Backend | None = None,
                 **options: Any) -> SandboxBase:
    """A new, not yet started sandbox of the default backend (or ``backend``).

    ``options`` go to the class: :class:`DockerSandbox` takes them all, :class:`LocalSandbox`
    only ``command_timeout`` and ``max_output`` (Docker-only options are ignored there, since a local
    sandbox has no container to apply them to).
    """
    if (backend or default_backend()) == "local":
        return LocalSandbox(runtime, **{k: v for k, v in options.items() if k in LOCAL_OPTIONS})
    return DockerSandbox(runtime, **options)
