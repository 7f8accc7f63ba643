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
containers and keep files.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import docker

from .._html import field_table
from ..config import DEFAULT_DISK_SIZE, RuntimeConfig
from ..engine.client import docker_client, engine_errors
from ..engine.containers import owner_gone, remove_container
from ..engine.volumes import create_volume, find_volumes, remove_volume, volume_labels
from ..errors import InvalidArgumentError, SandboxError, SandboxStateError, shown
from ..paths import UPLOADS_DIR
from ..runtimes import resolve_runtime
from ..sandbox.disk import LABEL_DISK, release_disk
from ..sandbox.docker import DockerSandbox
from ..sandbox.pool import SandboxPool
from .registry import InMemoryRegistry, SessionRecord, SessionRegistry

__all__ = ["SessionInfo", "SessionLimitError", "SessionManager"]

logger = logging.getLogger("pydantic_deep.sessions")

_LABEL_MANAGER = "pydantic-deep.manager"
_LABEL_USER = "pydantic-deep.user-id"
_LABEL_WORK = "pydantic-deep.work-volume"
_LABEL_UPLOADS = "pydantic-deep.uploads-volume"
_LABEL_RUNTIME = "pydantic-deep.runtime-config"
_LABEL_CREATED = "pydantic-deep.session-created"
_LABEL_POOL = "pydantic-deep.pool"
_LABEL_DISK = LABEL_DISK  # on the session volume: the disk holding the user's files


class SessionLimitError(SandboxError):
    """The manager already holds ``max_sessions`` sessions."""


@dataclass(frozen=True)
class SessionInfo:
    """One session, as :meth:`SessionManager.list_sessions` reports it."""

    user_id: str
    runtime: str
    state: Literal["running", "busy", "stopped"]
    container: str
    idle_seconds: float
    memory_bytes: int
    cpu_seconds: float
    disk_bytes: int = 0
    disk_limit_bytes: int | None = None


_MANAGER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,28}[a-z0-9])?")


