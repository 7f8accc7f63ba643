"""SwarmCluster: sandboxes as Docker Swarm services, placed by Swarm across many hosts.

Each sandbox is a service of one task. Swarm places the task (the sandbox's memory and CPU limits
are also its reservations, so no node is overcommitted; the user's placement constraints and
spread preference apply); the task's container is then reached through its node's own engine,
because Swarm does not proxy ``exec`` or the archive endpoints. Everything else about a sandbox
(channel, files, limits, labels) is the single-host code, given the node's engine client.

Where the node engines are: a mapping the user gives (``nodes={"node1": "tcp://10.0.0.11:2376"}``,
keyed by the node's ``pydantic-deep.node`` label or its hostname), else each node's
``pydantic-deep.engine`` label. With ``tls``, every engine is reached over TLS.

Images reach the nodes through a registry the user names (pushed once from the manager's engine,
pulled by each node), or without one by loading them from this host's engine into each node that
lacks them (``docker save | docker load``, through the node's engine).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import (
    ConfigReference,
    DriverConfig,
    Mount,
    Placement,
    Resources,
    RestartPolicy,
    ServiceMode,
    TaskTemplate,
)
from docker.utils import parse_bytes
from requests.exceptions import ConnectionError as EngineConnectionError

from ..errors import DockerUnavailableError, InvalidArgumentError, NodeLostError, SandboxError
from . import labels as label
from .api import engine_client
from .client import docker_client

__all__ = ["CLUSTER_VARIABLE", "NODE_ENGINE_LABEL", "NODE_ID_TEMPLATE", "NODE_NAME_LABEL", "SwarmCluster",
           "TaskPlacement", "resolve_cluster"]

CLUSTER_VARIABLE = "PYDANTIC_DEEP_CLUSTER"
"""The environment variable naming a Swarm manager: every sandbox then runs on that cluster."""

NODE_NAME_LABEL = label.NODE
"""A node label naming the node (else its hostname is its name)."""

NODE_ENGINE_LABEL = label.NODE_ENGINE
"""A node label holding the address of the node's own engine (``unix://``, ``tcp://``)."""

logger = logging.getLogger(__name__)

NODE_ID_TEMPLATE = "{{.Node.ID}}"
"""Swarm's template for the id of the node a task runs on (in a mount's source, say)."""

# Seconds a task may wait on its node (assigned, preparing...) before the node's engine is asked
# whether it is there at all.
_PENDING_BEFORE_ASKING = 3.0
_RUNNING, _FAILED = "running", {"failed", "rejected", "shutdown", "complete", "orphaned", "remove"}
_SERVICE_LABEL = label.SERVICE


@dataclass(frozen=True)
class TaskPlacement:
    """Where a sandbox's task runs: the node's name and id, its engine, the container there and
    the image reference the node knows it by."""

    node: str
    node_id: str
    address: str
    client: docker.DockerClient
    container_id: str
    image: str


class _PlacedOnLostNode(Exception):
    """A sandbox's task waits on a node whose engine does not answer: it goes elsewhere."""


