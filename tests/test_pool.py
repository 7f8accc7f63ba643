"""SandboxPool: warm sandboxes handed out once, refilled in the background, cleaned up on close."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid

import pytest
from helpers import own_containers, poll_until

from pydantic_deep import (
    DockerSandbox,
    ImageBuildError,
    InvalidArgumentError,
    RuntimeConfig,
    SandboxPool,
    SandboxStateError,
    UnknownRuntimeError,
)
from pydantic_deep.engine.client import docker_client


def broken_runtime() -> RuntimeConfig:
    """A runtime whose image fails to build (quickly: its first setup command fails)."""
    return RuntimeConfig(name=f"pool-broken-{uuid.uuid4().hex[:8]}", base_image="python:3.12-slim",
                         setup_commands=["echo the-pool-reason >&2; exit 3"])


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


def test_an_unknown_runtime_or_a_bad_size_fails_when_the_pool_is_made() -> None:
    with pytest.raises(UnknownRuntimeError, match="no-such-runtime"):
        SandboxPool("no-such-runtime")
    with pytest.raises(InvalidArgumentError, match="size=0"):
        SandboxPool("python-minimal", size=0)


def test_a_failing_refill_reaches_wait_ready_and_acquire_and_is_retried_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="pydantic_deep.pool"), \
            SandboxPool(broken_runtime(), size=1) as pool:
        with pytest.raises(ImageBuildError, match="the-pool-reason"):
            pool.wait_ready(timeout=120)
        with pytest.raises(ImageBuildError, match="the-pool-reason"):
            pool.acquire()
        # The refill logs the failure and tries again after a pause (1 s, then longer).
        poll_until(lambda: len([r for r in caplog.records if "could not start" in r.getMessage()]) >= 2,
                   "the refill tried a second time", timeout=120)
    assert "retrying in 1 s" in caplog.records[0].getMessage()
    assert not [name for name in own_containers() if "pool-broken" in name]


def test_the_refill_recovers_once_sandboxes_start_again() -> None:
    runtimes = iter([broken_runtime()])
    with SandboxPool("python-minimal", size=1,
                     factory=lambda: DockerSandbox(next(runtimes, "python-minimal"))) as pool:
        with pytest.raises(ImageBuildError):
            pool.wait_ready(timeout=120)
        poll_until(lambda: pool.ready == 1, "the refill filled the pool after its failure", timeout=120)
        assert pool.wait_ready(timeout=0)
        sandbox = pool.acquire()
        try:
            assert sandbox.execute("echo back").output == "back\n"
        finally:
            sandbox.stop()


def test_without_an_engine_wait_ready_raises_instead_of_hanging() -> None:
    script = ("from pydantic_deep import SandboxPool, DockerUnavailableError\n"
              "pool = SandboxPool('python-minimal', size=1)\n"
              "try:\n    pool.wait_ready(timeout=60)\n"
              "except DockerUnavailableError as exc:\n    print('raised:', exc)\n"
              "pool.close()\n")
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("raised: Cannot reach the Docker engine"), done.stdout
