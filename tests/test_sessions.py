"""SessionManager against real containers: persistence, concurrency, idleness, crashes, shared registry."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator

import pytest
from helpers import poll_until, session_volumes

from pydantic_deep import (
    DockerSandbox,
    RedisRegistry,
    RuntimeConfig,
    SessionLimitError,
    SessionManager,
)
from pydantic_deep.engine.client import docker_client
from pydantic_deep.sandbox.disk import list_disks
from pydantic_deep.sessions import naming

pytestmark = pytest.mark.anyio


def unique_name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def manager() -> AsyncIterator[SessionManager]:
    running = SessionManager(default_runtime="python-minimal", default_idle_timeout=1800, name=unique_name())
    yield running
    await running.shutdown(keep_files=False)


def manager_containers(manager: SessionManager) -> list[str]:
    """The manager's session containers (not the warm ones waiting for a user)."""
    return [c.name for c in docker_client().containers.list(
        all=True, filters={"label": f"pydantic-deep.manager={manager.name}"})
        if naming.session_key(manager.name, c.name) is not None]


async def test_session_persists_between_requests(manager: SessionManager) -> None:
    sandbox = await manager.get_or_create("user-123")
    sandbox.execute("echo 'hello' > /workspace/greeting.txt")
    again = await manager.get_or_create("user-123")
    assert again is sandbox and again.execute("cat /workspace/greeting.txt").output == "hello\n"
    assert manager.session_count == 1


async def test_fifty_concurrent_calls_for_one_user_give_one_container(manager: SessionManager) -> None:
    sandboxes = await asyncio.gather(*(manager.get_or_create("same-user") for _ in range(50)))
    assert len({s.container_id for s in sandboxes}) == 1
    # A warm sandbox is named for its user in the background.
    poll_until(lambda: manager_containers(manager) == [sandboxes[0].name], lambda: str(manager_containers(manager)))


async def test_fifty_users_get_fifty_containers_without_blocking_the_loop(manager: SessionManager) -> None:
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    ticking = asyncio.ensure_future(ticker())
    sandboxes = await asyncio.gather(*(manager.get_or_create(f"user-{i}") for i in range(50)))
    done.set()
    await ticking
    assert len({s.container_id for s in sandboxes}) == 50 and manager.session_count == 50
    # Docker calls ran in threads: the loop kept turning the whole time.
    assert ticks > 1000
    outputs = await asyncio.gather(*(s.aexecute("whoami") for s in sandboxes))
    assert {o.output for o in outputs} == {"sandbox\n"}


async def test_runtime_override_and_files_survive_it(manager: SessionManager) -> None:
    sandbox = await manager.get_or_create("alice")
    sandbox.write_file("/uploads/data.csv", "a,b\n")
    other = RuntimeConfig(name="test-override", base_image="python:3.12-slim", env_vars={"FLAVOUR": "other"})
    switched = await manager.get_or_create("alice", runtime=other)
    assert switched.runtime == other and switched.container_id != sandbox.container_id
    assert switched.execute("echo $FLAVOUR; cat /uploads/data.csv").output == "other\na,b\n"
    assert await manager.get_or_create("alice") is switched


async def test_max_sessions_and_release() -> None:
    limited = SessionManager("python-minimal", name=unique_name(), max_sessions=2)
    try:
        first = await limited.get_or_create("one")
        first.write_file("kept.txt", "x")
        await limited.get_or_create("two")
        with pytest.raises(SessionLimitError, match="full: 2 sessions"):
            await limited.get_or_create("three")
        assert await limited.release("one") is True
        assert await limited.release("one") is False
        fresh = await limited.get_or_create("one")  # room again; released files are gone
        assert not fresh.exists("kept.txt")
    finally:
        await limited.shutdown(keep_files=False)


async def test_list_sessions_reports_state_runtime_idle_and_usage(manager: SessionManager) -> None:
    await manager.get_or_create("ann")
    busy = await manager.get_or_create("bob")
    running = asyncio.ensure_future(busy.aexecute("sleep 2"))
    while not busy.busy:
        await asyncio.sleep(0.01)
    sessions = {info.user_id: info for info in await manager.list_sessions()}
    assert sessions["ann"].state == "running" and sessions["bob"].state == "busy"
    assert sessions["ann"].runtime == "python-minimal" and sessions["ann"].memory_bytes > 0
    assert sessions["bob"].idle_seconds == 0 and sessions["ann"].cpu_seconds > 0
    await running


