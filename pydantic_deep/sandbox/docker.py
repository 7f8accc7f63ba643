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
- no network unless the runtime or the sandbox asks for it (``network=True``), and then the outside
  world only: not other sandboxes, the host, private networks (``allow_private``) or the cloud
  metadata address (``block_metadata``); sandboxes talk only on a ``shared_network`` they all name;
  or only the hosts listed (``network=["pypi.org"]``), through the egress proxy, which adds the
  ``secrets`` headers on the way out;
- labels on every container (``pydantic-deep.managed``, ``.session``, ``.runtime``, ``.created``,
  ``.owner-pid``), so ``pydantic-deep prune`` can find anything a killed process left behind.

A sandbox can be paused (frozen in place, resumed by the next call), snapshotted (its files kept as
an image, see :mod:`pydantic_deep.sandbox.snapshots`), restored from a snapshot, and forked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import logging
import math
import os
import posixpath
import re
import shlex
import socket
import tarfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Concatenate, Literal, ParamSpec, Self, TypeVar

import docker
from docker.errors import APIError, NotFound
from docker.utils import parse_bytes
from requests.exceptions import ChunkedEncodingError
from requests.exceptions import ConnectionError as EngineConnectionError

from .._html import field_table
from ..arguments import file_content
from ..config import DEFAULT_DISK_SIZE, RuntimeConfig, disk_size_bytes
from ..engine import labels as label
from ..engine.api import attach_stdin, create_container
from ..engine.client import docker_client, engine_errors, engine_on_this_machine
from ..engine.containers import container_running, container_stops_within, remove_container
from ..engine.dial_in_dirs import remove_dial_in_dir
from ..engine.egress import (
    EgressPolicy,
    drop_policy,
    ensure_egress_proxy,
    issue_ca,
    proxy_environment,
    put_policy,
    read_log,
    sandbox_address,
)
from ..engine.loss import close_when_engine_lost
from ..engine.networks import (
    PROXIED_NETWORK,
    checked_private_ranges,
    checked_shared_name,
    ensure_egress_network,
    ensure_shared_network,
    loopback_hosts_mount,
    remove_network_if_unused,
    secure,
    shared_network_name,
)
from ..engine.swarm import SwarmCluster, TaskPlacement, resolve_cluster
from ..engine.swarm_networks import ensure_swarm_network, remove_unused_swarm_networks, shared_network_node
from ..engine.volumes import create_volume, ensure_volume, remove_volume
from ..errors import (
    ContainerGoneError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    SandboxError,
    SandboxStateError,
    TransferInterruptedError,
    shown,
)
from ..execution.channel import (
    Channel,
    ChannelClosedError,
    DockerExecChannel,
    OutputCallback,
    Process,
    SupervisorChannel,
)
from ..execution.dial_in import DialIn
from ..execution.terminal import Terminal, checked_terminal_size
from ..execution.transfer import FileOp, check_outcome, file_command, read_from, write_into
from ..hosts import checked_host_patterns, checked_hosts, checked_secrets
from ..images.builder import Progress
from ..images.certs import CONTAINER_CA_PATH, CaBundle, bundle_with, resolve_ca_bundle
from ..images.egress_proxy import ensure_egress_proxy_image
from ..images.netfilter import ensure_netfilter_image
from ..images.prepare import (
    HOME_DIR,
    TOOLS_DIR,
    PreparedImage,
    prepare_image,
    recorded_interpreters,
    supervisor_command,
)
from ..images.runtime import resolve_runtime_image
from ..paths import UPLOADS_DIR, resolve_sandbox_path
from ..results import EgressEvent, ExecuteResult, FileInfo, ResourceUsage
from ..runtimes import resolve_runtime
from .base import SandboxBase, SandboxState
from .cluster_disk import node_disk_dir, open_in_storage, open_on_nodes, release_in_storage, release_on_nodes
from .disk import release_disk
from .disk_stock import open_disk, prepare_disk, take_disk
from .offline import cut_network
from .snapshot_disks import clone_disk, fill_volumes, spread_disk, unpack_snapshot_disk
from .snapshots import (
    Snapshot,
    bring_home,
    pause_container,
    remove_fork_image,
    resolve_snapshot,
    resume_container,
    take_snapshot,
)

__all__ = ["DEFAULT_DISK_SIZE", "FROM_RUNTIME", "DockerSandbox"]

logger = logging.getLogger("pydantic_deep.sandbox")

_P = ParamSpec("_P")
_R = TypeVar("_R")


_exec_fallback_logged: set[str | None] = set()
# Images whose supervisor could not run (a too old Python): their containers are not waited for to dial in.
_no_dial_in: set[str | None] = set()
# How long a new container's supervisor may take to dial in (a Python's start, under load) before
# its channel is opened with `docker exec` instead.
_DIAL_IN_TIMEOUT = 10.0


class _FromRuntime:
    """The default of ``DockerSandbox(disk_size=)``: the runtime's own ``disk_size``."""

    def __repr__(self) -> str:
        return "FROM_RUNTIME"


FROM_RUNTIME = _FromRuntime()

_UNCHANGED: Any = object()  # set_network's "keep what the sandbox has"


def _checked_network(network: object) -> bool | tuple[str, ...]:
    """``network`` as a sandbox holds it: ``True``, ``False``, or its host patterns, checked."""
    if isinstance(network, bool):
        return network
    if isinstance(network, (list, tuple, str)):
        return checked_host_patterns(network)  # type: ignore[arg-type]
    raise InvalidArgumentError(f"network must be True, False or a list of host patterns like ['pypi.org'], "
                               f"not {shown(repr(network))}")


def resolved_disk_size(disk_size: str | None | _FromRuntime, runtime: RuntimeConfig, cluster: SwarmCluster | None,
                       snapshot: Snapshot | None = None, *, kept: bool = True) -> str | None:
    """The ``disk_size`` a sandbox gets: the one given; else its snapshot's source's; else its
    runtime's, but on a cluster no disk unless asked for (see :mod:`.cluster_disk`), except for a
    session's on a cluster with a ``session_storage``, which is made there.

    Args:
        kept: The disk outlives its sandbox (a session's, under a ``disk_name``).

    Raises:
        InvalidArgumentError: a disk that outlives its sandbox asked for on a cluster without a
            ``session_storage`` (by ``disk_size``, or by a runtime whose ``disk_size`` is not the
            default): it would stay on one node while the session moves to others.
    """
    stored = cluster is not None and kept and cluster.session_storage is not None
    if isinstance(disk_size, _FromRuntime):
        if snapshot is not None and snapshot.disk_size is not None:
            return str(snapshot.disk_size)
        if cluster is None or stored or runtime.disk_size == DEFAULT_DISK_SIZE:
            return runtime.disk_size if cluster is None or stored else None
        disk_size, argument = runtime.disk_size, f"runtime {runtime.name!r}'s disk_size"
    else:
        argument = "disk_size"
    if cluster is not None and disk_size is not None and kept and not stored:
        raise InvalidArgumentError(
            f"sessions on a cluster cannot have a disk without a session storage: {argument}={disk_size!r} would "
            "keep the session's files on the node it was made on, and a session moves between nodes; give the "
            "cluster the directory on this host that its volume driver serves to every node "
            "(SwarmCluster(volume_driver=..., session_storage='/export/sessions')) for a quota that follows the "
            "session, or leave disk_size unset or None (a DockerSandbox or SandboxPool on a cluster may have a "
            "disk_size)")
    return disk_size

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


_MIN_MEMORY = 6 * 1024 * 1024  # the least memory limit the engine accepts


def _size_in_bytes(argument: str, size: str | int | None, *, minimum: int = 1) -> int | None:
    """``size`` in Docker's notation (``"512m"``, ``"1g"``, or bytes) as bytes; ``None`` stays ``None``.

    Raises:
        InvalidArgumentError: not a size, or less than ``minimum`` bytes.
    """
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, (str, int)):
        raise InvalidArgumentTypeError(
            f"{argument} must be a size like '512m' or '1g' (or None for no limit), not {type(size).__name__}")
    try:
        value = parse_bytes(size)
    except docker.errors.DockerException:
        raise InvalidArgumentError(
            f"{argument} must be a size like '512m' or '1g' (or None for no limit), not {shown(str(size))}") from None
    if value < minimum:
        least = "positive" if minimum == 1 else f"at least {minimum // (1024 * 1024)}m"
        raise InvalidArgumentError(f"{argument} must be {least}, not {size!r} (or None for no limit)")
    return value


def _checked_cpus(cpus: float | None) -> float | None:
    if cpus is None:
        return None
    if isinstance(cpus, bool) or not isinstance(cpus, (int, float)):
        raise InvalidArgumentTypeError(f"cpus must be a number of cores like 1.5 (or None), not {type(cpus).__name__}")
    if not (math.isfinite(cpus) and cpus > 0):
        raise InvalidArgumentError(f"cpus must be a positive number of cores like 0.5 or 2 (or None), not {cpus!r}")
    return float(cpus)


