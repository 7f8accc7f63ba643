"""A real 3-node Docker Swarm on this one machine, for the ``cluster`` tests and ``scripts/cluster``.

Each node is a private ``dockerd`` in a network namespace of its own (``<prefix>-node1`` ...), its
veth pair plugged into a bridge inside a hub namespace (``<prefix>-hub``), on the subnet
``10.213.0.0/24`` (another ``subnet`` for a second swarm), which exists only inside those namespaces
and on one veth pair from the host (``<prefix>-h``, the host's address ``.254``). Each daemon keeps
everything under ``<root>/nodeN`` (data root, exec root, pid file, unix socket): the host reaches
each engine through its socket file, and over TLS at ``tcp://<node address>:2376``
(``--tlsverify``, with certificates :func:`make_certificates` makes under ``<root>/tls``: a CA, a
server certificate per node with the node's address as its IP SAN, and a client certificate).

Each daemon manages its own namespace's iptables (as an engine host does: NAT out of its bridges,
inter-container rules), and its namespace routes the benchmark range ``198.18.0.0/15`` to the hub,
where a test can serve an "outside" address (:meth:`LocalSwarm.outside_address`).

Daemons are started with ``nsenter --net=/run/netns/NAME``, never in the host's own namespace (a
dockerd there deletes the host's docker0) and never with ``ip netns exec`` (which remounts /sys and
hides the cgroup v1 mounts).

A registry (Debian's ``docker-registry``) listens in the hub namespace at ``10.213.0.1:5000``,
which the nodes trust over plain HTTP: :class:`pydantic_deep.SwarmCluster` with ``registry=`` pushes
images there once and the nodes pull them.

The swarm is made with ``--dispatcher-heartbeat 1s``, so a dead node is known within seconds; the
manager (node1) takes tasks too. Nodes cannot pull from outside: images reach them from the host's
engine, through :class:`pydantic_deep.SwarmCluster`'s loading.

``LocalSwarm.down`` removes every namespace, daemon, mount, veth and directory it made, also when
``up`` failed half-way; what it made is recorded in ``<root>/state.json``, so ``scripts/cluster down``
in another process finds it.

Run ``python tests/local_swarm.py up|down|status`` (what ``scripts/cluster`` does).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
from docker.errors import DockerException

from pydantic_deep.sandbox.disk import DISK_DIR

__all__ = ["LocalSwarm", "SwarmNode"]

DEFAULT_ROOT = Path("/run/pydantic-deep-cluster")
SUBNET = "10.213.0"
OUTSIDE = "198.18.0.0/15"  # the benchmark range: not private, so a networked sandbox may reach it
ENGINE_PORT = 2376
_START_TIMEOUT = 60.0


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


def make_certificates(directory: Path, servers: dict[str, str]) -> None:
    """A CA (``ca.pem``), a server certificate per name in ``servers`` with its address as IP SAN
    (``<name>-cert.pem``, ``<name>-key.pem``) and a client certificate (``cert.pem``, ``key.pem``),
    with openssl, valid for two days: what ``dockerd --tlsverify`` and docker's ``TLSConfig`` take."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run("openssl", "req", "-x509", *key, "-keyout", str(directory / "ca-key.pem"), "-out",
         str(directory / "ca.pem"), "-days", "2", "-subj", f"/CN=pydantic-deep test CA {directory.parent.name}")
    for name, extensions in [*((n, f"subjectAltName=IP:{a}\nextendedKeyUsage=serverAuth") for n, a in servers.items()),
                             ("client", "extendedKeyUsage=clientAuth")]:
        prefix = "" if name == "client" else f"{name}-"
        (directory / f"{name}.ext").write_text(extensions + "\n")
        _run("openssl", "req", *key, "-keyout", str(directory / f"{prefix}key.pem"), "-out",
             str(directory / f"{name}.csr"), "-subj", f"/CN={name}")
        _run("openssl", "x509", "-req", "-in", str(directory / f"{name}.csr"), "-CA", str(directory / "ca.pem"),
             "-CAkey", str(directory / "ca-key.pem"), "-CAcreateserial", "-days", "2", "-out",
             str(directory / f"{prefix}cert.pem"), "-extfile", str(directory / f"{name}.ext"))