def _checked_manager_name(name: str) -> str:
    # Used as is in container and volume names: a name that had to be changed to fit ("My App"
    # into "my-app") could be another manager's, whose sessions this one would then take over.
    if not isinstance(name, str):
        raise TypeError(f"a manager name must be a str, not {type(name).__name__}")
    if not _MANAGER_NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"manager name {shown(name)} must be 1-30 lowercase letters, digits and '-', starting and ending "
            "with a letter or digit (e.g. 'my-app')")
    return name


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
    one user share one creation.

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
        pool_size: Keep this many started sandboxes of the default runtime ready, so a new user's
            first command does not wait for a container start.
        orphans: What to do with this manager's containers left by a process that is gone:
            ``"adopt"`` them (the user gets the same container and files back) or ``"reap"`` them
            (containers removed, files kept).
        **sandbox_options: Passed to every :class:`DockerSandbox` (``memory``, ``network``, ...).
            ``disk_size`` (default ``"10g"``) is each user's quota: their work dir, ``/uploads``
            and home on one disk of that size, kept with their files across containers, processes
            and container losses. A session keeps the size its disk was made with.
    """

    def __init__(
        self,
        default_runtime: str | RuntimeConfig = "python-minimal",
        default_idle_timeout: float = 3600,
        *,
        name: str = "default",
        max_sessions: int | None = None,
        registry: SessionRegistry | None = None,
        pool_size: int = 0,
        orphans: Literal["adopt", "reap"] = "adopt",
        **sandbox_options: Any,
    ) -> None:
        self.default_runtime = resolve_runtime(default_runtime)
        self.default_idle_timeout = default_idle_timeout
        self.name = _checked_manager_name(name)
        self.max_sessions = max_sessions
        self.registry = registry or InMemoryRegistry()
        self.orphans = orphans
        self.sandbox_options = sandbox_options
        self._shared = not isinstance(self.registry, InMemoryRegistry)
        self._sandboxes: dict[str, DockerSandbox] = {}
        self._creating: dict[str, concurrent.futures.Future[DockerSandbox]] = {}
        self._guard = threading.Lock()
        self._recovered: concurrent.futures.Future[tuple[int, int]] | None = None
        self._pool = SandboxPool(self.default_runtime, size=pool_size, factory=self._pooled_sandbox) \
            if pool_size else None
        self._cleanup_stop = threading.Event()
        self._cleanup_thread: threading.Thread | None = None

    # -- naming -------------------------------------------------------------------------------

    def _key(self, user_id: str) -> str:
        if not isinstance(user_id, str):
            raise TypeError(f"a user id must be a str, not {type(user_id).__name__}")
        if not user_id:
            raise InvalidArgumentError("a user id must not be empty")
        return hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def _container_name(self, key: str) -> str:
        return f"pd-{self.name}-{key}"

    def _registry_key(self, key: str) -> str:
        return f"{self.name}:{key}"

    def _labels(self) -> dict[str, str]:
        return {_LABEL_MANAGER: self.name}

    # -- sessions -----------------------------------------------------------------------------

    @property
    def pool(self) -> SandboxPool | None:
        """The warm pool that serves new users (``pool_size > 0``), started on first use."""
        return self._pool

    @property
    def session_count(self) -> int:
        """How many sessions have a running container (all processes', with a shared registry).

        Sessions stopped by idle cleanup keep their files but are not counted.
        """
        return sum(1 for record in self.registry.records(f"{self.name}:").values() if record.container)

    async def get_or_create(self, user_id: str, runtime: str | RuntimeConfig | None = None) -> DockerSandbox:
        """The user's sandbox: the same one on every call, with the user's files.

        Creates it on first use (from the warm pool when there is one), re-attaches to it from
        another process, and replaces a container that died or was removed, files included.
        With ``runtime`` different from the session's, the container is replaced by one of that
        runtime, again with the same files.

        Raises:
            SessionLimitError: a new session would pass ``max_sessions``.
        """
        key = self._key(user_id)
        wanted = resolve_runtime(runtime) if runtime is not None else None
        await self._ensure_recovered()
        known = self._sandboxes.get(key)
        # `alive` may ask the engine (images without the supervisor): never on the event loop.
        if known is not None and wanted in (None, known.runtime) and await asyncio.to_thread(getattr, known, "alive"):
            return known
        with self._guard:
            future = self._creating.get(key)
            creator = future is None
            if future is None:
                future = self._creating[key] = concurrent.futures.Future()
        if not creator:
            return await asyncio.wrap_future(future)
        try:
            sandbox = await asyncio.to_thread(self._open_session, key, user_id, wanted)
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(sandbox)
            return sandbox
        finally:
            with self._guard:
                del self._creating[key]

    def _open_session(self, key: str, user_id: str, wanted: RuntimeConfig | None) -> DockerSandbox:
        """Find, attach, repair or create the user's sandbox (in a worker thread)."""
        with engine_errors(), self.registry.lock(self._registry_key(key)):
            record = self.registry.get(self._registry_key(key)) or self._record_from_engine(key)
            sandbox = self._sandboxes.get(key)
            if record is not None and record.container:
                if sandbox is None or not sandbox.alive:
                    sandbox = self._attach(record.container)
                if sandbox is not None and wanted is not None and sandbox.runtime != wanted:
                    sandbox.stop()  # the files stay in the volumes
                    sandbox = None
            if record is not None:
                if sandbox is None:  # stopped, died or removed: a new container, the same files
                    runtime = wanted or RuntimeConfig.model_validate_json(record.runtime)
                    sandbox = self._new_sandbox(key, runtime, record)
            else:
                if self.max_sessions is not None and self.session_count >= self.max_sessions:
                    raise SessionLimitError(
                        f"the session manager {self.name!r} is full: {self.max_sessions} sessions at once")
                runtime = wanted or self.default_runtime
                sandbox = self._from_pool(key, runtime) or self._new_sandbox(key, runtime, None)
                record = SessionRecord(user_id, sandbox.name, sandbox.volumes, runtime.model_dump_json(),
                                       created=time.time(), disk=sandbox.disk_name if sandbox.disk_size else "")
                self._write_session_volume(key, record)
            record.container, record.runtime = sandbox.name, sandbox.runtime.model_dump_json()
            record.last_used = time.time()
            self.registry.put(self._registry_key(key), record)
            self._sandboxes[key] = sandbox
            return sandbox

    def _sandbox_options(self) -> dict[str, Any]:
        # Sessions outlive the process: a later manager adopts or reaps them, and with a shared
        # registry other processes use them.
        return {"remove_on_exit": False, **self.sandbox_options,
                "labels": {**self.sandbox_options.get("labels", {}), **self._labels()}}

    def _new_sandbox(self, key: str, runtime: RuntimeConfig, record: SessionRecord | None) -> DockerSandbox:
        name = self._container_name(key)
        remove_container(docker_client(), name)  # a dead container of this session holds the name
        options = self._sandbox_options()
        if record is not None and record.disk:  # the user's disk, files and quota (its size is the disk's own)
            options["disk_size"] = options.get("disk_size") or runtime.disk_size or DEFAULT_DISK_SIZE
            return DockerSandbox(runtime, name=name, disk_name=record.disk, session_id=key, **options).start()
        if record is None and options.get("disk_size", runtime.disk_size):
            return DockerSandbox(runtime, name=name, disk_name=f"{name}-disk", session_id=key, **options).start()
        # Volumes (disk_size=None), mounted at this runtime's work dir, which may differ from the last one's.
        work, uploads = _split_volumes(record.volumes) if record else (f"{name}-work", f"{name}-uploads")
        return DockerSandbox(runtime, name=name, volumes={work: runtime.work_dir, uploads: UPLOADS_DIR},
                             session_id=key, **options).start()

    def _pooled_sandbox(self) -> DockerSandbox:
        name = f"pd-{self.name}-pool-{uuid.uuid4().hex[:12]}"
        options = self._sandbox_options()
        options["labels"] = {**options["labels"], _LABEL_POOL: self.name}
        if options.get("disk_size", self.default_runtime.disk_size):
            return DockerSandbox(self.default_runtime, name=name, disk_name=f"{name}-disk", **options)
        volumes = {f"{name}-work": self.default_runtime.work_dir, f"{name}-uploads": UPLOADS_DIR}
        return DockerSandbox(self.default_runtime, name=name, volumes=volumes, **options)

    def _from_pool(self, key: str, runtime: RuntimeConfig) -> DockerSandbox | None:
        if self._pool is None or runtime != self.default_runtime:
            return None
        sandbox = self._pool.acquire()
        sandbox.rename(self._container_name(key))
        return sandbox

    def _attach(self, container: str) -> DockerSandbox | None:
        try:
            return DockerSandbox.attach(container, **{k: v for k, v in self._sandbox_options().items()
                                                      if k not in ("labels",)})
        except SandboxStateError:
            return None

    def _write_session_volume(self, key: str, record: SessionRecord) -> None:
        """Record the session in the engine itself: a never-mounted volume whose labels say whose
        files are where."""
        # The user id as JSON: ASCII, so any string (even one no UTF-8 can hold) comes back unchanged.
        labels = {**self._labels(), _LABEL_USER: json.dumps(record.user_id), _LABEL_RUNTIME: record.runtime,
                  _LABEL_CREATED: str(record.created)}
        if record.disk:
            labels[_LABEL_DISK] = record.disk
        else:
            labels[_LABEL_WORK], labels[_LABEL_UPLOADS] = _split_volumes(record.volumes)
        create_volume(self._container_name(key), labels)

    def _record_from_engine(self, key: str) -> SessionRecord | None:
        labels = volume_labels(self._container_name(key))
        if labels is None:
            return None
        runtime = RuntimeConfig.model_validate_json(labels[_LABEL_RUNTIME])
        volumes = {} if _LABEL_DISK in labels else {labels[_LABEL_WORK]: runtime.work_dir,
                                                    labels[_LABEL_UPLOADS]: UPLOADS_DIR}
        return SessionRecord(_user_from_label(labels[_LABEL_USER]), self._container_name(key), volumes,
                             labels[_LABEL_RUNTIME], created=float(labels[_LABEL_CREATED]),
                             disk=labels.get(_LABEL_DISK, ""))

    async def stop(self, user_id: str) -> bool:
        """Stop the user's container now, as idle cleanup would: the files stay for their next session.

        Returns:
            Whether a container was running.
        """
        return await asyncio.to_thread(self._end_session, self._key(user_id), False)

    async def release(self, user_id: str) -> bool:
        """End the user's session on purpose: container, volumes and files are removed.

        Returns:
            Whether there was a session to end.
        """
        return await asyncio.to_thread(self._end_session, self._key(user_id), True)

    def _end_session(self, key: str, remove_files: bool, *, only_if_idle: float | None = None) -> bool:
        """Stop the session's container; with ``remove_files``, forget the session and its files."""
        with engine_errors(), self.registry.lock(self._registry_key(key)):
            sandbox = self._sandboxes.get(key)
            if only_if_idle is not None and (sandbox is None or sandbox.busy or sandbox.idle_seconds < only_if_idle):
                return False  # used again since it was found idle
            record = self.registry.get(self._registry_key(key)) or self._record_from_engine(key)
            self._sandboxes.pop(key, None)
            if record is None and sandbox is None:
                return False
            was_running = sandbox is not None or bool(record and record.container)
            if sandbox is not None:
                sandbox.stop()
            remove_container(docker_client(), self._container_name(key))  # another process's, or dead
            if record is not None and record.disk:  # mounted still, when another process ran it
                release_disk(record.disk, delete=remove_files)
            if remove_files:
                for volume in [*(record.volumes if record else {}), self._container_name(key)]:
                    remove_volume(volume)
                self.registry.delete(self._registry_key(key))
            elif record is not None:
                record.container = ""  # dormant: the files wait for the user's next session
                self.registry.put(self._registry_key(key), record)
            return was_running or remove_files

    async def cleanup_idle(self, max_idle: float | None = None) -> int:
        """Stop the sessions unused for ``max_idle`` seconds (default ``default_idle_timeout``).

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
        return sum(ended)

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
        """Stop every session (of every process, with a shared registry) and the warm pool.

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
            keys |= {name.removeprefix(f"pd-{self.name}-") for name in find_volumes(self._labels())
                     if self._container_name(name.removeprefix(f"pd-{self.name}-")) == name}
        running = sum(1 for key in keys if key in self._sandboxes or self._is_running(key))
        await asyncio.gather(*(asyncio.to_thread(self._end_session, key, not keep_files) for key in keys))
        return running

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
            state: Literal["running", "busy", "stopped"] = (
                "stopped" if usage is None else "busy" if sandbox and sandbox.busy else "running")
            idle = sandbox.idle_seconds if sandbox is not None else time.time() - record.last_used
            infos.append(SessionInfo(
                user_id=record.user_id, runtime=RuntimeConfig.model_validate_json(record.runtime).name,
                state=state, container=record.container, idle_seconds=idle,
                memory_bytes=usage.memory_bytes if usage else 0, cpu_seconds=usage.cpu_seconds if usage else 0.0,
                disk_bytes=usage.disk_bytes if usage else 0,
                disk_limit_bytes=usage.disk_limit_bytes if usage else None))
        return infos

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
        await asyncio.wrap_future(future)

    async def recover(self) -> tuple[int, int]:
        """Adopt or reap the containers of this manager left by processes that are gone.

        Runs by itself before the first :meth:`get_or_create`; call it to do so earlier.

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
            containers = client.containers.list(all=True, filters={"label": f"{_LABEL_MANAGER}={self.name}"})
            for container in containers:
                if not self._orphaned(container):
                    continue
                key = container.name.removeprefix(f"pd-{self.name}-")
                record = self._record_from_engine(key) if container.name == self._container_name(key) else None
                if record is not None and self.orphans == "adopt" and container.status == "running":
                    sandbox = self._attach(container.name)
                    if sandbox is not None:
                        record.last_used = time.time()
                        self.registry.put(self._registry_key(key), record)
                        self._sandboxes[key] = sandbox
                        adopted += 1
                        continue
                # A warm pool's sandbox nobody got, or a session to reap: the container goes;
                # files go only when no session names them.
                volumes = [m["Name"] for m in container.attrs["Mounts"] if m["Type"] == "volume"]
                disk = container.labels.get(LABEL_DISK)
                container.remove(force=True)
                if disk:  # a pool's disk goes; a session's is unmounted, its files kept
                    release_disk(disk, delete=record is None)
                if record is None:
                    for volume in volumes:
                        remove_volume(volume)
                reaped += 1
        if adopted or reaped:
            logger.info("Session manager %r: adopted %d and reaped %d container(s) of a process that is gone",
                        self.name, adopted, reaped)
        return adopted, reaped

    def _orphaned(self, container: docker.models.containers.Container) -> bool:
        """Left by a process on this host that is gone (with a shared registry, nothing is)."""
        return not self._shared and owner_gone(container.labels)

    def __repr__(self) -> str:
        return f"<SessionManager {self.name!r} runtime={self.default_runtime.name!r} sessions={self.session_count}>"

    def _repr_html_(self) -> str:
        return field_table("SessionManager", {
            "Name": self.name, "Default runtime": self.default_runtime.name,
            "Idle timeout": f"{self.default_idle_timeout:g} s", "Running sessions": self.session_count,
        })


def _user_from_label(text: str) -> str:
    """The user id a session volume's label holds: JSON, or plain text in volumes made before 0.2."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, str) else text


def _split_volumes(volumes: Mapping[str, str]) -> tuple[str, str]:
    """(work volume, uploads volume) of a session's two volumes."""
    uploads = next(name for name, path in volumes.items() if path == UPLOADS_DIR)
    work = next(name for name in volumes if name != uploads)
    return work, uploads