class SwarmCluster:
    """A Docker Swarm that sandboxes run on, one service of one task each.

    Example:
        ```python
        cluster = SwarmCluster("tcp://manager:2376", tls=TLSConfig(...), volume_driver="local",
                               volume_driver_options={"type": "nfs", "o": "addr=10.0.0.5,rw",
                                                      "device": ":/export/sessions"})
        with DockerSandbox(cluster=cluster) as sandbox:
            print(sandbox.node, sandbox.execute("hostname").output)
        ```

    Args:
        manager: The address of a Swarm manager's engine (``unix://...``, ``tcp://host:2376``).
        nodes: Each node's engine address by node name (its ``pydantic-deep.node`` label, else its
            hostname); nodes missing here are found through their ``pydantic-deep.engine`` label.
        tls: TLS settings for the manager and every node engine (``docker.tls.TLSConfig``).
        registry: A registry every node can pull from (``host:port``): each image is pushed there
            once, from the manager's engine (loaded there from this host's first), and the nodes
            pull it. Without one, each node that lacks an image gets it loaded from this host's
            engine.
        volume_driver: The volume driver of the sandboxes' named volumes; it must serve the same
            files on every node (NFS through the ``local`` driver, say) for session files to
            survive a move to another node. ``None``: each node's own disk, lost with the node.
        volume_driver_options: The driver's options (``{"type": "nfs", "o": "addr=...,rw",
            "device": ":/export/..."}``); ``{name}`` in a value becomes the volume's name.
        session_storage: The directory on this host that the volume driver's ``{name}`` device
            serves to every node (the NFS export, ``/export/sessions`` for the device
            ``":/export/sessions/{name}"``). With it, sessions get their quota on a cluster
            (``SessionManager(disk_size=...)``, by default the runtime's ``disk_size``): each
            session's directory there is the mount point of a size-capped filesystem of its own
            (see :mod:`pydantic_deep.sandbox.cluster_disk`), so whichever node runs the session
            writes into it, and the quota holds across nodes and node losses. This process's
            Docker engine must run on this host. NFS needs the export to cross into those
            filesystems: ``crossmnt`` (see docs/cluster.md).
        constraints: Swarm placement constraints every sandbox gets (``"node.labels.gpu==yes"``).
        spread: A node label to spread sandboxes evenly over its values (``"zone"``).
        start_timeout: Seconds a sandbox's task may take to be placed and running.
        heartbeat: Seconds an engine may take to answer a ping before its node is called lost.
    """

    def __init__(
        self,
        manager: str,
        *,
        nodes: Mapping[str, str] | None = None,
        tls: docker.tls.TLSConfig | None = None,
        registry: str | None = None,
        volume_driver: str | None = None,
        volume_driver_options: Mapping[str, str] | None = None,
        session_storage: str | os.PathLike[str] | None = None,
        constraints: Sequence[str] = (),
        spread: str | None = None,
        start_timeout: float = 60,
        heartbeat: float = 3,
    ) -> None:
        if not isinstance(manager, str) or "://" not in manager:
            raise InvalidArgumentError(f"manager must be an engine address like 'tcp://host:2376' or "
                                       f"'unix:///path/docker.sock', not {manager!r}")
        if isinstance(constraints, str):
            raise InvalidArgumentError("constraints must be a list of strings, e.g. ['node.labels.gpu==yes']")
        if volume_driver_options and not volume_driver:
            raise InvalidArgumentError("volume_driver_options need a volume_driver (e.g. 'local')")
        self.manager = manager
        self.nodes = dict(nodes or {})
        self.tls = tls
        self.registry = registry.rstrip("/") if registry else None
        self.volume_driver = volume_driver
        self.volume_driver_options = dict(volume_driver_options or {})
        self.session_storage = _checked_session_storage(session_storage, volume_driver, self.volume_driver_options)
        self.constraints = list(constraints)
        self.spread = spread
        self.start_timeout = start_timeout
        self.heartbeat = heartbeat
        self._clients: dict[str, docker.DockerClient] = {}
        self._lock = threading.Lock()
        self._images: set[tuple[str, str]] = set()  # (node id, image) known present
        # Nodes whose engine stopped answering, by id: kept out of placement until they answer
        # again (the manager takes a heartbeat or two to call them down, and would place there).
        self._lost: dict[str, str] = {}

    @classmethod
    def from_env(cls) -> SwarmCluster | None:
        """The cluster ``$PYDANTIC_DEEP_CLUSTER`` names, or ``None`` when it is unset or empty."""
        address = os.environ.get(CLUSTER_VARIABLE, "").strip()
        return cls(address) if address else None

    # -- engines ------------------------------------------------------------------------------

    def engine(self, address: str) -> docker.DockerClient:
        """The (shared) client of the engine at ``address``.

        Raises:
            DockerUnavailableError: the engine and this cluster's ``tls`` do not agree (the engine
                needs TLS and none was given, refused the client's certificate, presented one the
                CA does not verify, or speaks no TLS); the message says which and what to pass.
        """
        with self._lock:
            client = self._clients.get(address)
            if client is None:
                try:
                    client = engine_client(address, self.tls, timeout=120, max_pool_size=64)
                except DockerException as exc:
                    refusal = _tls_refusal(address, self.tls is not None, str(exc))
                    if refusal is None:
                        raise
                    raise DockerUnavailableError(refusal) from None
                self._clients[address] = client
            return client

    @property
    def client(self) -> docker.DockerClient:
        """The manager's engine."""
        return self.engine(self.manager)

    def engine_answers(self, address: str) -> bool:
        """Whether the engine at ``address`` answers a ping within :attr:`heartbeat` seconds."""
        try:
            engine_client(address, self.tls, version="1.41", timeout=self.heartbeat).ping()
        except (DockerException, OSError):
            return False
        return True

    def node_name(self, node: Mapping[str, Any]) -> str:
        """A node's name: its ``pydantic-deep.node`` label, else its hostname."""
        labels = node["Spec"].get("Labels") or {}
        return str(labels.get(NODE_NAME_LABEL) or node["Description"]["Hostname"])

    def node_address(self, node: Mapping[str, Any]) -> str:
        """The address of a node's own engine, from :attr:`nodes` or the node's label."""
        name = self.node_name(node)
        address = self.nodes.get(name) or (node["Spec"].get("Labels") or {}).get(NODE_ENGINE_LABEL)
        if not address:
            raise SandboxError(
                f"the address of node {name}'s engine is unknown: pass SwarmCluster(nodes={{{name!r}: "
                f"'tcp://...'}}) or label the node: docker node update --label-add {NODE_ENGINE_LABEL}=tcp://... "
                f"{node['ID'][:12]}")
        return address

    def list_nodes(self) -> list[dict[str, Any]]:
        """Every node as the manager reports it (``docker node inspect``)."""
        return [node.attrs for node in self.client.nodes.list()]

    def ready_nodes(self) -> list[dict[str, Any]]:
        """The nodes new sandboxes may go to: ready, active, and not found lost."""
        return [n for n in self.list_nodes() if n["Status"]["State"] == "ready" and n["ID"] not in self._lost
                and n["Spec"].get("Availability") == "active"]

    # -- images -------------------------------------------------------------------------------

    def distribute(self, image: str, progress: Callable[[str], None] | None = None) -> str:
        """Make ``image`` (on this host's engine) available to every ready node; returns the
        reference services must use.

        With a registry the image is pushed there once under ``<registry>/<name>``; else each node
        that lacks it gets it loaded from this host's engine, the nodes in parallel.
        """
        if self.registry is not None:
            return self._push(image, progress)
        nodes = [n for n in self.ready_nodes() if (n["ID"], image) not in self._images]
        with ThreadPoolExecutor(max(1, len(nodes))) as threads:
            list(threads.map(lambda node: self._load_onto(node, image, progress), nodes))
        return image

    def unreachable(self, node: Mapping[str, Any]) -> bool:
        """Whether ``node``'s engine does not answer; such a node is kept out of placement until
        it does (what the manager takes a heartbeat or two to find out itself)."""
        address = self.node_address(node)
        if self.engine_answers(address):
            return False
        logger.warning("Node %s does not answer at %s: no sandbox goes there", self.node_name(node), address)
        self._lost[node["ID"]] = address
        return True

    def known_on(self, node_id: str, image: str) -> None:
        """Note that the node ``node_id`` holds ``image`` already (a snapshot made there): not loaded again."""
        self._images.add((node_id, image))

    def provide(self, node: Mapping[str, Any], image: str) -> str:
        """Make ``image`` (on this host's engine) present on ``node``'s engine, loading it if
        missing (a helper's image, say); returns it."""
        if (node["ID"], image) not in self._images:
            self._load_onto(node, image, None)
        return image

    def _load_onto(self, node: Mapping[str, Any], image: str, progress: Callable[[str], None] | None) -> None:
        address = self.node_address(node)
        client = self.engine(address)
        try:
            client.images.get(image)
        except EngineConnectionError:  # a node the manager has not yet found down: kept out of placement
            logger.warning("Node %s does not answer at %s: no sandbox goes there", self.node_name(node), address)
            self._lost[node["ID"]] = address
            return
        except ImageNotFound:
            name = self.node_name(node)
            if progress is not None:
                progress(f"Loading {image} onto node {name}")
            started = time.monotonic()
            client.images.load(docker_client().api.get_image(image))
            if progress is not None:
                progress(f"Loaded {image} onto node {name} in {time.monotonic() - started:.1f} s")
        self._images.add((node["ID"], image))

    def _push(self, image: str, progress: Callable[[str], None] | None) -> str:
        """Push ``image`` to the registry once, from the manager's engine (the registry is on the
        cluster's network, which this host may not reach): loaded there first if it lacks it."""
        repository, _, tag = image.rpartition(":")
        remote = f"{self.registry}/{repository}"
        if (self.manager, image) in self._images:
            return f"{remote}:{tag}"
        manager = self.client
        try:
            manager.images.get(image)
        except ImageNotFound:
            if progress is not None:
                progress(f"Loading {image} onto the manager")
            manager.images.load(docker_client().api.get_image(image))
        manager.images.get(image).tag(remote, tag)
        if progress is not None:
            progress(f"Pushing {image} to {self.registry}")
        started = time.monotonic()
        for line in manager.api.push(remote, tag, stream=True, decode=True):
            if "error" in line:
                raise SandboxError(f"pushing {image} to {self.registry} failed: {line['error']}")
        if progress is not None:
            progress(f"Pushed {image} to {self.registry} in {time.monotonic() - started:.1f} s")
        self._images.add((self.manager, image))
        return f"{remote}:{tag}"

    # -- services -----------------------------------------------------------------------------

    def run(self, name: str, image: str, options: Mapping[str, Any], *,
            progress: Callable[[str], None] | None = None, network: str | None = None,
            constraints: Sequence[str] = ()) -> TaskPlacement:
        """Create the one-task service ``name`` for a sandbox and wait until its task runs.

        Args:
            image: The image on this host's engine; it is made available to the nodes first.
            options: The sandbox's container options (``docker.containers.create`` keywords),
                turned into the service's spec (see :func:`service_spec`).
            network: The swarm network the task joins (see
                :mod:`pydantic_deep.engine.swarm_networks`); ``None``: the node's default bridge.
            constraints: Placement constraints of this sandbox, besides the cluster's.

        Raises:
            SandboxError: the task failed to start, or was not running within
                :attr:`start_timeout` (the message says why, e.g. no node has the memory).
        """
        reference = self.distribute(image, progress)
        deadline = time.monotonic() + self.start_timeout
        while True:
            # The spec is made anew each round: it keeps the task off the nodes found lost so far.
            spec = self.service_spec(reference, options, network=network, constraints=constraints)
            try:
                service_id = self.client.api.create_service(**spec)["ID"]
            except APIError as exc:
                raise SandboxError(f"Swarm refused the sandbox's service {name}: {exc.explanation}") from None
            try:
                return self._wait_running(service_id, name, deadline)
            except _PlacedOnLostNode:
                self.remove(name)  # and again, elsewhere
            except BaseException:
                self.remove(name)
                raise

    def _wait_running(self, service: str, name: str, deadline: float) -> TaskPlacement:
        status: dict[str, Any] = {}
        delay = 0.02
        # A node that died a moment ago is still "ready" to Swarm until its heartbeats are missed,
        # and a task placed there would wait for it: after a while pending, its engine is asked.
        pending_since = time.monotonic()
        while time.monotonic() < deadline:
            tasks = self.client.api.tasks(filters={"service": service})
            task = max(tasks, key=lambda t: t["Version"]["Index"], default=None)
            if task is not None:
                status = task["Status"]
                if status["State"] == _RUNNING:
                    return self._placement(task)
                if status["State"] in _FAILED:
                    raise SandboxError(f"the sandbox {name}'s task {status['State']}: "
                                       f"{status.get('Err') or status.get('Message')}")
                if task.get("NodeID") and time.monotonic() - pending_since > _PENDING_BEFORE_ASKING:
                    if self.unreachable(self.client.api.inspect_node(task["NodeID"])):
                        raise _PlacedOnLostNode
                    pending_since = time.monotonic()
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)
        raise SandboxError(f"the sandbox {name} was not running within {self.start_timeout:g} s: "
                           f"{status.get('State', 'not scheduled')}, {status.get('Err') or status.get('Message')}")

    def _placement(self, task: Mapping[str, Any]) -> TaskPlacement:
        node = self.client.api.inspect_node(task["NodeID"])
        address = self.node_address(node)
        return TaskPlacement(self.node_name(node), node["ID"], address, self.engine(address),
                             task["Status"]["ContainerStatus"]["ContainerID"], task["Spec"]["ContainerSpec"]["Image"])

    def locate(self, name: str) -> TaskPlacement | None:
        """Where the running task of the sandbox service ``name`` is, or ``None``."""
        try:
            tasks = self.client.api.tasks(filters={"service": name, "desired-state": "running"})
        except NotFound:
            return None
        running = [t for t in tasks if t["Status"]["State"] == _RUNNING
                   and t.get("ServiceID") and self._service_named(t["ServiceID"], name)]
        return self._placement(running[0]) if running else None

    def _service_named(self, service_id: str, name: str) -> bool:
        with contextlib.suppress(NotFound):
            return bool(self.client.api.inspect_service(service_id)["Spec"]["Name"] == name)
        return False

    def remove(self, name: str) -> None:
        """Remove the sandbox service ``name`` (its task's container goes with it, on a lost node
        as soon as the node is back); one that is already gone is fine."""
        with contextlib.suppress(NotFound):
            self.client.api.remove_service(name)

    def lost(self, placement: TaskPlacement) -> NodeLostError | None:
        """A :class:`NodeLostError` for ``placement`` when its node's engine does not answer."""
        if self.engine_answers(placement.address):
            return None
        self._lost[placement.node_id] = placement.address
        self._images = {known for known in self._images if known[0] != placement.node_id}  # it may come back empty
        return NodeLostError(
            placement.node,
            f"the node {placement.node} running this sandbox is lost: its engine at {placement.address} does "
            f"not answer. The sandbox's processes and its files on that node's disk are gone with it; a "
            f"SessionManager starts a new sandbox on another node on the next get_or_create")

    def service_spec(self, image: str, options: Mapping[str, Any], *, network: str | None = None,
                     constraints: Sequence[str] = ()) -> dict[str, Any]:
        """The keyword arguments of ``APIClient.create_service`` for a sandbox whose container
        options (``containers.create`` keywords, as :class:`DockerSandbox` makes them) are
        ``options``, on the swarm ``network`` if any, with ``constraints`` besides the cluster's.
        Options Swarm cannot carry are refused, never dropped."""
        given: list[Mount] = options.get("mounts") or []
        # Host files (the CA bundle) travel as Swarm configs, which the manager hands to each node;
        # binds of a path on the task's node (a disk's, named with Swarm's {{.Node.ID}}) stay binds.
        # Binds of a session's directory in the session storage become volumes serving it (NFS...).
        stored = [mount for mount in given if mount["Type"] == "bind" and self._in_storage(mount["Source"])]
        configs = [self._config_of(Path(mount["Source"]), mount["Target"]) for mount in given
                   if mount["Type"] == "bind" and NODE_ID_TEMPLATE not in mount["Source"] and mount not in stored]
        mounts = [self._volume_mount(mount["Source"], mount["Target"]) for mount in given
                  if mount["Type"] == "volume"]
        mounts += [self._volume_mount(self.storage_volume(mount["Source"]), mount["Target"],
                                      mount["Source"][len(str(self.session_storage)) + 1:]) for mount in stored]
        mounts += [Mount(mount["Target"], mount["Source"], type="bind") for mount in given
                   if mount["Type"] == "bind" and NODE_ID_TEMPLATE in mount["Source"]]
        for path, tmpfs in (options.get("tmpfs") or {}).items():
            size = next((o.removeprefix("size=") for o in tmpfs.split(",") if o.startswith("size=")), None)
            mounts.append(Mount(path, None, type="tmpfs", tmpfs_size=parse_bytes(size) if size else None,
                                tmpfs_mode=0o1777))
        container = docker.types.ContainerSpec(
            image, command=["sleep", "infinity"], user=options.get("user"), workdir=options.get("working_dir"),
            env=options.get("environment"), labels=options.get("labels"), mounts=mounts,
            init=options.get("init"), cap_drop=options.get("cap_drop"), configs=configs or None,
            read_only=options.get("read_only") or None, sysctls=options.get("sysctls"),
        )
        # Fields of the Engine API 1.41 that docker-py's ContainerSpec does not take.
        ulimits = options.get("ulimits") or []
        if ulimits:
            container["Ulimits"] = [{"Name": u["Name"], "Soft": u["Soft"], "Hard": u["Hard"]} for u in ulimits]
        memory = parse_bytes(options["mem_limit"]) if options.get("mem_limit") else None
        cpus = options.get("nano_cpus")
        resources = Resources(cpu_limit=cpus, mem_limit=memory, cpu_reservation=cpus, mem_reservation=memory)
        if options.get("pids_limit"):
            resources.setdefault("Limits", {})["Pids"] = options["pids_limit"]
        placement = Placement(constraints=[*self.constraints, *constraints, *self._avoided()] or None,
                              preferences=[("spread", f"node.labels.{self.spread}")] if self.spread else None)
        log = options.get("log_config")
        task = TaskTemplate(container, resources=resources, placement=placement,
                            restart_policy=RestartPolicy(condition="none", delay=0),
                            log_driver=DriverConfig(log["Type"]) if log else None,
                            networks=[network] if network is not None else None)
        labels = {**(options.get("labels") or {}), _SERVICE_LABEL: "true",
                  **({label.SWARM_NETWORK: network} if network is not None else {})}
        return {"task_template": task, "name": options["name"], "labels": labels, "mode": ServiceMode("replicated", 1)}

    def _config_of(self, source: Path, target: str) -> ConfigReference:
        """A Swarm config holding the host file ``source`` (named by its content), for ``target``."""
        data = source.read_bytes()
        name = f"pydantic-deep-{hashlib.sha256(data).hexdigest()[:24]}"
        try:
            config_id = self.client.api.inspect_config(name)["ID"]
        except NotFound:
            try:
                config_id = self.client.api.create_config(name, data, labels=label.managed())["ID"]
            except APIError as exc:  # made meanwhile by another sandbox
                if exc.status_code != 409:
                    raise
                config_id = self.client.api.inspect_config(name)["ID"]
        return ConfigReference(config_id, name, filename=target, mode=0o444)

    def _avoided(self) -> list[str]:
        """Constraints keeping new tasks off the nodes found lost whose engine still does not answer."""
        for node_id, address in list(self._lost.items()):
            if self.engine_answers(address):
                del self._lost[node_id]
        return [f"node.id!={node_id}" for node_id in self._lost]

    def _in_storage(self, path: str) -> bool:
        return self.session_storage is not None and path.startswith(f"{self.session_storage}/")

    def storage_volume(self, path: str) -> str:
        """The volume that serves ``path``, a directory in :attr:`session_storage`, to a task
        (``<disk>-work`` for ``<storage>/<disk>/work``)."""
        return path[len(str(self.session_storage)) + 1:].replace("/", "-")

    def _volume_mount(self, name: str, target: str, path: str | None = None) -> Mount:
        """A volume mount of ``name``, whose driver's ``{name}`` is ``path`` (else ``name``)."""
        driver = None
        if self.volume_driver:
            options = {key: value.replace("{name}", path or name) for key, value in self.volume_driver_options.items()}
            driver = DriverConfig(self.volume_driver, options)
        return Mount(target, name, type="volume", driver_config=driver,
                     labels=label.managed())

    def remove_volume(self, name: str) -> None:
        """Remove the volume ``name`` from every node that answers (a named volume on a cluster
        exists on each node a sandbox of it ran on). A node that is down keeps its copy: with a
        volume driver that is only the mount's record, without one the files on its disk."""
        for node in self.list_nodes():
            if node["Status"]["State"] != "ready" or node["ID"] in self._lost:
                continue
            with contextlib.suppress(NotFound, APIError, EngineConnectionError):
                self.engine(self.node_address(node)).api.remove_volume(name, force=True)

    def __repr__(self) -> str:
        return f"<SwarmCluster manager={self.manager!r}>"


