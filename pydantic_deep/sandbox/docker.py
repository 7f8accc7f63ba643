"""DockerSandbox: one container running a runtime, with commands and files.

Safe defaults, each overridable by an argument of the same name:

- the code runs as an unprivileged user (``user="1000:1000"``), never root;
- every Linux capability is dropped (``drop_capabilities``) and ``no-new-privileges`` is set;
- a process limit (``pids_limit=512``), memory (``memory="2g"``) and CPU (``cpus=1.0``) limits;
- files of at most ``max_file_size="1g"``, and ``/tmp`` in memory, ``tmp_size="512m"``;
- everything else it can write on one filesystem of ``disk_size="10g"`` (work dir, ``/uploads``,
  home), its root filesystem read-only (see :mod:`pydantic_deep.sandbox.disk`);
- no container log, so output written to it cannot fill the host's disk;
- the file API acts as the sandbox user and follows no symlink out of the work dir and ``/uploads``;
- an init process reaps orphaned children;
- no network unless the runtime or the sandbox asks for it (``network=True``), and then no cloud
  metadata address (``block_metadata``);
- labels on every container (``pydantic-deep.managed``, ``.session``, ``.runtime``, ``.created``,
  ``.owner-pid``), so ``pydantic-deep prune`` can find anything a killed process left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import os
import posixpath
import shlex
import socket
import tarfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Concatenate, ParamSpec, Self, TypeVar

import docker
from docker.errors import APIError, NotFound
from docker.utils import parse_bytes
from requests.exceptions import ChunkedEncodingError

from .._html import field_table
from ..arguments import file_content
from ..config import DEFAULT_DISK_SIZE, RuntimeConfig, disk_size_bytes
from ..engine.client import docker_client, engine_errors
from ..engine.containers import container_running, container_stops_within, remove_container
from ..engine.volumes import ensure_volume, remove_volume
from ..errors import (
    ContainerGoneError,
    SandboxError,
    SandboxStateError,
    TransferInterruptedError,
)
from ..execution.channel import (
    Channel,
    ChannelClosedError,
    DockerExecChannel,
    ExecProcess,
    OutputCallback,
    Process,
    SupervisorChannel,
)
from ..execution.transfer import FileOp, check_outcome, file_command, read_from, write_into
from ..images.builder import Progress
from ..images.certs import CONTAINER_CA_PATH, CaBundle, resolve_ca_bundle
from ..images.prepare import HOME_DIR, SUPERVISOR_PATH, TOOLS_DIR, prepare_image
from ..images.runtime import ensure_runtime_image
from ..paths import UPLOADS_DIR, resolve_sandbox_path
from ..results import ExecuteResult, FileInfo, ResourceUsage
from ..runtimes import resolve_runtime
from .base import SandboxBase, SandboxState
from .disk import LABEL_DISK, LABEL_DISK_KEEP, LABEL_DISK_SIZE, open_disk, prepare_disk, release_disk, take_disk
from .metadata import METADATA_ADDRESS, block_metadata

__all__ = ["DEFAULT_DISK_SIZE", "FROM_RUNTIME", "DockerSandbox", "SandboxBase", "SandboxState"]

logger = logging.getLogger("pydantic_deep.sandbox")

_P = ParamSpec("_P")
_R = TypeVar("_R")


_exec_fallback_logged: set[str | None] = set()


class _FromRuntime:
    """The default of ``DockerSandbox(disk_size=)``: the runtime's own ``disk_size``."""

    def __repr__(self) -> str:
        return "FROM_RUNTIME"


FROM_RUNTIME = _FromRuntime()

# What a call fails with when its container stopped or was removed under it (or the engine
# refused it): each is looked into and turned into one clear error, see DockerSandbox._explain.
_CONTAINER_FAILURES = (APIError, ChannelClosedError, ChunkedEncodingError, tarfile.ReadError)


