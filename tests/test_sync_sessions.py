"""SyncSessionManager: the SessionManager's methods, blocking, from any thread (issue 12)."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import own_containers

from pydantic_deep import SandboxStateError, SessionManager, SyncSessionManager

pytestmark = pytest.mark.sync_sessions


def unique_name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def test_threads_calling_at_once_share_sessions_and_get_the_same_objects() -> None:
    with SyncSessionManager("python-minimal", name=unique_name()) as manager:
        try:
            with ThreadPoolExecutor(max_workers=8) as threads:
                got = list(threads.map(manager.get_or_create, ["ada", "bob"] * 6))
            ada, bob = got[0], got[1]
            assert all(sandbox is ada for sandbox in got[0::2]) and all(sandbox is bob for sandbox in got[1::2])
            assert ada is not bob and manager.session_count == 2
            ada.execute("echo kept > /workspace/note.txt")
            assert sorted(s.user_id for s in manager.list_sessions()) == ["ada", "bob"]
            assert manager.stop("ada") and manager.session_count == 1
            assert manager.get_or_create("ada").read_file("/workspace/note.txt") == b"kept\n"
            assert manager.cleanup_idle(max_idle=0) == 2
            assert manager.release("bob") and not manager.release("bob")
        finally:
            manager.shutdown(keep_files=False)
    assert not manager._loop.thread.is_alive()  # type: ignore[union-attr]
    with pytest.raises(SandboxStateError, match="closed"):
        manager.list_sessions()
    assert not [name for name in own_containers() if manager.name in name]


@pytest.mark.anyio
async def test_a_thread_whose_own_loop_runs_can_call_it() -> None:
    """As a widget callback or a magic in an IPython kernel does: asyncio.run() fails there."""
    manager = SessionManager("python-minimal", name=unique_name())
    facade = SyncSessionManager.wrap(manager)
    try:
        listing = manager.list_sessions()
        with pytest.raises(RuntimeError, match="running event loop"):
            asyncio.run(listing)  # what the facade replaces
        listing.close()
        sandbox = facade.get_or_create("ada")  # blocks this loop's thread, as any sync call would
        assert await manager.get_or_create("ada") is sandbox
        assert [s.user_id for s in facade.list_sessions()] == ["ada"]
        assert facade.name == manager.name and facade.session_count == 1
    finally:
        await manager.shutdown(keep_files=False)
        facade.close()
        facade.close()  # twice is fine


def test_closing_a_wrapping_facade_leaves_the_sessions_running() -> None:
    manager = SessionManager("python-minimal", name=unique_name())
    facade = SyncSessionManager.wrap(manager)
    try:
        sandbox = facade.get_or_create("ada")
        facade.close()
        assert not facade._loop.thread.is_alive()  # type: ignore[union-attr]
        assert sandbox.alive and manager.session_count == 1
    finally:
        asyncio.run(manager.shutdown(keep_files=False))
