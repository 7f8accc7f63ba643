"""The benchmark suite: pydantic_deep against the plain Docker way, measured in the same run.

Run it with ``scripts/bench`` (or ``.venv/bin/python bench/run.py [--quick]``). It prints one
Markdown table: each case, our figure, the baseline's, their ratio and the target. Cases whose
host memory matters run in a fresh subprocess, so one case's peak does not hide another's.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic_deep import DockerSandbox, SandboxPool, SessionManager
from pydantic_deep.engine.client import docker_client

RUNTIME = "python-minimal"
ROWS: list[tuple[str, str, str, str, str]] = []


def row(case: str, ours: str, baseline: str, ratio: str, target: str) -> None:
    ROWS.append((case, ours, baseline, ratio, target))
    print(f"  {case}: ours {ours}, baseline {baseline} ({ratio})", file=sys.stderr, flush=True)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(call: Callable[[], object], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def image_of(runtime: str) -> str:
    with DockerSandbox(runtime) as sandbox:
        assert sandbox.image is not None
        return sandbox.image


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def current_rss_mb() -> float:
    return _status_mb("VmRSS")


def reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark for this process; return the RSS now."""
    Path("/proc/self/clear_refs").write_text("5")
    return current_rss_mb()


def peak_rss_growth_mb(baseline: float) -> float:
    return _status_mb("VmHWM") - baseline


# -- cases ------------------------------------------------------------------------------------


def bench_echo(calls: int) -> None:
    client = docker_client()
    with DockerSandbox(RUNTIME) as sandbox:
        sandbox.execute("echo warm-up")
        ours = timed(lambda: sandbox.execute("echo hi"), calls)
        container = client.containers.get(sandbox.container_id)
        sdk = timed(lambda: container.exec_run(["sh", "-c", "echo hi"]), calls)
        cli = timed(lambda: subprocess.run(["docker", "exec", sandbox.container_id, "sh", "-c", "echo hi"],
                                           capture_output=True, check=True), calls)
    for name, baseline in (("SDK", sdk), ("CLI", cli)):
        for q, target in ((0.5, "<= 1 ms, >= 40x"), (0.95, "<= 3 ms")):
            ours_q, base_q = percentile(ours, q), percentile(baseline, q)
            row(f'execute("echo hi") p{int(q * 100)} vs docker exec ({name}), {calls} calls',
                f"{ours_q * 1e3:.3f} ms", f"{base_q * 1e3:.1f} ms", f"{base_q / ours_q:.0f}x faster", target)


def bench_concurrency() -> None:
    client = docker_client()
    command = "sleep 1"
    with DockerSandbox(RUNTIME) as sandbox:
        async def ours_one() -> float:
            started = time.perf_counter()
            await asyncio.gather(*(sandbox.aexecute(command) for _ in range(20)))
            return time.perf_counter() - started

        ours = asyncio.run(ours_one())
        container = client.containers.get(sandbox.container_id)
        started = time.perf_counter()
        with ThreadPoolExecutor() as executor:  # the default size: min(32, cores + 4)
            list(executor.map(lambda _: container.exec_run(["sh", "-c", command]), range(20)))
        baseline = time.perf_counter() - started
    row("20 concurrent `sleep 1`, one sandbox (vs exec_run in a default thread pool)",
        f"{ours:.2f} s", f"{baseline:.2f} s", f"{baseline / ours:.1f}x faster", "<= 1.2 s")

    sandboxes = [DockerSandbox(RUNTIME) for _ in range(20)]
    with ThreadPoolExecutor(20) as executor:
        list(executor.map(lambda s: s.start(), sandboxes))
    try:
        async def ours_many() -> float:
            started = time.perf_counter()
            await asyncio.gather(*(s.aexecute(command) for s in sandboxes))
            return time.perf_counter() - started

        ours = asyncio.run(ours_many())
        containers = [client.containers.get(s.container_id) for s in sandboxes]
        started = time.perf_counter()
        with ThreadPoolExecutor() as executor:
            list(executor.map(lambda c: c.exec_run(["sh", "-c", command]), containers))
        baseline = time.perf_counter() - started
    finally:
        with ThreadPoolExecutor(20) as executor:
            list(executor.map(lambda s: s.stop(), sandboxes))
    row("20 concurrent `sleep 1`, 20 sandboxes (same baseline)", f"{ours:.2f} s", f"{baseline:.2f} s",
        f"{baseline / ours:.1f}x faster", "")


