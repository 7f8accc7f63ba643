"""The application side of the engine-restart fault test (tests/test_faults.py).

Run with ``DOCKER_HOST`` naming the private engine that the test crashes and restarts. It opens two
sessions and a plain sandbox, runs a command in each, and then follows the test's cues on stdin:

1. prints ``{"event": "running"}`` once the three commands run; the test kills the engine and
   writes ``killed``;
2. reports how the running commands ended and how new calls fail while the engine is down
   (``{"event": "down", ...}``); the test restarts the engine and writes ``restarted``;
3. reports what came back (``{"event": "up", ...}``), then removes everything it made.

Each call is reported as ``{"call", "error" (its class name, or null), "message", "seconds"}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic_deep import DockerSandbox, OutputChunk, SessionManager

Outcome = dict[str, Any]


def report(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def wait_for_cue(cue: str) -> None:
    line = sys.stdin.readline().strip()
    if line != cue:
        raise SystemExit(f"expected the cue {cue!r}, got {line!r}")


async def outcome(call: str, action: Callable[[], Awaitable[Any]]) -> Outcome:
    started = time.monotonic()
    try:
        value = await action()
    except Exception as exc:  # what each call raises is the point of the test
        return {"call": call, "error": type(exc).__name__, "message": str(exc),
                "seconds": round(time.monotonic() - started, 3)}
    return {"call": call, "error": None, "message": repr(value)[:200], "seconds": round(time.monotonic() - started, 3)}


def running_command(sandbox: DockerSandbox, started: threading.Event) -> Callable[[], Awaitable[Any]]:
    """A command that says it started, then would run for ten minutes."""

    def seen(chunk: OutputChunk) -> None:
        if "started" in chunk.text:
            started.set()

    return lambda: sandbox.aexecute("echo started; exec sleep 600", on_output=seen)


async def main(manager_name: str) -> None:
    manager = SessionManager("python-minimal", name=manager_name)
    plain = DockerSandbox("python-minimal")
    try:
        alice = await manager.get_or_create("alice")
        await alice.awrite_file("notes.txt", "alice's notes")
        bob = await manager.get_or_create("bob")
        await bob.awrite_file("/uploads/data.csv", "a,b\n1,2\n")
        await plain.astart()

        events = {name: threading.Event() for name in ("alice", "bob", "plain")}
        in_flight = [
            asyncio.create_task(outcome("alice: aexecute running", running_command(alice, events["alice"]))),
            # A blocking execute in a worker thread, as a web app's sync handler would make.
            asyncio.create_task(outcome("bob: execute running", lambda: asyncio.to_thread(
                bob.execute, "echo started; exec sleep 600", on_output=lambda c: events["bob"].set()))),
            asyncio.create_task(outcome("plain: aexecute running", running_command(plain, events["plain"]))),
        ]
        for event in events.values():
            await asyncio.to_thread(event.wait, 60)
        report("running", started=[name for name, event in events.items() if event.is_set()])

        await asyncio.to_thread(wait_for_cue, "killed")
        ended = list(await asyncio.gather(*in_flight))
        during = [
            await outcome("alice: execute", lambda: asyncio.to_thread(alice.execute, "echo hi")),
            await outcome("alice: read_file", lambda: alice.aread_file("notes.txt")),
            await outcome("alice: get_or_create", lambda: manager.get_or_create("alice")),
            await outcome("carol (new user): get_or_create", lambda: manager.get_or_create("carol")),
            await outcome("plain: execute", lambda: asyncio.to_thread(plain.execute, "echo hi")),
        ]
        report("down", in_flight=ended, calls=during)

        await asyncio.to_thread(wait_for_cue, "restarted")
        alice_back = await manager.get_or_create("alice")
        bob_back = await manager.get_or_create("bob")
        after = [
            await outcome("alice: get_or_create, then read notes.txt", lambda: alice_back.aread_file("notes.txt")),
            await outcome("alice: execute", lambda: alice_back.aexecute("cat notes.txt; echo; id -un")),
            await outcome("bob: get_or_create, then read /uploads/data.csv",
                          lambda: bob_back.aread_file("/uploads/data.csv")),
            await outcome("carol (new user): get_or_create",
                          lambda: manager.get_or_create("carol")),
            await outcome("plain: execute", lambda: asyncio.to_thread(plain.execute, "echo hi")),
        ]
        report("up", calls=after, replaced=[alice_back is not alice, bob_back is not bob])
    finally:
        await plain.astop()
        await manager.shutdown(keep_files=False)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
