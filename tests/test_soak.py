"""Soak: sandboxes and sessions created, used and destroyed, 20 at a time, until leaks would show.

Half the cycles start a :class:`DockerSandbox`, run a command and stop it; the other half open a
session (container and three volumes), run a command and release it. Afterwards no container,
volume, thread or file descriptor may be left, and the process's memory must be flat (both
measured after a warm-up, which fills caches and connection pools).

CI runs ``PYDANTIC_DEEP_SOAK_CYCLES`` cycles (default 200, about a minute on 2 cores). The full
soak of issue 8, 1,000 cycles::

    PYDANTIC_DEEP_SOAK_CYCLES=1000 scripts/test -m soak -s
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import own_containers, poll_until

from pydantic_deep import DockerSandbox, InMemoryRegistry, SessionManager
from pydantic_deep.engine.client import docker_client

pytestmark = [pytest.mark.adversarial, pytest.mark.soak]

CYCLES = int(os.environ.get("PYDANTIC_DEEP_SOAK_CYCLES", "200"))
CONCURRENCY = 20
WARM_UP = 2 * CONCURRENCY
# Memory may grow by this much over the soak: allocator slack, not a leak (a leak of even 100 KB
# per cycle would pass it within 500 cycles).
RSS_SLACK = 48 * 1024 * 1024


async def sandbox_cycle(index: int) -> None:
    async with DockerSandbox("python-minimal") as sandbox:
        result = await sandbox.aexecute(f"echo {index} > n && cat n")
        assert result.output == f"{index}\n", result


async def session_cycle(manager: SessionManager, index: int) -> None:
    user = f"user-{index}"
    sandbox = await manager.get_or_create(user)
    result = await sandbox.aexecute(f"echo {index} > n && cat n")
    assert result.output == f"{index}\n", result
    assert await manager.release(user)


async def run_cycles(manager: SessionManager, indexes: range) -> list[BaseException]:
    """Run the cycles ``CONCURRENCY`` at a time; return what any of them raised."""
    # Enough worker threads for every cycle's blocking Docker calls to run at once.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=2 * CONCURRENCY, thread_name_prefix="soak"))
    limit = asyncio.Semaphore(CONCURRENCY)

    async def cycle(index: int) -> None:
        async with limit:
            await (session_cycle(manager, index) if index % 2 else sandbox_cycle(index))

    outcomes = await asyncio.gather(*(cycle(index) for index in indexes), return_exceptions=True)
    return [outcome for outcome in outcomes if isinstance(outcome, BaseException)]


def rss_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) * 1024


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def manager_volumes(manager: SessionManager) -> list[str]:
    return [v.name for v in docker_client().volumes.list() if v.name.startswith(f"pd-{manager.name}")]


def test_create_command_destroy_cycles_leak_nothing() -> None:
    manager = SessionManager("python-minimal", name=f"test-soak-{uuid.uuid4().hex[:8]}")
    containers_before = own_containers()
    try:
        assert asyncio.run(run_cycles(manager, range(WARM_UP))) == []
        gc.collect()
        threads_before, descriptors_before, rss_before = threading.active_count(), open_descriptors(), rss_bytes()
        began = time.monotonic()
        failures = asyncio.run(run_cycles(manager, range(WARM_UP, WARM_UP + CYCLES)))
        elapsed = time.monotonic() - began
        gc.collect()
        # Threads on their way out (channel readers whose stream just closed) get time to end.
        poll_until(lambda: threading.active_count() <= threads_before,
                   lambda: f"the threads are back to {threads_before}: {[t.name for t in threading.enumerate()]}",
                   timeout=30, interval=0.05)
        threads_after = threading.active_count()
        descriptors_after, rss_after = open_descriptors(), rss_bytes()
    finally:
        asyncio.run(manager.shutdown(keep_files=False))
    print(f"\nsoak: {CYCLES} cycles, {CONCURRENCY} at a time, in {elapsed:.1f} s ({CYCLES / elapsed:.1f}/s); "
          f"RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MB; threads {threads_before} -> {threads_after}; "
          f"fds {descriptors_before} -> {descriptors_after}; failed cycles {len(failures)}")
    assert failures == [], failures[:3]
    assert own_containers() == containers_before
    assert manager_volumes(manager) == []
    assert threads_after == threads_before, [t.name for t in threading.enumerate()]
    # The Docker client keeps up to one idle connection per concurrent caller; a leak of one
    # descriptor a cycle would pass that.
    assert descriptors_after - descriptors_before <= CONCURRENCY
    assert rss_after - rss_before < RSS_SLACK


def test_the_in_memory_registry_keeps_no_lock_of_a_user_once_nobody_holds_it() -> None:
    # Found by the soak: a lock per user ever seen piled up in a long-lived manager.
    registry = InMemoryRegistry()
    guard = threading.Lock()
    inside = {"user-0": 0, "user-1": 0}
    most_inside = dict(inside)

    def hold(key: str) -> None:
        with registry.lock(key):
            with guard:
                inside[key] += 1
                most_inside[key] = max(most_inside[key], inside[key])
            time.sleep(0.01)  # a window for a second holder of the key to (wrongly) come in
            with guard:
                inside[key] -= 1

    threads = [threading.Thread(target=hold, args=(f"user-{n % 2}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most_inside == {"user-0": 1, "user-1": 1}
    assert registry._locks == {} and registry._lock_users == {}
