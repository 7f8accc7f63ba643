"""The upstream side of the side-by-side benchmark: pydantic-ai-backend 0.2.29 (the DockerSandbox and
SessionManager that pydantic-deep 0.3.44 uses), driven as its documentation shows.

Runs in a virtualenv of its own (bench/run.py makes it), never in the project's: it reads one JSON
request a line on stdin (``{"case": ..., "args": {...}}``) and answers each with one JSON line, so
bench/run.py can interleave its rounds with ours and plain docker-py's under the same load. Only
the standard library, docker-py and the upstream packages are imported here.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
from pydantic_ai_backends.backends.docker.sandbox import DockerSandbox
from pydantic_ai_backends.backends.docker.session import SessionManager

CLIENT = docker.from_env()


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def containers_of(image: str) -> set[str]:
    # Ids only: inspecting each would race with upstream's auto-removed containers going away.
    return {c["Id"] for c in CLIENT.api.containers(all=True, filters={"ancestor": image})}


def remove(container_ids: set[str]) -> None:
    for container_id in container_ids:
        try:
            CLIENT.api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:  # being removed (auto-remove) already
            if exc.status_code != 409:
                raise


def left_after(image: str, before: set[str]) -> set[str]:
    """The containers of ``image`` made since ``before`` that are still there once the ones
    upstream's stop() is removing (auto-remove, a moment later) are gone: what it leaked."""
    deadline = time.monotonic() + 10
    while True:
        left = {c["Id"] for c in CLIENT.api.containers(all=True, filters={"ancestor": image})
                if c["State"] == "running"} - before
        going = (containers_of(image) - before) - left
        if not going or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def start(image: str) -> dict[str, Any]:
    """A new sandbox's first command (the container starts lazily on it)."""
    sandbox = DockerSandbox(image=image)
    started = time.perf_counter()
    result = sandbox.execute("echo hi")
    elapsed = time.perf_counter() - started
    sandbox.stop(purge=True)
    return {"seconds": elapsed, "ok": result.output == "hi\n"}


def execute(image: str, calls: int) -> dict[str, Any]:
    sandbox = DockerSandbox(image=image)
    try:
        sandbox.execute("echo warm-up")
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            sandbox.execute("echo hi")
            samples.append(time.perf_counter() - started)
        return {"samples": samples}
    finally:
        sandbox.stop(purge=True)


def sleeps(image: str, count: int) -> dict[str, Any]:
    """``count`` concurrent ``sleep 1`` in one sandbox, from as many threads (its execute blocks)."""
    sandbox = DockerSandbox(image=image)
    try:
        sandbox.execute("true")
        started = time.perf_counter()
        with ThreadPoolExecutor(count) as threads:
            list(threads.map(lambda _: sandbox.execute("sleep 1"), range(count)))
        return {"seconds": time.perf_counter() - started}
    finally:
        sandbox.stop(purge=True)


def files(image: str, size_mb: int) -> dict[str, Any]:
    data = bytes(range(256)) * (size_mb * 2**20 // 256)
    sandbox = DockerSandbox(image=image)
    try:
        sandbox.execute("true")
        started = time.perf_counter()
        written = sandbox.write("/workspace/data.bin", data)
        back = sandbox.read_bytes("/workspace/data.bin")
        return {"seconds": time.perf_counter() - started, "write_error": written.error, "read_back": len(back),
                "intact": back == data}
    finally:
        sandbox.stop(purge=True)


def output(image: str, size: int) -> dict[str, Any]:
    sandbox = DockerSandbox(image=image)
    try:
        sandbox.execute("true")
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_mb("VmRSS")
        started = time.perf_counter()
        result = sandbox.execute(f"head -c {size} /dev/zero")
        return {"seconds": time.perf_counter() - started, "rss_mb": _status_mb("VmHWM") - before,
                "kept": len(result.output), "truncated": result.truncated}
    finally:
        sandbox.stop(purge=True)


def first_calls(image: str, count: int) -> dict[str, Any]:
    """``count`` threads make a new sandbox's first call at once; how many containers that made,
    and how many ``stop(purge=True)`` left (removed here afterwards, once counted)."""
    before = containers_of(image)
    sandbox = DockerSandbox(image=image)
    barrier = threading.Barrier(count)

    def call(_: int) -> bool:
        barrier.wait()
        return sandbox.execute("echo hi").output == "hi\n"

    started = time.perf_counter()
    with ThreadPoolExecutor(count) as threads:
        answered = sum(threads.map(call, range(count)))
    elapsed = time.perf_counter() - started
    made = containers_of(image) - before
    sandbox.stop(purge=True)
    left = left_after(image, before)
    remove(left)  # upstream's leak, cleaned up once counted
    return {"seconds": elapsed, "answered": answered, "made": len(made), "left": len(left)}


def users(image: str, count: int) -> dict[str, Any]:
    """``count`` users' first get_or_create and one command each, at once; then shutdown()."""
    before = containers_of(image)
    manager = SessionManager(sandbox_factory=lambda session_id: DockerSandbox(image=image, session_id=session_id))

    async def one(user: str) -> float:
        started = time.perf_counter()
        sandbox = await manager.get_or_create(user)
        result = await asyncio.to_thread(sandbox.execute, "echo hi")
        assert result.output == "hi\n", result
        return time.perf_counter() - started

    async def run() -> tuple[float, list[float], float]:
        started = time.perf_counter()
        latencies = await asyncio.gather(*(one(f"user-{i}") for i in range(count)))
        serve = time.perf_counter() - started
        started = time.perf_counter()
        await manager.shutdown()
        return serve, list(latencies), time.perf_counter() - started

    serve, latencies, shutdown = asyncio.run(run())
    left = left_after(image, before)
    remove(left)
    return {"seconds": serve, "latencies": latencies, "shutdown": shutdown, "left": len(left)}


CASES = {"start": start, "execute": execute, "sleeps": sleeps, "files": files, "output": output,
         "first_calls": first_calls, "users": users}


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = {"ok": CASES[request["case"]](**request["args"])}
        except Exception as exc:  # reported, so the bench shows upstream's failure rather than stopping
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
