"""pydantic_deep: Docker sandboxes with pre-built runtimes, for AI agents and notebook users.

Data flows one way: a :class:`RuntimeConfig` becomes an image (:mod:`pydantic_deep.images`), the
image a container (:class:`DockerSandbox`), and commands run through an execution channel
(:mod:`pydantic_deep.channel`) into an :class:`ExecuteResult`. A :class:`SandboxPool` keeps
started sandboxes ready.
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
from .channel import CommandStream
from .deps import DeepAgentDeps, UploadedFile
from .pool import SandboxPool
from .registry import InMemoryRegistry, RedisRegistry, SessionRecord, SessionRegistry
from .runtimes import BUILTIN_RUNTIMES, get_runtime, list_runtimes, register_runtime
from .sandbox import DockerSandbox, SandboxState
from .sessions import SessionInfo, SessionLimitError, SessionManager
from .types import ExecuteResult, FileInfo, OutputChunk, ResourceUsage, RuntimeConfig

__all__ = [
    "BUILTIN_RUNTIMES",
    "CaBundle",
    "CommandStream",
    "DeepAgentDeps",
    "DockerSandbox",
    "DockerUnavailableError",
    "ExecuteResult",
    "FileInfo",
    "ImageBuildError",
    "ImageNotAvailableError",
    "InMemoryRegistry",
    "OutputChunk",
    "PathOutsideSandboxError",
    "RedisRegistry",
    "ResourceUsage",
    "RuntimeConfig",
    "SandboxError",
    "SandboxFileNotFoundError",
    "SandboxPool",
    "SandboxState",
    "SandboxStateError",
    "SessionInfo",
    "SessionLimitError",
    "SessionManager",
    "SessionRecord",
    "SessionRegistry",
    "UnknownRuntimeError",
    "UploadedFile",
    "create_deep_agent",
    "get_runtime",
    "list_runtimes",
    "register_runtime",
    "resolve_ca_bundle",
]


def __getattr__(name: str) -> object:
    # Pydantic AI takes about a second to import: only agent users pay for it.
    if name == "create_deep_agent":
        from .agent import create_deep_agent

        return create_deep_agent
    raise AttributeError(f"module 'pydantic_deep' has no attribute {name!r}")
