"""Networked sandboxes reach the outside world and nothing else (issue 21), against real containers.

"Outside" is a server in a network namespace this module makes: a veth pair from the host, with a
public-looking address from the benchmark range 198.18.0.0/15 and a private one from 10.233.0.0/16
(to show that private ranges stay out of reach unless a sandbox lists them). The host's side is a
server listening on all of the host's interfaces. Every test server listens only on the host's own
addresses or in the namespace made here, and everything is removed in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from helpers import CONNECT_PROBE, SERVE_ON_8000, answers, namespace_behind_veth, poll_until, probe_connections

from pydantic_deep import DockerSandbox, InvalidArgumentError, SandboxPool, SessionManager
from pydantic_deep.engine.client import docker_client
from pydantic_deep.engine.firewall import (
    BRIDGE_PREFIX,
    NetworkRules,
    _apply_script,
    _remove_script,
    _restore_input,
    _run,
    rules_installed,
)
from pydantic_deep.engine.networks import LABEL, remove_unused_networks
from pydantic_deep.images.netfilter import ensure_netfilter_image
from pydantic_deep.sessions import naming

pytestmark = pytest.mark.network

NODE_PROBE = r"""node -e '
const net = require("net");
for (const target of process.argv.slice(1)) {{
  const [host, port] = target.split(":");
  const s = net.connect({{host, port: Number(port), timeout: 2000}});
  s.on("connect", () => {{ console.log(target, "connected"); s.destroy(); }});
  s.on("timeout", () => {{ console.log(target, "timeout"); s.destroy(); }});
  s.on("error", (e) => console.log(target, e.code));
}}' {targets}"""
# A server on all the sandbox's interfaces, up before the command returns.



def probe(sandbox: DockerSandbox, *targets: str, node: bool = False) -> dict[str, str]:
    return probe_connections(sandbox, *targets, template=NODE_PROBE if node else CONNECT_PROBE)


def serve(sandbox: DockerSandbox) -> None:
    assert sandbox.execute(SERVE_ON_8000, timeout=30).exit_code == 0


def addresses(sandbox: DockerSandbox) -> dict[str, str]:
    """The sandbox's address on each of its networks."""
    assert sandbox.container_id is not None
    networks = docker_client().api.inspect_container(sandbox.container_id)["NetworkSettings"]["Networks"]
    return {name: network["IPAddress"] for name, network in networks.items()}


@dataclass
class Outside:
    public: str  # "198.18.x.y:8080", routed from the host through the veth pair
    private: str  # "10.233.x.y:8080", the same server on a private address
    private_range: str
    host_side: list[str]  # the host's addresses on the veth pair


@pytest.fixture(scope="module")
def outside() -> Iterator[Outside]:
    """A server in a network namespace of its own, reachable from the host through a veth pair."""
    pid = os.getpid()
    public = ipaddress.IPv4Network("198.18.0.0/15")[4 * (pid % 32768)]
    private = ipaddress.IPv4Network("10.233.0.0/16")[4 * (pid % 16384)]
    networks = [ipaddress.IPv4Network(f"{base}/30") for base in (public, private)]
    with namespace_behind_veth("out", networks) as namespace:
        server = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, "-c",
             "import socket; s = socket.create_server(('0.0.0.0', 8080)); "
             "[s.accept()[0].close() for _ in iter(int, 1)]"])
        try:
            poll_until(answers(lambda: socket.create_connection((str(public + 2), 8080), timeout=1).close(), OSError),
                       "the outside server answers through the veth pair", timeout=10,
                       give_up=lambda: server.poll() is not None)
            yield Outside(f"{public + 2}:8080", f"{private + 2}:8080", f"{private}/30",
                          [str(public + 1), str(private + 1)])
        finally:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def host_server() -> Iterator[int]:
    """A TCP server on all of the host's interfaces, at a TCP engine's port (2375) when free."""
    try:
        server = socket.create_server(("0.0.0.0", 2375))
    except OSError:
        server = socket.create_server(("0.0.0.0", 0))

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                server.accept()[0].close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the thread
        server.close()
        thread.join(5)