def _checked_pids_limit(pids_limit: int | None) -> int | None:
    if pids_limit is None:
        return None
    if isinstance(pids_limit, bool) or not isinstance(pids_limit, int):
        raise InvalidArgumentTypeError(
            f"pids_limit must be a whole number of processes (or None), not {type(pids_limit).__name__}")
    if pids_limit < 1:
        raise InvalidArgumentError(f"pids_limit must be at least 1 (or None for no limit), not {pids_limit!r}")
    return pids_limit


_VOLUME_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")  # what the engine accepts


def _checked_volumes(volumes: Mapping[str, str] | None) -> dict[str, str]:
    """``volumes`` as a dict, checked before any volume is made: engine names, absolute paths."""
    checked = dict(volumes or {})
    for name, path in checked.items():
        if not isinstance(name, str) or not _VOLUME_NAME.fullmatch(name):
            raise InvalidArgumentError(
                f"volumes: {shown(str(name))} is not a volume name; use letters, digits, '_', '.' and '-', "
                "starting with a letter or digit")
        if not isinstance(path, str) or not posixpath.isabs(path) or "\0" in path:
            raise InvalidArgumentError(
                f"volumes: the volume {name!r} must be mounted at an absolute path in the container, "
                f"not {shown(str(path))}")
    return checked


def _parse_user(user: str) -> tuple[int, int]:
    if not isinstance(user, str):
        raise InvalidArgumentTypeError(f"user must be a str like '1000:1000', not {type(user).__name__}")
    uid, _, gid = user.partition(":")
    if not uid.isascii() or not uid.isdigit() or (gid and not (gid.isascii() and gid.isdigit())):
        raise InvalidArgumentError(f"user must be numeric 'uid' or 'uid:gid' like '1000:1000', not {shown(user)}")
    return int(uid), int(gid or uid)


