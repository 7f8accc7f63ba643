"""Shared fixtures. Every test that needs Docker talks to the real engine."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import answers, dial_in_sockets, own_containers, poll_until, session_volumes
from local_swarm import LocalSwarm

from pydantic_deep import DockerSandbox
from pydantic_deep.engine.client import docker_client
from pydantic_deep.engine.dial_in_dirs import remove_dial_in_dir, sweep_dial_in_dirs
from pydantic_deep.engine.firewall import rules_installed
from pydantic_deep.engine.networks import LABEL as NETWORK_LABEL
from pydantic_deep.engine.networks import remove_unused_networks
from pydantic_deep.images.netfilter import ensure_netfilter_image


@pytest.fixture(scope="session", autouse=True)
def no_leaked_containers() -> Iterator[None]:
    """Fail the run if any test leaves one of its containers, or a session's volume, behind."""
    yield
    assert own_containers() == [], "containers leaked by the test run"
    assert session_volumes() == [], "session volumes leaked by the test run"
    # Directories of dial-in sockets whose containers went where no process saw it (the engine
    # removed them: those of the test's subprocesses that ended, say): the next process's first
    # dial-in sweeps them; this run does it here, its own included. tests/test_channel.py holds
    # the paths that remove them at once to it.
    sweep_dial_in_dirs(docker_client())
    for name in dial_in_sockets():
        remove_dial_in_dir(name)


@pytest.fixture(scope="session", autouse=True)
def no_leaked_networks() -> Iterator[None]:
    """After the run, remove the sandbox networks (kept for reuse while sandboxes come and go) and
    their packet filter rules, as ``pydantic-deep prune`` does; fail if any is left (in use)."""
    yield
    remove_unused_networks(docker_client(), helper_image=lambda: ensure_netfilter_image(docker_client()))
    assert docker_client().api.networks(filters={"label": NETWORK_LABEL}) == [], "sandbox networks in use"
    assert rules_installed() == [], "packet filter rules left"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[DockerSandbox]:
    """A running python-minimal sandbox shared by a module's tests."""
    with DockerSandbox(runtime="python-minimal") as running:
        yield running


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server (Debian's) on a unix socket, for the shared session registry."""
    import redis

    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is missing: scripts/setup installs Debian's redis-server")
    directory = tmp_path_factory.mktemp("redis")
    socket_path = directory / "redis.sock"
    process = subprocess.Popen([server, "--port", "0", "--unixsocket", str(socket_path), "--save", "",
                                "--appendonly", "no", "--dir", str(directory)], stdout=subprocess.DEVNULL)
    url = f"unix://{socket_path}"
    client = redis.Redis.from_url(url)
    try:
        poll_until(answers(client.ping, redis.exceptions.ConnectionError), "redis-server answers",
                   timeout=10, interval=0.01, give_up=lambda: process.poll() is not None)
        yield url
    finally:
        process.terminate()
        process.wait()


@pytest.fixture(scope="session")
def swarm() -> Iterator[LocalSwarm]:
    """A real 3-node Docker Swarm for the tests marked ``cluster`` (see tests/local_swarm.py),
    torn down after the run, pass or fail."""
    swarm = LocalSwarm(Path(tempfile.mkdtemp(prefix="pdc-", dir="/run")), prefix=f"pdc{os.getpid() % 100000}",
                       subnet=f"10.213.{os.getpid() % 200 + 20}")  # the host has a link into it: one per run
    swarm.up()
    try:
        yield swarm
    finally:
        swarm.down()