def host_addresses() -> list[str]:
    """Every IPv4 address of the host but loopback: its own interfaces and every bridge's gateway."""
    lines = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    found = [line.split()[3].split("/")[0] for line in lines.splitlines()]
    return [address for address in found if not address.startswith("127.")]


@pytest.fixture(scope="module", autouse=True)
def nothing_left() -> Iterator[None]:
    """After the module: no sandbox network and no packet filter rule of ours is left."""
    yield
    client = docker_client()
    remove_unused_networks(client, helper_image=lambda: ensure_netfilter_image(client))
    assert client.api.networks(filters={"label": LABEL}) == []
    assert rules_installed() == []


# -- who a networked sandbox reaches -------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"shared_network": "team"}], ids=["egress", "shared-network-team"])
def test_sandboxes_of_different_users_cannot_connect_to_each_other(options: dict[str, str]) -> None:
    """Both on the one egress network (inter-container traffic off), or each on their own "team"."""
    manager = SessionManager(name="test-net", network=True, **options)

    async def both() -> tuple[DockerSandbox, DockerSandbox]:
        return await manager.get_or_create("alice"), await manager.get_or_create("bob")

    try:
        alice, bob = asyncio.run(both())
        serve(bob)
        assert probe(bob, "127.0.0.1:8000") == {"127.0.0.1:8000": "connected"}  # the server does answer
        bob_addresses = addresses(bob)
        same_network = set(addresses(alice)) == set(bob_addresses)
        assert same_network == (not options), (addresses(alice), bob_addresses)
        targets = [f"{address}:8000" for address in bob_addresses.values()] + [f"{bob.name}:8000"]
        outcome = probe(alice, *targets)
        assert all(result != "connected" for result in outcome.values()), outcome
    finally:
        asyncio.run(manager.shutdown(keep_files=False))


def test_a_warm_pools_networked_sandboxes_cannot_connect_to_each_other() -> None:
    with SandboxPool("python-minimal", size=2, network=True) as pool:
        first, second = pool.acquire(), pool.acquire()
        try:
            serve(first)
            targets = [f"{address}:8000" for address in addresses(first).values()] + [f"{first.name}:8000"]
            outcome = probe(second, *targets)
            assert all(result != "connected" for result in outcome.values()), outcome
        finally:
            first.stop()
            second.stop()


def test_a_networked_sandbox_reaches_neither_the_host_nor_the_engine(host_server: int, outside: Outside) -> None:
    targets = [f"{address}:{host_server}" for address in host_addresses()]
    assert set(outside.host_side) <= {target.split(":")[0] for target in targets}
    with DockerSandbox("python-minimal", network=True) as box:
        assert box.image is not None
        # Control: a plain container on Docker's default bridge reaches the same server.
        control = docker_client().containers.run(
            box.image, ["sh", "-c", CONNECT_PROBE.format(targets=f"172.17.0.1:{host_server}", timeout=2)],
            network_mode="bridge", user="1000:1000", remove=True, labels={"pydantic-deep.owner-pid": str(os.getpid())})
        assert control.decode().split() == [f"172.17.0.1:{host_server}", "connected"]
        outcome = probe(box, *targets)
        assert all(result == "EHOSTUNREACH" for result in outcome.values()), outcome
        sockets = box.execute("ls /var/run/docker.sock /run/docker.sock; find / -xdev -type s 2>/dev/null")
        assert sockets.stdout == "", sockets.output
        assert "No such file" in sockets.stderr


def test_a_networked_sandbox_reaches_the_outside_and_the_package_index(outside: Outside) -> None:
    with DockerSandbox("python-minimal", network=True) as box:
        outcome = probe(box, outside.public, outside.private, "169.254.169.254:80")
        assert outcome == {outside.public: "connected", outside.private: "EHOSTUNREACH",
                           "169.254.169.254:80": "EHOSTUNREACH"}
        result = box.execute("pip download --no-deps --no-cache-dir -d /tmp/dl six==1.16.0", timeout=120)
        assert result.exit_code == 0, result.output