@dataclass
class SwarmNode:
    """One node: its namespace, address on the private subnet, directory and engine socket."""

    name: str
    namespace: str
    address: str
    root: Path
    registry: str
    tls: Path  # the swarm's certificates (see make_certificates)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def socket(self) -> str:
        return f"unix://{self.root}/docker.sock"

    @property
    def tcp(self) -> str:
        """The engine's TLS address (``--tlsverify``: a client needs a certificate of the swarm's CA)."""
        return f"tcp://{self.address}:{ENGINE_PORT}"

    @property
    def pid_file(self) -> Path:
        return self.root / "docker.pid"

    def client(self, timeout: int = 60) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.socket, version="auto", timeout=timeout)

    def start(self) -> None:
        """Start (or restart) this node's dockerd and wait until it answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "daemon.json").write_text("{}")  # never the host's /etc/docker/daemon.json
        argv = [
            "nsenter", f"--net=/run/netns/{self.namespace}", "--",
            "dockerd", "--host", self.socket, "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"), "--pidfile", str(self.pid_file),
            "--config-file", str(self.root / "daemon.json"),
            # A docker0 of its own inside the namespace (the host's is never touched); its iptables
            # rules are the namespace's own, as an engine host's are its own.
            "--insecure-registry", self.registry,
            "--host", self.tcp, "--tlsverify", "--tlscacert", str(self.tls / "ca.pem"),
            "--tlscert", str(self.tls / f"{self.name}-cert.pem"), "--tlskey", str(self.tls / f"{self.name}-key.pem"),
        ]
        # Not DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1: it stops pulls from the registry too. A node's
        # pull of a loaded image from Docker Hub fails at once (no route out), and Swarm then
        # uses the loaded one.
        env = dict(os.environ)
        with (self.root / "dockerd.log").open("ab") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                            start_new_session=True)
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            with contextlib.suppress(DockerException):
                self.client(timeout=5).ping()
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd of {self.name} did not start; its log:\n{self.log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """Crash this node's engine: SIGKILL to its dockerd (and the containerd it started)."""
        pid = self.daemon_pid()
        containerd = self.containerd_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if containerd is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(containerd, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()
            self.process = None
        for waited in (pid, containerd):
            _wait_gone(waited)
        (self.root / "exec" / "containerd" / "containerd.pid").unlink(missing_ok=True)
        self.pid_file.unlink(missing_ok=True)

    def daemon_pid(self) -> int | None:
        if self.process is not None and self.process.poll() is None:
            return self.process.pid
        return _read_pid(self.pid_file)

    def containerd_pid(self) -> int | None:
        return _read_pid(self.root / "exec" / "containerd" / "containerd.pid")

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.root / "dockerd.log").read_text(errors="replace").splitlines()[-lines:])
        return ""


