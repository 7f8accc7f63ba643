"""SandboxPool: started sandboxes kept ready, so acquiring one costs no container start."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Self

from .._burst import burst_left
from ..config import RuntimeConfig
from ..errors import InvalidArgumentError, SandboxStateError
from ..runtimes import resolve_runtime
from .docker import DockerSandbox

__all__ = ["SandboxPool"]

logger = logging.getLogger("pydantic_deep.pool")

# After a failed start the refill thread waits before it tries again: 1 s, then twice as long after
# each further failure, up to a minute (a broken image build is not retried in a tight loop).
_FIRST_RETRY = 1.0
_LONGEST_RETRY = 60.0

# Most cold starts under way at once for callers who found nothing ready: more only queue up in
# the engine (which starts containers a few at a time) and slow every one of them down.
MOST_COLD_STARTS = 16


class SandboxPool:
    """Keeps ``size`` started sandboxes of one runtime ready, refilled in the background.

    :meth:`acquire` hands out a ready sandbox, or starts one when none is ready. A sandbox is
    handed out once and never comes back: the caller owns it and stops it, so nobody ever gets a
    sandbox with another user's files or processes in it.

    Under a burst larger than the pool, callers are served first come, first served: each one that
    finds nothing ready queues up and sets a cold start going, and every sandbox that becomes
    ready (its own start, another caller's, or the background refill's) goes to the caller who has
    waited longest. Nobody waits longer than a cold start of their own would take, and everyone is
    served.

    When the refill cannot start a sandbox (the image fails to build, the engine is gone...),
    :meth:`wait_ready` raises that error instead of waiting, and :meth:`acquire`, which then has
    nothing ready, raises it from its own start. The refill logs the failure and tries again
    later, waiting longer after each failure (1 s up to a minute).

    Example:
        ```python
        with SandboxPool("python-datascience", size=4) as pool:
            sandbox = pool.acquire()       # no container start on this path
            try:
                sandbox.execute("python -c 'import pandas'")
            finally:
                sandbox.stop()
        ```

    Args:
        runtime: A runtime name or config, as for :class:`DockerSandbox`.
        size: How many started sandboxes to keep ready.
        factory: Makes each (unstarted) sandbox instead, for options that differ per sandbox.
        **sandbox_options: Passed to every :class:`DockerSandbox` (``memory``, ``network``,
            ``disk_size``, ...): each sandbox has a disk of its own, made with it and deleted with it.

    Raises:
        UnknownRuntimeError: ``runtime`` names no runtime.
        InvalidArgumentError: ``size`` is below 1.
    """

    def __init__(self, runtime: str | RuntimeConfig = "python-minimal", size: int = 2, *,
                 factory: Callable[[], DockerSandbox] | None = None, **sandbox_options: Any) -> None:
        if size < 1:
            raise InvalidArgumentError(f"size={size!r}: a pool needs a size of at least 1")
        self.runtime: RuntimeConfig = resolve_runtime(runtime)
        self.size = size
        self.sandbox_options = sandbox_options
        self._factory = factory
        self._ready: deque[DockerSandbox] = deque()
        self._waiters: deque[concurrent.futures.Future[DockerSandbox]] = deque()  # first come, first served
        self._cold_starts: set[threading.Thread] = set()
        self._start_slots = threading.BoundedSemaphore(MOST_COLD_STARTS)
        self._changed = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._failure: Exception | None = None  # the refill's last start failed with this
        self._taken_at = 0.0  # when a sandbox was last acquired (time.monotonic())

    @property
    def ready(self) -> int:
        """How many started sandboxes wait to be acquired."""
        return len(self._ready)

    @property
    def waiting(self) -> int:
        """How many callers of :meth:`acquire` wait for a sandbox now."""
        return len(self._waiters)

    def start(self) -> Self:
        """Start the background refill; returns at once (see :meth:`wait_ready`)."""
        with self._changed:
            if self._closed:
                raise SandboxStateError("this pool was closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._refill, name="pydantic-deep-pool", daemon=True)
                self._thread.start()
        return self

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the pool is full; False if ``timeout`` seconds passed first.

        Raises:
            SandboxError: the refill's latest attempt to start a sandbox failed with it
                (``ImageBuildError``, ``DockerUnavailableError``...); the refill tries again later.
        """
        self.start()
        with self._changed:
            full = self._changed.wait_for(
                lambda: len(self._ready) >= self.size or self._closed or self._failure is not None, timeout)
            if self._failure is not None and len(self._ready) < self.size:
                raise self._failure
            return full

    def acquire(self) -> DockerSandbox:
        """A started sandbox that nobody else has had: a ready one, else the first to become ready
        (after the callers who came before).

        Raises:
            SandboxStateError: the pool was closed (before or while waiting).
            SandboxError: none was ready and the cold start set going for this call failed
                (``ImageBuildError``, ``DockerUnavailableError``...).
        """
        return self._claim().result()

    async def aacquire(self) -> DockerSandbox:
        """Async form of :meth:`acquire`: waits without holding a thread."""
        return await asyncio.wrap_future(self._claim())

    def acquire_ready(self) -> DockerSandbox | None:
        """A ready sandbox, at once, or ``None`` (none is ready, or the next one's liveness would
        take asking the engine): never waits, never calls the engine, so an event loop can call it.
        :meth:`acquire` is the way when it says ``None``."""
        with self._changed:
            if self._closed or not self._ready:
                return None
            first = self._ready[0]
            if first.supervisor is None or not first.alive:  # an exec channel asks the engine; a dead one is stopped
                return None
            self._taken_at = time.monotonic()
            self._ready.popleft()
            self._changed.notify_all()  # the refill makes up what was taken
        return first

    def _claim(self) -> concurrent.futures.Future[DockerSandbox]:
        """A future of the sandbox this caller gets: done at once when one is ready; else the caller
        queues up and a cold start is set going on its behalf."""
        claim: concurrent.futures.Future[DockerSandbox] = concurrent.futures.Future()
        dead = []
        with self._changed:
            if self._closed:
                raise SandboxStateError("this pool was closed")
            self._taken_at = time.monotonic()
            while self._ready:
                sandbox = self._ready.popleft()
                if sandbox.alive:
                    claim.set_result(sandbox)
                    break
                dead.append(sandbox)  # died while it waited (killed from outside)
            else:
                self._waiters.append(claim)
                starter = threading.Thread(target=self._cold_start, args=(claim,), name="pydantic-deep-pool-start",
                                           daemon=True)
                self._cold_starts.add(starter)
                starter.start()
            self._changed.notify_all()  # the refill makes up what was taken
        for sandbox in dead:
            sandbox.stop()
        self.start()
        return claim

    def _cold_start(self, claim: concurrent.futures.Future[DockerSandbox]) -> None:
        """Start a sandbox for a caller who found none ready; it goes to whoever waits longest."""
        try:
            with self._start_slots:
                if not claim.done():  # served meanwhile: another start does not help anybody
                    try:
                        self._offer(self._start_one())
                    except Exception as exc:
                        with self._changed:
                            waiting = claim in self._waiters
                            if waiting:
                                self._waiters.remove(claim)
                        if waiting:  # its caller gets the error of the start made for it
                            claim.set_exception(exc)
        finally:
            with self._changed:
                self._cold_starts.discard(threading.current_thread())
                self._changed.notify_all()

    def _offer(self, sandbox: DockerSandbox) -> None:
        """Hand a newly started sandbox to the caller who has waited longest, else keep it ready."""
        with self._changed:
            while self._waiters and not self._closed:
                claim = self._waiters.popleft()
                try:
                    claim.set_result(sandbox)
                except concurrent.futures.InvalidStateError:  # its caller gave up (a cancelled task)
                    continue
                return
            if not self._closed:
                self._ready.append(sandbox)
                self._changed.notify_all()
                return
        sandbox.stop(remove_volumes=True)  # closed: nobody's files yet

    def close(self) -> None:
        """Stop the refill and every sandbox still waiting. Safe to call more than once."""
        with self._changed:
            self._closed = True
            waiting, self._ready = list(self._ready), deque()
            callers, self._waiters = list(self._waiters), deque()
            starts = list(self._cold_starts)
            self._changed.notify_all()
        for claim in callers:
            if not claim.done():
                claim.set_exception(SandboxStateError("this pool was closed while waiting for a sandbox"))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        for starter in starts:  # what they started is stopped by _offer, the pool being closed
            starter.join()
        for sandbox in waiting:
            sandbox.stop(remove_volumes=True)  # nobody's files yet

    def _new_sandbox(self) -> DockerSandbox:
        if self._factory is not None:
            return self._factory()
        return DockerSandbox(self.runtime, **self.sandbox_options)

    def _refill(self) -> None:
        retry_after = _FIRST_RETRY
        lacking_since: float | None = None
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._closed or len(self._ready) < self.size)
                if self._closed:
                    return
                lacking_since = lacking_since or time.monotonic()
                burst = burst_left(self._taken_at, lacking_since)
                # A burst may be under way: replacements later (see _burst), unless callers wait.
                if burst > 0 and not self._waiters:
                    self._changed.wait_for(lambda: self._closed, burst)
                    continue
            lacking_since = None
            try:
                sandbox = self._start_one()
            except Exception as exc:
                logger.warning("The pool could not start a %s sandbox (%s: %s); retrying in %.0f s",
                               self.runtime.name, type(exc).__name__, exc, retry_after)
                with self._changed:
                    self._failure = exc
                    self._changed.notify_all()
                    self._changed.wait_for(lambda: self._closed, retry_after)
                retry_after = min(retry_after * 2, _LONGEST_RETRY)
                continue
            retry_after = _FIRST_RETRY
            with self._changed:
                self._failure = None
            self._offer(sandbox)

    def _start_one(self) -> DockerSandbox:
        sandbox = self._new_sandbox()
        try:
            return sandbox.start()
        except BaseException:
            try:
                sandbox.stop()
            except Exception:  # the engine that failed the start may fail the clean-up too
                logger.debug("Cleaning up a sandbox that failed to start failed", exc_info=True)
            raise

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.close)

    def __repr__(self) -> str:
        return (f"<SandboxPool runtime={self.runtime.name!r} ready={self.ready}/{self.size} waiting={self.waiting} "
                f"closed={self._closed}>")
