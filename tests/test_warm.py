"""Warm capacity as the default path for first use (issue 19): SandboxPool's first-come-first-served
hand-out, SessionManager's and the notebook magics' first sandbox from ready capacity, nothing left
after shutdown. Not timed: scripts/bench measures the speed."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import uuid
from typing import Any

import pytest
from helpers import poll_until, session_volumes
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from traitlets import TraitError

from pydantic_deep import InvalidArgumentError, SandboxPool, SandboxStateError, SessionManager, SyncSessionManager
from pydantic_deep.engine.client import docker_client
from pydantic_deep.sandbox.disk import list_disks
from pydantic_deep.sessions import naming

pytestmark = pytest.mark.warm


def unique_name() -> str:
    return f"test-warm-{uuid.uuid4().hex[:8]}"


def left_of(manager: str) -> list[str]:
    """What this manager's sessions and warm sandboxes left: containers, volumes, disks."""
    client = docker_client()
    return ([c.name for c in client.containers.list(all=True, filters={"label": f"pydantic-deep.manager={manager}"})]
            + [v.name for v in client.volumes.list() if v.name.startswith(f"pd-{manager}-")]
            + [d.name for d in list_disks() if d.name.startswith(f"pd-{manager}-")])


class GatedSandbox:
    """A narrow stand-in for a DockerSandbox whose start waits until the test opens its gate, so
    the order in which starts finish is the test's to choose."""

    made: list[GatedSandbox] = []
    supervisor = "python3"  # its liveness is the channel's, which asks no engine

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.stopped = False
        GatedSandbox.made.append(self)

    def start(self) -> GatedSandbox:
        self.started.set()
        assert self.gate.wait(30), "the test never opened this start's gate"
        return self

    @property
    def alive(self) -> bool:
        return not self.stopped

    def stop(self, **_: Any) -> None:
        self.stopped = True


@pytest.fixture
def gated() -> Any:
    GatedSandbox.made = []
    yield GatedSandbox
    for sandbox in GatedSandbox.made:
        sandbox.gate.set()


def test_a_burst_is_served_first_come_first_served(gated: Any) -> None:
    pool = SandboxPool("python-minimal", size=1, factory=gated)
    try:
        pool.start()
        poll_until(lambda: len(gated.made) == 1, "the refill's start")
        claims = [pool._claim() for _ in range(3)]  # nothing ready: three callers queue up
        poll_until(lambda: len(gated.made) == 4, "a cold start per caller")
        assert pool.waiting == 3
        # Starts finish in the reverse order they began: each goes to whoever has waited longest.
        for sandbox in reversed(gated.made[1:]):
            sandbox.gate.set()
            poll_until(lambda s=sandbox: any(c.done() and c.result() is s for c in claims), "a hand-out")
        assert [c.result() for c in claims] == list(reversed(gated.made[1:]))
        gated.made[0].gate.set()  # the refill's, the pool's again
        poll_until(lambda: pool.ready == 1, "the refill")
        assert pool.waiting == 0 and len({id(c.result()) for c in claims}) == 3
    finally:
        pool.close()
    assert all(s.stopped for s in gated.made if all(s is not c.result() for c in claims))


def test_closing_fails_the_waiters_and_stops_what_was_starting(gated: Any) -> None:
    pool = SandboxPool("python-minimal", size=1, factory=gated).start()
    claims = [pool._claim() for _ in range(2)]
    poll_until(lambda: all(s.started.is_set() for s in gated.made) and len(gated.made) == 3, "the starts")
    closer = threading.Thread(target=pool.close)
    closer.start()
    poll_until(lambda: all(c.done() for c in claims), "the waiters' failure")
    for claim in claims:
        with pytest.raises(SandboxStateError, match="closed"):
            claim.result()
    for sandbox in gated.made:
        sandbox.gate.set()
    closer.join(30)
    assert not closer.is_alive() and all(s.stopped for s in gated.made)


