"""What several test modules share: the leak probes and the one way tests wait for something.

Test modules import this module (``from helpers import ...``), never ``conftest``: pytest loads
conftest itself, and importing it a second time as a plain module gives two copies of its state.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import pytest

from pydantic_deep.engine.client import docker_client
from pydantic_deep.engine.dial_in_dirs import unused_dial_in_dirs
from pydantic_deep.sandbox.base import SandboxBase

T = TypeVar("T")

# Tries each host:port from inside a sandbox; one line each: "connected", or why not (errno name).
CONNECT_PROBE = r"""python3 - {targets} <<'EOF'
import errno, socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout={timeout}).close()
        print(target, "connected")
    except OSError as exc:
        print(target, errno.errorcode.get(exc.errno, type(exc).__name__))
EOF"""
# A server on all the sandbox's interfaces at port 8000, up before the command returns.
SERVE_ON_8000 = ("nohup python3 -c 'import socket; s = socket.create_server((\"0.0.0.0\", 8000)); "
                 "[s.accept()[0].close() for _ in iter(int, 1)]' >/dev/null 2>&1 & "
                 "for i in $(seq 100); do python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8000))' "
                 "2>/dev/null && exit 0; sleep 0.05; done; exit 1")


def probe_connections(sandbox: SandboxBase, *targets: str, timeout: float = 2,
                      template: str = CONNECT_PROBE) -> dict[str, str]:
    """What each ``host:port`` gave a connection from inside ``sandbox``: ``"connected"`` or the
    errno's name (``template``: another prober of the same output, e.g. one in Node.js)."""
    result = sandbox.execute(template.format(targets=" ".join(targets), timeout=timeout), timeout=60)
    outcome = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert set(outcome) == set(targets), result.output
    return outcome


def poll_until(condition: Callable[[], T], what: str | Callable[[], str], *, timeout: float = 60,
               interval: float = 0.02, give_up: Callable[[], object] | None = None) -> T:
    """Call ``condition`` until it returns something true, and return that.

    Fails the test, naming ``what`` it waited for (a callable gives a message made at that
    moment), once ``timeout`` seconds have passed or as soon as ``give_up()`` is true (e.g. the
    server being waited for has exited).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if give_up is not None and give_up():
            pytest.fail(f"gave up waiting until {what if isinstance(what, str) else what()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting until {what if isinstance(what, str) else what()}")
        time.sleep(interval)


def answers(call: Callable[[], object], *errors: type[BaseException]) -> Callable[[], bool]:
    """A condition for :func:`poll_until`: ``call()`` returns without raising one of ``errors``."""
    def condition() -> bool:
        try:
            call()
        except errors:
            return False
        return True
    return condition


def own_containers() -> list[str]:
    """Containers that sandboxes of this test process created and have not removed (but the disk
    agent, which serves the process until it ends: test_disk checks that it goes then)."""
    return [c.name for c in docker_client().containers.list(
        all=True, filters={"label": f"pydantic-deep.owner-pid={os.getpid()}"})
        if c.labels.get("pydantic-deep.kind") != "disk-agent"]


def dial_in_sockets() -> list[str]:
    """Directories of sockets this process made for new containers' supervisors to dial in on,
    still there though no container uses them."""
    return [name for name in unused_dial_in_dirs(docker_client(), older_than=0) if f"-{os.getpid()}-" in name]


def session_volumes() -> list[str]:
    """Volumes of test session managers (named test-*)."""
    return [v.name for v in docker_client().volumes.list(filters={"label": "pydantic-deep.managed=true"})
            if v.name.startswith("pd-test")]


@contextlib.contextmanager
def namespace_behind_veth(tag: str, networks: Sequence[ipaddress.IPv4Network]) -> Iterator[str]:
    """A network namespace of the test's own (``pdt-<tag>-<pid>``), joined to the host by a veth
    pair: on each /30 of ``networks`` the host's side takes the first address and the namespace's
    the second. Yields the namespace's name; it goes, with the pair, when the block ends."""
    pid = os.getpid()
    namespace, host_if, ns_if = f"pdt-{tag}-{pid}", f"pd{tag[0]}h{pid}", f"pd{tag[0]}n{pid}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    try:
        ip("netns", "add", namespace)
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", namespace)
        for network in networks:
            ip("addr", "add", f"{network[1]}/30", "dev", host_if)
            ip("-n", namespace, "addr", "add", f"{network[2]}/30", "dev", ns_if)
        ip("link", "set", host_if, "up")
        ip("-n", namespace, "link", "set", ns_if, "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        yield namespace
    finally:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)  # gone with the namespace, normally