class LocalSwarm:
    """A 3-node swarm in network namespaces, made by :meth:`up` and removed by :meth:`down`.

    Args:
        root: Where the nodes keep their files (short: unix socket paths must fit in 108 bytes).
        prefix: Names the namespaces and veths, so that two swarms never meet.
        size: How many nodes; node1 is the manager.
    """

    def __init__(self, root: Path = DEFAULT_ROOT, prefix: str = "pdc", size: int = 3, subnet: str = SUBNET) -> None:
        self.root = root
        self.prefix = prefix
        self.subnet = subnet
        self.hub = f"{prefix}-hub"
        self.host_link = f"{prefix}-h"
        self.nodes = {f"node{i}": SwarmNode(f"node{i}", f"{prefix}-node{i}", f"{subnet}.{10 + i}",
                                            root / f"node{i}", self.registry, self.tls)
                      for i in range(1, size + 1)}

    @property
    def manager(self) -> SwarmNode:
        return self.nodes["node1"]

    @property
    def registry(self) -> str:
        """The registry in the hub namespace, which every node trusts (plain HTTP)."""
        return f"{self.subnet}.1:5000"

    @property
    def tls(self) -> Path:
        """The directory of the swarm's certificates: ``ca.pem``, and the client's ``cert.pem`` and ``key.pem``."""
        return self.root / "tls"

    def outside_address(self) -> str:
        """An address in the hub namespace that every node routes to, from the benchmark range (not a
        private one): where a test serves what networked sandboxes may reach."""
        index = int(self.subnet.rsplit(".", 1)[1])
        return str(ipaddress.IPv4Network(OUTSIDE)[256 * index + 1])

    def in_hub(self, *argv: str) -> list[str]:
        """``argv`` run in the hub namespace (what a test server there is started with)."""
        return ["nsenter", f"--net=/run/netns/{self.hub}", "--", *argv]

    @property
    def engines(self) -> dict[str, str]:
        """Each node's hostname in the swarm and its engine's address (as SwarmCluster's ``nodes``)."""
        return {node.name: node.socket for node in self.nodes.values()}

    def up(self) -> None:
        """Make the namespaces, start the daemons and form the swarm; on failure, undo it all."""
        if (self.root / "state.json").exists():
            raise RuntimeError(f"a cluster is already up under {self.root}; run `scripts/cluster down` first")
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "state.json").write_text(json.dumps({"prefix": self.prefix, "size": len(self.nodes),
                                                          "subnet": self.subnet}))
        try:
            make_certificates(self.tls, {node.name: node.address for node in self.nodes.values()})
            self._network()
            self._start_registry()
            for node in self.nodes.values():
                node.start()
            self._form_swarm()
        except BaseException:
            self.down()
            raise

    def _network(self) -> None:
        _run("ip", "netns", "add", self.hub)
        _run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.hub, "addr", "add", f"{self.subnet}.1/24", "dev", "br0")
        _run("ip", "-n", self.hub, "addr", "add", f"{self.outside_address()}/32", "dev", "lo")
        _run("ip", "-n", self.hub, "link", "set", "br0", "up")
        _run("ip", "-n", self.hub, "link", "set", "lo", "up")
        # The host's way to the engines' TLS ports: one veth pair into the hub's bridge.
        _run("ip", "link", "add", self.host_link, "type", "veth", "peer", "name", "host", "netns", self.hub)
        _run("ip", "-n", self.hub, "link", "set", "host", "master", "br0", "up")
        _run("ip", "addr", "add", f"{self.subnet}.254/24", "dev", self.host_link)
        _run("ip", "link", "set", self.host_link, "up")
        for index, node in enumerate(self.nodes.values(), start=1):
            _run("ip", "netns", "add", node.namespace)
            outer = f"{self.prefix}-v{index}"
            _run("ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", node.namespace)
            _run("ip", "link", "set", outer, "netns", self.hub)
            _run("ip", "-n", self.hub, "link", "set", outer, "master", "br0", "up")
            _run("ip", "-n", node.namespace, "addr", "add", f"{node.address}/24", "dev", "eth0")
            _run("ip", "-n", node.namespace, "link", "set", "eth0", "up")
            _run("ip", "-n", node.namespace, "link", "set", "lo", "up")
            _run("ip", "-n", node.namespace, "route", "add", OUTSIDE, "via", f"{self.subnet}.1")

    def _start_registry(self) -> None:
        config = self.root / "registry.yml"
        config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {self.root}/registry\n"
                          f"http:\n  addr: {self.registry}\nlog:\n  level: warn\n")
        with (self.root / "registry.log").open("ab") as log:
            process = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.hub}", "--", "docker-registry", "serve",
                                        str(config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       start_new_session=True)
        (self.root / "registry.pid").write_text(str(process.pid))
        deadline = time.monotonic() + _START_TIMEOUT
        while subprocess.run(["nsenter", f"--net=/run/netns/{self.hub}", "--", "ss", "-ltnH", "sport = :5000"],
                             capture_output=True, text=True).stdout.strip() == "":
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start: {(self.root / 'registry.log').read_text()}")
            time.sleep(0.05)

    def _form_swarm(self) -> None:
        manager = self.manager.client()
        manager.swarm.init(advertise_addr=self.manager.address, listen_addr=f"{self.manager.address}:2377",
                           dispatcher_heartbeat_period=1_000_000_000)
        token = manager.swarm.attrs["JoinTokens"]["Worker"]
        for node in list(self.nodes.values())[1:]:
            node.client().swarm.join([f"{self.manager.address}:2377"], token, listen_addr=f"{node.address}:2377",
                                     advertise_addr=node.address)
        # Every daemon here has the host's hostname: tell the nodes apart by a label with their
        # name and one with their engine's address (what SwarmCluster reads).
        for node in self.nodes.values():
            info = node.client().info()
            self._record(node_ids=[*self._state().get("node_ids", []), info["Swarm"]["NodeID"]])
            swarm_node = manager.nodes.get(info["Swarm"]["NodeID"])
            spec = swarm_node.attrs["Spec"]
            spec["Labels"] = {**spec.get("Labels", {}), "pydantic-deep.node": node.name,
                              "pydantic-deep.engine": node.socket}
            swarm_node.update(spec)

    def _state(self) -> dict[str, object]:
        try:
            state: dict[str, object] = json.loads((self.root / "state.json").read_text())
        except (OSError, ValueError):
            return {}
        return state

    def _record(self, **more: object) -> None:
        (self.root / "state.json").write_text(json.dumps({**self._state(), **more}))

    def node_id(self, name: str) -> str:
        return str(self.nodes[name].client().info()["Swarm"]["NodeID"])

    def down(self) -> None:
        """Stop every daemon and remove namespaces, veths, mounts and the directory. Safe to call
        more than once, and on a half-made cluster."""
        # Killed, not stopped: a swarm daemon takes half a minute to stop, and nothing of it is kept.
        for node in self.nodes.values():
            node.kill()
        registry = _read_pid(self.root / "registry.pid")
        if registry is not None:
            os.kill(registry, signal.SIGKILL)
            _wait_gone(registry)
        _kill_shims_below(self.root)
        _kill_containers_below(self.root)
        _unmount_below(self.root)
        # Capped disks of the nodes' sandboxes (pydantic_deep.sandbox.cluster_disk), on this host's disk.
        for node_id in self._state().get("node_ids", []) or []:
            disks = Path(DISK_DIR) / f"swarm-{node_id}"
            _unmount_below(disks)
            shutil.rmtree(disks, ignore_errors=True)
        for namespace in [self.hub, *(node.namespace for node in self.nodes.values())]:
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True)
        subprocess.run(["ip", "link", "delete", self.host_link], capture_output=True)  # gone with the hub
        shutil.rmtree(self.root, ignore_errors=True)

    @classmethod
    def existing(cls, root: Path = DEFAULT_ROOT) -> LocalSwarm | None:
        """The swarm recorded under ``root`` by an ``up`` (of any process), or ``None``."""
        try:
            state = json.loads((root / "state.json").read_text())
        except (OSError, ValueError):
            return None
        return cls(root, state["prefix"], state["size"], state.get("subnet", SUBNET))


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _wait_gone(pid: int | None, timeout: float = _START_TIMEOUT) -> bool:
    if pid is None:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
        except (OSError, IndexError):
            return True
        if state == "Z":  # a zombie nobody reaped (no init in this container) is gone for us
            return True
        time.sleep(0.02)
    return False