def test_acquire_ready_never_waits_and_never_hands_out_a_sandbox_twice(gated: Any) -> None:
    """The event loop's path (a new session's warm sandbox): a ready one or None, at once."""
    pool = SandboxPool("python-minimal", size=2, factory=gated)
    try:
        assert pool.acquire_ready() is None  # nothing ready: no wait, and no start set going for it
        pool.start()
        poll_until(lambda: len(gated.made) == 1, "the refill's start")
        gated.made[0].gate.set()
        poll_until(lambda: pool.ready == 1, "one ready")
        assert pool.acquire_ready() is gated.made[0]
        assert pool.acquire_ready() is None and pool.waiting == 0
        poll_until(lambda: len(gated.made) == 2, "the refill's next start")
        gated.made[1].gate.set()
        poll_until(lambda: pool.ready == 1, "the next one ready")
        gated.made[1].stopped = True  # died while it waited: acquire() stops it and serves another
        assert pool.acquire_ready() is None and pool.ready == 1
    finally:
        pool.close()


@pytest.mark.anyio
async def test_a_caller_that_gives_up_does_not_lose_a_sandbox(gated: Any) -> None:
    pool = SandboxPool("python-minimal", size=1, factory=gated).start()
    try:
        gone = asyncio.ensure_future(pool.aacquire())
        await asyncio.sleep(0)
        poll_until(lambda: len(gated.made) == 2, "the starts")
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        for sandbox in gated.made:
            sandbox.gate.set()
        poll_until(lambda: pool.ready == 2, "both kept ready")
        assert {id(s) for s in pool._ready} == {id(s) for s in gated.made}
    finally:
        pool.close()
    assert all(s.stopped for s in gated.made)


def test_warm_arguments() -> None:
    with pytest.raises(InvalidArgumentError, match="same setting"):
        SessionManager(name=unique_name(), warm=1, pool_size=1)
    with pytest.raises(InvalidArgumentError, match="warm must be at least 0"):
        SessionManager(name=unique_name(), warm=-1)
    with pytest.raises(InvalidArgumentError, match="shared_network cannot be used with warm=2"):
        SessionManager(name=unique_name(), warm=2, shared_network="team")
    manager = SessionManager(name=unique_name(), shared_network="team")  # no warm capacity by default there
    assert manager.pool is None
    assert SessionManager(name=unique_name(), warm=0).pool is None


@pytest.mark.anyio
async def test_first_use_is_served_from_warm_capacity() -> None:
    assert SessionManager("python-minimal", name=unique_name()).pool is None  # DEFAULT_WARM: a manager starts nothing
    manager = SessionManager("python-minimal", name=unique_name(), warm=2)
    try:
        assert manager.pool is not None and manager.pool.size == 2
        assert await asyncio.to_thread(manager.pool.wait_ready, 120)
        ready = {s.container_id for s in manager.pool._ready}
        sandbox = await manager.get_or_create("ada")
        assert sandbox.container_id in ready
        assert (await sandbox.aexecute("echo first")).output == "first\n"
        sandbox.write_file("kept.txt", "ada's")
        # Named for the user and recorded in the engine in the background: a new process finds it.
        final = naming.session_name(manager.name, naming.user_key("ada"))
        poll_until(lambda: sandbox.name == final, lambda: sandbox.name)
        assert docker_client().containers.get(final).id == sandbox.container_id
        # Renamed first, then recorded (the two are one background step): the record may come a moment later.
        poll_until(lambda: final in session_volumes(), "the session's record in the engine")
        assert await manager.cleanup_idle(max_idle=0) == 1  # files kept, container gone
        again = await manager.get_or_create("ada")
        assert again.container_id not in ready and again.read_file("kept.txt") == b"ada's"
    finally:
        await manager.shutdown(keep_files=False)
    assert left_of(manager.name) == []


@pytest.mark.anyio
async def test_a_burst_larger_than_the_capacity_is_all_served_and_nothing_is_shared() -> None:
    manager = SessionManager("python-minimal", name=unique_name(), warm=2)
    users = [f"user-{i}" for i in range(7)]
    try:
        assert manager.pool is not None and await asyncio.to_thread(manager.pool.wait_ready, 120)

        async def first_use(user: str) -> Any:
            sandbox = await manager.get_or_create(user)
            await sandbox.awrite_file("whose.txt", user)
            return sandbox

        sandboxes = await asyncio.gather(*(first_use(user) for user in users))
        assert len({s.container_id for s in sandboxes}) == len(users)  # never one container for two users
        for user, sandbox in zip(users, sandboxes, strict=True):
            listing = (await sandbox.aexecute("ls /workspace")).output.split()
            assert listing == ["whose.txt"] and (await sandbox.aread_file("whose.txt")) == user.encode()
        assert manager.session_count == len(users)
    finally:
        assert await manager.shutdown(keep_files=False) == len(users)
    assert left_of(manager.name) == []


