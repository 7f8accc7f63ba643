"""pydantic_deep: Docker sandboxes with pre-built runtimes, for AI agents and notebook users.

Data flows one way: a :class:`RuntimeConfig` becomes an image (:mod:`pydantic_deep.images`), the
image a container (:class:`DockerSandbox`), and commands run through an execution channel
(:mod:`pydantic_deep.channel`) into an :class:`ExecuteResult`.
"""

from .certs import CaBundle, resolve_ca_bundle
from .errors import (
    DockerUnavailableError,
    ImageBuildError,
    ImageNotAvailableError,
    PathOutsideSandboxError,
    SandboxError,
    SandboxFileNotFoundError,
    SandboxStateError,
    UnknownRuntimeError,
)
from .runtimes import BUILTIN_RUNTIMES, get_runtime, list_runtimes, register_runtime
from .sandbox import DockerSandbox, SandboxState
from .types import ExecuteResult, FileInfo, RuntimeConfig

__all__ = [
    "BUILTIN_RUNTIMES",
    "CaBundle",
    "DockerSandbox",
    "DockerUnavailableError",
    "ExecuteResult",
    "FileInfo",
    "ImageBuildError",
    "ImageNotAvailableError",
    "PathOutsideSandboxError",
    "RuntimeConfig",
    "SandboxError",
    "SandboxFileNotFoundError",
    "SandboxState",
    "SandboxStateError",
    "UnknownRuntimeError",
    "get_runtime",
    "list_runtimes",
    "register_runtime",
    "resolve_ca_bundle",
]
