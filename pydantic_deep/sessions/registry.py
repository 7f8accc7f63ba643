"""Where a SessionManager records whose sandbox is which: in this process, or in Redis.

A record names the user's container and volumes, so any process that reads it can attach to the
same sandbox, and a replacement container can mount the same files. The registry also provides
the per-user lock that makes "get or create" happen once across threads or processes.

Both registries keep copies: :meth:`SessionRegistry.put` stores the record as it is at that moment
and every read returns a new copy, so a change reaches the registry only through ``put``, in this
process as across processes. Records are frozen; make a changed one with :func:`dataclasses.replace`.

Sync by design: a SessionManager calls it from worker threads, never on the event loop.
"""

from __future__ import annotations

import contextlib
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["InMemoryRegistry", "RedisRegistry", "SessionRecord", "SessionRegistry"]


@dataclass(frozen=True)
class SessionRecord:
    """One user's session, as every process sharing the registry sees it (frozen: a registry
    hands out copies, so changing one would change nothing anywhere else).

    Attributes:
        user_id: The user's id, as the application gave it.
        container: The name of the user's container.
        volumes: The user's named volumes, ``{volume: path in the container}`` (none when the
            files are on a ``disk``).
        runtime: The runtime's config, as JSON.
        created: When the session began (Unix time).
        last_used: When a process last handed the session out (Unix time).
        disk: The name of the capped disk holding the user's files (``disk_size``), or ``""``.
    """

    user_id: str
    container: str
    volumes: dict[str, str]
    runtime: str
    created: float
    last_used: float = field(default=0.0)
    disk: str = ""

    def to_json(self) -> str:
        # Every field is JSON already: no need for asdict()'s deep copy (a tenth of a burst's hand-outs).
        return json.dumps({name: getattr(self, name) for name in self.__dataclass_fields__})

    @classmethod
    def from_json(cls, text: str | bytes) -> SessionRecord:
        return cls(**json.loads(text))


class SessionRegistry(ABC):
    """The records of one or more SessionManagers, keyed by ``"<manager>:<user key>"``.

    Copies in, copies out: what ``put`` stores cannot be changed by the caller afterwards, and
    what ``get`` and ``records`` return is the caller's own.
    """

    @abstractmethod
    def get(self, key: str) -> SessionRecord | None:
        """A copy of the record under ``key``, or None."""

    @abstractmethod
    def put(self, key: str, record: SessionRecord) -> None:
        """Store a copy of ``record`` under ``key``, replacing any record there."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Forget the record under ``key`` (nothing happens when there is none)."""

    @abstractmethod
    def records(self, prefix: str) -> dict[str, SessionRecord]:
        """Copies of every record whose key starts with ``prefix``."""

    @abstractmethod
    def lock(self, key: str) -> contextlib.AbstractContextManager[Any]:
        """Held while a process decides and creates the sandbox for ``key``."""


class InMemoryRegistry(SessionRegistry):
    """The default: records live in this process, locks are thread locks.

    Records are kept as the same JSON a :class:`RedisRegistry` stores, so that the two behave
    alike: each read makes a new copy.
    """

    def __init__(self) -> None:
        self._records: dict[str, str] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock_users: dict[str, int] = {}  # holding or waiting, per key
        self._guard = threading.Lock()

    def get(self, key: str) -> SessionRecord | None:
        with self._guard:
            stored = self._records.get(key)
        return SessionRecord.from_json(stored) if stored is not None else None

    def put(self, key: str, record: SessionRecord) -> None:
        stored = record.to_json()
        with self._guard:
            self._records[key] = stored

    def delete(self, key: str) -> None:
        with self._guard:
            self._records.pop(key, None)

    def records(self, prefix: str) -> dict[str, SessionRecord]:
        with self._guard:
            stored = {key: text for key, text in self._records.items() if key.startswith(prefix)}
        return {key: SessionRecord.from_json(text) for key, text in stored.items()}

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
            self._lock_users[key] = self._lock_users.get(key, 0) + 1
        try:
            with lock:
                yield
        finally:
            with self._guard:
                self._lock_users[key] -= 1
                if not self._lock_users[key]:  # nobody holds or waits: a lock per user ever seen would pile up
                    del self._locks[key], self._lock_users[key]


class RedisRegistry(SessionRegistry):
    """Records in a Redis hash, shared by every process (web workers, say) that points here.

    Needs the ``redis`` package (``pip install 'pydantic-deep[redis]'``).

    Args:
        url: The Redis server, e.g. ``redis://localhost:6379/0``.
        namespace: Prefix of the keys this registry uses in Redis.
        lock_timeout: Seconds a creation lock may be held before Redis frees it (a process killed
            while holding it cannot block the user for longer).
    """

    def __init__(self, url: str = "redis://localhost:6379/0", *, namespace: str = "pydantic-deep",
                 lock_timeout: float = 600) -> None:
        import redis  # an optional dependency

        self._redis = redis.Redis.from_url(url, decode_responses=True)  # keys and records as str
        self._hash = f"{namespace}:sessions"
        self._lock_prefix = f"{namespace}:lock:"
        self._lock_timeout = lock_timeout

    def get(self, key: str) -> SessionRecord | None:
        raw = self._redis.hget(self._hash, key)
        return SessionRecord.from_json(raw) if raw else None

    def put(self, key: str, record: SessionRecord) -> None:
        self._redis.hset(self._hash, key, record.to_json())

    def delete(self, key: str) -> None:
        self._redis.hdel(self._hash, key)

    def records(self, prefix: str) -> dict[str, SessionRecord]:
        stored: dict[str, str] = self._redis.hgetall(self._hash)  # type: ignore[assignment]  # str: decode_responses
        return {key: SessionRecord.from_json(value) for key, value in stored.items() if key.startswith(prefix)}

    def lock(self, key: str) -> contextlib.AbstractContextManager[Any]:
        return self._redis.lock(self._lock_prefix + key, timeout=self._lock_timeout,
                                blocking_timeout=self._lock_timeout)