def test_allow_private_opens_only_the_ranges_listed(outside: Outside) -> None:
    with DockerSandbox("python-minimal", network=True, allow_private=[outside.private_range]) as box:
        outcome = probe(box, outside.private, "169.254.169.254:80", f"{outside.host_side[1]}:8080")
        assert outcome == {outside.private: "connected", "169.254.169.254:80": "EHOSTUNREACH",
                           f"{outside.host_side[1]}:8080": "EHOSTUNREACH"}  # the host's own address stays shut


def test_a_node_image_without_python_is_isolated_the_same(host_server: int, outside: Outside) -> None:
    with DockerSandbox("node-minimal", network=True) as box:
        assert not box.has_python
        targets = ["169.254.169.254:80", f"{outside.host_side[0]}:{host_server}", outside.private, outside.public]
        assert probe(box, *targets, node=True) == {
            "169.254.169.254:80": "EHOSTUNREACH", f"{outside.host_side[0]}:{host_server}": "EHOSTUNREACH",
            outside.private: "EHOSTUNREACH", outside.public: "connected"}


# -- shared networks ------------------------------------------------------------------------------


def test_sandboxes_on_a_shared_network_they_both_named_can_talk(outside: Outside) -> None:
    team = f"team-{os.getpid()}"
    with (DockerSandbox("python-minimal", network=True, shared_network=team) as server,
          DockerSandbox("python-minimal", network=True, shared_network=team) as peer,
          DockerSandbox("python-minimal", network=True, shared_network=team, network_owner="someoneelse") as other):
        serve(server)
        [shared] = addresses(server).values()
        targets = [f"{shared}:8000", f"{server.name}:8000"]
        assert probe(peer, *targets, outside.public, "169.254.169.254:80") == {
            **dict.fromkeys(targets, "connected"), outside.public: "connected", "169.254.169.254:80": "EHOSTUNREACH"}
        assert all(result != "connected" for result in probe(other, *targets).values())
        with pytest.raises(InvalidArgumentError, match="every sandbox of a shared network has the same network"):
            DockerSandbox("python-minimal", shared_network=team).start()


def test_a_shared_network_without_the_network_joins_peers_and_nothing_else(outside: Outside) -> None:
    team = f"offline-{os.getpid()}"
    with (DockerSandbox("python-minimal", shared_network=team) as server,
          DockerSandbox("python-minimal", shared_network=team) as peer):
        serve(server)
        targets = [f"{address}:8000" for address in addresses(server).values()] + [f"{server.name}:8000"]
        assert probe(peer, *targets) == dict.fromkeys(targets, "connected")
        assert probe(peer, outside.public) == {outside.public: "EHOSTUNREACH"}


# -- arguments and rules, without containers ------------------------------------------------------


@pytest.mark.parametrize("options, problem", [
    ({"network": "pypi.org"}, "not the string 'pypi.org'"),
    ({"allow_private": "10.0.0.0/8"}, "list of IPv4 ranges"),
    ({"allow_private": ["10.0.0.1/8"]}, "is not an IPv4 range"),
    ({"allow_private": ["0.0.0.0/0"]}, "every private network"),
    ({"shared_network": "Team Blue"}, "shared_network 'Team Blue' must be"),
    ({"network_owner": "Alice"}, "network_owner must be"),
])
def test_bad_network_arguments_are_refused_with_the_reason(options: dict[str, object], problem: str) -> None:
    with pytest.raises(InvalidArgumentError, match=problem):
        DockerSandbox("python-minimal", **options)  # type: ignore[arg-type]


def test_a_session_manager_keeps_shared_networks_per_user() -> None:
    with pytest.raises(InvalidArgumentError, match="set by the session manager"):
        SessionManager(name="test-net", network_owner="x")
    with pytest.raises(InvalidArgumentError, match="cannot be used with pool_size"):
        SessionManager(name="test-net", pool_size=1, shared_network="team")
    manager = SessionManager(name="test-net", warm=0)  # made, never shut down
    assert naming.network_owner(manager._key("alice")) != naming.network_owner(manager._key("bob"))