def _refuse_host_list_on_cluster(network: bool | tuple[str, ...], cluster: SwarmCluster | None) -> None:
    # Host lists go through the egress proxy of the engine host (engine/egress.py); a cluster's
    # nodes run none, so the list could not be enforced there.
    if cluster is not None and isinstance(network, tuple):
        raise InvalidArgumentError(
            "a list of hosts (network=[...]) is not available on a cluster yet: it is enforced by the egress "
            "proxy of one engine host, which the cluster's nodes do not run; use network=True (isolated, full "
            "network) on the cluster, or cluster=False for a host list")


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
        runtime: A runtime name (see :data:`BUILTIN_RUNTIMES`) or a :class:`RuntimeConfig`; default
            ``python-minimal``, or the runtime of ``snapshot``.
        network: Give the container network access; ``None`` follows ``runtime.network``. A list
            of host patterns (``["pypi.org", "*.example.com"]``; ``*.`` covers the names below, a
            ``:port`` other ports than 80 and 443) gives it those hosts and nothing else: the sandbox
            sits on an internal network with no route out, and its one way out is the engine's
            egress proxy, which admits a request by host name (an HTTP request's ``Host``, an
            HTTPS ``CONNECT``, the TLS SNI) and refuses the rest with a ``403`` saying which host
            and why. ``HTTP(S)_PROXY`` and ``NO_PROXY`` are set, so pip, npm, curl and requests
            work unchanged; direct connections, DNS, the host, other sandboxes and the metadata
            address are out of reach. :meth:`set_network` changes the list of a running sandbox,
            :meth:`egress_log` tells what was allowed and refused. ``True``: a
            networked sandbox reaches the outside world through the host's route, and nothing else:
            not other sandboxes (whoever's), not the host's own addresses and ports (the engine's
            TCP port included), not private, shared or link-local ranges (``allow_private`` lists
            exceptions). Enforced by the engine host's packet filter, out of the sandbox's reach
            (see :mod:`pydantic_deep.engine.firewall`); where it cannot be set, :meth:`start` fails
            with :class:`NetworkIsolationError` rather than start a sandbox with more access.
        shared_network: A network name (``"team"``): sandboxes that name the same one (and the same
            ``network_owner``) reach each other on it, by address and by container name; otherwise
            they are as isolated as ever. With the network off it is their only network (peers, no
            way out). A shared network's sandboxes share one ``network``, ``allow_private`` and
            ``block_metadata`` setting: :meth:`start` refuses one that differs
            (:class:`InvalidArgumentError`).
        network_owner: Whose ``shared_network`` it is: sandboxes of different owners never share
            one, whatever name they give. A :class:`SessionManager` sets it to the user.
        secrets: Headers the egress proxy adds to the sandbox's HTTPS requests to a host,
            ``{host pattern: {header: value}}`` (``{"api.example.com": {"Authorization": "Bearer
            ..."}}``); needs a list ``network`` (the host must be in it too). The value never
            enters the sandbox (its environment, files, command lines, memory): the proxy
            terminates TLS for those hosts with a CA of the sandbox's own, which only the sandbox
            trusts (added to its CA bundle), and checks the server against the sandbox's
            ``ca_bundle``. Never added to plain HTTP requests.
        hosts: Names the egress proxy connects to at the given IPv4 address instead of asking
            DNS, ``{"api.internal.test": "198.18.0.2"}`` (as ``/etc/hosts`` would); needs a list
            ``network``. The proxy's own isolation still applies (no private ranges, not the host).
        allow_private: IPv4 ranges (``["10.1.2.0/24"]``) the networked sandbox may reach although
            they are private, e.g. an internal package mirror. The host's own addresses stay out of
            reach; so does the metadata address unless ``block_metadata=False``. Each distinct
            list is a Docker network of its own (the engine's address pools hold about 30).
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
            Named ``volumes`` you mount are not on it. Started from a ``snapshot``, the default is
            the source's size. On a ``cluster`` the default is no disk, and one given is made on
            the node that runs the task (see :mod:`pydantic_deep.sandbox.cluster_disk`); a kept
            one (``disk_name``) is made in the cluster's ``session_storage`` (the runtime's size
            by default), and refused on a cluster without one.
        disk_name: Keep the disk under this name when the container goes (a session's files):
            ``stop()`` unmounts it, ``stop(remove_volumes=True)`` deletes it, and a new sandbox
            with the same ``disk_name`` gets its files back. By default the disk goes with the
            container.
        drop_capabilities: Drop every Linux capability.
        no_new_privileges: Forbid gaining privileges through setuid binaries.
        block_metadata: With network access, keep the cloud metadata address (169.254.169.254)
            unreachable (the host's packet filter refuses it, for every image).
        command_timeout: Seconds a command may run when :meth:`execute` gets no ``timeout``.
        max_output: Bytes of output kept per command; the rest is discarded and flagged.
        ca_bundle: Extra CA certificates for HTTPS in builds and the container (see
            :mod:`pydantic_deep.images.certs`); ``None`` picks up the host's ``SSL_CERT_FILE`` and the like,
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
            it running until ``stop()`` (sessions that a later process adopts). On a cluster the
            sandbox is removed when this object is collected or the interpreter exits, not when
            the process is killed (``pydantic-deep prune`` finds what is left).
        cluster: Run on a Docker Swarm (see :class:`SwarmCluster`): one of them, a manager's
            address, or ``False`` for this host's engine. ``None`` (the default) follows
            ``$PYDANTIC_DEEP_CLUSTER``, and this host's engine when it is unset.
        snapshot: Start from this :class:`Snapshot` (or the name of one): its files, its runtime.
            Empty named ``volumes`` are filled with the snapshot's files at their paths.
    """

    def __init__(
        self,
        runtime: str | RuntimeConfig | None = None,
        *,
        network: bool | Sequence[str] | None = None,
        secrets: Mapping[str, Mapping[str, str]] | None = None,
        hosts: Mapping[str, str] | None = None,
        shared_network: str | None = None,
        network_owner: str | None = None,
        allow_private: Sequence[str] = (),
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
        snapshot: Snapshot | str | None = None,
        cluster: SwarmCluster | str | bool | None = None,
    ) -> None:
        self.from_snapshot: Snapshot | None = resolve_snapshot(snapshot) if snapshot is not None else None
        self.runtime: RuntimeConfig = self._runtime_for(runtime, self.from_snapshot)
        self.network: bool | tuple[str, ...] = _checked_network(self.runtime.network if network is None else network)
        self._secrets = checked_secrets(secrets)
        self.hosts = checked_hosts(hosts)
        if (self._secrets or self.hosts) and not self.proxied:
            raise InvalidArgumentError("secrets and hosts are for the egress proxy: give network a list of host "
                                       "patterns (e.g. network=['api.example.com'])")
        if self.proxied and (shared_network is not None or allow_private):
            raise InvalidArgumentError("a sandbox with a list of hosts (network=[...]) reaches those hosts through "
                                       "the egress proxy only: shared_network and allow_private do not apply to it")
        self._egress_id: str | None = None  # its CA's and log's id in the proxy, while it runs
        self._egress_address: str | None = None  # its address on the proxied network
        self._egress_ca: CaBundle | None = None  # its ca_bundle plus the proxy's CA of its own
        self.shared_network = checked_shared_name(shared_network) if shared_network is not None else None
        if network_owner is not None and not re.fullmatch(r"[a-z0-9]{1,64}", network_owner):
            raise InvalidArgumentError(f"network_owner must be 1-64 lowercase letters and digits (a hash of "
                                       f"the user id, say), not {shown(str(network_owner))}")
        self.network_owner = network_owner
        self.allow_private = checked_private_ranges(allow_private)
        self.user = user
        self._uid, self._gid = _parse_user(user)
        _size_in_bytes("memory", memory, minimum=_MIN_MEMORY)
        self.memory = memory
        self.cpus, self.pids_limit = _checked_cpus(cpus), _checked_pids_limit(pids_limit)
        self.max_file_size = _size_in_bytes("max_file_size", max_file_size)
        self.tmp_size = _size_in_bytes("tmp_size", tmp_size)
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
        self._disk_usage_when_paused: tuple[int, int | None] = (0, None)
        self.volumes = _checked_volumes(volumes)
        self.remove_on_exit = remove_on_exit
        self.cluster = resolve_cluster(cluster)
        _refuse_host_list_on_cluster(self.network, self.cluster)
        size = resolved_disk_size(disk_size, self.runtime, self.cluster, self.from_snapshot,
                                  kept=disk_name is not None)
        try:
            self.disk_size = disk_size_bytes(size)
        except ValueError as exc:
            raise InvalidArgumentError(str(exc)) from None
        self._placement: TaskPlacement | None = None  # on a cluster: the node and its engine
        self._disk_node: Mapping[str, Any] | None = None  # on a cluster: the node whose disk it uses
        self.image: str | None = None
        self.container_id: str | None = None
        self.state = SandboxState.NEW
        self._lock = threading.Lock()  # start, stop and the channel
        self._channel: Channel | None = None
        self._finalizer: weakref.finalize | None = None
        self._python: str | None = None  # the image's python3, or None
        self._node: str | None = None  # the image's node, or None
        self._lifeline: Any = None  # the stdin stream that ties the container to this process
        # The directory of the socket its supervisor dialled in on: removed with the container,
        # and by stop() too when the container went another way (docker rm, its engine).
        self._dial_in: str | None = None
        self._fork_image: str | None = None  # a fork's image: removed with the fork's last sandbox
        self._fork_disk = False  # a fork's disk_name is a copy of its source's disk, made by fork()
        if self.from_snapshot is not None and self.from_snapshot.user != f"{self._uid}:{self._gid}":
            raise InvalidArgumentError(f"user={user!r} differs from the user of snapshot {self.from_snapshot.name!r} "
                                       f"({self.from_snapshot.user}), who owns its files: leave user out")
        super().__init__()

    @staticmethod
    def _runtime_for(runtime: str | RuntimeConfig | None, snapshot: Snapshot | None) -> RuntimeConfig:
        if snapshot is None:
            return resolve_runtime(runtime or "python-minimal")
        if runtime is not None and resolve_runtime(runtime) != snapshot.runtime:
            raise InvalidArgumentError(f"runtime {runtime if isinstance(runtime, str) else runtime.name!r} differs "
                                       f"from the runtime of snapshot {snapshot.name!r} ({snapshot.runtime.name}): "
                                       "a snapshot starts with its own runtime; leave runtime out")
        return snapshot.runtime

    # -- life cycle ---------------------------------------------------------------------------

    tools_dir = TOOLS_DIR
    """Where the supervisor and the notebook interpreters are, inside the container."""

    @property
    def has_python(self) -> bool:
        """The running container has ``python3`` (3.8+): the fast channel and Python interpreters work."""
        return self._python is not None and self.supervisor is not None

    @property
    def supervisor(self) -> str | None:
        """What runs this sandbox's supervisor: ``"python3"``, ``"node"``, or ``None`` when commands go
        one ``docker exec`` each (an image with neither, or whose interpreter could not run it)."""
        if self._channel is None or not self._channel.multiplexed:
            return None
        return "python3" if self._python is not None else "node"

    @property
    def proxied(self) -> bool:
        """Its network is a list of host patterns: it goes out through the egress proxy only."""
        return isinstance(self.network, tuple)

    @property
    def node(self) -> str | None:
        """The cluster node the sandbox runs on (``None`` on this host's engine)."""
        return self._placement.node if self._placement is not None else None

    def _engine(self) -> docker.DockerClient:
        """The engine holding the container: its node's on a cluster, else this host's."""
        return self._placement.client if self._placement is not None else docker_client()

    @property
    def alive(self) -> bool:
        """Running, with its execution channel open (false once the container died, as far as
        the channel can tell; the ``docker exec`` fallback cannot tell)."""
        channel = self._channel
        return self.state in (SandboxState.RUNNING, SandboxState.PAUSED) and channel is not None and channel.alive

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
            if self.state in (SandboxState.RUNNING, SandboxState.PAUSED):
                return self
            client = docker_client()
            if self.from_snapshot is not None:  # committed from a prepared image: ready as it is
                self.image = self.from_snapshot.tag
                # A new disk gets the files the snapshot's image holds at the paths it is mounted
                # over (those of the snapshot's own disk are in its disk file, or the fork's copy).
                beside = {*dict(self.from_snapshot.disk_parts).values(), *self.from_snapshot.volume_copies}
                prepared = PreparedImage(self.from_snapshot.image, self.from_snapshot.python, self.from_snapshot.node,
                                         seeded=tuple(path for path in self._disk_paths() if path not in beside))
            else:
                self.image, image_id = resolve_runtime_image(client, self.runtime, ca_bundle=self.ca_bundle,
                                                             progress=self.progress)
                prepared = prepare_image(client, self.image, self._uid, self._gid, self.allowed_roots,
                                         image_id=image_id)
            if self.cluster is not None:
                self._start_on_cluster(self.cluster, prepared)
                return self
            for volume in self.volumes:
                ensure_volume(volume)
            filled = self._fill_volumes(client)
            new_disk = False
            disk_file = self.from_snapshot.disk_file if self.from_snapshot is not None else None
            if self.disk_size is not None and self._fork_disk:  # fork() copied its source's disk as this one
                self._disk_dir, _made = open_disk(self.disk_name, self.disk_size, self._uid, self._gid, keep=False)
                self._fork_disk = False  # once: a later start (a restore, say) makes its own
            elif self.disk_size is not None and disk_file is not None:  # a copy of the snapshot's disk
                self.disk_name = self.disk_name if self._keep_disk else f"pd-disk-{uuid.uuid4().hex[:16]}"
                try:
                    new_disk = clone_disk(disk_file, self.disk_name, self.disk_size, keep=self._keep_disk)
                    self._disk_dir, _made = open_disk(self.disk_name, self.disk_size, self._uid, self._gid,
                                                      keep=self._keep_disk)
                except BaseException:
                    if not self._keep_disk:
                        release_disk(self.disk_name, delete=True)
                    raise
            elif self.disk_size is not None and self._keep_disk:
                self._disk_dir, new_disk = open_disk(self.disk_name, self.disk_size, self._uid, self._gid,
                                                     keep=True)
            elif self.disk_size is not None:
                self.disk_name, self._disk_dir = take_disk(self.disk_size, self._uid, self._gid)
                new_disk = True
            with self._dial_in_socket(client, prepared) as dial_in:
                self._dial_in = dial_in.name if dial_in is not None else None
                try:
                    container_id = self._create_container(client, prepared.tag, dial_in)
                except BaseException:
                    self._release_disk(delete=not self._keep_disk)
                    self._remove_dial_in()
                    raise
                try:
                    if new_disk and prepared.seeded:
                        _seed_disk(client, prepared.tag, container_id, prepared.seeded)
                    self._unpack_snapshot_disk(client, container_id, filled)
                    if self.remove_on_exit:
                        # The container's main process waits for EOF on this stream: when this process
                        # ends, even by SIGKILL, the stream closes and the container removes itself.
                        self._lifeline = attach_stdin(client, container_id)
                    client.api.start(container_id)
                    if self.proxied:  # its address is known once it runs: the proxy learns its policy
                        self._egress_address = sandbox_address(client.api.inspect_container(container_id))
                        self._put_policy(client)
                    self._python, self._node = prepared.python, prepared.node
                    self._channel = self._first_channel(container_id, dial_in)
                except BaseException:
                    remove_container(client, container_id)
                    self._forget_egress(client)
                    self._release_disk(delete=not self._keep_disk)
                    self._remove_dial_in()
                    raise
            self._adopt(client, container_id)
        if self.disk_size is not None and not self._keep_disk:
            prepare_disk(self.disk_size, self._uid, self._gid)  # the next sandbox's, in the background
        return self

    def _local_volumes(self, client: docker.DockerClient) -> dict[str, str]:
        """Where the files of its named volumes of the ``local`` driver (plain directories) are on
        the engine's host, by the path they are mounted at; none on a cluster."""
        if self.cluster is not None:
            return {}
        found = {}
        for name, path in self.volumes.items():
            try:
                attrs = client.api.inspect_volume(name)
            except NotFound:
                continue  # not there: what is at its path goes into the image, as any volume's could
            if attrs.get("Driver") == "local" and not attrs.get("Options") and attrs.get("Mountpoint"):
                found[path] = attrs["Mountpoint"]
        return found

    def _fill_volumes(self, client: docker.DockerClient) -> set[str]:
        """Copy the snapshot's named volume copies into this sandbox's empty local named volumes
        at the same paths; the paths done (a volume that holds files keeps them, and is done too)."""
        snap = self.from_snapshot
        if snap is None or snap.files is None or not snap.volume_copies:
            return set()
        local = self._local_volumes(client)
        targets = {n: local[path] for n, path in enumerate(snap.volume_copies) if path in local}
        if targets:
            fill_volumes(snap.files, targets)
        return {snap.volume_copies[n] for n in targets}

    def _unpack_snapshot_disk(self, client: docker.DockerClient, container_id: str, filled: set[str]) -> None:
        """Copy into the created container the files its snapshot keeps beside its image (its
        disk's, its volumes') at the paths where this sandbox does not get them otherwise: a copy
        of the snapshot's disk mounted as its disk, or a named volume filled from a copy."""
        snap = self.from_snapshot
        if snap is None or snap.files is None:
            return
        parts = dict(snap.disk_parts) if snap.disk_file is not None else {}
        cloned = self._disk_dir is not None and self.cluster is None and snap.disk_file is not None
        volume_paths = set(self.volumes.values())
        paths = [path for path in parts.values() if not cloned or path in volume_paths]
        paths += [path for path in snap.volume_copies if path not in filled]
        if paths:
            uid, gid = (int(part) for part in snap.user.split(":"))
            unpack_snapshot_disk(snap.files, snap.image, parts=parts, volume_copies=snap.volume_copies,
                                 size=snap.disk_size, uid=uid, gid=gid, target=client, container_id=container_id,
                                 paths=sorted(set(paths)))

    def _disk_parts(self) -> dict[str, str]:
        """Where the disk's directories a snapshot keeps are mounted: those no named volume covers."""
        targets = {"work": self.work_dir, "uploads": UPLOADS_DIR, "home": HOME_DIR}
        return {part: path for part, path in targets.items() if path not in self.volumes.values()}

    def _disk_paths(self) -> tuple[str, ...]:
        """The paths the disk is mounted over, that a snapshot keeps: the work dir, ``/uploads``, home."""
        return self.work_dir, UPLOADS_DIR, HOME_DIR

    def _snapshot_paths(self) -> list[str]:
        """The paths whose files a snapshot copies from the container, as ``docker commit`` keeps
        none of them: the named volumes' and, with a disk, the paths it is mounted over."""
        return sorted({*self.volumes.values(), *(self._disk_paths() if self._disk_dir is not None else ())})

    def _release_disk(self, *, delete: bool) -> None:
        """Unmount this sandbox's disk (no container may use it any more); ``delete`` its file too."""
        if self._disk_dir is not None and self.cluster is not None:
            if self._disk_node is not None:  # a cluster's disks go with their sandbox
                release_on_nodes(self.cluster, self.disk_name, [self._disk_node])
            elif self._keep_disk and delete:  # a session's stays mounted in the storage till its files go
                release_in_storage(self.cluster, self.disk_name)
            self._disk_dir = self._disk_node = None
        elif self._disk_dir is not None:
            release_disk(self.disk_name, delete=delete)
            self._disk_dir = None

    def _dial_in_socket(self, client: docker.DockerClient, prepared: PreparedImage
                        ) -> contextlib.AbstractContextManager[DialIn | None]:
        """The socket the new container's supervisor dials (no longer listening on leaving the
        ``with``), or ``None`` where its channel is opened with ``docker exec``: an engine on
        another machine, an image without a supervisor, one whose supervisor could not run before."""
        supervisor = prepared.supervisor_command()
        if supervisor is None or self.image in _no_dial_in or not engine_on_this_machine(client):
            return contextlib.nullcontext()
        return contextlib.closing(DialIn(client, supervisor))

    def _remove_dial_in(self) -> None:
        if self._dial_in is not None:
            remove_dial_in_dir(self._dial_in)
            self._dial_in = None

    def _first_channel(self, container_id: str, dial_in: DialIn | None) -> Channel:
        """The new container's channel: the supervisor that dialled in, else one ``docker exec`` opens."""
        if dial_in is not None:
            client = self._engine()
            connection = dial_in.accept(_DIAL_IN_TIMEOUT, lambda: container_running(client, container_id))
            if connection is not None:
                try:
                    dialled = SupervisorChannel.open_dialled(connection, client, container_id)
                except ChannelClosedError:
                    pass  # it called, then ended before its hello: as if it had not called
                else:
                    # Unlike a docker exec's stream, it would outlive the engine: closed when that goes.
                    close_when_engine_lost(client, dialled)
                    return dialled
        channel = self._open_channel(container_id)
        if dial_in is not None and not isinstance(channel, SupervisorChannel):
            _no_dial_in.add(self.image)  # no supervisor runs in this image: do not wait for one again
        return channel

    def _create_container(self, client: docker.DockerClient, image: str, dial_in: DialIn | None) -> str:
        """Create the container on its network (made, and its host rules written, first); its id."""
        for attempt in range(3):
            network = self._ensure_network(client)
            options = self._container_options(dial_in)
            if network == "none" and engine_on_this_machine(client):
                options.update(network_disabled=True, mounts=[*options["mounts"], loopback_hosts_mount()])
            try:
                return create_container(client, image, network_mode=network, **options)
            except NotFound as exc:
                # A network removed by a concurrent prune between our look and our use: make it again.
                if "network" not in str(exc.explanation) or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _ensure_network(self, client: docker.DockerClient) -> str:
        """The container's network (``"none"`` with the network off and no shared network); the
        host's rules for it are in place when this returns."""
        if self.proxied:
            ensure_egress_proxy(client, functools.partial(ensure_egress_proxy_image, client, self.progress))
            if self._egress_id is None:  # a CA of its own, made in the proxy, that only it trusts
                self._egress_id = uuid.uuid4().hex
                self._egress_ca = bundle_with(self.ca_bundle, issue_ca(client, self._egress_id))
            network = PROXIED_NETWORK
        elif self.shared_network is not None:
            network = ensure_shared_network(client, self.shared_network, self.network_owner,
                                            egress=self.network is True, allow_private=self.allow_private,
                                            allow_metadata=not self.block_metadata)
        elif self.network:
            network = ensure_egress_network(client, self.allow_private, not self.block_metadata)
        else:
            return "none"
        secure(client, helper_image=functools.partial(ensure_netfilter_image, client))
        return network

    def _policy(self) -> EgressPolicy:
        assert isinstance(self.network, tuple) and self._egress_id is not None
        return EgressPolicy(self._egress_id, self.network, self._secrets, self.hosts,
                            self.ca_bundle.pem.decode() if self.ca_bundle is not None else None)

    def _put_policy(self, client: docker.DockerClient) -> None:
        if self._egress_address is None:
            raise SandboxError(f"the sandbox {self.name} has no address on {PROXIED_NETWORK}")
        put_policy(client, self._egress_address, self._policy())

    def _forget_egress(self, client: docker.DockerClient) -> None:
        """Drop the sandbox's policy, CA and log from the proxy (its container is gone)."""
        if self._egress_id is not None:
            drop_policy(client, self._egress_address or "-", self._egress_id)
        self._egress_id = self._egress_address = self._egress_ca = None

    def set_network(self, network: bool | Sequence[str], *,
                    secrets: Mapping[str, Mapping[str, str]] | None = _UNCHANGED,
                    hosts: Mapping[str, str] | None = _UNCHANGED) -> None:
        """Change what the sandbox may reach; on a running sandbox with a list of hosts, a new
        list (and ``secrets``, ``hosts``) takes effect at once, for the next request.

        Args:
            network: As :class:`DockerSandbox` takes it.
            secrets: New secret headers (default: keep them; ``None`` or ``{}``: none).
            hosts: New pinned names (default: keep them).

        Raises:
            InvalidArgumentError: a bad pattern, secret or host (nothing changed).
            SandboxStateError: a running sandbox asked to switch between a list of hosts and
                ``True``/``False`` (its container sits on another network: stop and start it).
        """
        checked = _checked_network(network)
        _refuse_host_list_on_cluster(checked, self.cluster)
        with self._lock, engine_errors():
            running = self.state in (SandboxState.RUNNING, SandboxState.PAUSED)
            if running and isinstance(checked, tuple) != self.proxied:
                raise SandboxStateError(
                    f"a running sandbox keeps its kind of network (now {self.network_summary}): a list of hosts goes "
                    "through the egress proxy on a network of its own; stop() it, set_network(), then start() it")
            new_secrets = self._secrets if secrets is _UNCHANGED else checked_secrets(secrets)
            new_hosts = self.hosts if hosts is _UNCHANGED else checked_hosts(hosts)
            if (new_secrets or new_hosts) and not isinstance(checked, tuple):
                raise InvalidArgumentError("secrets and hosts are for the egress proxy: give network a list of host "
                                           "patterns (or secrets={}, hosts={})")
            if running and checked == self.network and (new_secrets, new_hosts) == (self._secrets, self.hosts):
                return
            if running and self.proxied:
                old = (self.network, self._secrets, self.hosts)
                self.network, self._secrets, self.hosts = checked, new_secrets, new_hosts
                try:
                    self._put_policy(self._engine())
                except BaseException:
                    self.network, self._secrets, self.hosts = old
                    raise
            else:
                self.network, self._secrets, self.hosts = checked, new_secrets, new_hosts

    async def aset_network(self, network: bool | Sequence[str], *,
                           secrets: Mapping[str, Mapping[str, str]] | None = _UNCHANGED,
                           hosts: Mapping[str, str] | None = _UNCHANGED) -> None:
        """Async form of :meth:`set_network`."""
        await asyncio.to_thread(functools.partial(self.set_network, network, secrets=secrets, hosts=hosts))

    def egress_log(self, limit: int | None = None) -> list[EgressEvent]:
        """The egress proxy's decisions about this sandbox's requests since it started, oldest
        first (the last ``limit`` ones); empty unless its network is a list of hosts. Not a use:
        reading it never keeps a sandbox from going idle."""
        if not self.proxied or self._egress_id is None:
            return []
        with self._clear_errors("egress_log"):
            events = [EgressEvent(**entry) for entry in read_log(self._engine(), self._egress_id)]
        return events[-limit:] if limit else events

    async def aegress_log(self, limit: int | None = None) -> list[EgressEvent]:
        """Async form of :meth:`egress_log`."""
        return await asyncio.to_thread(self.egress_log, limit)

    @property
    def network_summary(self) -> str:
        """What the sandbox reaches, in words: ``off``, ``on (isolated)``, or ``only HOSTS (egress proxy)``."""
        if isinstance(self.network, tuple):
            return "only " + (", ".join(self.network) or "no host") + " (egress proxy)"
        return "on (isolated)" if self.network else "off"

    def _start_on_cluster(self, cluster: SwarmCluster, prepared: PreparedImage) -> None:
        """Start the sandbox as a one-task Swarm service and reach its container through its
        node's engine (with the lock held)."""
        network, constraints = self._swarm_network(cluster)
        disk_nodes: list[Mapping[str, Any]] = []
        new_disk = False
        if self.disk_size is not None and self._keep_disk:  # a session's: in the storage every node mounts
            self._disk_dir, new_disk = open_in_storage(cluster, self.disk_name, self.disk_size, self._uid, self._gid)
        elif self.disk_size is not None:  # made on every node it may go to, kept on the one it goes to
            self.disk_name = self.disk_name or f"pd-disk-{uuid.uuid4().hex[:16]}"
            disk_nodes = open_on_nodes(cluster, self.disk_name, self.disk_size, self._uid, self._gid)
            self._disk_dir = node_disk_dir(self.disk_name)
        try:
            placement = cluster.run(self.name, prepared.tag, self._container_options(), progress=self.progress,
                                    network=network, constraints=constraints)
        except BaseException:
            release_on_nodes(cluster, self.disk_name, disk_nodes)
            self._disk_dir = None
            raise
        if disk_nodes:
            release_on_nodes(cluster, self.disk_name, disk_nodes, but=placement.node_id)
            self._disk_node = next(node for node in disk_nodes if node["ID"] == placement.node_id)
        try:
            self._placement, self._python, self._node = placement, prepared.python, prepared.node
            if network is None:
                # Swarm has no "none" network: take the task's links down, with a helper running
                # the sandbox's image as the node knows it.
                cut_network(placement.client, placement.container_id, placement.image, prepared.python,
                            self._helper_labels())
            if (disk_nodes or new_disk) and prepared.seeded:  # a new disk gets the snapshot's files, before use
                _seed_disk(placement.client, placement.image, placement.container_id, prepared.seeded)
            self._unpack_snapshot_disk(placement.client, placement.container_id, set())
            self._channel = self._open_channel(placement.container_id)
        except BaseException:
            cluster.remove(self.name)
            self._placement = None
            self._release_disk(delete=not self._keep_disk)
            raise
        self._adopt(placement.client, placement.container_id)

    def _swarm_network(self, cluster: SwarmCluster) -> tuple[str | None, list[str]]:
        """A networked sandbox's swarm network (its nodes' rules in place) and, on a shared network,
        the constraint that puts it on the node of the network's running sandboxes; ``(None, [])``
        without network."""
        if not self.network and self.shared_network is None:
            return None, []
        netfilter = ensure_netfilter_image(docker_client())
        network = ensure_swarm_network(
            cluster, shared=self.shared_network, owner=self.network_owner, egress=self.network is True,
            allow_private=self.allow_private, allow_metadata=not self.block_metadata,
            helper_image=lambda node: cluster.provide(node, netfilter))
        node = shared_network_node(cluster, network) if self.shared_network is not None else None
        return network, [f"node.id=={node}"] if node is not None else []

    def _helper_labels(self) -> dict[str, str]:
        return label.managed({label.OWNER_PID: str(os.getpid()), label.OWNER_HOST: socket.gethostname()})

    def _adopt(self, client: docker.DockerClient, container_id: str) -> None:
        self.container_id = container_id
        if self.remove_on_exit and self.cluster is not None:
            self._finalizer = weakref.finalize(self, _remove_service, self.cluster, self.name,
                                               self.disk_name if self._disk_node is not None else None,
                                               self._disk_node)
        elif self.remove_on_exit:
            self._finalizer = weakref.finalize(self, _remove_sandbox, client, container_id,
                                               self.disk_name if self._disk_dir else None, not self._keep_disk,
                                               self._dial_in)
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

        With ``cluster`` (or ``$PYDANTIC_DEEP_CLUSTER``), ``container`` names the sandbox's service.

        Raises:
            SandboxStateError: the container is not a running pydantic_deep sandbox.
        """
        cluster = resolve_cluster(options.get("cluster"))
        placement = cluster.locate(container) if cluster is not None else None
        # On a lost node the service's task may still be listed as running: no sandbox there either.
        lost_node = (EngineConnectionError,) if cluster is not None else ()
        with engine_errors():
            try:
                if cluster is not None and placement is None:
                    raise NotFound(container)
                client = placement.client if placement is not None else docker_client()
                attrs = client.api.inspect_container(placement.container_id if placement else container)
            except (NotFound, *lost_node):
                raise SandboxStateError(f"no sandbox container {container!r}") from None
        labels = attrs["Config"]["Labels"] or {}
        if label.RUNTIME_CONFIG not in labels or not attrs["State"]["Running"]:
            raise SandboxStateError(f"container {container!r} is not a running pydantic_deep sandbox")
        disk = labels.get(label.DISK)
        options = {**options, "disk_size": labels.get(label.DISK_SIZE) if disk else None}
        if label.EGRESS_HOSTS in labels and not isinstance(options.get("network"), (list, tuple)):
            options["network"] = json.loads(labels[label.EGRESS_HOSTS])
        if attrs["State"]["Paused"]:  # paused by another process: a channel cannot open on it frozen
            with engine_errors():
                resume_container(client, attrs["Id"])
        sandbox = cls(
            RuntimeConfig.model_validate_json(labels[label.RUNTIME_CONFIG]),
            user=attrs["Config"]["User"], session_id=labels[label.SESSION],
            name=labels.get("com.docker.swarm.service.name") or attrs["Name"].lstrip("/"),
            remove_on_exit=remove_on_exit,
            volumes={m["Name"]: m["Destination"] for m in attrs["Mounts"] if m["Type"] == "volume"},
            labels={k: v for k, v in labels.items() if not k.startswith(label.PREFIX)}, **options,
        )
        sandbox.image = labels.get(label.IMAGE)
        sandbox._placement = placement
        if disk:
            sandbox.disk_name, sandbox._keep_disk = disk, labels.get(label.DISK_KEEP) == "true"
            sandbox._disk_dir = next((m["Source"] for m in attrs["Mounts"] if m["Destination"] == sandbox.work_dir),
                                     "").rsplit("/", 1)[0] or None
            if cluster is not None and cluster.session_storage is not None and sandbox._keep_disk:
                sandbox._disk_dir = f"{cluster.session_storage}/{disk}"  # on the node, a volume serving it
        with sandbox._lock, engine_errors():
            if sandbox.proxied and label.EGRESS_ID in labels:  # this process's secrets and list, at once
                sandbox._egress_id, sandbox._egress_address = labels[label.EGRESS_ID], sandbox_address(attrs)
                sandbox._put_policy(client)
            sandbox._python, sandbox._node = recorded_interpreters(client.images.get(attrs["Image"]).labels)
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
        self._close_ports()  # before the lock: a connection being opened may wait for it
        with self._lock:
            if self._channel is not None:
                self._channel.close()  # the supervisor kills what still runs
            if self._finalizer is not None:
                self._finalizer.detach()
            if self.state in (SandboxState.RUNNING, SandboxState.PAUSED) and self.container_id is not None:
                with engine_errors():
                    if self.cluster is not None:
                        self.cluster.remove(self.name)  # works with the node lost, too
                    else:
                        remove_container(docker_client(), self.container_id)
                    self._forget_egress(docker_client())
                    if self.shared_network is not None and self.cluster is not None:  # the last one out...
                        remove_unused_swarm_networks(self.cluster)
                    elif self.shared_network is not None:  # the last one out removes it
                        remove_network_if_unused(docker_client(), self._shared_network_name())
                    if self._fork_image is not None:
                        remove_fork_image(self._fork_image)
                self.state = SandboxState.STOPPED
            self._finalizer = self._channel = None
            self._remove_dial_in()  # its container is gone, this way or another (docker rm, its engine)
            if self._lifeline is not None:
                self._lifeline.close()
                self._lifeline = None
            with engine_errors():
                self._release_disk(delete=remove_volumes or not self._keep_disk)
                if remove_volumes:
                    for volume in self.volumes:
                        if self.cluster is not None:
                            self.cluster.remove_volume(volume)
                        else:
                            remove_volume(volume)

    def _open_channel(self, container_id: str) -> Channel:
        """The supervisor channel (run by the image's ``python3``, else its ``node``), or one
        ``docker exec`` per command where neither can run it."""
        client = self._engine()
        command = supervisor_command(self._python, self._node)
        if command is not None:
            try:
                return SupervisorChannel.open(client, container_id, command)
            except ChannelClosedError:
                if not container_running(client, container_id):
                    raise self._gone() from None
                reason = (f"its {self._python} could not run the supervisor (Python 3.8+ is needed)" if self._python
                          else f"its {self._node} could not run the supervisor (Node.js 18+ is needed)")
        else:
            reason = "it has neither python3 nor node"
        if self.image not in _exec_fallback_logged:
            _exec_fallback_logged.add(self.image)
            logger.warning("Image %s: %s, so commands use one docker exec each (about 50 ms)", self.image, reason)
        return DockerExecChannel(client, container_id)

    def _live_channel(self) -> Channel:
        """The running sandbox's channel, re-opened if it died (the container must still run).
        A paused sandbox is resumed first: every call gets here."""
        if self.state is SandboxState.PAUSED:
            self.resume()
        container_id = self._running_id()
        with self._lock:
            if self._channel is None:
                raise SandboxStateError("this sandbox was stopped while the command was starting")
            if not self._channel.alive:
                self._channel = self._open_channel(container_id)
            return self._channel

    def _stream_channel(self) -> SupervisorChannel:
        """The live supervisor channel, for connections to the sandbox's ports."""
        channel = self._live_channel()
        if not isinstance(channel, SupervisorChannel):
            raise SandboxError(f"ports cannot be exposed from image {self.image}: it runs commands one docker exec "
                               "each, without the supervisor that carries connections (it needs python3 3.8+ "
                               "or node 18+)")
        return channel

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
            except EngineConnectionError:
                self._check_node()
                raise
            except TransferInterruptedError as exc:
                if self._container_gone():
                    raise self._gone() from exc
                raise

    def _container_gone(self) -> bool:
        """Whether the container stopped or was removed. A call cut off by ``docker rm -f`` fails a
        moment before the engine calls the container stopped, so a running one gets 2 s to stop."""
        self._check_node()
        return self.container_id is not None and container_stops_within(self._engine(), self.container_id, 2)

    def _check_node(self) -> None:
        """On a cluster, raise :class:`NodeLostError` when the sandbox's node does not answer."""
        if self.cluster is not None and self._placement is not None:
            lost = self.cluster.lost(self._placement)
            if lost is not None:
                raise lost

    def _explain(self, exc: Exception, action: str) -> Exception:
        """What ``action``, failed with ``exc``, should raise: asks the engine about the container."""
        if self._container_gone():
            return self._gone()
        if isinstance(exc, ChannelClosedError):
            # The supervisor went away, the container did not: the next call re-opens the channel.
            return ChannelClosedError(str(exc))
        detail = exc.explanation if isinstance(exc, APIError) and exc.explanation else str(exc)
        return SandboxError(f"{action} failed: {detail}")

    def _container_options(self, dial_in: DialIn | None = None) -> dict[str, Any]:
        environment = {"HOME": HOME_DIR, **self.runtime.env_vars}
        # Mounts, not binds: binds are also declared as the container's volumes, which a snapshot's
        # commit would carry into its image (and every container of the snapshot would get them).
        mounts = [docker.types.Mount(path, name, type="volume") for name, path in self.volumes.items()]
        # Tied to this process (remove_on_exit): wait for EOF on stdin, then exit and be removed.
        # Exec'd, the main process no longer names the supervisor in its arguments (a `pkill -f
        # supervisor` must not end the container).
        main = "exec cat >/dev/null" if self.remove_on_exit else "exec sleep infinity"
        dial_in_labels = {}
        if dial_in is not None:
            mounts.append(dial_in.mount)
            dial_in_labels = {label.DIAL_IN: dial_in.name}
        disk_labels = {}
        if self._disk_dir is not None:
            # A bind mount of a missing source fails (a `volumes` bind would create it on the host's
            # disk): the container never starts with an uncapped work dir.
            targets = {"work": self.work_dir, "uploads": UPLOADS_DIR, "home": HOME_DIR}
            if not self.tmp_size:
                targets["tmp"] = "/tmp"
            # A named volume the caller mounts at one of these paths is theirs: the disk is not put over it.
            mounts += [docker.types.Mount(target, f"{self._disk_dir}/{part}", type="bind")
                       for part, target in targets.items() if target not in self.volumes.values()]
            disk_labels = {label.DISK: self.disk_name, label.DISK_KEEP: str(self._keep_disk).lower(),
                           label.DISK_SIZE: str(self.disk_size)}
        ca_bundle = self._egress_ca or self.ca_bundle
        if ca_bundle is not None:
            environment.update(ca_bundle.environment())
            mounts.append(docker.types.Mount(CONTAINER_CA_PATH, str(ca_bundle.host_file()), type="bind",
                                             read_only=True))
        egress_labels = {}
        if isinstance(self.network, tuple) and self._egress_id is not None:
            environment.update(proxy_environment())
            egress_labels = {label.EGRESS_ID: self._egress_id, label.EGRESS_HOSTS: json.dumps(list(self.network))}
        return dict(
            entrypoint=dial_in.entrypoint(main) if dial_in is not None else ["sh", "-c", main],
            stdin_open=self.remove_on_exit,  # docker-py sets StdinOnce with it: EOF once we go
            auto_remove=self.remove_on_exit,
            name=self.name,
            user=f"{self._uid}:{self._gid}",
            working_dir=self.work_dir,
            environment=environment,
            mounts=mounts,
            # With a disk, nothing else the sandbox could write may be on the host's disk.
            read_only=self._disk_dir is not None,
            labels={
                **self.labels,
                **disk_labels,
                **egress_labels,
                **dial_in_labels,
                label.MANAGED: "true",
                label.SESSION: self.session_id,
                label.RUNTIME: self.runtime.name,
                label.RUNTIME_CONFIG: self.runtime.model_dump_json(),
                label.IMAGE: self.image or "",
                label.CREATED: datetime.now(UTC).isoformat(timespec="seconds"),
                label.OWNER_PID: str(os.getpid()),
                label.OWNER_HOST: socket.gethostname(),
                **({label.FROM_SNAPSHOT: self.from_snapshot.name} if self.from_snapshot is not None else {}),
            },
            init=True,
            # Nothing reads the container's log, and a command can write to it (through the main
            # process's standard output, /proc/<pid>/fd/1): a json-file log would fill the host's disk.
            log_config=docker.types.LogConfig(type=docker.types.LogConfig.types.NONE),
            ulimits=[docker.types.Ulimit(name="fsize", soft=self.max_file_size, hard=self.max_file_size)]
            if self.max_file_size else None,
            tmpfs={"/tmp": f"rw,exec,nosuid,nodev,mode=1777,size={self.tmp_size}"} if self.tmp_size else None,
            # Without IPv6 nothing reaches the host or a neighbour past the IPv4 rules.
            sysctls={"net.ipv6.conf.all.disable_ipv6": "1"} if self.network is not False or self.shared_network
            else None,
            cap_drop=["ALL"] if self.drop_capabilities else None,
            security_opt=["no-new-privileges"] if self.no_new_privileges else None,
            pids_limit=self.pids_limit,
            mem_limit=self.memory,
            nano_cpus=int(self.cpus * 1e9) if self.cpus else None,
        )

    def _shared_network_name(self) -> str:
        assert self.shared_network is not None
        return shared_network_name(self.shared_network, self.network_owner)

    def _gone(self) -> ContainerGoneError:
        self._remove_dial_in()  # the container went without us: the directory it needed goes now
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

    # -- commands -----------------------------------------------------------------------------

    @_in_use
    def execute(self, command: str, timeout: float | None = None, *,
                on_output: OutputCallback | None = None) -> ExecuteResult:
        """The contract's :meth:`SandboxBase.execute`, through the container's channel."""
        return self._live_channel().run(command, timeout=self._timeout(timeout), max_output=self.max_output,
                                        on_output=on_output)

    async def aexecute(self, command: str, timeout: float | None = None, *,
                       on_output: OutputCallback | None = None) -> ExecuteResult:
        """Async form of :meth:`execute`: waits on the event loop, not on a thread, so many
        commands can run at once."""
        with self._activity(), engine_errors():
            try:
                channel = self._channel
                if not (self.state is SandboxState.RUNNING and channel is not None and channel.multiplexed
                        and channel.alive):
                    # Starting, re-opening or asking the engine: in a worker thread, off the loop.
                    channel = await asyncio.to_thread(self._live_channel)
                return await channel.arun(command, timeout=self._timeout(timeout),
                                          max_output=self.max_output, on_output=on_output)
            except _CONTAINER_FAILURES as exc:
                raise await asyncio.to_thread(self._explain, exc, "aexecute") from exc
            except EngineConnectionError:
                await asyncio.to_thread(self._check_node)
                raise

    @_in_use
    def spawn(self, command: str, *, on_output: OutputCallback) -> Process:
        """Start a long-lived ``command`` (an interpreter, say) with an open standard input.

        Its output goes to ``on_output`` as it comes, and nothing is kept; it has no timeout.
        """
        return self._live_channel().spawn(command, on_output)

    @_in_use
    def terminal(self, cols: int = 80, rows: int = 24, command: str | None = None, *,
                 on_output: Callable[[str], object] | None = None) -> Terminal:
        """Open an interactive terminal in the container (see :meth:`SandboxBase.terminal`)."""
        checked_terminal_size(cols, rows)
        return self._live_channel().terminal(command, cols=cols, rows=rows, on_output=on_output,
                                             on_activity=self._used)

    # -- files --------------------------------------------------------------------------------

    @_in_use
    def write_file(self, path: str, content: bytes | str) -> str:
        """The contract's :meth:`SandboxBase.write_file`, through the container's channel."""
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
        write_into(self._engine(), self._live_container(), target, self.allowed_roots, content, size)
        return target

    @_in_use
    def read_file(self, path: str) -> bytes:
        """The contract's :meth:`SandboxBase.read_file`, through the container's channel."""
        buffer = io.BytesIO()
        self._copy_out(path, buffer)
        return buffer.getvalue()

    @_in_use
    def _copy_out(self, path: str, target: BinaryIO) -> int:
        source = resolve_sandbox_path(path, self.work_dir, self.allowed_roots)
        return read_from(self._engine(), self._live_container(), source, self.allowed_roots, target)

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
        the sandbox user, with the file API's symlink check (see :mod:`pydantic_deep.execution.transfer`)."""
        result = self.execute(shlex.join(file_command(op, path, self.allowed_roots)), timeout=60)
        if result.truncated:
            raise SandboxError(f"the answer for {path} went past max_output ({self.max_output} bytes)")
        check_outcome(result.exit_code, result.stderr, path, self.allowed_roots)
        return result

    # -- the container ------------------------------------------------------------------------

    @_in_use
    def rename(self, name: str) -> None:
        """Give the container a new name (a session manager names a pooled sandbox for its user).

        Raises:
            SandboxStateError: the sandbox is on a cluster, where Swarm cannot rename its service.
        """
        if self.cluster is not None:
            raise SandboxStateError(f"a sandbox on a cluster keeps its name ({self.name}): Swarm cannot rename "
                                    "a service")
        docker_client().api.rename(self._running_id(), name)
        self.name = name

    def usage(self) -> ResourceUsage:
        """The container's memory in use, CPU time so far, and its disk's use against its size
        (one cheap stats call, and one quick command when it has a disk). Does not count as use:
        polling it never keeps a sandbox from going idle."""
        with self._clear_errors("usage"):
            stats = self._engine().api.stats(self._running_id(), stream=False, one_shot=True)
            disk_used, disk_limit = self._disk_usage()
        return ResourceUsage(memory_bytes=stats.get("memory_stats", {}).get("usage", 0),
                             cpu_seconds=stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage", 0) / 1e9,
                             disk_bytes=disk_used, disk_limit_bytes=disk_limit)

    def _disk_usage(self) -> tuple[int, int | None]:
        """(bytes used, filesystem size) of the disk, asked of the running container's filesystem
        (of a paused one, as it was when paused: a command would have to resume it)."""
        if self._disk_dir is None:
            return 0, None
        if self.state is SandboxState.PAUSED:
            return self._disk_usage_when_paused
        # Through the channel itself, not execute(): no activity, so the sandbox's idle time stands.
        result = self._live_channel().run(f"stat -f -c '%S %b %f' -- {shlex.quote(self.work_dir)}",
                                          timeout=30, max_output=4096)
        try:
            block, total, free = map(int, result.stdout.split())
        except ValueError:
            raise SandboxError(f"could not read the disk's use: {result.output.strip()}") from None
        return (total - free) * block, total * block

    # -- pause, snapshot, fork ----------------------------------------------------------------

    @engine_errors()
    def pause(self) -> None:
        """Freeze the sandbox in place (the cgroup freezer): it uses no CPU and keeps its memory,
        its processes and the variables of its interpreters.

        :attr:`state` becomes ``paused``. The next call (a command, a file, an interpreter's cell)
        resumes it first, by itself; :meth:`resume` does it explicitly. A command running meanwhile
        is frozen with the rest, its timeout still counting. A no-op when paused already.

        Raises:
            SandboxStateError: the sandbox is not running (never started, or stopped).
        """
        if self.state is SandboxState.RUNNING and self._disk_dir is not None:
            with self._clear_errors("pause"):
                # Read while a command can still run; a frozen sandbox writes nothing till resumed.
                self._disk_usage_when_paused = self._disk_usage()
        with self._lock:
            if self.state is SandboxState.PAUSED:
                return
            if self.state is not SandboxState.RUNNING or self.container_id is None:
                raise SandboxStateError(f"only a running sandbox can be paused; this one is {self.state.value}")
            with self._clear_errors("pause"):
                pause_container(self._engine(), self.container_id)
            self.state = SandboxState.PAUSED

    def pause_if_idle(self, idle: float) -> bool:
        """Pause the sandbox if it ran and was unused for ``idle`` seconds; a call that comes
        meanwhile waits for the pause and then resumes it, so none is ever frozen mid-way.

        Returns:
            Whether it was paused now.
        """
        with self._activity_lock:  # no call can begin while this looks and pauses
            if self._busy or time.monotonic() - self.last_used < idle or self.state is not SandboxState.RUNNING:
                return False
            self.pause()
            return True

    @engine_errors()
    def resume(self) -> None:
        """Thaw a paused sandbox (any call does it by itself, first); a no-op unless paused."""
        with self._lock:
            if self.state is not SandboxState.PAUSED or self.container_id is None:
                return
            with self._clear_errors("resume"):
                resume_container(self._engine(), self.container_id)
            self.state = SandboxState.RUNNING

    def _take_snapshot(self, container_id: str, name: str | None = None,
                       kind: Literal["snapshot", "fork"] = "snapshot", fork_disk: str | None = None) -> Snapshot:
        """A snapshot of the container, made on its engine; on a cluster, made on its node and
        loaded into this host's engine, where snapshots live (and from where the cluster hands it to
        the node a sandbox started from it lands on)."""
        # A local disk is kept whole as a file; a cluster's is on its node, out of reach: its files
        # go into the image as a named volume's do.
        # Local named volumes are copied as files too (on the host, beside the image).
        local_disk = self._disk_dir is not None and self.cluster is None
        snap = take_snapshot(container_id, runtime=self.runtime, user=f"{self._uid}:{self._gid}",
                             volume_paths=self._snapshot_paths(), disk_size=self.disk_size, name=name, kind=kind,
                             client=self._engine(), disk=self.disk_name if local_disk else None,
                             disk_parts=self._disk_parts(), fork_disk=fork_disk,
                             volume_sources=self._local_volumes(self._engine()) if kind == "snapshot" else None)
        if self.cluster is None or self._placement is None:
            return snap
        home = bring_home(snap, self._placement.client)
        self.cluster.known_on(self._placement.node_id, home.tag)
        return home

    def snapshot(self, name: str | None = None) -> Snapshot:
        """Keep the sandbox's files as a named snapshot, to start from, restore or fork later.

        It holds everything the container changed in its filesystem, the content of its named
        volumes (a session's work dir and ``/uploads``) and of its disk (``disk_size``: the work dir,
        ``/uploads`` and home), and the disk's size, taken at one moment: the sandbox is paused
        for the copy and resumed after it (a paused sandbox stays paused). Not kept: memory and
        processes (interpreter variables), and ``/tmp``. It lives in the engine as an image, with
        a copy of the disk's file and of local named volumes beside it on the engine's host (see
        :mod:`pydantic_deep.sandbox.snapshot_disks`), so it outlives this process: see
        :func:`pydantic_deep.list_snapshots`.

        Args:
            name: Its name (letters, digits, ``_.-``); default ``snapshot-<runtime>-<time>-<random>``.

        Raises:
            InvalidArgumentError: a malformed name, or one a snapshot already has.

        On a cluster the snapshot is made on the sandbox's node and loaded into this host's engine
        (where every snapshot lives); a sandbox started from it gets it on its node as any image.
        """
        container_id = self._running_id() if self.state is SandboxState.PAUSED else self._live_container()
        return self._take_snapshot(container_id, name)

    def restore(self, snapshot: Snapshot | str) -> Self:
        """Roll the sandbox back to ``snapshot``: its container is replaced by one started from the
        snapshot, and its named volumes (or its disk, ``disk_size``, which keeps its size) are
        emptied and filled with the snapshot's files.

        Processes and interpreter variables start afresh (a snapshot holds files only). The
        sandbox takes the snapshot's runtime.

        Raises:
            SnapshotNotFoundError: there is no such snapshot.
            InvalidArgumentError: the snapshot's files belong to another user than this sandbox's.
            SandboxStateError: a sandbox with named volumes (a session's) on a cluster, whose
                volumes are on its nodes.
        """
        if self.cluster is not None and self.volumes:
            raise SandboxStateError("restore() of a sandbox with named volumes (a session's) is not available on a "
                                    "cluster: its volumes are on the nodes it ran on; start a new sandbox from the "
                                    "snapshot instead (DockerSandbox(snapshot=..., cluster=...))")
        snap = resolve_snapshot(snapshot)
        if snap.user != f"{self._uid}:{self._gid}":
            raise InvalidArgumentError(f"snapshot {snap.name!r} holds files of user {snap.user}, "
                                       f"this sandbox runs as {self.user}")
        self.stop()
        with engine_errors():
            for volume in self.volumes:
                create_volume(volume)  # empty: the engine fills it from the snapshot's image
            if self.disk_size is not None and self._keep_disk:
                release_disk(self.disk_name, delete=True)  # made anew on start, seeded from the snapshot
        self.from_snapshot, self.runtime = snap, snap.runtime
        return self.start()

    def fork(self, n: int) -> list[DockerSandbox]:
        """``n`` independent, started copies of this sandbox's files, taken at one moment.

        Each has its own container (with this sandbox's limits and settings) and its own copy of
        the files; a change in one is never seen in another, nor here. A fork of a sandbox with
        named volumes has its copy of them in its own container (nothing to clean up): forks are
        for trying things (parallel agent attempts, "what if" in a notebook), sessions for keeping
        them. Processes and interpreter variables are not copied. Stop each fork when done; the
        image they share goes with the last one.

        Raises:
            InvalidArgumentError: ``n`` is not a number from 1 to 64.
        """
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 64:
            raise InvalidArgumentError(f"fork(n) needs a number of copies from 1 to 64, not {n!r}")
        # A local disk is copied straight as the first fork's disk, in the same pause as the commit;
        # that copy to the others once the source runs again.
        disks = tuple(f"pd-disk-{uuid.uuid4().hex[:16]}" for _ in range(n)) \
            if self._disk_dir is not None and self.cluster is None else ()
        with self._activity(), self._clear_errors("fork"):
            container_id = self._running_id() if self.state is SandboxState.PAUSED else self._live_container()
            snap = None
            try:
                snap = self._take_snapshot(container_id, kind="fork", fork_disk=disks[0] if disks else None)
                if disks:
                    spread_disk(disks[0], disks[1:])
            except BaseException:
                for disk in disks:
                    release_disk(disk, delete=True)
                if snap is not None:
                    remove_fork_image(snap.image)
                raise
        forks = [self._fork_from(snap, disk) for disk in disks or (None,) * n]
        try:
            with ThreadPoolExecutor(max_workers=n, thread_name_prefix="pydantic-deep-fork") as pool:
                list(pool.map(DockerSandbox.start, forks))
        except BaseException:
            for fork in forks:
                fork.stop()
            with engine_errors():
                for disk in disks:  # those of forks that did not start
                    release_disk(disk, delete=True)
                remove_fork_image(snap.image)
            raise
        return forks

    def _fork_from(self, snap: Snapshot, disk: str | None) -> DockerSandbox:
        fork = DockerSandbox(
            self.runtime, network=self.network, secrets=self._secrets, hosts=self.hosts, user=self.user,
            memory=self.memory, cpus=self.cpus,
            pids_limit=self.pids_limit,
            max_file_size=str(self.max_file_size) if self.max_file_size else None,
            tmp_size=str(self.tmp_size) if self.tmp_size else None,
            disk_size=str(self.disk_size) if self.disk_size else None,
            drop_capabilities=self.drop_capabilities, no_new_privileges=self.no_new_privileges,
            block_metadata=self.block_metadata, command_timeout=self.command_timeout,
            max_output=self.max_output, ca_bundle=False, progress=self.progress,
            labels={key: value for key, value in self.labels.items() if not key.startswith(label.PREFIX)},
            cluster=self.cluster or False,
        )
        fork.ca_bundle, fork.from_snapshot, fork._fork_image = self.ca_bundle, snap, snap.image
        if disk is not None:
            fork.disk_name, fork._fork_disk = disk, True
        return fork

    async def apause(self) -> None:
        """Async form of :meth:`pause`."""
        await asyncio.to_thread(self.pause)

    async def aresume(self) -> None:
        """Async form of :meth:`resume`."""
        await asyncio.to_thread(self.resume)

    async def asnapshot(self, name: str | None = None) -> Snapshot:
        """Async form of :meth:`snapshot`."""
        return await asyncio.to_thread(self.snapshot, name)

    async def arestore(self, snapshot: Snapshot | str) -> Self:
        """Async form of :meth:`restore`."""
        return await asyncio.to_thread(self.restore, snapshot)

    async def afork(self, n: int) -> list[DockerSandbox]:
        """Async form of :meth:`fork`."""
        return await asyncio.to_thread(self.fork, n)

    # -- display ------------------------------------------------------------------------------

    def __repr__(self) -> str:
        container = self.container_id[:12] if self.container_id else None
        node = f" node={self.node!r}" if self.node is not None else ""
        return (f"<DockerSandbox runtime={self.runtime.name!r} image={self.image!r} "
                f"state={self.state.value} container={container}{node}>")

    def _repr_html_(self) -> str:
        rows = {
            "Runtime": self.runtime.name,
            "Description": self.runtime.description,
            "Image": self.image or "(built on start)",
            "State": self.state.value,
            "Container": self.container_id[:12] if self.container_id else "-",
            "Work dir": self.work_dir,
            "Network": self.network_summary
            + (f", shared network {self.shared_network!r}" if self.shared_network else ""),
            "Disk": f"{self.disk_size / 2 ** 20:,.0f} MB" if self.disk_size else "not capped",
            **({"Node": self.node} if self.node is not None else {}),
            **({"Ports": ", ".join(f"{item.port} at {item.url}" for item in self.exposed)} if self.exposed else {}),
        }
        return field_table("DockerSandbox", rows)


def _seed_disk(client: docker.DockerClient, image: str, container_id: str, directories: tuple[str, ...]) -> None:
    """Copy what the image holds in ``directories`` onto the new disk mounted over them in the
    created (not yet started) container: the files a plain container would have there."""
    source = client.api.create_container(image, labels=label.managed())["Id"]

    def seed(directory: str) -> None:
        # "dir/." archives the directory's content as "./...", put into the mount itself (the
        # engine refuses to write elsewhere in a read-only root filesystem).
        chunks, _stat = client.api.get_archive(source, f"{directory}/.")
        client.api.put_archive(container_id, directory, chunks)  # streamed

    try:
        # Side by side: each is two round trips to the engine, mostly waiting (the work dir, `/uploads`
        # and home of a fork or a restored sandbox are often small).
        with ThreadPoolExecutor(len(directories) or 1, thread_name_prefix="pydantic-deep-seed") as executor:
            list(executor.map(seed, directories))
    finally:
        remove_container(client, source)


def _remove_sandbox(client: docker.DockerClient, container_id: str, disk: str | None, delete_disk: bool,
                    dial_in: str | None) -> None:
    """Remove a sandbox's container, then release its disk (garbage collection, interpreter exit)."""
    remove_container(client, container_id)
    if dial_in is not None:  # the container may have gone another way
        remove_dial_in_dir(dial_in)
    if disk is not None:
        release_disk(disk, delete=delete_disk)


def _remove_service(cluster: SwarmCluster, name: str, disk: str | None, node: Mapping[str, Any] | None) -> None:
    """Remove a cluster sandbox's service, then its disk on its node (garbage collection, interpreter exit)."""
    cluster.remove(name)
    if disk is not None and node is not None:
        release_on_nodes(cluster, disk, [node])
