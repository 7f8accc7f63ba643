"""What several test modules share: the leak probes and the one way tests wait for something.

Test modules import this module (``from helpers import ...``), never ``conftest``: pytest loads
conftest itself, and importing it a second time as a plain module gives two copies of its state.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from pydantic_deep.engine.client import docker_client

T = TypeVar("T")


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


def session_volumes() -> list[str]:
    """Volumes of test session managers (named test-*)."""
    return [v.name for v in docker_client().volumes.list(filters={"label": "pydantic-deep.managed=true"})
            if v.name.startswith("pd-test")]