def bench_start(rounds: int) -> None:
    client = docker_client()
    image = image_of(RUNTIME)
    ours, bare = [], []
    for _ in range(rounds):
        sandbox = DockerSandbox(RUNTIME)
        started = time.perf_counter()
        sandbox.start().execute("echo hi")
        ours.append(time.perf_counter() - started)
        sandbox.stop()
        started = time.perf_counter()
        container = client.containers.run(image, ["sh", "-c", "echo hi"], detach=True)
        container.wait()
        container.logs()
        bare.append(time.perf_counter() - started)
        container.remove(force=True)
    ours_p50, bare_p50 = statistics.median(ours), statistics.median(bare)
    row(f"cold start to first command, median of {rounds} (vs containers.run of `echo hi`)",
        f"{ours_p50 * 1e3:.0f} ms", f"{bare_p50 * 1e3:.0f} ms", f"{ours_p50 / bare_p50:.2f}x the baseline", "<= 1.2x")

    with SandboxPool(RUNTIME, size=3) as pool:
        acquired = []
        for _ in range(rounds):
            pool.wait_ready(120)
            started = time.perf_counter()
            acquired.append(pool.acquire())
            acquired[-1].execute("true")
            ours.append(time.perf_counter() - started)
        samples = []
        for _ in range(rounds):
            pool.wait_ready(120)
            started = time.perf_counter()
            sandbox = pool.acquire()
            samples.append(time.perf_counter() - started)
            acquired.append(sandbox)
        for sandbox in acquired:
            sandbox.stop()
    acquire = statistics.median(samples)
    row(f"acquire from the warm pool, median of {rounds} (vs the cold start above)",
        f"{acquire * 1e3:.3f} ms", f"{ours_p50 * 1e3:.0f} ms", f"{ours_p50 / acquire:.0f}x faster", "<= 5 ms")


def bench_disk(rounds: int) -> None:
    """The capped disk's cost (issue 22): start and stop with the default disk_size, against the
    same sandbox with disk_size=None, interleaved so that both see the same load."""
    starts: dict[str | None, list[float]] = {"10g": [], None: []}
    stops: dict[str | None, list[float]] = {"10g": [], None: []}
    for size in starts:
        DockerSandbox(RUNTIME, disk_size=size).start().stop()  # the disk agent, and a disk made ahead
    for _ in range(rounds):
        for size in starts:
            started = time.perf_counter()
            sandbox = DockerSandbox(RUNTIME, disk_size=size).start()
            sandbox.execute("true")
            starts[size].append(time.perf_counter() - started)
            started = time.perf_counter()
            sandbox.stop()
            stops[size].append(time.perf_counter() - started)
    for what, samples, target in (("start to first command", starts, "<= 1.1x"), ("stop", stops, "<= 3x")):
        capped, uncapped = statistics.median(samples["10g"]), statistics.median(samples[None])
        row(f"{what} with a 10 GB disk (default), median of {rounds} (vs disk_size=None)",
            f"{capped * 1e3:.0f} ms", f"{uncapped * 1e3:.0f} ms", f"{capped / uncapped:.2f}x the baseline", target)


