"""Disks made ahead: a small stock of ready disks, so a start or a new session runs no disk operation.

Making a disk (truncate, ``mkfs.ext4``, loop device, mount; see :mod:`.disk`) is an operation of
the disk agent: some 60 ms alone, and much more when a burst of new sessions asks for twenty at
once, beside their containers' starts. So this process keeps, per disk size and owner, a few disks
made, formatted, attached and mounted (:data:`STOCK`), and refills the stock in the background,
several disks in one operation. A sandbox that goes with its disk
(:func:`take_disk`) and a new session (:func:`claim_disk`) take one at once; under a burst larger
than the stock the callers queue up first come, first served, and the disks they wait for are made
together in one operation.

A disk of the stock is never shared: it is new and empty when it is handed out, and handed out
once. It goes with its sandbox, or becomes a session's (marked as holding the session's files, by
this process where it can write the marker, else in the background: see :func:`claim_disk`). The
stock is released when this process exits;
after a crash it is found like any disk whose owner is gone: its name is ``pd-disk-<random>``, its
owner this process, no container uses it, and it holds no session's files, so
``pydantic-deep prune`` deletes it.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import os
import threading
import time
from collections import deque

from .._burst import burst_left
from ..config import DEFAULT_DISK_SIZE, disk_size_bytes
from ..errors import SandboxError
from . import disk
from .disk import disk_dir, release_disk

__all__ = ["STOCK", "claim_disk", "open_disk", "prepare_disk", "take_disk"]

logger = logging.getLogger("pydantic_deep.disk")

STOCK = int(os.environ.get("PYDANTIC_DEEP_DISK_STOCK", "8"))
"""Sessions' disks of the default size (:data:`~pydantic_deep.config.DEFAULT_DISK_SIZE`) kept ready
per owner (``$PYDANTIC_DEEP_DISK_STOCK``, default 8); of any other size, and for sandboxes, one.
0 makes each disk when it is asked for (still several at once in one operation under a burst)."""

_MOST_AT_ONCE = 8  # disks made in one operation: the first callers of a burst need not wait for all
_MOST_MAKERS = 4  # operations under way at once for callers who wait: a burst of 100 is not made 8 after 8

# Run in the agent, beside the disk script (in $DISK_SCRIPT). make: its `open` for each name, side
# by side, saying "made NAME" or "failed NAME"; keep=2 is a session's disk not yet holding its
# files (a journal, no keep marker). kept: mark disks as holding a session's files.
_STOCK_SCRIPT = r"""
set -u
op=$1; shift
case $op in
make)
  size=$1 uid=$2 gid=$3 keep=$4 owner=$5; shift 5
  for name; do
    { if sh -c "$DISK_SCRIPT" sh open "$name" "$size" "$uid" "$gid" "$keep" "$owner" >/dev/null; then
        echo "made $name"; else echo "failed $name"; fi; } &
  done
  wait;;
kept)
  for name; do [ -e "/disks/$name.img" ] && : > "/disks/$name.keep"; done; true;;
