"""SandboxPool: warm sandboxes handed out once, refilled in the background, cleaned up on close."""

from __future__ import annotations

import pytest
from conftest import own_containers

from pydantic_deep import SandboxPool, SandboxStateError
from pydantic_deep.engine.client import docker_client


def test_acquire_hands_out_started_sandboxes_once_and_refills() -> None:
    with SandboxPool("python-minimal", size=2) as pool:
        assert pool.wait_ready(timeout=120)
        first, second = pool.acquire(), pool.acquire()
        try:
            assert first.container_id != second.container_id
            assert first.alive and first.execute("echo warm").output == "warm\n"
            assert pool.wait_ready(timeout=120) and pool.ready == 2
            third = pool.acquire()
            assert third.container_id not in (first.container_id, second.container_id)
            third.stop()
        finally:
            first.stop()
            second.stop()
    assert pool.ready == 0


def test_a_handed_out_sandbox_is_fresh() -> None:
    with SandboxPool("python-minimal", size=1) as pool:
        one = pool.acquire()
        one.write_file("/uploads/secret.txt", "mine")
        one.execute("sleep 300 >/dev/null 2>&1 &")
        one.stop()
        other = pool.acquire()
        try:
            assert not other.exists("/uploads/secret.txt")
            assert "sleep 300" not in other.execute("cat /proc/[0-9]*/cmdline | tr '\\0' ' '").output
        finally:
            other.stop()


def test_a_sandbox_that_died_while_waiting_is_not_handed_out() -> None:
    with SandboxPool("python-minimal", size=1) as pool:
        assert pool.wait_ready(timeout=120)
        dead = pool._ready[0]
        docker_client().api.remove_container(dead.container_id, force=True)
        # Its channel notices the container is gone.
        dead._channel._reader.join(timeout=10)  # type: ignore[union-attr]
        sandbox = pool.acquire()
        try:
            assert sandbox is not dead and sandbox.execute("echo ok").output == "ok\n"
        finally:
            sandbox.stop()


@pytest.mark.anyio
async def test_async_acquire_and_close_leaves_nothing() -> None:
    async with SandboxPool("python-minimal", size=2) as pool:
        sandbox = await pool.aacquire()
        assert (await sandbox.aexecute("echo async")).output == "async\n"
        await sandbox.astop()
    with pytest.raises(SandboxStateError, match="closed"):
        pool.acquire()
    assert not [name for name in own_containers() if "python-minimal" in name]