def bench_files_case(size_mb: int) -> dict[str, float]:
    """Run in a subprocess: upload + read back ``size_mb`` MB, ours then the raw archive API."""
    client = docker_client()
    data_dir = Path(tempfile.mkdtemp())
    source = data_dir / "data.bin"
    with source.open("wb") as handle:
        for _ in range(size_mb):
            handle.write(os.urandom(2**20))
    result: dict[str, float] = {}
    with DockerSandbox(RUNTIME) as sandbox:
        before = reset_peak_rss()
        started = time.perf_counter()
        sandbox.upload(source, "/uploads/data.bin")
        sandbox.download("/uploads/data.bin", data_dir / "back.bin")
        result["ours_s"] = time.perf_counter() - started
        result["ours_rss_mb"] = peak_rss_growth_mb(before)
        started = time.perf_counter()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(source, arcname="raw.bin")
        client.api.put_archive(sandbox.container_id, "/uploads", buffer.getvalue())
        chunks, _ = client.api.get_archive(sandbox.container_id, "/uploads/raw.bin")
        back = b"".join(chunks)
        result["raw_s"] = time.perf_counter() - started
        assert len(back) > size_mb * 2**20
    return result


def bench_output_case() -> dict[str, float]:
    """Run in a subprocess: a command that prints 300 MB, ours then a streamed docker exec."""
    client = docker_client()
    command = "head -c 300000000 /dev/zero"
    with DockerSandbox(RUNTIME) as sandbox:
        before = reset_peak_rss()
        started = time.perf_counter()
        result = sandbox.execute(command)
        ours = time.perf_counter() - started
        ours_rss = peak_rss_growth_mb(before)
        assert result.truncated
        started = time.perf_counter()
        exec_id = client.api.exec_create(sandbox.container_id, ["sh", "-c", command])["Id"]
        received = sum(len(chunk) for chunk in client.api.exec_start(exec_id, stream=True))
        baseline = time.perf_counter() - started
        assert received == 300_000_000
    return {"ours_s": ours, "ours_rss_mb": ours_rss, "raw_s": baseline}


def in_subprocess(case: str, *args: str) -> dict[str, float]:
    output = subprocess.run([sys.executable, __file__, "--case", case, *args], capture_output=True, text=True,
                            check=True).stdout
    return json.loads(output.splitlines()[-1])


def bench_files() -> None:
    for size in (10, 100):
        figures = in_subprocess("files", str(size))
        row(f"{size} MB upload + read back (vs raw put_archive / get_archive)", f"{figures['ours_s']:.2f} s",
            f"{figures['raw_s']:.2f} s", f"{figures['ours_s'] / figures['raw_s']:.2f}x the baseline",
            "<= 2x" if size == 100 else "")
        row(f"{size} MB upload + read back: host peak RSS growth", f"{figures['ours_rss_mb']:.1f} MB", "", "",
            "<= 50 MB" if size == 100 else "")


def bench_output() -> None:
    figures = in_subprocess("output")
    row("a command printing 300 MB: wall time (1 MB kept; vs a streamed docker exec)", f"{figures['ours_s']:.2f} s",
        f"{figures['raw_s']:.2f} s", f"{figures['raw_s'] / figures['ours_s']:.1f}x faster", "")
    row("a command printing 300 MB: host peak RSS growth", f"{figures['ours_rss_mb']:.1f} MB", "", "", "<= 30 MB")