esac
"""

_DEFAULT_SIZE = disk_size_bytes(DEFAULT_DISK_SIZE)

_Key = tuple[int, int, int, bool]  # size, uid, gid, for a session (a journal)


class _Stock:
    """The ready disks of one key, their refill, and the callers waiting for one."""

    def __init__(self, key: _Key) -> None:
        self.key = key
        self.ready: deque[str] = deque()
        self.waiters: deque[concurrent.futures.Future[str]] = deque()  # first come, first served
        self.makers: set[threading.Thread] = set()  # make disks while the stock or a waiter lacks some
        self.in_flight = 0  # disks being made
        self.taken_at = 0.0  # when a disk was last taken (time.monotonic())

    def take(self) -> str:
        """A ready disk, else the first one made after the callers who came before."""
        claim: concurrent.futures.Future[str] = concurrent.futures.Future()
        with _lock:
            self.taken_at = time.monotonic()
            closed = _closed
            if not closed:
                if self.ready:
                    claim.set_result(self.ready.popleft())
                else:
                    self.waiters.append(claim)
                self.refill_locked()
        if closed:  # exiting: no stock any more, made now
            made, error = _make_disks(self.key, 1)
            if error is not None:
                raise error
            return made[0]
        return claim.result()

    def lacking_locked(self) -> int:
        # Sessions' disks come in bursts of new users; a lone sandbox (a notebook's, a script's)
        # needs its next one only: one ahead, not eight disks mounted for each process.
        session = self.key[3]
        wanted = STOCK if session and self.key[0] == _DEFAULT_SIZE else min(STOCK, 1)
        return 0 if _closed else wanted + len(self.waiters) - len(self.ready) - self.in_flight

    def refill_locked(self) -> None:
        """Set makers going for what lacks: one for the stock alone, several while callers wait."""
        lacking = self.lacking_locked()
        while lacking > 0 and len(self.makers) < (_MOST_MAKERS if self.waiters else 1):
            maker = threading.Thread(target=self._make, name="pydantic-deep-disk", daemon=True)
            self.makers.add(maker)
            maker.start()
            lacking -= _MOST_AT_ONCE

    def _make(self) -> None:
        me = threading.current_thread()
        started = time.monotonic()
        while True:
            with _lock:
                count = min(_MOST_AT_ONCE, self.lacking_locked())
                if count <= 0:
                    self.makers.discard(me)
                    return
                # The stock is made up once a burst is served (see _burst), unless callers wait.
                busy = 0.0 if self.waiters else burst_left(self.taken_at, started)
                if busy <= 0:
                    started = time.monotonic()
                    self.in_flight += count
            if busy > 0:  # only the stock lacks disks, and a burst may be under way: later
                time.sleep(busy)
                continue
            made, error = _make_disks(self.key, count)
            with _lock:
                self.in_flight -= count
                for name in made:
                    self._hand_locked(name)
                if error is not None:
                    # The callers these disks were for get the error (the stock is not retried in a loop).
                    for _ in range(min(count - len(made), len(self.waiters))):
                        self.waiters.popleft().set_exception(error)
                    if not self.waiters:
                        self.makers.discard(me)
                        return

    def _hand_locked(self, name: str) -> None:
        """A new disk to the caller who has waited longest, else to the stock."""
        while self.waiters:
            try:
                self.waiters.popleft().set_result(name)
                return
            except concurrent.futures.InvalidStateError:  # its caller gave up
                continue
        if _closed:
            _leftover.append(name)
        else:
            self.ready.append(name)


def _make_disks(key: _Key, count: int) -> tuple[list[str], Exception | None]:
    """Make ``count`` new disks of ``key`` in one operation: those made, and the error if some were not."""
    size, uid, gid, session = key
    names = [_new_name() for _ in range(count)]
    try:
        said = disk._agent().run("make", str(size), str(uid), str(gid), "2" if session else "0",
                                 disk.disk_owner(), *names, script=_STOCK_SCRIPT)
    except Exception as exc:
        logger.warning("Could not make disks ahead", exc_info=True)
        return [], exc
    made = [line.removeprefix("made ") for line in said.splitlines() if line.startswith("made ")]
    failed = [name for name in names if name not in made]
    for name in failed:  # half made, maybe
        try:
            release_disk(name, delete=True)
        except Exception:
            logger.debug("Releasing a disk that failed to be made failed", exc_info=True)
    return made, SandboxError(f"{len(failed)} disk(s) could not be made") if failed else None


def _new_name() -> str:
    return f"pd-disk-{os.urandom(8).hex()}"


_stocks: dict[_Key, _Stock] = {}
_lock = threading.Lock()
_closed = False
_leftover: list[str] = []  # made while the process was exiting: released by _at_exit
_claimed: set[str] = set()  # sessions' disks handed out and not opened yet (they are open)
_to_mark: list[str] = []  # sessions' disks to mark as holding their files
_marker: threading.Thread | None = None  # marks them, while there are any


def _stock(key: _Key) -> _Stock:
    with _lock:
        stock = _stocks.get(key)
        if stock is None:
            stock = _stocks[key] = _Stock(key)
        return stock


def take_disk(size: int, uid: int, gid: int) -> tuple[str, str]:
    """A new mounted disk that goes with its sandbox: ``(name, host directory)``, from the stock."""
    name = _stock((size, uid, gid, False)).take()
    return name, disk_dir(name)


def prepare_disk(size: int, uid: int, gid: int, *, session: bool = False) -> None:
    """Fill the stock of disks of ``size`` for ``uid:gid`` in the background (a no-op when it is full).

    Args:
        session: For :func:`claim_disk` (sessions' disks have a journal), not :func:`take_disk`.
    """
    stock = _stock((size, uid, gid, session))
    with _lock:
        stock.refill_locked()


def claim_disk(size: int, uid: int, gid: int) -> str:
    """A new, empty, mounted disk for a new session: its name, for ``DockerSandbox(disk_name=)``,
    whose start (:func:`open_disk`) then costs no disk operation.

    Its start marks it as holding the session's files (a disk so marked is never deleted by
    ``pydantic-deep prune``): at once where the engine's disk folder is this process's to write,
    else in the background, once its container is being made. A disk claimed for a session that
    does not start goes back with ``release_disk(name, delete=True)``.
    """
    name = _stock((size, uid, gid, True)).take()
    with _lock:
        _claimed.add(name)
    return name


def _mark() -> None:
    global _marker
    while True:
        with _lock:
            names = _to_mark[:]
            _to_mark.clear()
            if not names:
                _marker = None
                return
        try:
            disk._agent().run("kept", *names, script=_STOCK_SCRIPT)
        except Exception:
            logger.warning("Could not mark the disks %s as holding sessions' files", names, exc_info=True)


def _marked_here(name: str) -> bool:
    """Mark a session's disk as holding its files by writing its marker from this process, where
    the engine's disk folder is on this machine and this process may write there (root, say):
    no operation of the agent, and marked before its container starts. False otherwise."""
    file = disk_dir(name)
    try:
        if not os.path.exists(f"{file}.img"):  # the folder is another machine's (a remote engine)
            return False
        with open(f"{file}.keep", "a"):
            return True
    except OSError:  # not ours to write
        return False


def open_disk(name: str, size: int, uid: int, gid: int, *, keep: bool) -> tuple[str, bool]:
    """:func:`.disk.open_disk`, without a disk operation for a disk just :func:`claimed <claim_disk>`
    (which is marked as a session's at once where this process can, else in the background)."""
    global _marker
    with _lock:
        fresh = name in _claimed
        _claimed.discard(name)
    if not fresh:
        return disk.open_disk(name, size, uid, gid, keep=keep)
    if not _marked_here(name):
        with _lock:
            _to_mark.append(name)
            if _marker is None:
                _marker = threading.Thread(target=_mark, name="pydantic-deep-disk-keep", daemon=True)
                _marker.start()
    return disk_dir(name), True


@atexit.register
def _at_exit() -> None:
    """Release the stock (the disks made ahead that nobody took), once the disks being made are made.
    Registered after :mod:`.disk`'s own, so it runs before the disk agent is removed."""
    global _closed
    with _lock:
        _closed = True
        makers = [maker for stock in _stocks.values() for maker in stock.makers]
        if _marker is not None:  # sessions' disks being marked as theirs: their files outlive this process
            makers.append(_marker)
    for maker in makers:
        maker.join(timeout=30)
    with _lock:
        for stock in _stocks.values():
            while stock.waiters:
                stock.waiters.popleft().set_exception(SandboxError("the process is exiting"))
        names = [name for stock in _stocks.values() for name in stock.ready] + _leftover
        for stock in _stocks.values():
            stock.ready.clear()
        _leftover.clear()
    if names:
        try:  # one operation for all (threads cannot be started for it any more)
            said = disk._agent().run("release", *(arg for name in names for arg in (name, "1")))
        except Exception:  # the engine is gone: `pydantic-deep prune` finds them later
            said = "".join(f"failed {name}\n" for name in names)
        for line in said.splitlines():
            logger.warning("Could not release the spare disk %s", line.removeprefix("failed "))
