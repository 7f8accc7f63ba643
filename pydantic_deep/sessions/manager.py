"""SessionManager: one isolated, persistent sandbox per user, for applications serving many users.

What a session is made of, all named from a hash of the user id (``<key>``), never the id itself:

- a container ``pd-<manager>-<key>``, a :class:`DockerSandbox` like any other;
- a capped *disk* (``disk_size``, see :mod:`pydantic_deep.sandbox.disk`) holding the user's work
  dir, ``/uploads`` and home: the user's quota. It outlives the container: a container that dies,
  is removed or is replaced (idle cleanup, a runtime change, a restart) comes back with the same
  files, and the same quota. With ``disk_size=None``, two named volumes hold the work dir and
  ``/uploads`` instead, uncapped;
- a *session volume* ``pd-<manager>-<key>`` that is never mounted: its labels record the user id,
  the runtime and which volumes hold the files, in the engine itself, so a new process (after a
  crash, a deploy, a ``kill -9``) finds every user's files again.

Files go away only when a session is ended on purpose: :meth:`SessionManager.release`, or
:meth:`SessionManager.shutdown` with ``keep_files=False``. Idle cleanup and ``shutdown()`` remove
containers and keep files. Before that, an idle session can be *paused* (``pause_after``): frozen
in place, using no CPU, its processes and interpreter variables kept; its next call resumes it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import os
import re
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, Self

import docker

from .._burst import burst_left
from .._html import field_table
from ..config import DEFAULT_DISK_SIZE, RuntimeConfig, disk_size_bytes
from ..engine import labels as label
from ..engine.client import docker_client, engine_errors
from ..engine.containers import owner_gone, remove_container
from ..engine.swarm import SwarmCluster, resolve_cluster
from ..engine.volumes import create_volume, find_volumes, remove_volume, volume_labels
from ..errors import InvalidArgumentError, InvalidArgumentTypeError, SandboxStateError, SessionLimitError, shown
from ..execution.ports import ExposedPort
from ..paths import UPLOADS_DIR
from ..results import EgressEvent
from ..runtimes import resolve_runtime
from ..sandbox.base import SandboxState
from ..sandbox.cluster_disk import release_in_storage
from ..sandbox.disk import list_disks, release_disk
from ..sandbox.disk_stock import claim_disk, prepare_disk
from ..sandbox.docker import FROM_RUNTIME, DockerSandbox, resolved_disk_size
from ..sandbox.pool import SandboxPool
from ..sandbox.snapshots import Snapshot, resolve_snapshot
from . import naming
from .registry import InMemoryRegistry, SessionRecord, SessionRegistry

__all__ = ["SessionInfo", "SessionLimitError", "SessionManager"]

logger = logging.getLogger("pydantic_deep.sessions")

DEFAULT_WARM = 0
"""Started sandboxes a :class:`SessionManager` keeps ready for new users unless told otherwise:
none, since warm capacity runs containers from the moment the manager is made (a server sizes it
for its bursts with ``warm=N``; a manager made in passing should start nothing)."""


@dataclass(frozen=True)
class SessionInfo:
    """One session, as :meth:`SessionManager.list_sessions` reports it."""

    user_id: str
    runtime: str
    state: Literal["running", "busy", "paused", "stopped"]
    container: str
    idle_seconds: float
    memory_bytes: int
    cpu_seconds: float
    disk_bytes: int = 0
    disk_limit_bytes: int | None = None
    node: str | None = None
    """The cluster node the sandbox runs on (``None`` on one host, or when it is stopped)."""
    exposed: tuple[ExposedPort, ...] = ()
    """The sandbox's ports open on the host (:meth:`SandboxBase.expose`), with their URLs."""
    egress: tuple[EgressEvent, ...] = ()
    """The egress proxy's last decisions (at most 20) about a running session with a list of hosts."""


_SHUTDOWN_THREADS = 32  # sessions ended at once by shutdown()
_MANAGER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,28}[a-z0-9])?")


def _checked_manager_name(name: str) -> str:
    # Used as is in container and volume names: a name that had to be changed to fit ("My App"
    # into "my-app") could be another manager's, whose sessions this one would then take over.
    if not isinstance(name, str):
        raise InvalidArgumentTypeError(f"a manager name must be a str, not {type(name).__name__}")
    if not _MANAGER_NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"manager name {shown(name)} must be 1-30 lowercase letters, digits and '-', starting and ending "
            "with a letter or digit (e.g. 'my-app')")
    return name


def _check_options(default_idle_timeout: float, max_sessions: int | None, orphans: str) -> None:
    """Refuse, before anything is made, options a manager could only misread."""
    if isinstance(default_idle_timeout, bool) or not isinstance(default_idle_timeout, (int, float)):
        raise InvalidArgumentTypeError(
            f"default_idle_timeout must be a number of seconds, not {type(default_idle_timeout).__name__}")
    if not default_idle_timeout > 0:  # NaN too
        raise InvalidArgumentError(
            f"default_idle_timeout must be a positive number of seconds, not {default_idle_timeout!r}")
    if max_sessions is not None:
        _check_count("max_sessions", max_sessions, 1)
    if orphans not in ("adopt", "reap"):
        raise InvalidArgumentError(f"orphans must be 'adopt' or 'reap', not {shown(str(orphans))}")