def container_memory_mb(container_id: str) -> float:
    for path in (f"/sys/fs/cgroup/memory/docker/{container_id}/memory.usage_in_bytes",
                 f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/memory.current"):
        if os.path.exists(path):
            return int(Path(path).read_text()) / 2**20
    stats = docker_client().api.stats(container_id, stream=False)
    return stats["memory_stats"]["usage"] / 2**20


def bench_idle(count: int) -> None:
    client = docker_client()
    image = image_of(RUNTIME)
    before = current_rss_mb()
    sandboxes = [DockerSandbox(RUNTIME) for _ in range(count)]
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as executor:
        list(executor.map(lambda s: s.start(), sandboxes))
    elapsed = time.perf_counter() - started
    try:
        assert all(s.execute("echo ok").output == "ok\n" for s in sandboxes)
        host = (current_rss_mb() - before) / count
        ours = statistics.mean(container_memory_mb(s.container_id) for s in sandboxes)  # type: ignore[arg-type]
    finally:
        with ThreadPoolExecutor(8) as executor:
            list(executor.map(lambda s: s.stop(), sandboxes))
    bare = [client.containers.run(image, ["sleep", "infinity"], detach=True, init=True) for _ in range(10)]
    try:
        baseline = statistics.mean(container_memory_mb(c.id) for c in bare)
    finally:
        for container in bare:
            container.remove(force=True)
    row(f"{count} idle sandboxes at once: memory per container (vs a bare `sleep infinity`)",
        f"{ours:.1f} MB", f"{baseline:.1f} MB", f"+{ours - baseline:.1f} MB", "fits, reported")
    row(f"{count} idle sandboxes: host memory per sandbox; all {count} started in", f"{host:.2f} MB",
        f"{elapsed:.1f} s", "", "")


def bench_sessions(count: int) -> None:
    """Sessions for ``count`` users at once, one command each; then shutdown() of them all."""
    client = docker_client()
    image = image_of(RUNTIME)

    async def ours() -> tuple[float, float, float]:
        manager = SessionManager(RUNTIME, name="bench")
        before = current_rss_mb()
        started = time.perf_counter()

        async def one(user: str) -> None:
            sandbox = await manager.get_or_create(user)
            assert (await sandbox.aexecute("echo hi")).output == "hi\n"

        await asyncio.gather(*(one(f"user-{i}") for i in range(count)))
        serve = time.perf_counter() - started
        memory = current_rss_mb() - before
        started = time.perf_counter()
        assert await manager.shutdown(keep_files=False) == count
        return serve, memory, time.perf_counter() - started

    serve, memory, shutdown = asyncio.run(ours())
    started = time.perf_counter()
    with ThreadPoolExecutor() as executor:
        def naive(_: int) -> object:
            container = client.containers.run(image, ["sleep", "infinity"], detach=True, init=True)
            container.exec_run(["sh", "-c", "echo hi"])
            return container

        containers = list(executor.map(naive, range(count)))
    base_serve = time.perf_counter() - started
    started = time.perf_counter()
    with ThreadPoolExecutor() as executor:
        list(executor.map(lambda c: c.remove(force=True), containers))
    base_shutdown = time.perf_counter() - started
    row(f"{count} users' get_or_create + one command, concurrently (vs containers.run + exec_run in a thread pool)",
        f"{serve:.1f} s", f"{base_serve:.1f} s", f"{base_serve / serve:.2f}x", "")
    row(f"{count} users: host memory growth (sessions held by one SessionManager)", f"{memory:.1f} MB", "", "", "")
    row(f"shutdown() of {count} sessions, files removed (vs container.remove in a thread pool)",
        f"{shutdown:.1f} s", f"{base_shutdown:.1f} s", f"{base_shutdown / shutdown:.2f}x", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer calls and sandboxes")
    parser.add_argument("--case", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        case, *rest = args.case
        figures = bench_files_case(int(rest[0])) if case == "files" else bench_output_case()
        print(json.dumps(figures))
        return
    image_of(RUNTIME)  # build before timing anything
    bench_echo(100 if args.quick else 500)
    bench_concurrency()
    bench_start(5 if args.quick else 10)
    bench_disk(5 if args.quick else 10)
    bench_files()
    bench_output()
    bench_idle(20 if args.quick else 100)
    bench_sessions(20 if args.quick else 100)
    print(f"\npydantic_deep benchmarks, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores\n")
    print("| case | ours | baseline | ratio | target |\n|---|---|---|---|---|")
    for case, ours, baseline, ratio, target in ROWS:
        print(f"| {case} | {ours} | {baseline} | {ratio} | {target} |")


if __name__ == "__main__":
    main()
