"""Shared fixtures. Every test that needs Docker talks to the real engine."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from pydantic_deep import DockerSandbox
from pydantic_deep.engine.client import docker_client


def own_containers() -> list[str]:
    """Containers that sandboxes of this test process created and have not removed (but the disk
    agent, which serves the process until it ends: test_disk checks that it goes then)."""
    return [c.name for c in docker_client().containers.list(
        all=True, filters={"label": f"pydantic-deep.owner-pid={os.getpid()}"})
        if c.labels.get("pydantic-deep.kind") != "disk-agent"]


def session_volumes() -> list[str]:
    """Volumes of test session managers (named test-*)."""
    return [v.name for v in docker_client().volumes.list(filters={"label": "pydantic-deep.managed=true"})
            if v.name.startswith("pd-test")]


@pytest.fixture(scope="session", autouse=True)
def no_leaked_containers() -> Iterator[None]:
    """Fail the run if any test leaves one of its containers, or a session's volume, behind."""
    yield
    assert own_containers() == [], "containers leaked by the test run"
    assert session_volumes() == [], "session volumes leaked by the test run"


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
    deadline = time.monotonic() + 10
    try:
        while True:  # poll until the server answers
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("redis-server did not start")
                time.sleep(0.01)
        yield url
    finally:
        process.terminate()
        process.wait()
