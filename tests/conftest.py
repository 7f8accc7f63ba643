"""Shared fixtures. Every test that needs Docker talks to the real engine."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from pydantic_deep import DockerSandbox
from pydantic_deep.engine import docker_client


def own_containers() -> list[str]:
    """Containers that sandboxes of this test process created and have not removed."""
    return [c.name for c in docker_client().containers.list(
        all=True, filters={"label": f"pydantic-deep.owner-pid={os.getpid()}"})]


@pytest.fixture(scope="session", autouse=True)
def no_leaked_containers() -> Iterator[None]:
    """Fail the run if any test leaves one of its containers behind."""
    yield
    assert own_containers() == [], "containers leaked by the test run"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[DockerSandbox]:
    """A running python-minimal sandbox shared by a module's tests."""
    with DockerSandbox(runtime="python-minimal") as running:
        yield running