def _warm_capacity(warm: int | None, pool_size: int | None, sandbox_options: Mapping[str, Any],
                   cluster: SwarmCluster | None) -> int:
    """How many started sandboxes to keep ready: ``warm`` (or its older name ``pool_size``), by
    default :data:`DEFAULT_WARM`, or none where sandboxes cannot be started before their user is
    known (a ``shared_network`` is each user's own) and on a cluster (where each would hold its
    reservation of a node's memory and CPU)."""
    if warm is not None and pool_size is not None:
        raise InvalidArgumentError("warm and pool_size are the same setting (pool_size is its older name): give one")
    argument, size = ("pool_size", pool_size) if pool_size is not None else ("warm", warm)
    shared = sandbox_options.get("shared_network") is not None
    if size is None:
        return 0 if shared or cluster is not None else DEFAULT_WARM
    _check_count(argument, size, 0)
    if size and shared:
        raise InvalidArgumentError(f"shared_network cannot be used with {argument}={size}: warm sandboxes start "
                                   "before their user is known, and each user's shared network is their own; "
                                   f"leave {argument} out (no warm capacity) or set it to 0")
    return size


def _check_count(argument: str, value: int, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentTypeError(f"{argument} must be a whole number, not {type(value).__name__}")
    if value < least:
        raise InvalidArgumentError(f"{argument} must be at least {least}, not {value!r}")


class SessionManager:
    """One isolated, persistent sandbox per user.

    Example:
        ```python
        manager = SessionManager(default_runtime="python-datascience", default_idle_timeout=1800)
        sandbox = await manager.get_or_create("user-123")
        sandbox.execute("echo hello > /workspace/greeting.txt")
        await manager.cleanup_idle()
        await manager.shutdown()
        ```

    Nothing blocks the event loop: Docker calls run in worker threads, and concurrent calls for
    one user share one creation. Code without an event loop of its own (threads, widgets, magics)
    uses :class:`~pydantic_deep.sessions.sync.SyncSessionManager`, the same methods, blocking.

    Args:
        default_runtime: The runtime of new sessions (a name or a :class:`RuntimeConfig`).
        default_idle_timeout: Seconds without use before :meth:`cleanup_idle` stops a session.
        name: Names this manager's containers and volumes (1-30 lowercase letters, digits and
            ``-``); managers with other names never touch them. Processes that share sessions use
            the same name (and a shared ``registry``).
        max_sessions: Most sessions at once; past it :meth:`get_or_create` raises
            :class:`SessionLimitError`.
        registry: Where sessions are recorded; :class:`InMemoryRegistry` by default, or a
            :class:`RedisRegistry` shared by several processes.
        warm: Keep this many started sandboxes of the default runtime ready (default
            :data:`DEFAULT_WARM`, 0), so a new user's first command does not wait for a container
            start: a new user's session takes one (renamed for them; never another user's) and the
            pool starts a replacement in the background. Under a burst larger than ``warm`` users
            are served first come, first served, each at worst as fast as a cold start of their
            own. ``0`` starts every session cold. The capacity is started when the manager is made
            and stopped by :meth:`shutdown` (and at interpreter exit). Not with a
            ``shared_network``; on a ``cluster`` the default is none (each would hold its
            reservation on a node).
        pool_size: The older name of ``warm``.
        orphans: What to do with this manager's containers left by a process that is gone:
            ``"adopt"`` them (the user gets the same container and files back) or ``"reap"`` them
            (containers removed, files kept).
        pause_after: Seconds without use before :meth:`cleanup_idle` (and its loop) pauses a
            session: frozen, no CPU, memory and interpreter variables kept, resumed by its next
            call in milliseconds. Meant to be shorter than ``default_idle_timeout``, after which
            the session is stopped (files kept). ``None`` never pauses; ``get_or_create`` can set
            it per session.
        cluster: Run the sandboxes on a Docker Swarm (see :class:`SwarmCluster`); ``None`` follows
            ``$PYDANTIC_DEEP_CLUSTER``, ``False`` is this host's engine. A session whose node is
            lost gets a new sandbox on another node on its next :meth:`get_or_create`.
        **sandbox_options: Passed to every :class:`DockerSandbox` (``memory``, ``network``, ...).
            ``disk_size`` (default ``"10g"``) is each user's quota: their work dir, ``/uploads``
            and home on one disk of that size, kept with their files across containers, processes
            and container losses. A session keeps the size its disk was made with. New users'
            disks on this host's engine are made ahead, from :meth:`recover` on (a small stock,
            refilled in the background; see :mod:`pydantic_deep.sandbox.disk_stock`). On a
            ``cluster`` with a ``session_storage`` the disk is made there, the same quota
            wherever the session runs (see :mod:`pydantic_deep.sandbox.cluster_disk`); on one
            without, the default is no disk, and a session's disk is refused (it would stay on
            one node while the session moves to others).
            ``network=["pypi.org", ...]`` with ``secrets=`` gives every session those hosts only,
            through the egress proxy, each with its own decisions log (``SessionInfo.egress``).
            A ``shared_network`` is each user's own: the manager sets ``network_owner`` to the
            user's key, so a user's sandboxes (of managers sharing the name) can meet on it and
            different users' never can.

    Raises:
        InvalidArgumentError: ``network_owner`` among the options (the manager sets it), or a
            ``shared_network`` with ``warm`` capacity (whose sandboxes start before their user is
            known), or a ``disk_size`` on a ``cluster`` without a ``session_storage``.
    """

    def __init__(
        self,
        default_runtime: str | RuntimeConfig = "python-minimal",
        default_idle_timeout: float = 3600,
        *,
        name: str = "default",
        max_sessions: int | None = None,
        registry: SessionRegistry | None = None,
        warm: int | None = None,
        pool_size: int | None = None,
        orphans: Literal["adopt", "reap"] = "adopt",
        pause_after: float | None = None,
        cluster: SwarmCluster | str | bool | None = None,
        **sandbox_options: Any,
    ) -> None:
        _check_options(default_idle_timeout, max_sessions, orphans)
        if "network_owner" in sandbox_options:
            raise InvalidArgumentError("network_owner is set by the session manager, to each user's own key; "
                                       "leave it out")
        self.default_runtime = resolve_runtime(default_runtime)
        self.default_idle_timeout = default_idle_timeout
        self.name = _checked_manager_name(name)
        self.max_sessions = max_sessions
        self.registry = registry or InMemoryRegistry()
        self.orphans = orphans
        self.pause_after = _checked_pause_after(pause_after)
        self._pause_after: dict[str, float | None] = {}  # per session, where get_or_create set it
        self.cluster = resolve_cluster(cluster)
        warm = _warm_capacity(warm, pool_size, sandbox_options, self.cluster)
        # A disk asked for on a cluster is refused now, not at the first user's session.
        resolved_disk_size(sandbox_options.get("disk_size", FROM_RUNTIME), self.default_runtime, self.cluster)
        self.sandbox_options = {**sandbox_options, "cluster": self.cluster or False}
        self._shared = not isinstance(self.registry, InMemoryRegistry)
        self._sandboxes: dict[str, DockerSandbox] = {}
        self._creating: dict[str, concurrent.futures.Future[DockerSandbox]] = {}
        self._guard = threading.Lock()
        self._recovered: concurrent.futures.Future[tuple[int, int]] | None = None
        # Session volumes in the engine when this manager recovered: with a registry of its own, a new
        # user's first session asks the engine for an earlier process's record only when there is one.
        self._engine_sessions: set[str] = set()
        # A warm sandbox handed to a new user is named for them and recorded in the engine in the
        # background (off the user's first call); anything else done to that session waits for it.
        self._settling: dict[str, concurrent.futures.Future[None]] = {}
        self._settler: concurrent.futures.ThreadPoolExecutor | None = None
        self._handed_at = 0.0  # when a warm sandbox was last handed to a new user (time.monotonic())
        self._pool = SandboxPool(self.default_runtime, size=warm, factory=self._pooled_sandbox) if warm else None
        if self._pool is not None:
            self._pool.start()
            weakref.finalize(self, self._pool.close)  # at interpreter exit: the warm sandboxes go
        self._cleanup_stop = threading.Event()
        self._cleanup_thread: threading.Thread | None = None

    # -- naming -------------------------------------------------------------------------------

    def _key(self, user_id: str) -> str:
        if not isinstance(user_id, str):
            raise InvalidArgumentTypeError(f"a user id must be a str, not {type(user_id).__name__}")
        if not user_id:
            raise InvalidArgumentError("a user id must not be empty")
        return naming.user_key(user_id)

    def _container_name(self, key: str) -> str:
        return naming.session_name(self.name, key)

    def _registry_key(self, key: str) -> str:
        return f"{self.name}:{key}"

    def _labels(self) -> dict[str, str]:
        return {label.MANAGER: self.name}

    # -- sessions -----------------------------------------------------------------------------

    @property
    def pool(self) -> SandboxPool | None:
        """The warm capacity that serves new users (``warm > 0``), refilled in the background."""
        return self._pool

    @property
    def session_count(self) -> int:
        """How many sessions have a running container (all processes', with a shared registry).

        Sessions stopped by idle cleanup keep their files but are not counted.
        """
        return sum(1 for record in self.registry.records(f"{self.name}:").values() if record.container)

    async def get_or_create(self, user_id: str, runtime: str | RuntimeConfig | None = None, *,
                            snapshot: Snapshot | str | None = None, pause_after: float | None = None) -> DockerSandbox:
        """The user's sandbox: the same one on every call, with the user's files.

        Creates it on first use (from warm capacity when there is some), re-attaches to it from
        another process, and replaces a container that died or was removed, files included.
        With ``runtime`` different from the session's, the container is replaced by one of that
        runtime, again with the same files. A paused session is handed back as it is: its next
        call resumes it.

        Args:
            user_id: Whose session.
            runtime: The runtime it must run (default: the session's, or the manager's for a new one).
            snapshot: Start the session from this snapshot (or its name): a new session gets its
                files; an existing one is rolled back to them (its container replaced, its files
                replaced by the snapshot's; processes and variables start afresh).
            pause_after: This session's ``pause_after`` (default: the manager's); ``math.inf``
                never pauses it.

        Raises:
            SessionLimitError: a new session would pass ``max_sessions``.
            SnapshotNotFoundError: there is no such snapshot.
        """
        key = self._key(user_id)
        wanted = resolve_runtime(runtime) if runtime is not None else None
        if pause_after is not None:
            self._pause_after[key] = _checked_pause_after(pause_after)
        await self._ensure_recovered()
        snap = await asyncio.to_thread(resolve_snapshot, snapshot) if snapshot is not None else None
        if snap is not None and wanted not in (None, snap.runtime):
            assert wanted is not None
            raise InvalidArgumentError(f"runtime {wanted.name!r} differs from the runtime of snapshot {snap.name!r} "
                                       f"({snap.runtime.name}): a session restored from it runs its runtime")
        known = self._sandboxes.get(key)
        # `alive` may ask the engine (images without the supervisor): never on the event loop.
        if snap is None and known is not None and wanted in (None, known.runtime) \
                and await asyncio.to_thread(getattr, known, "alive"):
            return known
        with self._guard:
            future = self._creating.get(key)
            creator = future is None
            if future is None:
                future = self._creating[key] = concurrent.futures.Future()
        if not creator:
            return await asyncio.wrap_future(future)
        try:
            sandbox = self._open_warm(key, user_id) if snap is None and wanted in (None, self.default_runtime) \
                else None
            if sandbox is None:
                sandbox = await asyncio.to_thread(self._open_session, key, user_id, wanted, snap)
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(sandbox)
            return sandbox
        finally:
            with self._guard:
                del self._creating[key]

    def _open_session(self, key: str, user_id: str, wanted: RuntimeConfig | None,
                      snapshot: Snapshot | None = None) -> DockerSandbox:
        """Find, attach, repair or create the user's sandbox (in a worker thread); from
        ``snapshot``, a new container with the snapshot's files in the session's volumes."""
        self._wait_settled(key)
        with engine_errors(), self.registry.lock(self._registry_key(key)):
            record = self.registry.get(self._registry_key(key)) or self._engine_record(key)
            sandbox = self._sandboxes.get(key)
            if snapshot is not None:
                if sandbox is not None:
                    sandbox.stop()  # its files are replaced below
                    sandbox = None
                wanted = snapshot.runtime
            elif record is not None and record.container:
                if sandbox is None or not sandbox.alive:
                    sandbox = self._attach(record.container)
                if sandbox is not None and wanted is not None and sandbox.runtime != wanted:
                    sandbox.stop()  # the files stay in the volumes
                    sandbox = None
            pooled = None
            if record is not None:
                if sandbox is None:  # stopped, died or removed: a new container, the same files
                    runtime = wanted or RuntimeConfig.model_validate_json(record.runtime)
                    sandbox = self._new_sandbox(key, runtime, record, snapshot)
            else:
                if self.max_sessions is not None and self.session_count >= self.max_sessions:
                    raise SessionLimitError(
                        f"the session manager {self.name!r} is full: {self.max_sessions} sessions at once")
                runtime = wanted or self.default_runtime
                pooled = self._from_pool(runtime) if snapshot is None else None
                sandbox = pooled or self._new_sandbox(key, runtime, None, snapshot)
                record = self._new_record(key, user_id, sandbox, pooled=pooled is not None)
            # A warm sandbox may get its name for the user in the background: the record has it already.
            self.registry.put(self._registry_key(key), replace(
                record, container=record.container if sandbox is pooled else sandbox.name,
                runtime=sandbox.runtime.model_dump_json(), last_used=time.time()))
            self._sandboxes[key] = sandbox
            return sandbox

    def _new_record(self, key: str, user_id: str, sandbox: DockerSandbox, *, pooled: bool) -> SessionRecord:
        """Record a new session in the engine: now, or for a warm sandbox of this process's own
        registry in the background, once it is named for its user."""
        # A Swarm service cannot be renamed: a session on a cluster keeps the pool's name.
        name = self._container_name(key) if pooled and self.cluster is None else sandbox.name
        record = SessionRecord(user_id, name, dict(sandbox.volumes), sandbox.runtime.model_dump_json(),
                               created=time.time(), disk=sandbox.disk_name if sandbox.disk_size else "")
        if name != sandbox.name and not self._shared:
            self._settle_later(key, sandbox, record)
        else:  # another process may look for it at once: named and recorded before anyone can
            self._settle(key, sandbox, record)
        return record

    def _open_warm(self, key: str, user_id: str) -> DockerSandbox | None:
        """A new user's session from a ready warm sandbox, on the caller's event loop: nothing on
        this path waits for the engine or for a thread (under a burst, a hop to a worker thread
        each queued behind the others'). ``None`` when anything else is needed: :meth:`_open_session`."""
        if self._pool is None or self._shared or self.cluster is not None or self.max_sessions is not None \
                or key in self._sandboxes or key in self._engine_sessions or key in self._settling:
            return None
        with self.registry.lock(self._registry_key(key)):  # this process's own: a thread lock, held briefly
            if self.registry.get(self._registry_key(key)) is not None:
                return None
            sandbox = self._pool.acquire_ready()
            if sandbox is None:
                return None
            record = self._new_record(key, user_id, sandbox, pooled=True)
            self.registry.put(self._registry_key(key), replace(record, last_used=time.time()))
            self._sandboxes[key] = sandbox
            return sandbox

    def _sandbox_options(self) -> dict[str, Any]:
        # Sessions outlive the process: a later manager adopts or reaps them, and with a shared
        # registry other processes use them.
        return {"remove_on_exit": False, **self.sandbox_options,
                "labels": {**self.sandbox_options.get("labels", {}), **self._labels()}}

    def _new_sandbox(self, key: str, runtime: RuntimeConfig, record: SessionRecord | None,
                     snapshot: Snapshot | None = None) -> DockerSandbox:
        name = self._container_name(key)
        self._remove_container(name)  # a dead container of this session holds the name
        options = {**self._sandbox_options(), "session_id": key, "network_owner": naming.network_owner(key),
                   "snapshot": snapshot}
        if record is not None and record.disk:  # the user's disk, files and quota (its size is the disk's own)
            options["disk_size"] = options.get("disk_size") or runtime.disk_size or DEFAULT_DISK_SIZE
            if snapshot is not None:  # a new disk, seeded with the snapshot's files
                self._release_disk(record.disk, delete=True)
            return DockerSandbox(runtime, name=name, disk_name=record.disk, **options).start()
        if record is None and resolved_disk_size(options.get("disk_size", FROM_RUNTIME), runtime, self.cluster):
            sandbox = DockerSandbox(runtime, name=name, disk_name=naming.disk_name(name), **options)
            # A snapshot's files go on a disk made for them; a cluster's disks are made in its storage.
            if snapshot is not None or sandbox.disk_size is None or self.cluster is not None:
                return sandbox.start()
            # A new disk made ahead (see sandbox/disk_stock.py): the start runs no disk operation.
            sandbox.disk_name = claim_disk(sandbox.disk_size, *_user_ids(sandbox.user))
            try:
                return sandbox.start()
            except BaseException:
                release_disk(sandbox.disk_name, delete=True)  # nobody's files yet
                raise
        # Volumes (disk_size=None), mounted at this runtime's work dir, which may differ from the last one's.
        work, uploads = _split_volumes(record.volumes) if record else naming.volume_names(name)
        if snapshot is not None:
            for volume in (work, uploads):
                create_volume(volume)  # emptied: the engine fills an empty volume from the snapshot's image
        return DockerSandbox(runtime, name=name, volumes={work: runtime.work_dir, uploads: UPLOADS_DIR},
                             **options).start()

    def _release_disk(self, disk: str, *, delete: bool) -> None:
        """Unmount a session's disk, and with ``delete`` remove its files. On a cluster it stays
        mounted in the session storage (every node's way to it) until its files go."""
        if self.cluster is None:
            release_disk(disk, delete=delete)
        elif delete:
            release_in_storage(self.cluster, disk)

    def _pooled_sandbox(self) -> DockerSandbox:
        name = naming.pool_name(self.name)
        options = self._sandbox_options()
        options["labels"] = {**options["labels"], label.POOL: self.name}
        if resolved_disk_size(options.get("disk_size", FROM_RUNTIME), self.default_runtime, self.cluster):
            return DockerSandbox(self.default_runtime, name=name, disk_name=naming.disk_name(name), **options)
        work, uploads = naming.volume_names(name)
        volumes = {work: self.default_runtime.work_dir, uploads: UPLOADS_DIR}
        return DockerSandbox(self.default_runtime, name=name, volumes=volumes, **options)

    def _from_pool(self, runtime: RuntimeConfig) -> DockerSandbox | None:
        """A warm sandbox for a new session of ``runtime`` (first come, first served); ``None``
        without warm capacity of that runtime (after :meth:`shutdown` too)."""
        if self._pool is None or runtime != self.default_runtime:
            return None
        try:
            return self._pool.acquire()
        except SandboxStateError:  # closed by shutdown(): a session made after it starts cold
            return None

    def _settle(self, key: str, sandbox: DockerSandbox, record: SessionRecord) -> None:
        """Name a new session's container for its user and record the session in the engine."""
        if sandbox.name != record.container:
            sandbox.rename(record.container)
        self._write_session_volume(key, record)

    def _settle_later(self, key: str, sandbox: DockerSandbox, record: SessionRecord) -> None:
        """:meth:`_settle` in the background: the user's first call does not wait for the engine.
        Until it is done, the session is only this process's (its registry is too)."""
        self._handed_at = time.monotonic()
        with self._guard:
            if self._settler is None:
                # One at a time: under a burst, the users' first commands go first (several at once
                # took twice as long for a burst of 100, measured).
                self._settler = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=f"pydantic-deep-settle-{self.name}")
            self._settling[key] = self._settler.submit(self._settle_logged, key, sandbox, record, time.monotonic())

    def _settle_logged(self, key: str, sandbox: DockerSandbox, record: SessionRecord, handed_at: float) -> None:
        # Once a burst of new users is served: renaming and recording meanwhile would take the engine
        # host's CPU from their first commands. What else is done to the session waits for it.
        while (burst := burst_left(self._handed_at, handed_at)) > 0:
            time.sleep(burst)
        try:
            with engine_errors():
                self._settle(key, sandbox, record)
        except Exception:  # the session works; only a later process could not find it
            logger.warning("Naming and recording the session of %r in the engine failed", record.user_id,
                           exc_info=True)

    def _wait_settled(self, key: str, *, cancel: bool = False) -> None:
        """Wait until the session's container is named and recorded (see :meth:`_settle_later`);
        with ``cancel``, unless that has yet to begin: then it never does (the container keeps the
        pool's name, and the sandbox, which stops it, knows it by its id)."""
        settling = self._settling.get(key)
        if settling is not None:
            if not (cancel and settling.cancel()):
                settling.result()
            with self._guard:
                if self._settling.get(key) is settling:
                    del self._settling[key]

    def _engine_record(self, key: str) -> SessionRecord | None:
        """The session's record in the engine: looked up only when it may be there (always with a
        shared registry; with this manager's own, when a session volume was found on recovery)."""
        if not self._shared and key not in self._engine_sessions:
            return None
        return self._record_from_engine(key)

    def _attach(self, container: str) -> DockerSandbox | None:
        try:
            key = container.removeprefix(f"pd-{self.name}-")
            return DockerSandbox.attach(container, network_owner=naming.network_owner(key),
                                        **{k: v for k, v in self._sandbox_options().items() if k not in ("labels",)})
        except SandboxStateError:
            return None

    def _write_session_volume(self, key: str, record: SessionRecord) -> None:
        """Record the session in the engine itself: a never-mounted volume whose labels say whose
        files are where."""
        # The user id as JSON: ASCII, so any string (even one no UTF-8 can hold) comes back unchanged.
        labels = {**self._labels(), label.USER_ID: json.dumps(record.user_id), label.RUNTIME_CONFIG: record.runtime,
                  label.SESSION_CREATED: str(record.created)}
        if record.disk:
            labels[label.DISK] = record.disk
        else:
            labels[label.WORK_VOLUME], labels[label.UPLOADS_VOLUME] = _split_volumes(record.volumes)
        create_volume(self._container_name(key), labels)
        self._engine_sessions.add(key)

    def _record_from_engine(self, key: str) -> SessionRecord | None:
        labels = volume_labels(self._container_name(key))
        if labels is None:
            return None
        runtime = RuntimeConfig.model_validate_json(labels[label.RUNTIME_CONFIG])
        volumes = {} if label.DISK in labels else {labels[label.WORK_VOLUME]: runtime.work_dir,
                                                    labels[label.UPLOADS_VOLUME]: UPLOADS_DIR}
        return SessionRecord(_user_from_label(labels[label.USER_ID]), self._container_name(key), volumes,
                             labels[label.RUNTIME_CONFIG], created=float(labels[label.SESSION_CREATED]),
                             disk=labels.get(label.DISK, ""))

    async def stop(self, user_id: str) -> bool:
        """Stop the user's container now, as idle cleanup would: the files stay for their next session.

        Returns:
            Whether a container was running.
        """
        await self._ensure_recovered()  # the session may be an earlier process's
        return await asyncio.to_thread(self._end_session, self._key(user_id), False)

    async def release(self, user_id: str) -> bool:
        """End the user's session on purpose: container, volumes and files are removed.

        Returns:
            Whether there was a session to end.
        """
        await self._ensure_recovered()  # the session may be an earlier process's, its files kept
        return await asyncio.to_thread(self._end_session, self._key(user_id), True)

    def _end_session(self, key: str, remove_files: bool, *, only_if_idle: float | None = None) -> bool:
        """Stop the session's container; with ``remove_files``, forget the session and its files."""
        # A session ended with its files needs no name or record: nobody will look for it again.
        self._wait_settled(key, cancel=remove_files)
        with engine_errors(), self.registry.lock(self._registry_key(key)):
            sandbox = self._sandboxes.get(key)
            if only_if_idle is not None and (sandbox is None or sandbox.busy or sandbox.idle_seconds < only_if_idle):
                return False  # used again since it was found idle
            record = self.registry.get(self._registry_key(key)) or self._engine_record(key)
            self._sandboxes.pop(key, None)
            if record is None and sandbox is None:
                return False
            was_running = sandbox is not None or bool(record and record.container)
            disk_released = False
            if sandbox is not None:
                # Its stop unmounts the session's disk, and deletes it with the session's files: one
                # disk operation, not a second one below.
                disk_released = record is not None and sandbox.disk_name == record.disk
                sandbox.stop(remove_volumes=remove_files)
            for name in {self._container_name(key), record.container if record else ""} - {""}:
                self._remove_container(name)  # another process's, or dead
            if record is not None and record.disk and not disk_released:  # mounted still, when another process ran it
                self._release_disk(record.disk, delete=remove_files)
            if remove_files:
                for volume in record.volumes if record else {}:
                    if self.cluster is not None:
                        self.cluster.remove_volume(volume)
                    else:
                        remove_volume(volume)
                remove_volume(self._container_name(key))
                self._engine_sessions.discard(key)
                self.registry.delete(self._registry_key(key))
            elif record is not None:  # dormant: the files wait for the user's next session
                self.registry.put(self._registry_key(key), replace(record, container=""))
            return was_running or remove_files

    async def cleanup_idle(self, max_idle: float | None = None) -> int:
        """Stop the sessions unused for ``max_idle`` seconds (default ``default_idle_timeout``),
        then pause those unused for their ``pause_after`` (see :meth:`pause_idle`).

        A session that runs a command or moves a file is never idle. Their files are kept: the
        user's next :meth:`get_or_create` brings them back in a new container.

        Returns:
            How many sessions were stopped.
        """
        limit = self.default_idle_timeout if max_idle is None else max_idle
        idle = [key for key, sandbox in list(self._sandboxes.items())
                if not sandbox.busy and sandbox.idle_seconds >= limit]
        ended = await asyncio.gather(*(asyncio.to_thread(self._end_session, key, False, only_if_idle=limit)
                                       for key in idle))
        paused = await self.pause_idle()
        if paused:
            logger.info("Paused %d idle session(s)", paused)
        return sum(ended)

    async def pause_idle(self) -> int:
        """Pause the running sessions unused for their ``pause_after`` seconds (see the manager's
        ``pause_after``): no CPU, memory kept; each one's next call resumes it.

        Returns:
            How many sessions were paused.
        """
        due = [(sandbox, limit) for key, sandbox in list(self._sandboxes.items())
               if (limit := self._pause_after.get(key, self.pause_after)) is not None
               and sandbox.state is SandboxState.RUNNING and not sandbox.busy and sandbox.idle_seconds >= limit]
        paused = await asyncio.gather(*(asyncio.to_thread(sandbox.pause_if_idle, limit) for sandbox, limit in due))
        return sum(paused)

    def start_cleanup_loop(self, interval: float = 300) -> None:
        """Run :meth:`cleanup_idle` every ``interval`` seconds in a background thread, until
        :meth:`stop_cleanup_loop`. An error in one pass is logged and the loop goes on."""
        if self._cleanup_thread is not None and self._cleanup_thread.is_alive():
            return
        self._cleanup_stop.clear()
        self._cleanup_thread = threading.Thread(target=self._cleanup_loop, args=(interval,),
                                                name=f"pydantic-deep-cleanup-{self.name}", daemon=True)
        self._cleanup_thread.start()

    def _cleanup_loop(self, interval: float) -> None:
        while not self._cleanup_stop.wait(interval):
            try:
                stopped = asyncio.run(self.cleanup_idle())
                if stopped:
                    logger.info("Stopped %d idle session(s)", stopped)
            except Exception:
                logger.exception("Idle cleanup failed; trying again in %.0f s", interval)

    def stop_cleanup_loop(self) -> None:
        """Stop the background cleanup and wait for a pass under way to end."""
        self._cleanup_stop.set()
        if self._cleanup_thread is not None:
            self._cleanup_thread.join()
            self._cleanup_thread = None

    async def shutdown(self, *, keep_files: bool = True) -> int:
        """Stop every session (of every process, with a shared registry) and the warm capacity.

        Args:
            keep_files: Keep the users' volumes for their next session; ``False`` removes them.

        Returns:
            How many sessions were stopped.
        """
        self.stop_cleanup_loop()
        if self._pool is not None:
            await asyncio.to_thread(self._pool.close)
        keys = {k.split(":", 1)[1] for k in self.registry.records(f"{self.name}:")} | set(self._sandboxes)
        if not keep_files:  # sessions of earlier processes too: their files are recorded in the engine
            keys |= {key for name in find_volumes(self._labels()) if (key := naming.session_key(self.name, name))}
        running = sum(1 for key in keys if key in self._sandboxes or self._is_running(key))
        # Threads of their own: ending a session mostly waits on the engine (the container's
        # removal, the disk's release, which sessions ending together share), so more of them at
        # once than the default pool's few (cores + 4) end sooner.
        loop = asyncio.get_running_loop()
        with concurrent.futures.ThreadPoolExecutor(min(_SHUTDOWN_THREADS, max(len(keys), 1)),
                                                   thread_name_prefix="pydantic-deep-shutdown") as executor:
            await asyncio.gather(*(loop.run_in_executor(executor, self._end_session, key, not keep_files)
                                   for key in keys))
        if self._settler is not None:
            self._settler.shutdown()
            self._settler = None
        if self._pool is not None and self.cluster is None:
            await asyncio.to_thread(self._sweep_warm)
        return running

    def _sweep_warm(self) -> None:
        """Remove what a warm start of this process left when it failed half-way (the engine went
        away in the middle, say), once every session has ended: nobody's files."""
        filters = {"label": [f"{label.POOL}={self.name}", f"{label.OWNER_PID}={os.getpid()}"]}
        with engine_errors():
            for container in docker_client().containers.list(all=True, filters=filters):
                if naming.session_key(self.name, container.name) is None:  # not renamed for a user
                    _reap(container, keep_files=False)

    def _is_running(self, key: str) -> bool:
        record = self.registry.get(self._registry_key(key))
        return bool(record and record.container)

    async def list_sessions(self) -> list[SessionInfo]:
        """Every session with its state, runtime, idle time and resource use."""
        return await asyncio.to_thread(self._list_sessions)

    def _list_sessions(self) -> list[SessionInfo]:
        infos = []
        for key, record in sorted(self.registry.records(f"{self.name}:").items()):
            sandbox = self._sandboxes.get(key.split(":", 1)[1])
            usage = sandbox.usage() if sandbox is not None and sandbox.alive else None
            state: Literal["running", "busy", "paused", "stopped"] = (
                "stopped" if usage is None else "busy" if sandbox and sandbox.busy
                else "paused" if sandbox and sandbox.state is SandboxState.PAUSED else "running")
            idle = sandbox.idle_seconds if sandbox is not None else time.time() - record.last_used
            infos.append(SessionInfo(
                user_id=record.user_id, runtime=RuntimeConfig.model_validate_json(record.runtime).name,
                state=state, container=record.container, idle_seconds=idle,
                memory_bytes=usage.memory_bytes if usage else 0, cpu_seconds=usage.cpu_seconds if usage else 0.0,
                disk_bytes=usage.disk_bytes if usage else 0,
                disk_limit_bytes=usage.disk_limit_bytes if usage else None,
                node=sandbox.node if usage is not None and sandbox is not None else None,
                exposed=tuple(sandbox.exposed) if sandbox is not None else (),
                egress=tuple(sandbox.egress_log(20)) if usage is not None and sandbox is not None else ()))
        return infos

    def _remove_container(self, name: str) -> None:
        """Remove a session's container (its service, on a cluster); one that is gone is fine."""
        if self.cluster is not None:
            self.cluster.remove(name)
        else:
            remove_container(docker_client(), name)

    # -- after a crash ------------------------------------------------------------------------

    async def _ensure_recovered(self) -> None:
        with self._guard:
            future = self._recovered
            if future is None:
                future = self._recovered = concurrent.futures.Future()
                first = True
            else:
                first = False
        if first:
            try:
                future.set_result(await asyncio.to_thread(self._recover))
            except BaseException as exc:
                future.set_exception(exc)
        if future.done():  # as on every call but the first few: no hop through the event loop
            future.result()
            return
        await asyncio.wrap_future(future)

    async def recover(self) -> tuple[int, int]:
        """Adopt or reap the containers of this manager left by processes that are gone.

        Runs by itself before the first :meth:`get_or_create`, :meth:`stop` or :meth:`release`;
        call it to do so earlier.

        Returns:
            ``(adopted, reaped)``.
        """
        await self._ensure_recovered()
        assert self._recovered is not None
        return self._recovered.result()

    def _recover(self) -> tuple[int, int]:
        client = docker_client()
        adopted = reaped = 0
        with engine_errors():
            self._engine_sessions |= {key for name in find_volumes(self._labels())
                                      if (key := naming.session_key(self.name, name))}
            containers = client.containers.list(all=True, filters={"label": f"{label.MANAGER}={self.name}"})
            for container in containers:
                if not self._orphaned(container):
                    continue
                key = naming.session_key(self.name, container.name)
                record = self._record_from_engine(key) if key is not None else None
                if key is not None and record is not None and self.orphans == "adopt" \
                        and container.status in ("running", "paused"):
                    sandbox = self._attach(container.name)
                    if sandbox is not None:
                        self.registry.put(self._registry_key(key), replace(record, last_used=time.time()))
                        self._sandboxes[key] = sandbox
                        adopted += 1
                        continue
                # A warm pool's sandbox nobody got, or a session to reap: the container goes;
                # files go only when no session names them.
                _reap(container, keep_files=record is not None)
                reaped += 1
            if self.cluster is None and (size := resolved_disk_size(self.sandbox_options.get("disk_size", FROM_RUNTIME),
                                                                    self.default_runtime, self.cluster)):
                with contextlib.suppress(ValueError):  # a bad user: each session's start says so
                    # New users' disks made ahead, from now on (in the background).
                    prepare_disk(disk_size_bytes(size) or 0,
                                 *_user_ids(self.sandbox_options.get("user", "1000:1000")), session=True)
                try:
                    reaped += self._reap_warm_disks()
                except Exception:  # best effort: the sessions come first
                    logger.warning("Looking for the disks of warm sandboxes of a process that is gone failed",
                                   exc_info=True)
        if adopted or reaped:
            logger.info("Session manager %r: adopted %d and reaped %d container(s) of a process that is gone",
                        self.name, adopted, reaped)
        return adopted, reaped

    def _reap_warm_disks(self) -> int:
        """Delete the disks of warm sandboxes that a process that is gone was starting (killed
        before their container was made, so the containers' reaping above did not find them)."""
        prefix = naming.pool_name(self.name).rsplit("-", 1)[0] + "-"
        in_use = {c.labels.get(label.DISK) for c in docker_client().containers.list(
            all=True, filters={"label": f"{label.MANAGER}={self.name}"})}
        reaped = 0
        for disk in list_disks():
            host, _, pid = disk.owner.partition(" ")
            if disk.name.startswith(prefix) and disk.name not in in_use \
                    and owner_gone({label.OWNER_HOST: host, label.OWNER_PID: pid}):
                release_disk(disk.name, delete=True)
                reaped += 1
        return reaped

    def _orphaned(self, container: docker.models.containers.Container) -> bool:
        """Left by a process on this host that is gone (with a shared registry, nothing is)."""
        return not self._shared and owner_gone(container.labels)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Shut the sessions down (files kept), as :class:`SyncSessionManager`'s ``with`` does."""
        await self.shutdown()

    def __repr__(self) -> str:
        return f"<SessionManager {self.name!r} runtime={self.default_runtime.name!r} sessions={self.session_count}>"

    def _repr_html_(self) -> str:
        return field_table("SessionManager", {
            "Name": self.name, "Default runtime": self.default_runtime.name,
            "Idle timeout": f"{self.default_idle_timeout:g} s", "Running sessions": self.session_count,
        })


