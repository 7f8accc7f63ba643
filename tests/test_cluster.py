"""Sandboxes and sessions on a real 3-node Docker Swarm (issue 13); see tests/local_swarm.py.

The swarm starts once per run (about 10 s) and is torn down after, pass or fail. Run alone with
``scripts/test -m cluster``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from docker.tls import TLSConfig
from helpers import SERVE_ON_8000, poll_until, probe_connections
from local_swarm import LocalSwarm, SwarmNode, make_certificates

from pydantic_deep import (
    DiskFullError,
    DockerSandbox,
    DockerUnavailableError,
    InvalidArgumentError,
    NodeLostError,
    RedisRegistry,
    SandboxError,
    SandboxPool,
    SessionManager,
    SwarmCluster,
    delete_snapshot,
    list_snapshots,
)
from pydantic_deep.engine.swarm_networks import remove_unused_swarm_networks
from pydantic_deep.sandbox.disk import DISK_DIR
from pydantic_deep.widgets import SessionMonitor

pytestmark = pytest.mark.cluster


def test_bad_cluster_arguments_are_refused_and_unknown_engines_say_what_to_do() -> None:
    with pytest.raises(InvalidArgumentError, match="manager must be an engine address"):
        SwarmCluster("manager.internal")
    with pytest.raises(InvalidArgumentError, match="constraints must be a list"):
        SwarmCluster("tcp://manager:2376", constraints="node.role==worker")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="need a volume_driver"):
        SwarmCluster("tcp://manager:2376", volume_driver_options={"type": "nfs"})
    with pytest.raises(InvalidArgumentError, match="session_storage needs a volume_driver .* with [{]name[}]"):
        SwarmCluster("tcp://manager:2376", session_storage="/tmp")
    with pytest.raises(InvalidArgumentError, match="session_storage '/nowhere/sessions' is not a directory on this"):
        SwarmCluster("tcp://manager:2376", volume_driver="local", session_storage="/nowhere/sessions",
                     volume_driver_options={"type": "nfs", "o": "addr=10.0.0.5", "device": ":/export/{name}"})
    with pytest.raises(InvalidArgumentError, match="cluster must be a SwarmCluster"):
        DockerSandbox(cluster=3)  # type: ignore[arg-type]
    cluster = SwarmCluster("tcp://manager:2376", nodes={"gpu-1": "tcp://10.0.0.21:2376"})
    with pytest.raises(InvalidArgumentError, match="a list of hosts .* is not available on a cluster"):
        DockerSandbox(cluster=cluster, network=["pypi.org"])  # its nodes run no egress proxy
    with pytest.raises(InvalidArgumentError, match="a list of hosts .* is not available on a cluster"):
        DockerSandbox(cluster=cluster, network=True).set_network(["pypi.org"])
    labelled = {"ID": "n2", "Spec": {"Labels": {"pydantic-deep.engine": "tcp://10.0.0.22:2376"}},
                "Description": {"Hostname": "cpu-2"}}
    given = {"ID": "n1", "Spec": {"Labels": {}}, "Description": {"Hostname": "gpu-1"}}
    assert (cluster.node_address(given), cluster.node_address(labelled)) == ("tcp://10.0.0.21:2376",
                                                                             "tcp://10.0.0.22:2376")
    with pytest.raises(SandboxError, match="docker node update --label-add pydantic-deep.engine=tcp://"):
        cluster.node_address({"ID": "n3", "Spec": {}, "Description": {"Hostname": "cpu-3"}})


@pytest.fixture(scope="module")
def cluster(swarm: LocalSwarm) -> SwarmCluster:
    return SwarmCluster(swarm.manager.socket)


def test_sandboxes_spread_across_nodes_and_run_commands_and_files_on_workers(cluster: SwarmCluster) -> None:
    sandboxes = [DockerSandbox(cluster=cluster, memory="256m", cpus=0.25) for _ in range(3)]
    assert [s.disk_size for s in sandboxes] == [None] * 3  # the 10g default is no disk on a cluster
    with pytest.raises(InvalidArgumentError, match="cannot have a disk without a session storage: disk_size='1g'"):
        SessionManager(cluster=cluster, disk_size="1g")
    with pytest.raises(InvalidArgumentError, match="sessions on a cluster cannot have a disk"):
        DockerSandbox(cluster=cluster, disk_size="1g", disk_name="kept")
    try:
        for sandbox in sandboxes:
            sandbox.start()
        assert sorted(s.node or "" for s in sandboxes) == ["node1", "node2", "node3"]
        for sandbox in sandboxes:
            result = sandbox.execute("id -u; echo $PWD")
            assert result.output.split() == ["1000", sandbox.work_dir], result
            sandbox.write_file("data.txt", f"on {sandbox.node}")
            assert sandbox.read_file("data.txt") == f"on {sandbox.node}".encode()
            assert [f.name for f in sandbox.list_files(".")] == ["data.txt"]
        worker = next(s for s in sandboxes if s.node != "node1")
        chunks: list[str] = []
        result = worker.execute("for i in 1 2 3; do echo $i; sleep 0.05; done",
                                on_output=lambda chunk: chunks.append(chunk.text))
        assert "".join(chunks) == result.output == "1\n2\n3\n"
        assert worker.has_python  # the supervisor channel, through the worker's own engine
        # No network: Swarm has no "none" network, so the task's link on the node's bridge is down.
        links = worker.execute("cd /sys/class/net && for l in *; do echo $l $(cat $l/operstate); done").output
        assert sorted(links.splitlines()) == ["eth0 down", "lo unknown"], links
        # The single-host limits hold on the node: file size, processes, /tmp in memory, no capabilities.
        limits = worker.execute("ulimit -f; cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max 2>/dev/null; "
                                "grep ' /tmp ' /proc/mounts | cut -d' ' -f3; grep CapEff /proc/self/status").output
        assert limits.split() == [str(2**30 // 512), "512", "tmpfs", "CapEff:", "0000000000000000"], limits
        # The limits are the task's reservations: Swarm does not overcommit a node.
        service = cluster.client.services.get(worker.name)
        reservations = service.attrs["Spec"]["TaskTemplate"]["Resources"]["Reservations"]
        assert reservations == {"NanoCPUs": 250_000_000, "MemoryBytes": 256 * 2**20}
    finally:
        for sandbox in sandboxes:
            sandbox.stop()
    assert cluster.client.services.list(filters={"label": "pydantic-deep.managed=true"}) == []


def test_images_go_through_a_registry_once(swarm: LocalSwarm) -> None:
    """With a registry, an image is pushed once and pulled by the node a sandbox lands on."""
    through_registry = SwarmCluster(swarm.manager.socket, registry=swarm.registry,
                                    constraints=["node.labels.pydantic-deep.node==node3"])
    lines: list[str] = []
    with DockerSandbox("python-web", cluster=through_registry, memory="256m", cpus=0.25,
                       progress=lines.append) as sandbox:
        assert sandbox.execute("echo pulled").output == "pulled\n"
        image = swarm.nodes["node3"].client().containers.get(sandbox.container_id).attrs["Config"]["Image"]
        assert image.startswith(f"{swarm.registry}/pydantic-deep/prepared:")
    assert any(line.startswith("Pushed pydantic-deep/prepared:") for line in lines), lines


def test_a_constraint_no_node_meets_fails_clearly_and_leaves_nothing(swarm: LocalSwarm) -> None:
    nowhere = SwarmCluster(swarm.manager.socket, constraints=["node.labels.gpu==yes"], start_timeout=3)
    with pytest.raises(SandboxError, match="not running within 3 s: pending, no suitable node"):
        DockerSandbox(cluster=nowhere).start()
    assert nowhere.client.services.list() == []


@pytest.fixture
def workers(swarm: LocalSwarm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwarmCluster]:
    """The swarm's workers only (node1 is the one manager: losing it would lose the swarm), with
    session files on storage every node sees: a bind of one host directory per volume through the
    local driver (what an NFS export does across machines; this machine's kernel cannot serve NFS)."""
    shared = tmp_path_factory.mktemp("shared")
    yield SwarmCluster(swarm.manager.socket, constraints=["node.role==worker"], volume_driver="local",
                       volume_driver_options={"type": "none", "o": "bind", "device": f"{shared}/{{name}}"})
    for node in swarm.nodes.values():  # a node a failed test left down
        if node.process is None:
            node.start()


def _session_dirs(manager: SessionManager, user: str, root: str) -> None:
    """Make the shared directories of the user's two volumes (an NFS export would have them)."""
    name = manager._container_name(manager._key(user))
    for suffix in ("work", "uploads"):
        os.makedirs(f"{root}/{name}-{suffix}", exist_ok=True)


@pytest.mark.anyio
async def test_node_lost_mid_command_fails_fast_and_the_session_comes_back_elsewhere(
        swarm: LocalSwarm, workers: SwarmCluster) -> None:
    # Networked: the replacement's start must skip the lost node's networks and rules, which the
    # manager may not have found down yet.
    manager = SessionManager(name="test-cluster", cluster=workers, memory="256m", cpus=0.25, network=True)
    _session_dirs(manager, "alice", workers.volume_driver_options["device"].rsplit("/", 1)[0])
    lost_node = None
    try:
        sandbox = await manager.get_or_create("alice")
        assert sandbox.node in ("node2", "node3")
        sandbox.write_file("notes.txt", "kept on shared storage")
        [info] = await manager.list_sessions()
        assert info.node == sandbox.node and info.state == "running"
        old_service = sandbox.name

        lost_node = swarm.nodes[sandbox.node]
        errors: list[BaseException] = []
        command = threading.Thread(target=lambda: _capture(errors, sandbox.execute, "sleep 60"))
        command.start()
        poll_until(lambda: "sleep 60" in _processes(lost_node), "the command to start")
        killed_at = time.monotonic()
        lost_node.kill()
        command.join(30)
        assert not command.is_alive()
        failed_after = time.monotonic() - killed_at
        [error] = errors
        assert isinstance(error, NodeLostError) and error.node == lost_node.name
        assert f"node {lost_node.name}" in str(error) and "is lost" in str(error)
        assert failed_after < 10, failed_after  # seconds, not the 120 s of a client timeout

        replacement = await manager.get_or_create("alice")
        assert replacement.node not in (None, lost_node.name)
        assert replacement.execute("cat notes.txt").output == "kept on shared storage"
        print(f"node loss: the call failed after {failed_after:.2f} s, a working sandbox "
              f"{time.monotonic() - killed_at:.2f} s after the kill")

        lost_node.start()  # the node comes back: nothing of the old task is left on it
        poll_until(lambda: not _service_containers(lost_node, old_service), "the old task's container to go")
    finally:
        if lost_node is not None and lost_node.process is None:
            lost_node.start()
        await manager.shutdown(keep_files=False)
    assert workers.client.services.list() == []


@pytest.mark.anyio
async def test_draining_a_node_moves_its_sessions_off_it(swarm: LocalSwarm, workers: SwarmCluster) -> None:
    manager = SessionManager(name="test-cluster-drain", cluster=workers, memory="256m", cpus=0.25)
    _session_dirs(manager, "bob", workers.volume_driver_options["device"].rsplit("/", 1)[0])
    try:
        sandbox = await manager.get_or_create("bob")
        sandbox.write_file("notes.txt", "still here")
        with _drained(swarm, workers, sandbox):
            moved = await manager.get_or_create("bob")
            assert moved.node not in (None, sandbox.node)
            assert moved.read_file("notes.txt") == b"still here"
    finally:
        await manager.shutdown(keep_files=False)


@pytest.mark.anyio
async def test_without_shared_storage_a_moved_session_starts_with_empty_files(
        swarm: LocalSwarm, cluster: SwarmCluster) -> None:
    """What a user loses on a cluster without a volume driver: files stay on the node's disk."""
    workers_only = SwarmCluster(swarm.manager.socket, constraints=["node.role==worker"])
    manager = SessionManager(name="test-cluster-local", cluster=workers_only, memory="256m", cpus=0.25)
    try:
        sandbox = await manager.get_or_create("dave")
        sandbox.write_file("notes.txt", "on one node's disk")
        with _drained(swarm, workers_only, sandbox):
            moved = await manager.get_or_create("dave")
            assert moved.node not in (None, sandbox.node)
            assert not moved.exists("notes.txt")  # the session goes on, its files stayed behind
    finally:
        await manager.shutdown(keep_files=False)


@pytest.mark.anyio
async def test_a_warm_pool_serves_sessions_on_the_cluster(cluster: SwarmCluster) -> None:
    manager = SessionManager(name="test-cluster-pool", cluster=cluster, pool_size=1, memory="256m", cpus=0.25)
    try:
        assert manager.pool is not None and manager.pool.start().wait_ready(60)
        sandbox = await manager.get_or_create("erin")
        assert sandbox.name.startswith("pd-test-cluster-pool-pool-") and sandbox.node is not None
        assert sandbox.execute("echo pooled").output == "pooled\n"
    finally:
        await manager.shutdown(keep_files=False)
    assert cluster.client.services.list() == []


def test_the_environment_variable_sends_pools_and_sandboxes_to_the_cluster(
        swarm: LocalSwarm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYDANTIC_DEEP_CLUSTER", swarm.manager.socket)
    with SandboxPool("python-minimal", size=2, memory="256m", cpus=0.25) as pool:
        first, second = pool.acquire(), pool.acquire()
        try:
            assert {first.node, second.node} <= {"node1", "node2", "node3"} and first.node != second.node
            assert first.execute("echo ok").output == "ok\n"
        finally:
            first.stop()
            second.stop()
    assert DockerSandbox(cluster=False).cluster is None  # one host, whatever the environment says


@pytest.mark.anyio
async def test_two_processes_share_sessions_through_redis(swarm: LocalSwarm, cluster: SwarmCluster,
                                                          redis_url: str) -> None:
    other = textwrap.dedent(f"""
        import asyncio
        from pydantic_deep import RedisRegistry, SessionManager, SwarmCluster
        async def main():
            manager = SessionManager(name="test-cluster-shared", registry=RedisRegistry({redis_url!r}),
                                     cluster=SwarmCluster({swarm.manager.socket!r}), memory="256m", cpus=0.25)
            sandbox = await manager.get_or_create("carol")
            sandbox.write_file("from-the-other.txt", "hello")
            print(sandbox.node)
        asyncio.run(main())
        """)
    node = subprocess.run([sys.executable, "-c", other], capture_output=True, text=True, check=True).stdout.split()[-1]
    manager = SessionManager(name="test-cluster-shared", registry=RedisRegistry(redis_url), cluster=cluster)
    try:
        sandbox = await manager.get_or_create("carol")
        assert sandbox.node == node
        assert sandbox.read_file("from-the-other.txt") == b"hello"
        [info] = await manager.list_sessions()
        assert (info.user_id, info.node, info.state) == ("carol", node, "running")
        monitor = SessionMonitor(manager, interval=3600)  # the dashboard's table
        try:
            await asyncio.to_thread(monitor.refresh)
            assert f" on {node}" in monitor.rows.children[1].children[0].value
        finally:
            monitor.close()
    finally:
        await manager.shutdown(keep_files=False)
    assert cluster.client.services.list() == []


def test_prune_removes_the_services_a_killed_process_left(swarm: LocalSwarm, cluster: SwarmCluster) -> None:
    environment = {**os.environ, "PYDANTIC_DEEP_CLUSTER": swarm.manager.socket}
    left = ("from pydantic_deep import DockerSandbox; "
            "print(DockerSandbox(remove_on_exit=False, memory='256m', cpus=0.25).start().name)")
    name = subprocess.run([sys.executable, "-c", left], env=environment, capture_output=True, text=True,
                          check=True).stdout.split()[-1]
    assert [s.name for s in cluster.client.services.list()] == [name]
    pruned = subprocess.run([sys.executable, "-m", "pydantic_deep.cli", "prune"], env=environment,
                            capture_output=True, text=True, check=True).stdout
    assert f"Removed 1 service(s) from the cluster at {swarm.manager.socket}" in pruned
    assert cluster.client.services.list() == []


@contextlib.contextmanager
def _drained(swarm: LocalSwarm, cluster: SwarmCluster, sandbox: DockerSandbox) -> Iterator[None]:
    """Drain the node ``sandbox`` runs on until the block ends; the sandbox is stopped by then."""
    node = cluster.client.nodes.get(swarm.node_id(sandbox.node or ""))
    node.update({**node.attrs["Spec"], "Availability": "drain"})
    try:
        poll_until(lambda: not sandbox.alive, "the drained node to stop the sandbox")
        yield
    finally:
        node.reload()
        node.update({**node.attrs["Spec"], "Availability": "active"})


def _capture(errors: list[BaseException], call: Callable[..., object], *args: object) -> None:
    try:
        call(*args)
    except BaseException as exc:
        errors.append(exc)


def _processes(node: SwarmNode) -> str:
    """The command lines of every container process on ``node``."""
    return " ".join(c.top()["Processes"].__str__() for c in node.client().containers.list())


def _service_containers(node: SwarmNode, service: str) -> list[str]:
    # The low-level list: docker-py's containers.list() inspects each one, and fails on one that
    # Swarm removes meanwhile.
    return [c["Names"][0] for c in node.client().api.containers(
        all=True, filters={"label": f"com.docker.swarm.service.name={service}"})]


# -- node engines over TLS ----------------------------------------------------------------------


def _tls(directory: Path, ca: Path | None = None) -> TLSConfig:
    """Client TLS settings from a directory of make_certificates (and another CA, to get it wrong)."""
    return TLSConfig(client_cert=(str(directory / "cert.pem"), str(directory / "key.pem")),
                     ca_cert=str(ca or directory / "ca.pem"), verify=True)


def test_node_engines_over_tls_run_commands_files_and_the_channel(swarm: LocalSwarm) -> None:
    """Every engine (manager and nodes) at its tcp:// address with --tlsverify, certificates given."""
    over_tls = SwarmCluster(swarm.manager.tcp, tls=_tls(swarm.tls), constraints=["node.role==worker"],
                            nodes={node.name: node.tcp for node in swarm.nodes.values()})
    with DockerSandbox(cluster=over_tls, memory="256m", cpus=0.25) as sandbox:
        assert sandbox.node is not None and sandbox._placement is not None
        assert sandbox._placement.address == swarm.nodes[sandbox.node].tcp
        assert sandbox.has_python  # the supervisor channel's stream, hijacked over TLS
        chunks: list[str] = []
        result = sandbox.execute("for i in 1 2 3; do echo $i; sleep 0.05; done; head -c 300000 /dev/zero | wc -c",
                                 on_output=lambda chunk: chunks.append(chunk.text))
        assert result.output == "".join(chunks) == "1\n2\n3\n300000\n", result
        for size in range(1 << 20, (1 << 20) + 5):  # a few: the end of an upload once came with its last bytes
            payload = os.urandom(size)
            sandbox.write_file("blob.bin", payload)
            assert sandbox.read_file("blob.bin") == payload
            assert sandbox.execute("sha256sum blob.bin").output.split()[0] == hashlib.sha256(payload).hexdigest()


def test_wrong_or_missing_certificates_fail_clearly_and_start_nothing(swarm: LocalSwarm, tmp_path: Path) -> None:
    make_certificates(tmp_path, {})  # another CA, and a client certificate it signed
    node = swarm.nodes["node2"]
    cases = [
        (None, "accepts TLS connections only, and no certificates were given"),
        (_tls(swarm.tls, ca=tmp_path / "ca.pem"), "presented a certificate this cluster's CA does not verify"),
        (_tls(tmp_path, ca=swarm.tls / "ca.pem"), "refused this client's TLS connection"),
    ]
    for tls, message in cases:
        # The manager over TLS...
        with pytest.raises(DockerUnavailableError, match=f"the engine at {swarm.manager.tcp} {message}"):
            DockerSandbox(cluster=SwarmCluster(swarm.manager.tcp, tls=tls), memory="256m", cpus=0.25).start()
        # ... and a node's engine (the manager through its socket, which needs none).
        through_node = SwarmCluster(swarm.manager.socket, tls=tls, nodes={node.name: node.tcp},
                                    constraints=[f"node.labels.pydantic-deep.node=={node.name}"])
        with pytest.raises(DockerUnavailableError, match=f"the engine at {node.tcp} {message}"):
            DockerSandbox(cluster=through_node, memory="256m", cpus=0.25).start()
        assert through_node.client.services.list() == []


# -- networked sandboxes on the cluster (issue 21 on every node) ---------------------------------

def _address(sandbox: DockerSandbox) -> str:
    assert sandbox._placement is not None and sandbox.container_id is not None
    networks = sandbox._placement.client.api.inspect_container(sandbox.container_id)["NetworkSettings"]["Networks"]
    [network] = networks.values()
    return str(network["IPAddress"])


@contextlib.contextmanager
def _outside_server(swarm: LocalSwarm) -> Iterator[str]:
    """A TCP server at the swarm's outside address (in its hub namespace), as ``host:port``."""
    target = f"{swarm.outside_address()}:8080"
    server = subprocess.Popen(swarm.in_hub(sys.executable, "-c", (
        f"import socket; s = socket.create_server(({swarm.outside_address()!r}, 8080)); "
        "[s.accept()[0].close() for _ in iter(int, 1)]")))
    try:
        poll_until(lambda: subprocess.run(swarm.in_hub("ss", "-ltnH", "sport = :8080"), capture_output=True,
                                          text=True).stdout.strip() != "", "the outside server to listen",
                   give_up=lambda: server.poll() is not None)
        yield target
    finally:
        server.kill()
        server.wait()


def _on(swarm: LocalSwarm, node: str) -> SwarmCluster:
    return SwarmCluster(swarm.manager.socket, constraints=[f"node.labels.pydantic-deep.node=={node}"])


def test_networked_sandboxes_reach_the_outside_but_not_each_other_nor_the_nodes(swarm: LocalSwarm) -> None:
    """Three users' networked sandboxes: two on node2, one on node3; only the outside answers."""
    options = {"network": True, "memory": "256m", "cpus": 0.25}
    sandboxes = [DockerSandbox(cluster=_on(swarm, node), **options) for node in ("node2", "node2", "node3")]
    try:
        with _outside_server(swarm) as outside:
            for sandbox in sandboxes:
                sandbox.start()
            probe, neighbour, elsewhere = sandboxes
            for server in (neighbour, elsewhere):
                assert server.execute(SERVE_ON_8000, timeout=30).exit_code == 0
                assert probe_connections(server, "127.0.0.1:8000") == {"127.0.0.1:8000": "connected"}  # it does answer
            node2, node3 = swarm.nodes["node2"], swarm.nodes["node3"]
            targets = {
                outside: "connected",
                f"{_address(neighbour)}:8000": "refused",  # the same node's bridge: inter-container traffic off
                f"{_address(elsewhere)}:8000": "refused",  # another node's sandbox (a private address)
                f"{node2.address}:2376": "refused",  # its own node's engine, over TLS
                f"{node3.address}:2376": "refused",  # another node's engine
                f"{swarm.registry}": "refused",  # the cluster's registry, a private address
                "169.254.169.254:80": "refused",  # the metadata address
            }
            outcome = probe_connections(probe, *targets)
            assert {t: "connected" if o == "connected" else "refused" for t, o in outcome.items()} == targets, outcome
            # The nodes' addresses are routed: refused at once by the node's packet filter ("No
            # route to host"), not left to time out. (A neighbour's packets are dropped by Docker's
            # rule for the bridge; another node's bridge is not routed from this node at all.)
            assert outcome[f"{node2.address}:2376"] == outcome[f"{node3.address}:2376"] == "EHOSTUNREACH", outcome
    finally:
        for sandbox in sandboxes:
            sandbox.stop()


def test_a_shared_network_puts_its_sandboxes_on_one_node_where_they_talk(swarm: LocalSwarm,
                                                                          cluster: SwarmCluster) -> None:
    options = {"memory": "256m", "cpus": 0.25, "network": True, "shared_network": "team"}
    first, second = (DockerSandbox(cluster=cluster, network_owner="alice", **options) for _ in range(2))
    stranger = DockerSandbox(cluster=cluster, network_owner="mallory", **options)
    try:
        first.start()
        second.start()
        stranger.start()
        assert second.node == first.node  # a shared network is a bridge on one node
        assert first.execute(SERVE_ON_8000, timeout=30).exit_code == 0
        target = f"{_address(first)}:8000"
        assert probe_connections(second, target) == {target: "connected"}
        assert probe_connections(stranger, target)[target] != "connected"  # another owner's "team" is another network
    finally:
        for sandbox in (first, second, stranger):
            sandbox.stop()
    assert cluster.client.services.list() == []

    def networks_left() -> list[str]:  # what the last one out could not remove yet, prune removes
        remove_unused_swarm_networks(cluster)
        return [n["Name"] for n in cluster.client.api.networks() if n["Name"].startswith("pydantic-deep-swarm-user")]

    poll_until(lambda: networks_left() == [], "the shared networks to go")


# -- a capped disk on the task's node (issue 22) -------------------------------------------------


def _disk_mounts(disk: str) -> list[str]:
    return [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines() if f"/{disk} " in line]


def test_a_disk_caps_a_cluster_sandbox_on_its_node_and_goes_with_it(swarm: LocalSwarm, cluster: SwarmCluster) -> None:
    with DockerSandbox(cluster=cluster, disk_size="100m", memory="256m", cpus=0.25) as sandbox:
        disk = sandbox.disk_name
        node_id = swarm.node_id(sandbox.node or "")
        # Made on every node, kept on the task's only: the one mount there is, under its node's id.
        assert _disk_mounts(disk) == [f"{DISK_DIR}/swarm-{node_id}/{disk}"]
        for where in (sandbox.work_dir, "~"):
            full = sandbox.execute(f"head -c 150M /dev/zero > {where}/big; echo $?; rm -f {where}/big")
            assert "No space left on device" in full.output and full.output.split()[-1] == "1", full
        with pytest.raises(DiskFullError, match="ran out of disk space"):
            sandbox.write_file("big.bin", b"\0" * (150 << 20))
        assert "Read-only file system" in sandbox.execute("touch /opt/elsewhere").output  # nothing else writable
        assert sandbox.execute("echo still here").output == "still here\n"
        usage = sandbox.usage()
        assert usage.disk_limit_bytes is not None and 80 << 20 < usage.disk_limit_bytes <= 100 << 20, usage
        node = swarm.nodes[sandbox.node or ""]
    # Released with its service: no mount, no file, and once the task's container is gone (Swarm
    # removes it a moment after the service), no loop device.
    poll_until(lambda: _disk_mounts(disk) == [], "the disk to be unmounted")
    assert list(Path(DISK_DIR).glob(f"swarm-*/{disk}*")) == []
    poll_until(lambda: _service_containers(node, sandbox.name) == [], "the task's container to go")
    poll_until(lambda: disk not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout,
               "the disk's loop device to be detached")


# -- snapshots and forks (issue 16) on the cluster -----------------------------------------------


def test_snapshots_and_forks_of_a_cluster_sandbox_start_on_other_nodes(swarm: LocalSwarm,
                                                                       cluster: SwarmCluster) -> None:
    source = DockerSandbox(cluster=cluster, memory="256m", cpus=0.25, disk_size="100m")
    started: list[DockerSandbox] = [source]
    snap = None
    try:
        source.start()
        source.write_file("notes.txt", "before")
        source.execute("echo kept > ~/.profile-note")
        snap = source.snapshot()  # made on the source's node, kept in this host's engine
        assert snap.name in {s.name for s in list_snapshots()} and snap.disk_size == 100 << 20
        forks = source.fork(2)
        started += forks
        assert {fork.node for fork in forks} - {source.node}, "Swarm spreads the forks to the other nodes"
        for index, fork in enumerate(forks):
            assert fork.read_file("notes.txt") == b"before"
            assert fork.execute("cat ~/.profile-note").output == "kept\n"
            fork.write_file("notes.txt", f"fork {index}")
            limit = fork.usage().disk_limit_bytes  # a fork keeps its source's disk cap
            assert limit is not None and limit <= 100 << 20, limit
        assert [f.read_file("notes.txt") for f in forks] == [b"fork 0", b"fork 1"]
        assert source.read_file("notes.txt") == b"before"
        other = next(name for name in swarm.nodes if name != source.node)
        restored = DockerSandbox(snapshot=snap, cluster=_on(swarm, other), memory="256m", cpus=0.25)
        started.append(restored)
        restored.start()
        assert restored.node == other and restored.read_file("notes.txt") == b"before"
    finally:
        for sandbox in started:
            sandbox.stop()
        if snap is not None:
            delete_snapshot(snap.name)


# -- a session's quota on the cluster's session storage (issue 22) ---------------------------------


@pytest.fixture
def stored(swarm: LocalSwarm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwarmCluster]:
    """The workers, with session files in a host directory each node binds through the local driver
    (what an NFS export with ``crossmnt`` does across machines), named as the session storage."""
    storage = tmp_path_factory.mktemp("storage")
    yield SwarmCluster(swarm.manager.socket, constraints=["node.role==worker"], volume_driver="local",
                       volume_driver_options={"type": "none", "o": "bind", "device": f"{storage}/{{name}}"},
                       session_storage=storage)
    for node in swarm.nodes.values():  # a node a failed test left down
        if node.process is None:
            node.start()


def _storage_leftovers(storage: str) -> list[str]:
    """Loop devices, mounts and files of the session storage ``storage``."""
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    return ([line for line in loops.splitlines() if f"({storage}/" in line]
            + [line for line in Path("/proc/self/mounts").read_text().splitlines() if f" {storage}/" in line]
            + os.listdir(storage))


@pytest.mark.disk
@pytest.mark.anyio
async def test_a_session_quota_holds_on_every_node_and_across_a_node_loss(swarm: LocalSwarm,
                                                                          stored: SwarmCluster) -> None:
    storage = stored.session_storage
    assert storage is not None
    manager = SessionManager(name="test-cluster-quota", cluster=stored, memory="256m", cpus=0.25, disk_size="200m")
    lost_node = None
    try:
        sandbox = await manager.get_or_create("gina")
        disk = sandbox.disk_name
        assert os.path.ismount(f"{storage}/{disk}")  # the session's directory in the export is its filesystem
        result = sandbox.execute("head -c 300m /dev/zero > big; echo status=$?", timeout=120)
        assert "No space left on device" in result.output and "status=1" in result.output, result
        assert sandbox.execute("echo still answering").output == "still answering\n"
        [info] = await manager.list_sessions()
        assert info.disk_limit_bytes is not None and 180 << 20 < info.disk_limit_bytes <= 200 << 20, info
        assert info.disk_bytes > info.disk_limit_bytes - (8 << 20)  # full
        written = sandbox.execute("stat -c %s big").output

        lost_node = swarm.nodes[sandbox.node or ""]
        lost_node.kill()
        # At once, before any call found the node lost (Swarm still has it ready for a while): a
        # task placed there is found waiting on a dead engine and placed again, elsewhere.
        moved = await manager.get_or_create("gina")
        assert moved.node not in (None, lost_node.name)
        with pytest.raises(NodeLostError):
            sandbox.execute("echo on a lost node", timeout=30)
        assert moved.execute("stat -c %s big").output == written  # its files, on the same filesystem
        result = moved.execute("head -c 100m /dev/zero > more; echo status=$?", timeout=120)
        assert "No space left on device" in result.output and "status=1" in result.output, result  # the same cap
        assert moved.usage().disk_limit_bytes == info.disk_limit_bytes
        lost_node.start()
        poll_until(lambda: not _service_containers(lost_node, sandbox.name), "the old task's container to go")
    finally:
        if lost_node is not None and lost_node.process is None:
            lost_node.start()
        await manager.shutdown(keep_files=False)
    poll_until(lambda: _storage_leftovers(storage) == [], "no loop device, mount or file of the disk left",
               timeout=60)