def _in_use(method: Callable[Concatenate[DockerSandbox, _P], _R]) -> Callable[Concatenate[DockerSandbox, _P], _R]:
    """Mark the sandbox busy while ``method`` runs (a busy sandbox is never idle), and let only
    clear errors out of it (see :meth:`DockerSandbox._clear_errors`)."""

    @functools.wraps(method)
    def tracked(self: DockerSandbox, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._activity(), self._clear_errors(method.__name__):
            return method(self, *args, **kwargs)

    return tracked


def _size_in_bytes(argument: str, size: str | None) -> int | None:
    """``size`` in Docker's notation (``"512m"``, ``"1g"``) as bytes; ``None`` stays ``None``."""
    if size is None:
        return None
    try:
        value = parse_bytes(size)
    except docker.errors.DockerException:
        raise ValueError(f"{argument} must be a size like '512m' or '1g', not {size!r}") from None
    if value <= 0:
        raise ValueError(f"{argument} must be positive, not {size!r}")
    return value


def _parse_user(user: str) -> tuple[int, int]:
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise ValueError(f"user must be numeric 'uid' or 'uid:gid', not {user!r}")
    return int(uid), int(gid or uid)


class DockerSandbox(SandboxBase):
    """An isolated Docker container running a runtime, for agents and notebooks.

    The container starts on :meth:`start`, or lazily on first use; :meth:`stop` removes it. Every
    blocking method has an async twin prefixed with ``a`` (``aexecute``, ``aread_file``, ...), and
    the sandbox is a context manager in both worlds.

    Example:
        ```python
        with DockerSandbox(runtime="python-datascience") as sandbox:
            sandbox.write_file("/uploads/data.csv", b"x,y\\n1,2\\n")
            print(sandbox.execute("python -c 'import pandas; print(pandas.__version__)'").output)
        ```

    Args:
        runtime: A runtime name (see :data:`BUILTIN_RUNTIMES`) or a :class:`RuntimeConfig`.
        network: Give the container network access; ``None`` follows ``runtime.network``.
        user: The numeric ``uid:gid`` that commands run as.
        memory: Memory limit in Docker's notation (``"2g"``), or ``None`` for none.
        cpus: CPU limit in cores, or ``None`` for none.
        pids_limit: Most processes at once, or ``None`` for none.
        max_file_size: Largest file a process may write, in Docker's notation (``"1g"``), or ``None``
            for no limit. A write past it fails with ``File too large`` (``EFBIG``); programs that do
            not ignore ``SIGXFSZ`` are killed, exit code 153 (``File size limit exceeded``). The file
            API's uploads are held to it too. It limits each file, not how many there are.
        tmp_size: ``/tmp`` is a memory-backed filesystem of this size (``No space left on device``
            past it), counted in ``memory``; ``None`` leaves ``/tmp`` on the container's disk.
        disk_size: Most the sandbox may write to the host's disk, all paths together (Docker's
            notation, at least ``"16m"``; by default the runtime's, ``"10g"`` unless it says
            otherwise): the work dir, ``/uploads`` and the home directory share
            one filesystem of this size, and the rest of the container's filesystem is read-only.
            A write past it fails with ``No space left on device`` (``ENOSPC``; the file API raises
            :class:`DiskFullError`), and hurts nothing else. The file is sparse: the host spends only
            what is written. ``None`` caps nothing: a writable root filesystem and home, as plain
            Docker gives (see :mod:`pydantic_deep.sandbox.disk` for how, and what the engine needs).
            Named ``volumes`` you mount are not on it.
        disk_name: Keep the disk under this name when the container goes (a session's files):
            ``stop()`` unmounts it, ``stop(remove_volumes=True)`` deletes it, and a new sandbox
            with the same ``disk_name`` gets its files back. By default the disk goes with the
            container.
        drop_capabilities: Drop every Linux capability.
        no_new_privileges: Forbid gaining privileges through setuid binaries.
        block_metadata: With network access, make the cloud metadata address (169.254.169.254)
            unreachable, through a route the sandbox cannot change (see :mod:`pydantic_deep.metadata`).
        command_timeout: Seconds a command may run when :meth:`execute` gets no ``timeout``.
        max_output: Bytes of output kept per command; the rest is discarded and flagged.
        ca_bundle: Extra CA certificates for HTTPS in builds and the container (see
            :mod:`pydantic_deep.certs`); ``None`` picks up the host's ``SSL_CERT_FILE`` and the like,
            ``False`` hands in none.
        progress: Called with each line of an image build's log, when a build is needed.
        session_id: Recorded in the container's labels; a random one by default.
        labels: Extra container labels.
        name: The container's name; a random one by default.
        volumes: Named volumes to mount, ``{volume name: path in the container}``. They are created
            (labelled ``pydantic-deep.managed``) when missing, start with the image's content at that
            path, and outlive the container: ``stop()`` keeps them unless ``remove_volumes=True``.
        remove_on_exit: Tie the container to this process: it is removed when this object is
            garbage-collected, when the interpreter exits, and when the process is killed (even by
            SIGKILL, through a stream the container's main process waits on). ``False`` leaves
            it running until ``stop()`` (sessions that a later process adopts).
    """

    def __init__(
        self,
        runtime: str | RuntimeConfig = "python-minimal",
        *,
        network: bool | None = None,
        user: str = "1000:1000",
        memory: str | None = "2g",
        cpus: float | None = 1.0,
        pids_limit: int | None = 512,
        max_file_size: str | None = "1g",
        tmp_size: str | None = "512m",
        disk_size: str | None | _FromRuntime = FROM_RUNTIME,
        disk_name: str | None = None,
        drop_capabilities: bool = True,
        no_new_privileges: bool = True,
        block_metadata: bool = True,
        command_timeout: float = 600,
        max_output: int = 1_000_000,
        ca_bundle: str | os.PathLike[str] | bool | None = None,
        progress: Progress | None = None,
        session_id: str | None = None,
        labels: dict[str, str] | None = None,
        name: str | None = None,
        volumes: Mapping[str, str] | None = None,
        remove_on_exit: bool = True,
    ) -> None:
        self.runtime: RuntimeConfig = resolve_runtime(runtime)
        self.network = self.runtime.network if network is None else network
        self.user = user
        self._uid, self._gid = _parse_user(user)
        self.memory, self.cpus, self.pids_limit = memory, cpus, pids_limit
        self.max_file_size = _size_in_bytes("max_file_size", max_file_size)
        self.tmp_size = _size_in_bytes("tmp_size", tmp_size)
        self.disk_size = disk_size_bytes(self.runtime.disk_size if isinstance(disk_size, _FromRuntime) else disk_size)
        self.drop_capabilities, self.no_new_privileges = drop_capabilities, no_new_privileges
        self.block_metadata = block_metadata
        self._set_command_limits(command_timeout, max_output)
        self.ca_bundle: CaBundle | None = resolve_ca_bundle(ca_bundle)
        self.progress = progress
        self.session_id = session_id or uuid.uuid4().hex[:12]
        self.labels = dict(labels or {})
        self.name = name or f"pydantic-deep-{self.runtime.name.lower()}-{uuid.uuid4().hex[:8]}"
        # A disk of its own is named on start; a kept one has its name (which a pooled sandbox
        # renamed for its user keeps).
        self.disk_name = disk_name or ""
        self._keep_disk = disk_name is not None
        self._disk_dir: str | None = None  # where the disk is mounted on the engine's host
        self.volumes = dict(volumes or {})
        self.remove_on_exit = remove_on_exit
        self.image: str | None = None
        self.container_id: str | None = None
        self.state = SandboxState.NEW
        self._lock = threading.Lock()  # start, stop and the channel
        self._channel: Channel | None = None
        self._finalizer: weakref.finalize | None = None
        self._python: str | None = None
        self._lifeline: Any = None  # the stdin stream that ties the container to this process
        super().__init__()

    # -- life cycle ---------------------------------------------------------------------------

    tools_dir = TOOLS_DIR
    """Where the supervisor and the notebook interpreters are, inside the container."""

    @property
    def has_python(self) -> bool:
        """The running container has ``python3`` (3.8+): the fast channel and interpreters work."""
        return isinstance(self._channel, SupervisorChannel)

    @property
    def alive(self) -> bool:
        """Running, with its execution channel open (false once the container died, as far as
        the channel can tell; the ``docker exec`` fallback cannot tell)."""
        channel = self._channel
        return self.state is SandboxState.RUNNING and channel is not None and channel.alive

    @engine_errors()
    def start(self) -> Self:
        """Build the runtime's image if needed and start the container; a no-op when running.

        Concurrent callers start exactly one container. After :meth:`stop`, ``start()`` starts a
        fresh one.

        Raises:
            DockerUnavailableError: no Docker engine answers.
            ImageNotAvailableError, ImageBuildError: the runtime's image cannot be had.
        """
        with self._lock:
            if self.state is SandboxState.RUNNING:
                return self
            client = docker_client()
            self.image = ensure_runtime_image(client, self.runtime, ca_bundle=self.ca_bundle,
                                              progress=self.progress)
            prepared = prepare_image(client, self.image, self._uid, self._gid, self.allowed_roots)
            for volume in self.volumes:
                ensure_volume(volume)
            new_disk = False
            if self.disk_size is not None and self._keep_disk:
                self._disk_dir, new_disk = open_disk(self.disk_name, self.disk_size, self._uid, self._gid,
                                                     keep=True)
            elif self.disk_size is not None:
                self.disk_name, self._disk_dir = take_disk(self.disk_size, self._uid, self._gid)
                new_disk = True
            try:
                container = client.containers.create(prepared.tag, **self._container_options())
            except BaseException:
                self._release_disk(delete=not self._keep_disk)
                raise
            try:
                if new_disk and prepared.seeded:
                    _seed_disk(client, prepared.tag, container.id, prepared.seeded)
                if self.remove_on_exit:
                    # The container's main process waits for EOF on this stream: when this process
                    # ends, even by SIGKILL, the stream closes and the container removes itself.
                    self._lifeline = client.api.attach_socket(container.id, params={"stdin": 1, "stream": 1})
                container.start()
                self._python = prepared.python
                if self.network and self.block_metadata:
                    self._block_metadata(client, container.id, prepared.tag)
                self._channel = self._open_channel(container.id)
            except BaseException:
                remove_container(client, container.id)
                self._release_disk(delete=not self._keep_disk)
                raise
            self._adopt(client, container.id)
        if self.disk_size is not None and not self._keep_disk:
            prepare_disk(self.disk_size, self._uid, self._gid)  # the next sandbox's, in the background
        return self

    def _release_disk(self, *, delete: bool) -> None:
        """Unmount this sandbox's disk (no container may use it any more); ``delete`` its file too."""
        if self._disk_dir is not None:
            release_disk(self.disk_name, delete=delete)
            self._disk_dir = None

    def _block_metadata(self, client: docker.DockerClient, container_id: str, image: str) -> None:
        if self._python is None:
            logger.warning("Image %s has no python3 to block %s with: this networked sandbox can reach it",
                           self.image, METADATA_ADDRESS)
            return
        block_metadata(client, container_id, image, self._python,
                       {"pydantic-deep.managed": "true", "pydantic-deep.owner-pid": str(os.getpid()),
                        "pydantic-deep.owner-host": socket.gethostname()})

    def _adopt(self, client: docker.DockerClient, container_id: str) -> None:
        self.container_id = container_id
        if self.remove_on_exit:
            self._finalizer = weakref.finalize(self, _remove_sandbox, client, container_id,
                                               self.disk_name if self._disk_dir else None, not self._keep_disk)
        self.state = SandboxState.RUNNING
        self.last_used = time.monotonic()

    @classmethod
    def attach(cls, container: str, *, remove_on_exit: bool = False, **options: Any) -> DockerSandbox:
        """A sandbox object for a running sandbox container that this object did not start.

        The runtime, user, session id and volumes come from the container itself. Used to adopt the
        sessions of a process that was killed, or to share one sandbox between worker processes.

        Args:
            container: The container's id or name.
            remove_on_exit: Remove the container when this object goes away (by default only
                ``stop()`` removes it).
            **options: Other :class:`DockerSandbox` arguments (``command_timeout``, ...).

        Raises:
            SandboxStateError: the container is not a running pydantic_deep sandbox.
        """
        client = docker_client()
        with engine_errors():
            try:
                attrs = client.api.inspect_container(container)
            except NotFound:
                raise SandboxStateError(f"no sandbox container {container!r}") from None
        labels = attrs["Config"]["Labels"] or {}
        if "pydantic-deep.runtime-config" not in labels or not attrs["State"]["Running"]:
            raise SandboxStateError(f"container {container!r} is not a running pydantic_deep sandbox")
        disk = labels.get(LABEL_DISK)
        options = {**options, "disk_size": labels.get(LABEL_DISK_SIZE) if disk else None}
        sandbox = cls(
            RuntimeConfig.model_validate_json(labels["pydantic-deep.runtime-config"]),
            user=attrs["Config"]["User"], session_id=labels["pydantic-deep.session"],
            name=attrs["Name"].lstrip("/"), remove_on_exit=remove_on_exit,
            volumes={m["Name"]: m["Destination"] for m in attrs["Mounts"] if m["Type"] == "volume"},
            labels={k: v for k, v in labels.items() if not k.startswith("pydantic-deep.")}, **options,
        )
        sandbox.image = labels.get("pydantic-deep.image")
        if disk:
            sandbox.disk_name, sandbox._keep_disk = disk, labels.get(LABEL_DISK_KEEP) == "true"
            sandbox._disk_dir = next((m["Source"] for m in attrs["Mounts"] if m["Destination"] == sandbox.work_dir),
                                     "").rsplit("/", 1)[0] or None
        with sandbox._lock, engine_errors():
            sandbox._python = client.images.get(attrs["Image"]).labels.get("pydantic-deep.python") or None
            sandbox._channel = sandbox._open_channel(attrs["Id"])
            sandbox._adopt(client, attrs["Id"])
        return sandbox

    def stop(self, *, remove_volumes: bool = False) -> None:
        """Remove the container and everything in it but its named volumes. Safe to call more than
        once.

        Its disk (``disk_size``) is unmounted, and deleted unless it has a ``disk_name``.

        Args:
            remove_volumes: Remove the named ``volumes`` too, and the files in them, and the
                disk of a ``disk_name``.
        """
        with self._lock:
            if self._channel is not None:
                self._channel.close()  # the supervisor kills what still runs
            if self._finalizer is not None:
                self._finalizer.detach()
            if self.state is SandboxState.RUNNING and self.container_id is not None:
                with engine_errors():
                    remove_container(docker_client(), self.container_id)
                self.state = SandboxState.STOPPED
            self._finalizer = self._channel = None
            if self._lifeline is not None:
                self._lifeline.close()
                self._lifeline = None
            with engine_errors():
                self._release_disk(delete=remove_volumes or not self._keep_disk)
                if remove_volumes:
                    for volume in self.volumes:
                        remove_volume(volume)

    def _open_channel(self, container_id: str) -> Channel:
        """The supervisor channel, or one ``docker exec`` per command where it cannot run."""
        client = docker_client()
        if self._python is not None:
            try:
                return SupervisorChannel.open(client, container_id, self._python, SUPERVISOR_PATH)
            except ChannelClosedError:
                if not container_running(client, container_id):
                    raise self._gone() from None
                reason = f"its {self._python} could not run the supervisor (Python 3.8+ is needed)"
        else:
            reason = "it has no python3"
        if self.image not in _exec_fallback_logged:
            _exec_fallback_logged.add(self.image)
            logger.warning("Image %s: %s, so commands use one docker exec each (about 50 ms)", self.image, reason)
        return DockerExecChannel(client, container_id)

    def _live_channel(self) -> Channel:
        """The running sandbox's channel, re-opened if it died (the container must still run)."""
        container_id = self._running_id()
        with self._lock:
            if self._channel is None:
                raise SandboxStateError("this sandbox was stopped while the command was starting")
            if not self._channel.alive:
                self._channel = self._open_channel(container_id)
            return self._channel

    def _live_container(self) -> str:
        """The id of the running container. Checked through the channel, which closes when the
        container dies: a file call then fails as clearly as a command, instead of reading or
        writing the files of a dead container."""
        self._live_channel()
        assert self.container_id is not None
        return self.container_id

    @contextlib.contextmanager
    def _clear_errors(self, action: str) -> Iterator[None]:
        """Let no raw docker-py or requests error out of ``action``: a lost engine becomes
        :class:`DockerUnavailableError`, a container that stopped or was removed
        :class:`ContainerGoneError`, any other refusal of the engine a :class:`SandboxError`."""
        with engine_errors():  # outermost: looking into a failure may find the engine gone too
            try:
                yield
            except _CONTAINER_FAILURES as exc:
                raise self._explain(exc, action) from exc
            except TransferInterruptedError as exc:
                if self._container_gone():
                    raise self._gone() from exc
                raise

    def _container_gone(self) -> bool:
        """Whether the container stopped or was removed. A call cut off by ``docker rm -f`` fails a
        moment before the engine calls the container stopped, so a running one gets 2 s to stop."""
        return self.container_id is not None and container_stops_within(docker_client(), self.container_id, 2)

    def _explain(self, exc: Exception, action: str) -> Exception:
        """What ``action``, failed with ``exc``, should raise: asks the engine about the container."""
        if self._container_gone():
            return self._gone()
        if isinstance(exc, ChannelClosedError):
            # The supervisor went away, the container did not: the next call re-opens the channel.
            return ChannelClosedError(str(exc))
        detail = exc.explanation if isinstance(exc, APIError) and exc.explanation else str(exc)
        return SandboxError(f"{action} failed: {detail}")

    def _container_options(self) -> dict[str, Any]:
        environment = {"HOME": HOME_DIR, **self.runtime.env_vars}
        volumes = {name: {"bind": path, "mode": "rw"} for name, path in self.volumes.items()}
        mounts, disk_labels = [], {}
        if self._disk_dir is not None:
            # A bind mount of a missing source fails (a `volumes` bind would create it on the host's
            # disk): the container never starts with an uncapped work dir.
            targets = {"work": self.work_dir, "uploads": UPLOADS_DIR, "home": HOME_DIR}
            if not self.tmp_size:
                targets["tmp"] = "/tmp"
            mounts = [docker.types.Mount(target, f"{self._disk_dir}/{part}", type="bind")
                      for part, target in targets.items()]
            disk_labels = {LABEL_DISK: self.disk_name, LABEL_DISK_KEEP: str(self._keep_disk).lower(),
                           LABEL_DISK_SIZE: str(self.disk_size)}
        if self.ca_bundle is not None:
            environment.update(self.ca_bundle.environment())
            volumes[str(self.ca_bundle.host_file())] = {"bind": CONTAINER_CA_PATH, "mode": "ro"}
        return dict(
            # Tied to this process (remove_on_exit): wait for EOF on stdin, then exit and be removed.
            entrypoint=["sh", "-c", "read -r _"] if self.remove_on_exit else ["sleep", "infinity"],
            stdin_open=self.remove_on_exit,  # docker-py sets StdinOnce with it: EOF once we go
            auto_remove=self.remove_on_exit,
            name=self.name,
            user=f"{self._uid}:{self._gid}",
            working_dir=self.work_dir,
            environment=environment,
            volumes=volumes,
            mounts=mounts,
            # With a disk, nothing else the sandbox could write may be on the host's disk.
            read_only=self._disk_dir is not None,
            labels={
                **self.labels,
                **disk_labels,
                "pydantic-deep.managed": "true",
                "pydantic-deep.session": self.session_id,
                "pydantic-deep.runtime": self.runtime.name,
                "pydantic-deep.runtime-config": self.runtime.model_dump_json(),
                "pydantic-deep.image": self.image or "",
                "pydantic-deep.created": datetime.now(UTC).isoformat(timespec="seconds"),
                "pydantic-deep.owner-pid": str(os.getpid()),
                "pydantic-deep.owner-host": socket.gethostname(),
            },
            init=True,
            # Nothing reads the container's log, and a command can write to it (through the main
            # process's standard output, /proc/<pid>/fd/1): a json-file log would fill the host's disk.
            log_config=docker.types.LogConfig(type=docker.types.LogConfig.types.NONE),
            ulimits=[docker.types.Ulimit(name="fsize", soft=self.max_file_size, hard=self.max_file_size)]
            if self.max_file_size else None,
            tmpfs={"/tmp": f"rw,exec,nosuid,nodev,mode=1777,size={self.tmp_size}"} if self.tmp_size else None,
            network_mode=None if self.network else "none",
            cap_drop=["ALL"] if self.drop_capabilities else None,
            security_opt=["no-new-privileges"] if self.no_new_privileges else None,
            pids_limit=self.pids_limit,
            mem_limit=self.memory,
            nano_cpus=int(self.cpus * 1e9) if self.cpus else None,
        )

    def _gone(self) -> ContainerGoneError:
        return ContainerGoneError(
            f"the container {self.name} is gone: it stopped or was removed from outside (docker kill, "
            "docker rm, an engine restart). A SessionManager replaces it on the next get_or_create; "
            "a sandbox of your own needs stop() and start()")

    def _running_id(self) -> str:
        """The container id, starting the container first when it never was."""
        if self.state is SandboxState.NEW:
            self.start()
        if self.state is SandboxState.STOPPED or self.container_id is None:
            raise SandboxStateError("this sandbox was stopped; call start() to run a fresh container")
        return self.container_id

    async def __aenter__(self) -> Self:
        await self.astart()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.astop()

    # -- commands -----------------------------------------------------------------------------

    @_in_use
    def execute(self, command: str, timeout: float | None = None, *,
                on_output: OutputCallback | None = None) -> ExecuteResult:
        """Run ``command`` with ``sh -c`` in the work dir and return its output and exit code.

        Args:
            command: A shell command line: quoting, pipes and variables work as in ``sh``.
            timeout: Seconds before the command's whole process group is killed (default
                :attr:`command_timeout`, at most 1,000,000); the result then has ``timed_out=True``.
            on_output: Called with each :class:`OutputChunk` as the command produces it. It runs
                on the channel's reader thread: keep it quick, and do not wait in it for another
                command of this sandbox.

        Raises:
            InvalidArgumentError: the command holds a NUL byte or a lone surrogate, or the timeout
                is not a positive number of seconds; nothing ran.
        """
        return self._live_channel().run(command, timeout=self._timeout(timeout), max_output=self.max_output,
                                        on_output=on_output)

    async def aexecute(self, command: str, timeout: float | None = None, *,
                       on_output: OutputCallback | None = None) -> ExecuteResult:
        """Async form of :meth:`execute`: waits on the event loop, not on a thread, so many
        commands can run at once."""
        with self._activity(), engine_errors():
            try:
                channel = self._channel
                if not (self.state is SandboxState.RUNNING and isinstance(channel, SupervisorChannel)
                        and channel.alive):
                    # Starting, re-opening or asking the engine: in a worker thread, off the loop.
                    channel = await asyncio.to_thread(self._live_channel)
                return await channel.arun(command, timeout=self._timeout(timeout),
                                          max_output=self.max_output, on_output=on_output)
            except _CONTAINER_FAILURES as exc:
                raise await asyncio.to_thread(self._explain, exc, "aexecute") from exc

    @_in_use
    def spawn(self, command: str, *, on_output: OutputCallback) -> Process:
        """Start a long-lived ``command`` (an interpreter, say) with an open standard input.

        Its output goes to ``on_output`` as it comes, and nothing is kept; it has no timeout.
        """
        channel = self._live_channel()
        if isinstance(channel, SupervisorChannel):
            return channel.spawn(command, on_output)
        return ExecProcess(docker_client(), self._running_id(), command, on_output)

    # -- files --------------------------------------------------------------------------------

    @_in_use
    def write_file(self, path: str, content: bytes | str) -> str:
        """Write ``content`` to ``path`` (relative to the work dir, or under ``/uploads``).

        Missing parent directories are created. Returns the absolute path written.

        Raises:
            InvalidArgumentError: an unusable path (empty, NUL, too long), or text content UTF-8
                cannot hold.
            PathOutsideSandboxError: the path leaves the work dir and ``/uploads``.
            IsADirectoryError: a directory is there (it is left as it is).
            NotADirectoryError: a parent on the path is a file.
        """
        data = file_content(content)
        return self._put_file(path, io.BytesIO(data), len(data))

    @_in_use
    def _copy_in(self, source: Path, dest: str) -> str:
        with source.open("rb") as handle:  # streamed: a 100 MB file is fine
            return self._put_file(dest, handle, os.fstat(handle.fileno()).st_size)

    def _put_file(self, path: str, content: BinaryIO, size: int) -> str:
        target = resolve_sandbox_path(path, self.work_dir, self.allowed_roots)
        if target in self.allowed_roots:
            raise IsADirectoryError(f"{target} is a directory")
        write_into(docker_client(), self._live_container(), target, self.allowed_roots, content, size)
        return target

    @_in_use
    def read_file(self, path: str) -> bytes:
        """The content of the file at ``path``.

        Raises:
            SandboxFileNotFoundError: there is no such file.
            IsADirectoryError: the path is a directory.
            InvalidArgumentError: an unusable path (empty, NUL, too long).
            PathOutsideSandboxError: the path leaves the work dir and ``/uploads``.
        """
        buffer = io.BytesIO()
        self._copy_out(path, buffer)
        return buffer.getvalue()

    @_in_use
    def download(self, path: str, dest: str | os.PathLike[str]) -> Path:
        """Copy the sandbox file ``path`` to the host file ``dest``, streamed. Returns ``dest``."""
        dest_path = Path(dest)
        partial = dest_path.with_name(dest_path.name + ".part")
        try:
            with partial.open("wb") as handle:
                self._copy_out(path, handle)
            partial.replace(dest_path)  # a half-copied file never carries the final name
        finally:
            partial.unlink(missing_ok=True)
        return dest_path

    def _copy_out(self, path: str, target: BinaryIO) -> int:
        source = resolve_sandbox_path(path, self.work_dir, self.allowed_roots)
        return read_from(docker_client(), self._live_container(), source, self.allowed_roots, target)

    @_in_use
    def exists(self, path: str) -> bool:
        """Whether a file or directory exists at ``path``."""
        target = resolve_sandbox_path(path, self.work_dir, self.allowed_roots)
        return self._file_command("exists", target).stdout == "yes\n"

    @_in_use
    def list_files(self, path: str = ".") -> list[FileInfo]:
        """The entries of the directory ``path``, sorted by name.

        Raises:
            SandboxFileNotFoundError: the directory does not exist.
            NotADirectoryError: the path is a file.
        """
        directory = resolve_sandbox_path(path, self.work_dir, self.allowed_roots)
        result = self._file_command("list", directory)
        entries = []
        for record in filter(None, result.stdout.split("\0")):
            kind, size, modified, name = record.split("\t", 3)
            entries.append(FileInfo(name=name, path=posixpath.join(directory, name), size=int(size),
                                    is_dir=kind == "d", modified=float(modified)))
        return sorted(entries, key=lambda entry: entry.name)

    def _file_command(self, op: FileOp, path: str) -> ExecuteResult:
        """Run a file operation that answers in text through the execution channel (quick), as
        the sandbox user, with the file API's symlink check (see :mod:`pydantic_deep.transfer`)."""
        result = self.execute(shlex.join(file_command(op, path, self.allowed_roots)), timeout=60)
        if result.truncated:
            raise SandboxError(f"the answer for {path} went past max_output ({self.max_output} bytes)")
        check_outcome(result.exit_code, result.stderr, path, self.allowed_roots)
        return result

    # -- the container ------------------------------------------------------------------------

    @_in_use
    def rename(self, name: str) -> None:
        """Give the container a new name (a session manager names a pooled sandbox for its user)."""
        docker_client().api.rename(self._running_id(), name)
        self.name = name

    def usage(self) -> ResourceUsage:
        """The container's memory in use, CPU time so far, and its disk's use against its size
        (one cheap stats call, and one quick command when it has a disk). Does not count as use:
        polling it never keeps a sandbox from going idle."""
        with self._clear_errors("usage"):
            stats = docker_client().api.stats(self._running_id(), stream=False, one_shot=True)
            disk_used, disk_limit = self._disk_usage()
        return ResourceUsage(memory_bytes=stats.get("memory_stats", {}).get("usage", 0),
                             cpu_seconds=stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage", 0) / 1e9,
                             disk_bytes=disk_used, disk_limit_bytes=disk_limit)

    def _disk_usage(self) -> tuple[int, int | None]:
        """(bytes used, filesystem size) of the disk, asked of the running container's filesystem."""
        if self._disk_dir is None:
            return 0, None
        # Through the channel itself, not execute(): no activity, so the sandbox's idle time stands.
        result = self._live_channel().run(f"stat -f -c '%S %b %f' -- {shlex.quote(self.work_dir)}",
                                          timeout=30, max_output=4096)
        try:
            block, total, free = map(int, result.stdout.split())
        except ValueError:
            raise SandboxError(f"could not read the disk's use: {result.output.strip()}") from None
        return (total - free) * block, total * block

    # -- display ------------------------------------------------------------------------------

    def __repr__(self) -> str:
        container = self.container_id[:12] if self.container_id else None
        return (f"<DockerSandbox runtime={self.runtime.name!r} image={self.image!r} "
                f"state={self.state.value} container={container}>")

    def _repr_html_(self) -> str:
        rows = {
            "Runtime": self.runtime.name,
            "Description": self.runtime.description,
            "Image": self.image or "(built on start)",
            "State": self.state.value,
            "Container": self.container_id[:12] if self.container_id else "-",
            "Work dir": self.work_dir,
            "Network": "on" if self.network else "off",
            "Disk": f"{self.disk_size / 2 ** 20:,.0f} MB" if self.disk_size else "not capped",
        }
        return field_table("DockerSandbox", rows)


def _seed_disk(client: docker.DockerClient, image: str, container_id: str, directories: tuple[str, ...]) -> None:
    """Copy what the image holds in ``directories`` onto the new disk mounted over them in the
    created (not yet started) container: the files a plain container would have there."""
    source = client.api.create_container(image, labels={"pydantic-deep.managed": "true"})["Id"]
    try:
        for directory in directories:
            # "dir/." archives the directory's content as "./...", put into the mount itself (the
            # engine refuses to write elsewhere in a read-only root filesystem).
            chunks, _stat = client.api.get_archive(source, f"{directory}/.")
            client.api.put_archive(container_id, directory, chunks)  # streamed
    finally:
        remove_container(client, source)


def _remove_sandbox(client: docker.DockerClient, container_id: str, disk: str | None, delete_disk: bool) -> None:
    """Remove a sandbox's container, then release its disk (garbage collection, interpreter exit)."""
    remove_container(client, container_id)
    if disk is not None:
        release_disk(disk, delete=delete_disk)