def test_the_rules_refuse_the_metadata_address_before_any_allowance() -> None:
    script = _restore_input([NetworkRules(f"{BRIDGE_PREFIX}eopen", ("10.1.0.0/16",), allow_metadata=True),
                             NetworkRules(f"{BRIDGE_PREFIX}egress")])
    text = subprocess.run(["sh", "-c", script.replace("| iptables-restore -w --noflush", "")],
                          capture_output=True, text=True, check=True).stdout
    rules = [line for line in text.splitlines() if line.startswith("-A")]
    assert all("--comment pydantic-deep" in rule for rule in rules)
    forward = [rule for rule in rules if rule.startswith("-A PYDANTIC-DEEP ")]
    metadata_open = forward.index(f"-A PYDANTIC-DEEP -i {BRIDGE_PREFIX}eopen -d 169.254.169.254/32 "
                                  "-m comment --comment pydantic-deep -j RETURN")
    metadata_shut = next(i for i, rule in enumerate(forward) if "169.254.169.254/32" in rule and "REJECT" in rule)
    private_open = next(i for i, rule in enumerate(forward) if "10.1.0.0/16" in rule)
    private_shut = next(i for i, rule in enumerate(forward) if "-d 10.0.0.0/8" in rule)
    assert metadata_open < metadata_shut < private_open < private_shut


def test_the_helper_container_writes_the_same_rules_as_this_process() -> None:
    """The path for engines this process cannot reach with iptables (remote, or not root), run here."""
    client = docker_client()
    networks = [NetworkRules(f"{BRIDGE_PREFIX}egress"), NetworkRules(f"{BRIDGE_PREFIX}etest", ("10.9.0.0/16",), True)]
    try:
        _run(client, _apply_script(networks), local=True, helper_image=lambda: "unused")
        written_here = rules_installed()
        _run(client, _remove_script(), local=True, helper_image=lambda: "unused")
        assert rules_installed() == []
        _run(client, _apply_script(networks), local=False, helper_image=lambda: ensure_netfilter_image(client))
        assert rules_installed() == written_here and len(written_here) > 10
    finally:
        _run(client, _remove_script(), local=False, helper_image=lambda: ensure_netfilter_image(client))
    assert rules_installed() == []
    assert client.containers.list(all=True, filters={"label": "pydantic-deep.role=firewall-helper"}) == []


_REACH_LOCALHOST = {
    "python-minimal": "python3 -c 'import socket; s = socket.create_server((\"localhost\", 0)); "
                      "socket.create_connection((\"localhost\", s.getsockname()[1])); print(\"reached\")'",
    "node-minimal": "node -e 'const net = require(\"net\"); const s = net.createServer().listen(0, \"localhost\", "
                    "() => net.connect(s.address().port, \"localhost\", () => { console.log(\"reached\"); "
                    "process.exit(0); }))'",
}


@pytest.mark.parametrize("runtime", sorted(_REACH_LOCALHOST))
def test_a_sandbox_off_the_network_has_loopback_alone_and_localhost_resolves(runtime: str) -> None:
    # Off every network, it is off the engine's networking too (a quicker start: see
    # pydantic_deep.engine.networks), and the engine writes no /etc/hosts: ours says what it would.
    with DockerSandbox(runtime=runtime) as box:
        assert docker_client().api.inspect_container(box.container_id)["Config"]["NetworkDisabled"] is True
        assert box.execute("ls /sys/class/net").output == "lo\n"
        addresses = {line.split()[0] for line in box.execute("getent ahosts localhost").output.splitlines()}
        assert {"127.0.0.1", "::1"} <= addresses
        assert box.execute(_REACH_LOCALHOST[runtime]).output == "reached\n"
        assert box.execute("echo '1.2.3.4 x' >> /etc/hosts").exit_code != 0  # one file, every sandbox's