def _checked_session_storage(storage: str | os.PathLike[str] | None, driver: str | None,
                             options: Mapping[str, str]) -> str | None:
    """``storage`` as an absolute path without a trailing slash, once it can be a session storage."""
    if storage is None:
        return None
    path = os.path.abspath(os.fspath(storage))
    if not driver or not any("{name}" in value for value in options.values()):
        raise InvalidArgumentError(
            "session_storage needs a volume_driver whose options serve it to every node, with {name} where a "
            "session's directory goes (e.g. volume_driver='local', volume_driver_options={'type': 'nfs', "
            "'o': 'addr=10.0.0.5,rw', 'device': ':/export/sessions/{name}'})")
    if not os.path.isdir(path):
        raise InvalidArgumentError(
            f"session_storage {path!r} is not a directory on this host: give the directory the volume driver serves "
            f"(on the host exporting it), or leave session_storage out (sessions on the cluster then have no quota)")
    return path.rstrip("/") or "/"


_SSL_DETAIL = re.compile(r"\[SSL(?:: [A-Z0-9_]+)?\][^(')\"]*|EOF occurred in violation of protocol")
_TLS_EXAMPLE = "tls=docker.tls.TLSConfig(client_cert=('cert.pem', 'key.pem'), ca_cert='ca.pem', verify=True)"