async def test_idle_means_idle(manager: SessionManager) -> None:
    working = await manager.get_or_create("working")
    await manager.get_or_create("idle")
    command = asyncio.ensure_future(working.aexecute("sleep 3; echo finished"))
    while not working.busy:
        await asyncio.sleep(0.01)
    assert await manager.cleanup_idle(max_idle=0) == 1  # only "idle": "working" runs a command
    assert (await command).output == "finished\n"
    assert manager.session_count == 1
    working.write_file("touched.txt", "x")  # file use counts as use too
    assert await manager.cleanup_idle(max_idle=60) == 0


async def test_idle_cleanup_keeps_files_for_the_next_session(manager: SessionManager) -> None:
    sandbox = await manager.get_or_create("carol")
    sandbox.write_file("notes.txt", "remember me")
    sandbox.write_file("/uploads/in.csv", "1,2\n")
    assert await manager.cleanup_idle(max_idle=0) == 1
    assert manager.session_count == 0 and manager_containers(manager) == []
    back = await manager.get_or_create("carol")
    assert back.container_id != sandbox.container_id
    assert back.read_file("notes.txt") == b"remember me" and back.read_file("/uploads/in.csv") == b"1,2\n"


async def test_cleanup_loop_survives_errors_and_stops_cleanly(manager: SessionManager,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    second_pass = threading.Event()
    original = manager.cleanup_idle

    async def flaky(max_idle: float | None = None) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("engine hiccup")
        second_pass.set()
        return await original(max_idle)

    monkeypatch.setattr(manager, "cleanup_idle", flaky)
    manager.start_cleanup_loop(interval=0.05)
    assert await asyncio.to_thread(second_pass.wait, 30)
    thread = manager._cleanup_thread
    manager.stop_cleanup_loop()
    assert thread is not None and not thread.is_alive()


async def test_dead_or_removed_container_is_replaced_with_the_files(manager: SessionManager) -> None:
    sandbox = await manager.get_or_create("dave")
    sandbox.write_file("work.txt", "safe")
    docker_client().api.kill(sandbox.container_id)
    replaced = await manager.get_or_create("dave")
    assert replaced.container_id != sandbox.container_id and replaced.read_file("work.txt") == b"safe"
    docker_client().api.remove_container(replaced.container_id, force=True)
    again = await manager.get_or_create("dave")
    assert again.read_file("work.txt") == b"safe"


@pytest.mark.parametrize("user_ids", [
    ["ünïcødé-用户", "ünïcødé-用户 "],
    ["a/b", "a_b", "a-b", "../../etc"],
    ["x" * 500, "x" * 499],
    ["Robert'); DROP TABLE users;--", "$(rm -rf /)"],
])
async def test_any_string_is_a_safe_user_id(manager: SessionManager, user_ids: list[str]) -> None:
    sandboxes = [await manager.get_or_create(user_id) for user_id in user_ids]
    for user_id, sandbox in zip(user_ids, sandboxes, strict=True):
        sandbox.write_file("owner.txt", user_id)
    assert len({s.container_id for s in sandboxes}) == len(user_ids)
    assert len({(s.disk_name, tuple(s.volumes)) for s in sandboxes}) == len(user_ids)  # a disk, or volumes
    for user_id, sandbox in zip(user_ids, sandboxes, strict=True):
        assert sandbox.read_file("owner.txt").decode() == user_id
    assert {info.user_id for info in await manager.list_sessions()} == set(user_ids)


KILLED_OWNER = """
import asyncio, os, signal, sys
from pydantic_deep import SessionManager

async def main():
    manager = SessionManager("python-minimal", name=sys.argv[1], warm=0)  # test_warm: with warm capacity
    for user in ("erin", "frank"):
        sandbox = await manager.get_or_create(user)
        sandbox.write_file("mine.txt", user)
        print(sandbox.container_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


@pytest.mark.parametrize("orphans", ["adopt", "reap"])
async def test_sessions_of_a_killed_process_are_adopted_or_reaped(orphans: str) -> None:
    name = unique_name()
    killed = subprocess.run([sys.executable, "-c", KILLED_OWNER, name], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    erin_id, frank_id = killed.stdout.split()
    successor = SessionManager("python-minimal", name=name, orphans=orphans)  # type: ignore[arg-type]
    try:
        adopted, reaped = await successor.recover()
        erin = await successor.get_or_create("erin")
        if orphans == "adopt":
            assert (adopted, reaped) == (2, 0) and erin.container_id == erin_id and successor.session_count == 2
        else:
            assert (adopted, reaped) == (0, 2) and erin.container_id not in (erin_id, frank_id)
            assert successor.session_count == 1
        assert erin.read_file("mine.txt") == b"erin"  # the files, either way
        assert (await successor.get_or_create("frank")).read_file("mine.txt") == b"frank"
    finally:
        await successor.shutdown(keep_files=False)
    assert [c for c in docker_client().containers.list(all=True) if c.id in (erin_id, frank_id)] == []


async def test_a_new_process_finds_the_files_of_a_clean_exit() -> None:
    name = unique_name()
    first = SessionManager("python-minimal", name=name)
    (await first.get_or_create("gina")).write_file("draft.txt", "v1")
    assert await first.shutdown() == 1  # keep_files=True: containers go, files stay
    second = SessionManager("python-minimal", name=name)
    try:
        assert (await second.get_or_create("gina")).read_file("draft.txt") == b"v1"
    finally:
        await second.shutdown(keep_files=False)


async def test_a_new_process_releases_the_files_of_a_clean_exit() -> None:
    """What notebook 05 does: the files an earlier process kept are removed by a new manager."""
    name = unique_name()
    first = SessionManager("python-minimal", name=name)
    disk = (await first.get_or_create("ida")).disk_name
    assert await first.shutdown() == 1
    assert disk in {d.name for d in list_disks()}
    second = SessionManager("python-minimal", name=name)
    assert await second.release("ida")
    assert not [v for v in session_volumes() if name in v]
    assert disk not in {d.name for d in list_disks()}
    assert not await second.release("ida")  # nothing left to end


SHARING_WORKER = """
import asyncio, sys
from pydantic_deep import RedisRegistry, SessionManager

async def main():
    manager = SessionManager("python-minimal", name=sys.argv[1], registry=RedisRegistry(sys.argv[2]))
    sandbox = await manager.get_or_create("hank")
    if sys.argv[3] == "write":
        sandbox.write_file("shared.txt", "from worker one")
    print(sandbox.container_id, sandbox.read_file("shared.txt").decode(), flush=True)

asyncio.run(main())
"""


async def test_two_processes_share_sessions_through_redis(redis_url: str) -> None:
    name = unique_name()
    one = subprocess.run([sys.executable, "-c", SHARING_WORKER, name, redis_url, "write"],
                         capture_output=True, text=True, check=True)
    two = subprocess.run([sys.executable, "-c", SHARING_WORKER, name, redis_url, "read"],
                         capture_output=True, text=True, check=True)
    assert one.stdout == two.stdout  # the same container, the same file
    assert one.stdout.split(" ", 1)[1] == "from worker one\n"
    manager = SessionManager("python-minimal", name=name, registry=RedisRegistry(redis_url))
    assert manager.session_count == 1
    assert await manager.shutdown(keep_files=False) == 1
    assert manager.session_count == 0


async def test_concurrent_creation_across_processes_gives_one_container(redis_url: str) -> None:
    name = unique_name()
    workers = [subprocess.Popen([sys.executable, "-c", SHARING_WORKER, name, redis_url, "write"],
                                stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [worker.communicate(timeout=120)[0] for worker in workers]
    try:
        assert len({output.split()[0] for output in outputs}) == 1
    finally:
        await SessionManager("python-minimal", name=name, registry=RedisRegistry(redis_url)).shutdown(
            keep_files=False)


async def test_the_pool_serves_new_users() -> None:
    pooled = SessionManager("python-minimal", name=unique_name(), pool_size=2)
    try:
        assert pooled.pool is not None
        pooled.pool.start()
        assert await asyncio.to_thread(pooled.pool.wait_ready, 120)
        warm = set(pooled.pool._ready)
        sandbox = await pooled.get_or_create("ivan")
        assert sandbox in warm  # named for its user in the background:
        poll_until(lambda: sandbox.name == pooled._container_name(pooled._key("ivan")), lambda: sandbox.name)
        sandbox.write_file("from-pool.txt", "kept")
        assert await pooled.cleanup_idle(max_idle=0) == 1
        assert (await pooled.get_or_create("ivan")).read_file("from-pool.txt") == b"kept"
    finally:
        await pooled.shutdown(keep_files=False)
    assert [v for v in docker_client().volumes.list() if v.name.startswith(f"pd-{pooled.name}")] == []


async def test_sandbox_attach_is_refused_for_foreign_containers() -> None:
    from pydantic_deep import SandboxStateError

    with pytest.raises(SandboxStateError, match="no sandbox container"):
        DockerSandbox.attach("no-such-container-" + uuid.uuid4().hex)



def test_user_ids_in_volume_labels_read_back_old_and_new() -> None:
    from pydantic_deep.sessions.manager import _user_from_label

    assert _user_from_label('"alice"') == "alice"  # JSON, as written now
    assert _user_from_label('"\\ud800 x"') == "\ud800 x"  # any string survives, lone surrogates too
    assert _user_from_label("alice") == "alice"  # plain text, as volumes of 0.1 hold it
    assert _user_from_label("123") == "123"  # plain text that happens to be JSON of another type