@pytest.mark.anyio
async def test_a_shutdown_that_removes_the_files_does_not_first_name_and_record_a_bursts_sessions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    manager = SessionManager("python-minimal", name=unique_name(), warm=4)
    settled: list[str] = []
    settle = manager._settle
    monkeypatch.setattr(manager, "_settle", lambda key, *args: (settled.append(key), settle(key, *args)))
    try:
        assert manager.pool is not None and await asyncio.to_thread(manager.pool.wait_ready, 120)
        sandboxes = await asyncio.gather(*(manager.get_or_create(f"user-{i}") for i in range(4)))
        assert all([(await s.aexecute("echo hi")).output == "hi\n" for s in sandboxes])
    finally:
        assert await manager.shutdown(keep_files=False) == 4
    # The settler's first session may be under way when the shutdown comes (it waits out the
    # burst); the other three are dropped from its queue.
    assert len(settled) <= 1, settled
    assert left_of(manager.name) == []


def test_sync_facade_serves_from_warm_capacity() -> None:
    with SyncSessionManager("python-minimal", name=unique_name(), warm=1) as manager:
        assert manager.pool is not None and manager.pool.wait_ready(120)
        ready = manager.pool._ready[0]
        assert manager.get_or_create("grace") is ready
        assert manager.shutdown(keep_files=False) == 1
    assert manager.pool.ready == 0 and left_of(manager.name) == []


@pytest.fixture
def shell() -> Any:
    shell = InteractiveShell.instance()
    shell.config.SandboxMagics.runtime = "python-minimal"  # read when the extension loads
    shell.config.SandboxMagics.warm = 1
    shell.run_line_magic("load_ext", "pydantic_deep")
    try:
        yield shell
    finally:
        shell.run_line_magic("unload_ext", "pydantic_deep")
        del shell.config.SandboxMagics["runtime"], shell.config.SandboxMagics["warm"]


def test_a_notebooks_first_cell_runs_in_a_warm_sandbox(shell: Any) -> None:
    magics = shell.magics_manager.registry["SandboxMagics"]
    assert magics.pool is not None and magics.pool.runtime.name == "python-minimal"
    assert magics.pool.wait_ready(120)
    ready = magics.pool._ready[0]
    with capture_output() as shown:
        shell.run_cell_magic("sandbox", "", "print('warm')")
    assert shown.stdout == "warm\n" and magics.sandboxes["notebook"] is ready
    with pytest.raises(TraitError, match="warm must be 0 or more"):
        magics.warm = -1
    shell.run_line_magic("config", "SandboxMagics.warm = 0")
    assert magics.pool is None
    shell.run_line_magic("unload_ext", "pydantic_deep")
    shell.run_line_magic("load_ext", "pydantic_deep")  # for the fixture's unload
    assert ready.container_id not in [c.id for c in docker_client().containers.list(all=True)]


KILLED_WITH_WARM_CAPACITY = """
import asyncio, os, signal, sys
from pydantic_deep import SessionManager

async def main():
    manager = SessionManager("python-minimal", name=sys.argv[1], warm=2)
    await asyncio.to_thread(manager.pool.wait_ready, 120)
    sandbox = await manager.get_or_create("erin")
    sandbox.write_file("mine.txt", "erin")
    await asyncio.to_thread(manager._wait_settled, manager._key("erin"))
    print(sandbox.container_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


@pytest.mark.anyio
async def test_a_killed_processs_warm_sandboxes_are_reaped_and_its_sessions_adopted() -> None:
    name = unique_name()
    killed = subprocess.run([sys.executable, "-c", KILLED_WITH_WARM_CAPACITY, name], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    erin_id = killed.stdout.strip()
    successor = SessionManager("python-minimal", name=name, warm=0)
    try:
        adopted, reaped = await successor.recover()
        assert adopted == 1 and reaped >= 1  # the warm ones nobody got (the refill may have been starting one)
        erin = await successor.get_or_create("erin")
        assert erin.container_id == erin_id and erin.read_file("mine.txt") == b"erin"
    finally:
        await successor.shutdown(keep_files=False)
    assert left_of(name) == []