def _kill_shims_below(root: Path) -> None:
    """Kill containerd shims (and so their containers) left by a daemon killed with SIGKILL."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and b"containerd-shim" in cmdline[0] and any(str(root).encode() in part for part in cmdline):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def _kill_containers_below(root: Path) -> None:
    """Kill the processes of containers whose daemon was killed with SIGKILL: their shim's death
    leaves them running, reparented to init, holding their mounts (a disk's loop device among them).
    A container's process has its root filesystem (the mount at ``/``) under the daemon's data root."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or proc.name == str(os.getpid()):
            continue
        try:
            root_mount = next((line for line in (proc / "mountinfo").read_text().splitlines()
                               if line.split()[4] == "/"), "")
        except (OSError, IndexError):
            continue
        if f"{root}/" in root_mount:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def _unmount_below(root: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{root}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    if command == "up":
        swarm = LocalSwarm()
        started = time.monotonic()
        swarm.up()
        print(f"3-node swarm up in {time.monotonic() - started:.1f} s under {swarm.root}")
        print(f"  manager: {swarm.manager.socket} (over TLS: {swarm.manager.tcp}, certificates in {swarm.tls})")
        print(f"  export PYDANTIC_DEEP_CLUSTER={swarm.manager.socket}")
        return 0
    if command == "down":
        swarm = LocalSwarm.existing() or LocalSwarm()
        swarm.down()
        print("swarm down: no namespace, daemon or directory left")
        return 0
    if command == "status":
        swarm = LocalSwarm.existing()
        if swarm is None:
            print("no cluster")
            return 1
        for node in swarm.manager.client().nodes.list():
            print(node.attrs["Spec"].get("Labels", {}).get("pydantic-deep.node"), node.attrs["Status"]["State"],
                  node.attrs["Spec"]["Availability"])
        return 0
    print("usage: cluster up|down|status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
