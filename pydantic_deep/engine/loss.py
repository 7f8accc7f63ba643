"""Noticing that an engine went away, for what does not otherwise talk to it.

A sandbox whose supervisor dialled in (``execution/dial_in.py``) runs its commands without the
engine. An engine that crashes would then not end them, as it ends a ``docker exec`` stream; yet
its sandboxes are lost with it (back, it stops the containers it finds running), and the promise is
that their calls fail at once, naming the engine. So a process with such sandboxes keeps one quiet
stream open to each of their engines (its events, filtered to the daemon's own: none come in
ordinary use), and closes what it was given when that stream ends.
"""

from __future__ import annotations

import threading
import weakref
from typing import Protocol

import docker

__all__ = ["Closable", "close_when_engine_lost"]


class Closable(Protocol):
    def close(self) -> None: ...


_watches: weakref.WeakKeyDictionary[docker.DockerClient, weakref.WeakSet[Closable]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def close_when_engine_lost(client: docker.DockerClient, closable: Closable) -> None:
    """Call ``closable.close()`` when ``client``'s engine goes away (its connection breaks), unless
    it was garbage-collected before."""
    with _lock:
        watched = _watches.get(client)
        if watched is None:
            watched = _watches[client] = weakref.WeakSet()
            threading.Thread(target=_watch, args=(client, watched), name="pydantic-deep-engine-watch",
                             daemon=True).start()
        watched.add(closable)


def _watch(client: docker.DockerClient, watched: weakref.WeakSet[Closable]) -> None:
    try:
        for _event in client.api.events(filters={"type": "daemon"}):
            pass
    except Exception:  # noqa: BLE001 - however the stream ends, the engine is gone
        pass
    with _lock:
        if _watches.get(client) is watched:
            del _watches[client]  # the next one watches the engine when it is back
        lost = list(watched)
    for closable in lost:
        closable.close()
