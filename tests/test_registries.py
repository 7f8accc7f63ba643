"""The two session registries behave the same: copies in, copies out, and one lock per key.

The Redis registry runs against a private redis-server (the ``redis_url`` fixture).
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from pydantic_deep import InMemoryRegistry, RedisRegistry, SessionRecord, SessionRegistry

pytestmark = pytest.mark.registries


@pytest.fixture(params=["in-memory", "redis"])
def registry(request: pytest.FixtureRequest) -> Iterator[SessionRegistry]:
    if request.param == "in-memory":
        yield InMemoryRegistry()
    else:  # a namespace of its own in the shared test server
        yield RedisRegistry(request.getfixturevalue("redis_url"), namespace=f"test-{uuid.uuid4().hex[:8]}")


def a_record(user_id: str = "alice") -> SessionRecord:
    return SessionRecord(user_id, "pd-app-key", {"pd-app-key-work": "/workspace", "pd-app-key-uploads": "/uploads"},
                         '{"name": "python-minimal"}', created=1_700_000_000.5, last_used=1_700_000_001.25)


def test_what_comes_out_equals_what_went_in_and_is_a_copy(registry: SessionRegistry) -> None:
    record = a_record()
    registry.put("app:key", record)
    record.volumes["sneaked-in"] = "/etc"  # after put: the stored record must not see it
    first, second = registry.get("app:key"), registry.get("app:key")
    assert first == second == a_record()
    assert first is not second and first is not record
    assert first is not None and first.volumes is not record.volumes
    first.volumes.clear()  # a reader's copy is its own
    assert registry.get("app:key") == a_record()
    assert registry.records("app:")["app:key"] == a_record()
    assert registry.records("app:")["app:key"] is not registry.records("app:")["app:key"]


def test_records_are_frozen_and_change_only_through_put(registry: SessionRegistry) -> None:
    registry.put("app:key", a_record())
    record = registry.get("app:key")
    assert record is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.container = ""  # type: ignore[misc]
    registry.put("app:key", dataclasses.replace(record, container=""))
    assert registry.get("app:key") == dataclasses.replace(a_record(), container="")


def test_get_records_and_delete(registry: SessionRegistry) -> None:
    assert registry.get("app:nobody") is None
    registry.delete("app:nobody")  # nothing to delete is fine
    registry.put("app:a", a_record("a"))
    registry.put("app:b", a_record("b"))
    registry.put("other:a", a_record("someone else"))
    assert {key: r.user_id for key, r in registry.records("app:").items()} == {"app:a": "a", "app:b": "b"}
    registry.delete("app:a")
    assert registry.get("app:a") is None
    assert list(registry.records("app:")) == ["app:b"]
    assert registry.records("nobody:") == {}


@pytest.mark.parametrize("user_id", ["", "ünï cødé ✓", "line\nbreak", "lone \udc80 surrogate", "x" * 10_000])
def test_any_user_id_round_trips(registry: SessionRegistry, user_id: str) -> None:
    registry.put("app:key", a_record(user_id))
    assert registry.get("app:key") == a_record(user_id)


def test_the_lock_of_a_key_is_held_by_one_caller_at_a_time(registry: SessionRegistry) -> None:
    inside: list[str] = []
    entered = threading.Event()

    def hold() -> None:
        with registry.lock("app:key"):
            inside.append("second")

    with registry.lock("app:key"):
        inside.append("first")
        waiter = threading.Thread(target=hold)
        waiter.start()
        with registry.lock("app:other"):  # another key is free meanwhile
            entered.set()
        time.sleep(0.2)  # a window for the waiter to (wrongly) come in
        assert inside == ["first"]
    waiter.join(timeout=10)
    assert not waiter.is_alive() and entered.is_set() and inside == ["first", "second"]
