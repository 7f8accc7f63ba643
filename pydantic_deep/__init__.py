"""pydantic_deep: Docker sandboxes with pre-built runtimes, for AI agents and notebook users.

Data flows one way: a :class:`RuntimeConfig` becomes an image (:mod:`pydantic_deep.images.runtime`), the
image a container (:class:`DockerSandbox`), and commands run through an execution channel
(:mod:`pydantic_deep.execution.channel`) into an :class:`ExecuteResult`. A :class:`SandboxPool` keeps
started sandboxes ready.
"""

from typing import Any

from .agent.deps import DeepAgentDeps, UploadedFile
from .config import RuntimeConfig
from .engine.swarm import SwarmCluster
from .errors import (
    CellError,
    ChannelClosedError,
    ContainerGoneError,
    DiskFullError,
    DockerUnavailableError,
    ImageBuildError,
    ImageNotAvailableError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    NetworkIsolationError,
    NodeLostError,
    PathOutsideSandboxError,
    SandboxError,
    SandboxFileNotFoundError,
    SandboxStateError,
    SessionLimitError,
    SnapshotNotFoundError,
    TerminalClosedError,
    TransferInterruptedError,
    UnknownBackendError,
    UnknownRuntimeError,
)
from .execution.channel import CommandStream
from .execution.ports import ExposedPort
from .execution.terminal import Terminal
from .images.certs import CaBundle, resolve_ca_bundle
from .results import EgressEvent, ExecuteResult, FileInfo, OutputChunk, ResourceUsage
from .runtimes import BUILTIN_RUNTIMES, get_runtime, list_runtimes, register_runtime
from .sandbox.backends import default_backend, open_sandbox
from .sandbox.base import SandboxBase, SandboxState
from .sandbox.docker import DockerSandbox
from .sandbox.local import LocalSandbox
from .sandbox.pool import SandboxPool
from .sandbox.snapshots import Snapshot, delete_snapshot, get_snapshot, list_snapshots
from .sessions.manager import SessionInfo, SessionManager
from .sessions.registry import InMemoryRegistry, RedisRegistry, SessionRecord, SessionRegistry
from .sessions.sync import SyncSessionManager

__all__ = [
    "BUILTIN_RUNTIMES",
    "CaBundle",
    "CellError",
    "ChannelClosedError",
    "CommandStream",
    "ContainerGoneError",
    "DiskFullError",
    "DeepAgentDeps",
    "DockerSandbox",
    "DockerUnavailableError",
    "EgressEvent",
    "ExecuteResult",
    "ExposedPort",
    "FileInfo",
    "ImageBuildError",
    "ImageNotAvailableError",
    "InMemoryRegistry",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "NetworkIsolationError",
    "LocalSandbox",
    "NodeLostError",
    "OutputChunk",
    "PathOutsideSandboxError",
    "RedisRegistry",
    "ResourceUsage",
    "RuntimeConfig",
    "SandboxError",
    "SandboxFileNotFoundError",
    "SandboxBase",
    "SandboxPool",
    "SandboxState",
    "SandboxStateError",
    "SessionInfo",
    "SessionLimitError",
    "SessionManager",
    "SessionRecord",
    "SessionRegistry",
    "SyncSessionManager",
    "Snapshot",
    "SnapshotNotFoundError",
    "SwarmCluster",
    "Terminal",
    "TerminalClosedError",
    "TransferInterruptedError",
    "UnknownBackendError",
    "UnknownRuntimeError",
    "UploadedFile",
    "create_deep_agent",
    "default_backend",
    "delete_snapshot",
    "get_runtime",
    "get_snapshot",
    "list_runtimes",
    "list_snapshots",
    "open_sandbox",
    "register_runtime",
    "resolve_ca_bundle",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext pydantic_deep``: register the ``%%sandbox`` magics (twice is harmless)."""
    from .notebook.magics import SandboxMagics

    if "SandboxMagics" in ipython.magics_manager.registry:
        return
    magics = SandboxMagics(ipython)
    ipython.register_magics(magics)
    ipython.configurables.append(magics)  # so that %config SandboxMagics.runtime = ... works
    if magics.backend == "local":
        from IPython.display import display

        from .sandbox.local import LocalBackendBanner

        display(LocalBackendBanner())


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext pydantic_deep``: stop the notebook's sandboxes and remove the magics."""
    magics = ipython.magics_manager.registry.pop("SandboxMagics", None)
    if magics is None:
        return
    magics.close()
    for kind, names in magics.magics.items():
        for name in names:
            ipython.magics_manager.magics[kind].pop(name, None)
    if magics in ipython.configurables:
        ipython.configurables.remove(magics)


def __getattr__(name: str) -> object:
    # Pydantic AI takes about a second to import: only agent users pay for it.
    if name == "create_deep_agent":
        from .agent.agent import create_deep_agent

        return create_deep_agent
    raise AttributeError(f"module 'pydantic_deep' has no attribute {name!r}")