def _reap(container: docker.models.containers.Container, *, keep_files: bool) -> None:
    """Remove a container of the manager, and unless ``keep_files`` its disk and volumes."""
    volumes = [m["Name"] for m in container.attrs["Mounts"] if m["Type"] == "volume"]
    disk = container.labels.get(label.DISK)
    container.remove(force=True)
    if disk:  # a pool's disk goes; a session's is unmounted, its files kept
        release_disk(disk, delete=not keep_files)
    if not keep_files:
        for volume in volumes:
            remove_volume(volume)


def _user_from_label(text: str) -> str:
    """The user id a session volume's label holds: JSON, or plain text in volumes made before 0.2."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, str) else text


def _checked_pause_after(seconds: float | None) -> float | None:
    """``seconds`` if it can be a ``pause_after`` (a positive number, ``math.inf`` or ``None``)."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or math.isnan(seconds) or seconds < 0:
        raise InvalidArgumentError(f"pause_after must be a number of seconds (0 or more, math.inf for never) "
                                   f"or None, not {seconds!r}")
    return None if math.isinf(seconds) else float(seconds)


def _user_ids(user: str) -> tuple[int, int]:
    """(uid, gid) of a sandbox's ``user`` (``"uid:gid"`` or ``"uid"``, checked by the sandbox)."""
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def _split_volumes(volumes: Mapping[str, str]) -> tuple[str, str]:
    """(work volume, uploads volume) of a session's two volumes."""
    uploads = next(name for name, path in volumes.items() if path == UPLOADS_DIR)
    work = next(name for name in volumes if name != uploads)
    return work, uploads
