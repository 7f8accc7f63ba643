"""Disks made ahead (issue 19, pydantic_deep/sandbox/disk_stock.py): a start or a new session takes
a ready disk instead of making one; no disk is ever handed out twice, a burst larger than the stock
is all served, and the stock goes when its process exits or is killed.

The checks of what is left read this host's disk directory and mounts: the engine runs here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import poll_until
from test_disk import leftovers, owned_disks

from pydantic_deep import SessionManager
from pydantic_deep.config import DEFAULT_DISK_SIZE, disk_size_bytes
from pydantic_deep.sandbox import disk_stock
from pydantic_deep.sandbox.disk import list_disks, release_disk

pytestmark = [pytest.mark.disk, pytest.mark.warm, pytest.mark.anyio]

SIZE = disk_size_bytes(DEFAULT_DISK_SIZE) or 0  # the size that has a stock


@pytest.fixture
def small_stock(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(disk_stock, "STOCK", 2)
    return 2


def test_a_burst_larger_than_the_stock_gets_disks_of_its_own(small_stock: int) -> None:
    disk_stock.prepare_disk(SIZE, 1000, 1000, session=True)
    with ThreadPoolExecutor(small_stock + 3) as threads:
        names = list(threads.map(lambda _: disk_stock.claim_disk(SIZE, 1000, 1000), range(small_stock + 3)))
    try:
        assert len(set(names)) == len(names)  # never the same disk twice
        mounted = {disk.name: disk for disk in list_disks() if disk.name in names}
        assert set(mounted) == set(names) and all(disk.mounted and not disk.keep for disk in mounted.values())
    finally:
        for name in names:
            release_disk(name, delete=True)
    assert all(leftovers(name) == [] for name in names)


@pytest.mark.parametrize("marker", ["written here", "by the disk agent"])
async def test_new_sessions_take_disks_made_ahead_each_their_own(small_stock: int, marker: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each session gets its own disk, marked as holding its files: by this process where the
    engine's disk folder is its to write (as here: root, on the engine's host), else (a remote
    engine, a user without root) by the disk agent in the background."""
    if marker == "by the disk agent":
        monkeypatch.setattr(disk_stock, "_marked_here", lambda name: False)
    agent_marked, mark = [], disk_stock._mark

    def marking_by_agent() -> None:
        agent_marked.append(True)
        mark()

    monkeypatch.setattr(disk_stock, "_mark", marking_by_agent)
    manager = SessionManager("python-minimal", name=f"test-{uuid.uuid4().hex[:8]}")
    try:
        await manager.recover()  # fills the stock
        users = [f"user-{i}" for i in range(small_stock + 2)]  # more than the stock
        sandboxes = [await manager.get_or_create(user) for user in users]
        disks = [sandbox.disk_name for sandbox in sandboxes]
        assert len(set(disks)) == len(disks)
        for user, sandbox in zip(users, sandboxes, strict=True):
            sandbox.write_file("mine.txt", user)
        for user, sandbox in zip(users, sandboxes, strict=True):
            assert sandbox.execute("cat mine.txt; ls").output == f"{user}mine.txt\n"  # its own file only
        # Marked as holding the sessions' files: prune never deletes them.
        poll_until(lambda: {d.name for d in list_disks() if d.keep} >= set(disks), "the sessions' disks are kept")
        assert bool(agent_marked) == (marker == "by the disk agent")
    finally:
        await manager.shutdown(keep_files=False)
    assert all(leftovers(disk) == [] for disk in disks)


STOCKED_OWNER = """
import asyncio, os, signal, sys
from helpers import poll_until
from pydantic_deep import SessionManager
from pydantic_deep.sandbox import disk_stock
manager = SessionManager("python-minimal", name=sys.argv[1])
asyncio.run(manager.recover())  # fills the stock in the background
poll_until(lambda: any(len(stock.ready) == disk_stock.STOCK for stock in disk_stock._stocks.values()),
           "the stock is full")
print(os.getpid(), flush=True)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("end", ["exit", "kill"])
def test_the_stock_goes_at_exit_and_after_a_kill(end: str) -> None:
    ended = subprocess.run([sys.executable, "-c", STOCKED_OWNER, f"test-{uuid.uuid4().hex[:8]}", end],
                           capture_output=True, text=True, cwd=Path(__file__).parent,
                           env={**os.environ, "PYDANTIC_DEEP_DISK_STOCK": "2"})
    assert ended.returncode == (-signal.SIGKILL if end == "kill" else 0), ended.stderr
    pid = ended.stdout.split()[0]
    # After a kill, the disk agent finds its process gone and releases what nobody took.
    poll_until(lambda: owned_disks(pid) == [], lambda: f"the stock is released: {owned_disks(pid)}", timeout=30)
