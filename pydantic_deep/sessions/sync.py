"""SyncSessionManager: the same sessions, for code that does not run an event loop of its own.

Threaded web servers, scripts, notebook widgets and magics call :class:`SessionManager` through
this facade. It owns a private event loop in a background thread and forwards each call to it, so
it works from any thread, including one whose own loop is running (an IPython kernel's, where
``asyncio.run()`` fails with "cannot be called from a running event loop").
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, Literal, Self, TypeVar

from ..config import RuntimeConfig
from ..errors import SandboxStateError
from ..sandbox.docker import DockerSandbox
from ..sandbox.pool import SandboxPool
from .manager import SessionInfo, SessionManager
from .registry import SessionRegistry

__all__ = ["SyncSessionManager"]

T = TypeVar("T")


class _LoopThread:
    """An event loop running forever in a daemon thread, until :meth:`stop`."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop the loop and close it (safe to call more than once, from any thread but its own)."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class SyncSessionManager:
    """A :class:`SessionManager` with blocking methods of the same names, for threaded callers.

    Takes the same arguments as :class:`SessionManager`, or wraps one that exists
    (:meth:`wrap`), e.g. to serve an async web app and a threaded worker from the same sessions.
    Every method returns what the async one returns (the same :class:`DockerSandbox` objects) and
    raises the same errors. Any number of threads may call it at once.

    Example:
        ```python
        with SyncSessionManager("python-datascience", default_idle_timeout=1800) as manager:
            sandbox = manager.get_or_create("user-123")
            sandbox.execute("echo hello > /workspace/greeting.txt")
            manager.cleanup_idle()
        # leaving the block shuts the sessions down (their files stay)
        ```

    Args:
        default_runtime: As for :class:`SessionManager`.
        default_idle_timeout: As for :class:`SessionManager`.
        **options: The other :class:`SessionManager` arguments (``name``, ``registry``,
            ``warm``, sandbox options...).

    Attributes:
        manager: The :class:`SessionManager` it forwards to.
    """

    manager: SessionManager

    def __init__(self, default_runtime: str | RuntimeConfig = "python-minimal", default_idle_timeout: float = 3600,
                 **options: Any) -> None:
        self._forward_to(SessionManager(default_runtime, default_idle_timeout, **options))

    @classmethod
    def wrap(cls, manager: SessionManager) -> SyncSessionManager:
        """A facade for a manager that exists (its sessions and settings are shared, not copied)."""
        facade = cls.__new__(cls)
        facade._forward_to(manager)
        return facade

    def _forward_to(self, manager: SessionManager) -> None:
        self.manager = manager
        self._lock = threading.Lock()
        self._loop: _LoopThread | None = None
        self._closed = False
        self._finalizer: weakref.finalize | None = None

    # -- the loop -----------------------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._closed:
                coroutine.close()
                raise SandboxStateError("this SyncSessionManager was closed")
            if self._loop is None:  # made on first use: a facade never called costs no thread
                self._loop = _LoopThread(f"pydantic-deep-sessions-{self.manager.name}")
                self._finalizer = weakref.finalize(self, self._loop.stop)
            loop = self._loop.loop
        if threading.current_thread() is self._loop.thread:
            coroutine.close()
            raise SandboxStateError("SyncSessionManager was called from its own event loop: await the "
                                    "SessionManager (.manager) there instead")
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    def close(self) -> None:
        """Stop the private event loop; the sessions keep running (see :meth:`shutdown`).

        Safe to call more than once. Calls after it raise :class:`SandboxStateError`.
        """
        with self._lock:
            self._closed = True
        if self._finalizer is not None:
            self._finalizer()

    # -- the SessionManager's methods ---------------------------------------------------------

    def get_or_create(self, user_id: str, runtime: str | RuntimeConfig | None = None) -> DockerSandbox:
        """The user's sandbox: see :meth:`SessionManager.get_or_create`."""
        return self._call(self.manager.get_or_create(user_id, runtime))

    def stop(self, user_id: str) -> bool:
        """Stop the user's container, keeping the files: see :meth:`SessionManager.stop`."""
        return self._call(self.manager.stop(user_id))

    def release(self, user_id: str) -> bool:
        """End the user's session and remove the files: see :meth:`SessionManager.release`."""
        return self._call(self.manager.release(user_id))

    def cleanup_idle(self, max_idle: float | None = None) -> int:
        """Stop the idle sessions: see :meth:`SessionManager.cleanup_idle`."""
        return self._call(self.manager.cleanup_idle(max_idle))

    def list_sessions(self) -> list[SessionInfo]:
        """Every session: see :meth:`SessionManager.list_sessions`."""
        return self._call(self.manager.list_sessions())

    def recover(self) -> tuple[int, int]:
        """Adopt or reap the containers of processes that are gone: see :meth:`SessionManager.recover`."""
        return self._call(self.manager.recover())

    def shutdown(self, *, keep_files: bool = True) -> int:
        """Stop every session and the warm pool: see :meth:`SessionManager.shutdown`."""
        return self._call(self.manager.shutdown(keep_files=keep_files))

    def start_cleanup_loop(self, interval: float = 300) -> None:
        """See :meth:`SessionManager.start_cleanup_loop`."""
        self.manager.start_cleanup_loop(interval)

    def stop_cleanup_loop(self) -> None:
        """See :meth:`SessionManager.stop_cleanup_loop`."""
        self.manager.stop_cleanup_loop()

    @property
    def name(self) -> str:
        """The manager's name."""
        return self.manager.name

    @property
    def default_runtime(self) -> RuntimeConfig:
        """The runtime of new sessions."""
        return self.manager.default_runtime

    @property
    def registry(self) -> SessionRegistry:
        """Where the sessions are recorded."""
        return self.manager.registry

    @property
    def pool(self) -> SandboxPool | None:
        """The warm capacity that serves new users (see ``warm``), if any."""
        return self.manager.pool

    @property
    def session_count(self) -> int:
        """How many sessions have a running container."""
        return self.manager.session_count

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> Literal[False]:
        """Shut the sessions down (files kept) and stop the private loop."""
        try:
            self.shutdown()
        finally:
            self.close()
        return False

    def __repr__(self) -> str:
        return f"<SyncSessionManager of {self.manager!r}>"

    def _repr_html_(self) -> str:
        return self.manager._repr_html_()