def _tls_refusal(address: str, tls: bool, failure: str) -> str | None:
    """What went wrong between this client's TLS settings and the engine at ``address``, said with
    what to do, when ``failure`` (a connection's error) is a TLS disagreement; else ``None``."""
    found = _SSL_DETAIL.search(failure)
    detail = found.group(0).strip() if found else ""
    if "HTTP request to an HTTPS server" in failure:
        return (f"the engine at {address} accepts TLS connections only, and no certificates were given: "
                f"pass SwarmCluster(..., {_TLS_EXAMPLE}) with a client certificate the engine's CA signed")
    if "CERTIFICATE_VERIFY_FAILED" in failure:
        return (f"the engine at {address} presented a certificate this cluster's CA does not verify ({detail}): "
                f"give TLSConfig(ca_cert=...) the CA that signed the engines' certificates, and reach each engine "
                f"at an address its certificate names")
    if "WRONG_VERSION_NUMBER" in failure or "record layer failure" in failure:
        return (f"the engine at {address} does not speak TLS ({detail}): leave tls out for it, or start it "
                f"with dockerd --tlsverify")
    if tls and found:
        return (f"the engine at {address} refused this client's TLS connection ({detail}): give "
                f"TLSConfig(client_cert=(cert, key)) a certificate signed by the CA the engine trusts "
                f"(its dockerd --tlscacert)")
    return None


_from_env: dict[str, SwarmCluster] = {}


def resolve_cluster(cluster: SwarmCluster | str | bool | None) -> SwarmCluster | None:
    """The cluster a sandbox runs on: the one given, one at a manager address, none for
    ``False``, and for ``None`` the one ``$PYDANTIC_DEEP_CLUSTER`` names (shared by every sandbox)."""
    if cluster is False:
        return None
    if isinstance(cluster, SwarmCluster):
        return cluster
    if cluster is None or cluster is True:
        address = os.environ.get(CLUSTER_VARIABLE, "").strip()
        if not address:
            if cluster is True:
                raise InvalidArgumentError(f"cluster=True needs ${CLUSTER_VARIABLE} set to a Swarm manager's address")
            return None
    elif isinstance(cluster, str):
        address = cluster
    else:
        raise InvalidArgumentError(f"cluster must be a SwarmCluster, a manager address or False, not {cluster!r}")
    if address not in _from_env:
        _from_env[address] = SwarmCluster(address)
    return _from_env[address]
