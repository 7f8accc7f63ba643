"""The benchmark suite: pydantic_deep against the plain Docker way, measured in the same run.

Run it with ``scripts/bench`` (or ``.venv/bin/python bench/run.py [--quick] [--only GROUP ...]``). It prints one
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
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic_deep import DockerSandbox, SandboxError, SandboxPool, SessionManager
from pydantic_deep.engine.client import docker_client
from pydantic_deep.sandbox.disk import list_disks

RUNTIME = "python-minimal"
NODE_RUNTIME = "node-minimal"
GROUPS = ("echo", "concurrency", "start", "disk", "network", "egress", "files", "output", "idle", "sessions", "node",
          "snapshots", "cluster", "preview", "upstream")
ROWS: list[tuple[str, str, str, str, str]] = []
SIDE_ROWS: list[tuple[str, str, str, str, str, str]] = []  # case, ours, upstream, plain docker-py, ratios, target

# Upstream, as our seed page documents it: pydantic-deep 0.3.44 on pydantic-ai-backend 0.2.29, in a
# virtualenv of its own (never the project's), made on first use.
UPSTREAM_VERSIONS = {"pydantic-deep": "0.3.44", "pydantic-ai-backend": "0.2.29"}
UPSTREAM_VENV = Path(os.environ.get("PYDANTIC_DEEP_BENCH_UPSTREAM", "/var/cache/pydantic-deep-bench/upstream"))
UPSTREAM_IMAGE = "pydantic-deep-bench/upstream:python-minimal"
"""The one image every column of the side-by-side table runs: our python-minimal runtime's, tagged."""
WARM_BURSTS = 3  # bursts of users from warm capacity, per user count (see side_users)


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


def bench_echo(calls: int, runtime: str = RUNTIME) -> None:
    client = docker_client()
    with DockerSandbox(runtime) as sandbox:
        sandbox.execute("echo warm-up")
        ours = timed(lambda: sandbox.execute("echo hi"), calls)
        container = client.containers.get(sandbox.container_id)
        sdk = timed(lambda: container.exec_run(["sh", "-c", "echo hi"]), calls)
        cli = timed(lambda: subprocess.run(["docker", "exec", sandbox.container_id, "sh", "-c", "echo hi"],
                                           capture_output=True, check=True), calls)
        where = "" if runtime == RUNTIME else f", {runtime} ({sandbox.supervisor} supervisor)"
    for name, baseline in (("SDK", sdk), ("CLI", cli)):
        for q, target in ((0.5, "<= 1 ms, >= 40x"), (0.95, "<= 3 ms")):
            ours_q, base_q = percentile(ours, q), percentile(baseline, q)
            row(f'execute("echo hi") p{int(q * 100)} vs docker exec ({name}), {calls} calls{where}',
                f"{ours_q * 1e3:.3f} ms", f"{base_q * 1e3:.1f} ms", f"{base_q / ours_q:.0f}x faster", target)


def bench_concurrency_one(runtime: str) -> None:
    """20 concurrent ``sleep 1`` in one sandbox of ``runtime``."""
    client = docker_client()
    command = "sleep 1"
    with DockerSandbox(runtime) as sandbox:
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
    where = "" if runtime == RUNTIME else f" ({runtime})"
    row(f"20 concurrent `sleep 1`, one sandbox{where} (vs exec_run in a default thread pool)",
        f"{ours:.2f} s", f"{baseline:.2f} s", f"{baseline / ours:.1f}x faster", "<= 1.2 s")


def bench_concurrency() -> None:
    client = docker_client()
    command = "sleep 1"
    bench_concurrency_one(RUNTIME)
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


def bench_network_start(rounds: int) -> None:
    """A networked sandbox's start (its network and packet filter rules checked, re-applied) against
    the same sandbox without the network, alternating, for a Python and a Node.js image."""
    for runtime in (RUNTIME, "node-minimal"):
        DockerSandbox(runtime, network=True).start().stop()  # the network exists: only the start is timed
        samples: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(rounds):
            for network in (True, False):
                sandbox = DockerSandbox(runtime, network=network)
                started = time.perf_counter()
                sandbox.start().execute("true")
                samples[network].append(time.perf_counter() - started)
                sandbox.stop()
        networked, offline = statistics.median(samples[True]), statistics.median(samples[False])
        # Reported, no target since the network off skips the engine's networking (half its start): the
        # ratio now holds Docker's bridge set-up as well as the isolation (docs/benchmarks.md).
        row(f"{runtime}: isolated networked start to first command, median of {rounds} (vs the network off)",
            f"{networked * 1e3:.0f} ms", f"{offline * 1e3:.0f} ms", f"{networked / offline:.2f}x the baseline",
            "reported")


# Times `count` HTTPS requests (a new connection each, as pip's first request to a host), one per line.
_REQUESTS = r"""python3 - <<'EOF'
import time, urllib.request
for _ in range({count}):
    started = time.perf_counter()
    urllib.request.urlopen("{url}", timeout=30).read()
    print(time.perf_counter() - started)
EOF"""


def bench_egress(rounds: int, per_round: int = 5) -> None:
    """An HTTPS request from a sandbox whose network is a list of hosts (through the egress proxy:
    tunnelled, and with a secret header: TLS terminated by the proxy) against a networked sandbox
    going direct, in alternating rounds of the same run."""
    url, host = "https://pypi.org/simple/six/", "pypi.org"
    sandboxes = {"direct": DockerSandbox(RUNTIME, network=True),
                 "proxy": DockerSandbox(RUNTIME, network=[host]),
                 "proxy+secret": DockerSandbox(RUNTIME, network=[host], secrets={host: {"X-Bench": "not-a-secret"}})}
    samples: dict[str, list[float]] = {name: [] for name in sandboxes}
    try:
        for sandbox in sandboxes.values():
            sandbox.start().execute(_REQUESTS.format(count=1, url=url), timeout=120)  # warm: DNS, the proxy's CA
        for _ in range(rounds):
            for name, sandbox in sandboxes.items():
                result = sandbox.execute(_REQUESTS.format(count=per_round, url=url), timeout=300)
                if result.exit_code:
                    raise SandboxError(f"the {name} requests failed: {result.output[-500:]}")
                samples[name] += [float(line) for line in result.stdout.split()]
    finally:
        for sandbox in sandboxes.values():
            sandbox.stop()
    direct = statistics.median(samples["direct"])
    for name, what, target in (("proxy", "through the egress proxy (tunnelled)", "<= 1.5x"),
                               ("proxy+secret", "through the egress proxy adding a secret header (TLS terminated)",
                                "<= 2x")):
        ours = statistics.median(samples[name])
        row(f"HTTPS request to {host} on a new connection {what}, median of {len(samples[name])} "
            "(vs a networked sandbox going direct)", f"{ours * 1e3:.0f} ms", f"{direct * 1e3:.0f} ms",
            f"{ours / direct:.2f}x the baseline", target)


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


def bench_output_case(runtime: str) -> dict[str, float]:
    """Run in a subprocess: a command that prints 300 MB, ours then a streamed docker exec."""
    client = docker_client()
    command = "head -c 300000000 /dev/zero"
    with DockerSandbox(runtime) as sandbox:
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


def bench_output(runtime: str = RUNTIME) -> None:
    figures = in_subprocess("output", runtime)
    where = "" if runtime == RUNTIME else f" ({runtime})"
    row(f"a command printing 300 MB{where}: wall time (1 MB kept; vs a streamed docker exec)",
        f"{figures['ours_s']:.2f} s", f"{figures['raw_s']:.2f} s",
        f"{figures['raw_s'] / figures['ours_s']:.1f}x faster", "")
    row(f"a command printing 300 MB{where}: host peak RSS growth", f"{figures['ours_rss_mb']:.1f} MB", "", "",
        "<= 30 MB")


def bench_node(calls: int) -> None:
    """The Node.js supervisor's rows (node-minimal has no python3), after the same rows for
    python-minimal as their baseline in this run."""
    image_of(NODE_RUNTIME)
    bench_echo(calls)
    bench_echo(calls, NODE_RUNTIME)
    bench_concurrency_one(RUNTIME)
    bench_concurrency_one(NODE_RUNTIME)
    bench_output()
    bench_output(NODE_RUNTIME)


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


def docker_cp_seconds(container_id: str, path: str) -> float:
    """The time ``docker cp`` takes to copy ``path`` out of the container into a host directory."""
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        subprocess.run(["docker", "cp", f"{container_id}:{path}", directory], check=True)
        return time.perf_counter() - started


def bench_snapshots(rounds: int) -> None:
    """Pause/resume, snapshot, start from a snapshot and fork (issue 16)."""
    from pydantic_deep import delete_snapshot

    with DockerSandbox(RUNTIME) as sandbox:
        sandbox.execute("true")
        running = statistics.median(timed(lambda: sandbox.execute("true"), 20))
        resumes = []
        for _ in range(20):
            sandbox.pause()
            started = time.perf_counter()
            sandbox.execute("true")
            resumes.append(time.perf_counter() - started)
        resume = statistics.median(resumes)
        row("resume of a paused sandbox to the first command's result, median of 20 (vs a command, not paused)",
            f"{resume * 1e3:.1f} ms", f"{running * 1e3:.1f} ms", f"+{(resume - running) * 1e3:.1f} ms", "<= 50 ms")

        sandbox.pause()
        before = sandbox.usage().cpu_seconds
        time.sleep(10)
        paused_cpu = sandbox.usage().cpu_seconds - before
        sandbox.resume()
        before = sandbox.usage().cpu_seconds
        time.sleep(10)
        idle_cpu = sandbox.usage().cpu_seconds - before
        row("CPU time of an idle sandbox over 10 s, paused (vs running, idle)", f"{paused_cpu * 1e3:.2f} ms",
            f"{idle_cpu * 1e3:.2f} ms", "", "flat (0)")

    size_mb = 100
    fill = f"mkdir -p data && for i in $(seq 10); do head -c {size_mb // 10}M /dev/urandom > data/f$i.bin; done"
    for kind, volumes in (("in its filesystem", None), ("in a named volume (as a session's)",
                                                         {f"bench-snapshot-{os.getpid()}": "/workspace"})):
        with DockerSandbox(RUNTIME, volumes=volumes) as sandbox:
            assert sandbox.execute(fill, timeout=300).exit_code == 0
            assert sandbox.container_id is not None
            copies, snaps, starts, colds = [], [], [], []
            for index in range(rounds):
                copies.append(docker_cp_seconds(sandbox.container_id, "/workspace/data"))
                started = time.perf_counter()
                with DockerSandbox(RUNTIME) as cold:  # the same start, from the runtime's image
                    cold.execute("true")
                    colds.append(time.perf_counter() - started)
                name = f"bench-{os.getpid()}-{index}"
                started = time.perf_counter()
                snapshot = sandbox.snapshot(name)
                snaps.append(time.perf_counter() - started)
                fresh = {f"bench-restore-{os.getpid()}": "/workspace"} if volumes else None
                started = time.perf_counter()
                restored = DockerSandbox(snapshot=snapshot, volumes=fresh).start()
                restored.execute("true")
                starts.append(time.perf_counter() - started)
                assert restored.execute("du -sm data").stdout.split()[0] in (str(size_mb), str(size_mb + 1))
                restored.stop(remove_volumes=True)
                delete_snapshot(name)
            if volumes:
                sandbox.stop(remove_volumes=True)
        copy, snap, start = statistics.median(copies), statistics.median(snaps), statistics.median(starts)
        row(f"snapshot of a sandbox with {size_mb} MB of files {kind}, median of {rounds} (vs `docker cp` of them)",
            f"{snap:.2f} s", f"{copy:.2f} s", f"{snap / copy:.2f}x", "<= 3x")
        into = " into a fresh volume" if volumes else ""
        row(f"start from that snapshot{into} to the first command, median of {rounds} (vs `docker cp`; a cold "
            f"start of the runtime took {statistics.median(colds):.2f} s)",
            f"{start:.2f} s", f"{copy:.2f} s", f"{start / copy:.2f}x", "<= 3x")

    forks, colds = [], []
    with DockerSandbox(RUNTIME) as sandbox:
        sandbox.write_file("notes.txt", "some state")
        for _ in range(rounds):
            started = time.perf_counter()
            copies_made = sandbox.fork(5)
            forks.append(time.perf_counter() - started)
            for fork in copies_made:
                fork.stop()
            started = time.perf_counter()
            with ThreadPoolExecutor(5) as executor:
                cold = list(executor.map(lambda _: DockerSandbox(RUNTIME).start(), range(5)))
            colds.append(time.perf_counter() - started)
            for fresh_sandbox in cold:
                fresh_sandbox.stop()
    fork_time, cold_time = statistics.median(forks), statistics.median(colds)
    row(f"fork into 5 sandboxes, median of {rounds} (vs five cold starts, concurrently)", f"{fork_time:.2f} s",
        f"{cold_time:.2f} s", f"{fork_time / cold_time:.2f}x", "<= 2x")


def bench_cluster(users: int, calls: int) -> None:
    """On a real 3-node swarm of this machine (tests/local_swarm.py): sessions, execute on a
    worker, and a node's loss, each beside the same on this host's engine."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from docker.tls import TLSConfig
    from local_swarm import LocalSwarm

    from pydantic_deep import SwarmCluster

    swarm = LocalSwarm(Path(tempfile.mkdtemp(prefix="pdc-", dir="/run")), prefix=f"pdb{os.getpid() % 100000}",
                       subnet=f"10.213.{os.getpid() % 200 + 20}")
    swarm.up()
    try:
        cluster = SwarmCluster(swarm.manager.socket)
        small = {"memory": "128m", "cpus": 0.05}  # 60 reservations must fit this machine's 3 nodes

        async def serve(manager: SessionManager) -> float:
            started = time.perf_counter()

            async def one(user: str) -> None:
                sandbox = await manager.get_or_create(user)
                assert (await sandbox.aexecute("echo hi")).output == "hi\n"

            await asyncio.gather(*(one(f"user-{i}") for i in range(users)))
            elapsed = time.perf_counter() - started
            await manager.shutdown(keep_files=False)
            return elapsed

        DockerSandbox(RUNTIME, cluster=cluster, **small).start().stop()  # images onto the nodes first
        on_cluster = asyncio.run(serve(SessionManager(RUNTIME, name="bench-cluster", cluster=cluster, **small)))
        on_host = asyncio.run(serve(SessionManager(RUNTIME, name="bench-host", cluster=False, **small)))
        row(f"{users} users' get_or_create + one command, concurrently, on a 3-node swarm (vs this host's engine)",
            f"{on_cluster:.1f} s", f"{on_host:.1f} s", f"{on_host / on_cluster:.2f}x", "reported")

        workers = SwarmCluster(swarm.manager.socket, constraints=["node.role==worker"])
        with DockerSandbox(RUNTIME, cluster=workers) as remote, DockerSandbox(RUNTIME, cluster=False) as local:
            remote.execute("echo warm-up")
            local.execute("echo warm-up")
            ours = percentile(timed(lambda: remote.execute("echo hi"), calls), 0.5)
            base = percentile(timed(lambda: local.execute("echo hi"), calls), 0.5)
        row(f'execute("echo hi") p50 on a worker node (vs a sandbox on this host\'s engine), {calls} calls',
            f"{ours * 1e3:.3f} ms", f"{base * 1e3:.3f} ms", f"{ours / base:.2f}x", "same channel: about 1x")

        tls = TLSConfig(client_cert=(str(swarm.tls / "cert.pem"), str(swarm.tls / "key.pem")),
                        ca_cert=str(swarm.tls / "ca.pem"), verify=True)
        over_tls = SwarmCluster(swarm.manager.tcp, tls=tls, constraints=["node.role==worker"],
                                nodes={node.name: node.tcp for node in swarm.nodes.values()})
        with DockerSandbox(RUNTIME, cluster=over_tls) as secure, DockerSandbox(RUNTIME, cluster=workers) as plain:
            secure.execute("echo warm-up")
            plain.execute("echo warm-up")
            ours = percentile(timed(lambda: secure.execute("echo hi"), calls), 0.5)
            base = percentile(timed(lambda: plain.execute("echo hi"), calls), 0.5)
        row(f'execute("echo hi") p50 on a worker reached over TLS (vs its unix socket), {calls} calls',
            f"{ours * 1e3:.3f} ms", f"{base * 1e3:.3f} ms", f"{ours / base:.2f}x", "reported")

        def start_stop(**options: object) -> float:
            started = time.perf_counter()
            DockerSandbox(RUNTIME, cluster=workers, **small, **options).start().stop()
            return time.perf_counter() - started

        start_stop(network=True)  # the nodes' networks and rules, once per process
        start_stop(disk_size="1g")  # the nodes' disk agents, once per process
        plain_start = statistics.median(start_stop() for _ in range(3))
        for what, options in (("networked (network=True)", {"network": True}),
                              ("with a 1 GB disk (disk_size, made on every node it may go to)", {"disk_size": "1g"})):
            taken = statistics.median(start_stop(**options) for _ in range(3))
            row(f"start + stop of a sandbox on the cluster {what} (vs without), median of 3",
                f"{taken:.2f} s", f"{plain_start:.2f} s", f"{taken / plain_start:.2f}x", "reported")

        async def node_loss() -> tuple[float, float]:
            manager = SessionManager(RUNTIME, name="bench-loss", cluster=workers, **small)
            try:
                sandbox = await manager.get_or_create("user")
                node = swarm.nodes[sandbox.node or ""]
                killed = time.perf_counter()
                node.kill()
                try:
                    await sandbox.aexecute("echo hi")
                    raise AssertionError("a call on a lost node succeeded")
                except SandboxError:
                    failed = time.perf_counter() - killed
                replacement = await manager.get_or_create("user")
                assert (await replacement.aexecute("echo back")).output == "back\n"
                return failed, time.perf_counter() - killed
            finally:
                await manager.shutdown(keep_files=False)

        failed, working = asyncio.run(node_loss())
        row("worker node's engine killed: the next call fails after (ours); a working sandbox on another node "
            "after (baseline column)",
            f"{failed:.2f} s", f"{working:.2f} s", "", "seconds")
    finally:
        swarm.down()


def _http_get(host: str, port: int, path: str) -> int:
    """One GET on a new connection (as http.server, HTTP/1.0, serves them); the body's size."""
    import http.client

    connection = http.client.HTTPConnection(host, port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        size = 0
        while chunk := response.read(1 << 20):
            size += len(chunk)
        assert response.status == 200, response.status
        return size
    finally:
        connection.close()


def bench_preview(requests: int) -> None:
    """A port exposed over the execution channel (the sandbox's network off) against the same server
    in a container of the same image on Docker's bridge, its port published with -p: request
    latency (a small page, a new connection each) and a 100 MB download."""
    import urllib.parse

    size = 100 * 2**20
    serve = f"cd /tmp && head -c {size} /dev/zero > big && echo hi > small && exec python3 -m http.server 8000"
    client = docker_client()
    with DockerSandbox(RUNTIME, network=False) as sandbox:
        sandbox.execute(f"nohup sh -c '{serve}' > /dev/null 2>&1 &")
        url = urllib.parse.urlsplit(sandbox.expose(8000))
        published = client.containers.run(sandbox.image, ["sh", "-c", serve], detach=True, remove=True,
                                          ports={"8000/tcp": ("127.0.0.1", None)},
                                          labels={"pydantic-deep.bench": "preview"})
        try:
            published.reload()
            host_port = int(published.ports["8000/tcp"][0]["HostPort"])
            targets = {"tunnel": ("127.0.0.1", url.port), "published": ("127.0.0.1", host_port)}
            for host, port in targets.values():  # both up, and warm
                deadline = time.monotonic() + 60
                while True:
                    try:
                        _http_get(host, port, "/small")
                        break
                    except (OSError, AssertionError):
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
            latency = {name: statistics.median(timed(lambda t=target: _http_get(*t, "/small"), requests))
                       for name, target in targets.items()}
            seconds = {}
            before = reset_peak_rss()
            for name, target in targets.items():
                started = time.perf_counter()
                assert _http_get(*target, "/big") == size
                seconds[name] = time.perf_counter() - started
                if name == "tunnel":
                    rss_growth = peak_rss_growth_mb(before)
        finally:
            published.remove(force=True)
    row(f"exposed port: GET of a small page on a new connection, p50 of {requests} (vs a published -p port)",
        f"{latency['tunnel'] * 1e3:.2f} ms", f"{latency['published'] * 1e3:.2f} ms",
        f"{latency['tunnel'] / latency['published']:.2f}x the baseline", "")
    row("exposed port: 100 MB download throughput (vs a published -p port)",
        f"{size / 2**20 / seconds['tunnel']:.0f} MB/s", f"{size / 2**20 / seconds['published']:.0f} MB/s",
        f"{seconds['published'] / seconds['tunnel']:.2f}x the baseline's speed", "")
    row("exposed port: 100 MB download, host peak RSS growth", f"{rss_growth:.1f} MB", "", "", "bounded (window)")
# -- side by side with upstream (issue 19) ------------------------------------------------------


def side(case: str, ours: str, upstream: str, plain: str, ratios: str, target: str = "") -> None:
    SIDE_ROWS.append((case, ours, upstream, plain, ratios, target))
    print(f"  {case}: ours {ours}, upstream {upstream}, docker-py {plain} ({ratios})", file=sys.stderr, flush=True)


def ensure_upstream() -> Path:
    """The upstream virtualenv's python, made (and the pinned versions installed) when missing."""
    python = UPSTREAM_VENV / "bin" / "python"
    wanted = " ".join(f"{name}=={version}" for name, version in UPSTREAM_VERSIONS.items())
    probe = ("import importlib.metadata as m; print(' '.join(f'{n}=={m.version(n)}' for n in "
             f"{list(UPSTREAM_VERSIONS)!r}))")
    if python.exists() and subprocess.run([str(python), "-c", probe], capture_output=True, text=True,
                                          cwd="/").stdout.strip() == wanted:
        return python
    print(f"Installing {wanted} into {UPSTREAM_VENV}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(UPSTREAM_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q",
                    *(f"{name}[sandbox]=={version}" if name == "pydantic-deep" else f"{name}[docker]=={version}"
                      for name, version in UPSTREAM_VERSIONS.items())], check=True)
    return python


class Upstream:
    """bench/upstream_driver.py in the upstream virtualenv: one case a call, under the same load as ours."""

    def __init__(self, python: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.process = subprocess.Popen([str(python), str(Path(__file__).with_name("upstream_driver.py"))],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/", env=env)

    def __call__(self, case: str, **args: object) -> dict:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"case": case, "args": args}) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        if "error" in answer:
            raise UpstreamFailed(answer["error"])
        return answer["ok"]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(60)


class UpstreamFailed(Exception):
    """A case that failed on upstream's side (shown in its column)."""


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds >= 0.01 else f"{seconds * 1e3:.2f} ms"


def times(ours: float, other: float) -> str:
    """How ours compares with another figure where lower is better: ``0.62x`` (ours takes 0.62 of it)."""
    return f"{ours / other:.2f}x"


def tag_upstream_image() -> str:
    docker_client().images.get(image_of(RUNTIME)).tag(UPSTREAM_IMAGE)
    return UPSTREAM_IMAGE


def bench_upstream(rounds: int, calls: int, user_counts: tuple[int, ...]) -> None:
    """Ours, upstream and plain docker-py side by side, on the same image, interleaved round by round."""
    image = tag_upstream_image()
    upstream = Upstream(ensure_upstream())
    try:
        side_start(upstream, image, rounds)
        side_execute(upstream, image, calls)
        side_sleeps(upstream, image)
        side_files(upstream, image)
        side_output(upstream, image)
        side_first_calls(upstream, image)
        for count in user_counts:
            side_users(upstream, image, count)
    finally:
        upstream.close()


def side_start(upstream: Upstream, image: str, rounds: int) -> None:
    client = docker_client()
    ours, theirs, plain = [], [], []
    DockerSandbox(RUNTIME).start().stop()  # a disk prepared ahead, as after any first start
    for _ in range(rounds):
        sandbox = DockerSandbox(RUNTIME)
        started = time.perf_counter()
        assert sandbox.start().execute("echo hi").output == "hi\n"
        ours.append(time.perf_counter() - started)
        sandbox.stop()
        theirs.append(upstream("start", image=image)["seconds"])
        started = time.perf_counter()
        container = client.containers.run(image, ["sleep", "infinity"], detach=True, init=True)
        container.exec_run(["sh", "-c", "echo hi"])
        plain.append(time.perf_counter() - started)
        container.remove(force=True)
    o, u, p = statistics.median(ours), statistics.median(theirs), statistics.median(plain)
    side(f"start to first command result, cold, median of {rounds} (docker-py: containers.run + exec_run)",
         ms(o), ms(u), ms(p), f"{times(o, u)} upstream, {times(o, p)} docker-py", "<= 0.8x both")


def side_execute(upstream: Upstream, image: str, calls: int) -> None:
    client = docker_client()
    with DockerSandbox(RUNTIME) as sandbox:
        sandbox.execute("echo warm-up")
        ours = timed(lambda: sandbox.execute("echo hi"), calls)
        container = client.containers.get(sandbox.container_id)
        plain = timed(lambda: container.exec_run(["sh", "-c", "echo hi"]), calls)
    theirs = upstream("execute", image=image, calls=calls)["samples"]
    for q in (0.5, 0.95):
        o, u, p = percentile(ours, q), percentile(theirs, q), percentile(plain, q)
        side(f'execute("echo hi") p{int(q * 100)}, {calls} calls (docker-py: exec_run)', ms(o), ms(u), ms(p),
             f"{u / o:.0f}x faster than upstream, {p / o:.0f}x docker-py", "ahead")


def side_sleeps(upstream: Upstream, image: str) -> None:
    client = docker_client()
    with DockerSandbox(RUNTIME) as sandbox:
        async def ours_all() -> float:
            started = time.perf_counter()
            await asyncio.gather(*(sandbox.aexecute("sleep 1") for _ in range(20)))
            return time.perf_counter() - started

        ours = asyncio.run(ours_all())
        container = client.containers.get(sandbox.container_id)
        started = time.perf_counter()
        with ThreadPoolExecutor(20) as threads:
            list(threads.map(lambda _: container.exec_run(["sh", "-c", "sleep 1"]), range(20)))
        plain = time.perf_counter() - started
    theirs = upstream("sleeps", image=image, count=20)["seconds"]
    side("20 concurrent `sleep 1` in one sandbox (upstream and docker-py: 20 threads)", f"{ours:.2f} s",
         f"{theirs:.2f} s", f"{plain:.2f} s", f"{times(ours, theirs)} upstream, {times(ours, plain)} docker-py",
         "ahead")


def side_files(upstream: Upstream, image: str) -> None:
    client = docker_client()
    data = bytes(range(256)) * (10 * 2**20 // 256)
    with DockerSandbox(RUNTIME) as sandbox:
        sandbox.execute("true")
        started = time.perf_counter()
        sandbox.write_file("/workspace/data.bin", data)
        intact = sandbox.read_file("/workspace/data.bin") == data
        ours = time.perf_counter() - started
        assert intact
        started = time.perf_counter()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            entry = tarfile.TarInfo("raw.bin")
            entry.size = len(data)
            tar.addfile(entry, io.BytesIO(data))
        client.api.put_archive(sandbox.container_id, "/workspace", buffer.getvalue())
        chunks, _ = client.api.get_archive(sandbox.container_id, "/workspace/raw.bin")
        back = b"".join(chunks)
        plain = time.perf_counter() - started
        assert len(back) > len(data)
    theirs = upstream("files", image=image, size_mb=10)
    shown = f"{theirs['seconds']:.2f} s" if theirs["intact"] else \
        f"FAILED: read back {theirs['read_back']} of {len(data)} bytes ({theirs['seconds']:.2f} s)"
    side("10 MB write + read back (docker-py: put_archive + get_archive)", f"{ours:.2f} s", shown, f"{plain:.2f} s",
         (f"{times(ours, theirs['seconds'])} upstream, " if theirs["intact"] else "upstream fails, ")
         + f"{times(ours, plain)} docker-py", "ahead")


def side_output(upstream: Upstream, image: str) -> None:
    figures = in_subprocess("output", RUNTIME)
    theirs = upstream("output", image=image, size=300_000_000)
    side("a command printing 300 MB: wall time (docker-py: a streamed exec)", f"{figures['ours_s']:.2f} s",
         f"{theirs['seconds']:.2f} s", f"{figures['raw_s']:.2f} s",
         f"{theirs['seconds'] / figures['ours_s']:.1f}x faster than upstream, "
         f"{figures['raw_s'] / figures['ours_s']:.1f}x docker-py", "ahead")
    side("a command printing 300 MB: host peak RSS growth", f"{figures['ours_rss_mb']:.1f} MB",
         f"{theirs['rss_mb']:.0f} MB", "", f"{theirs['rss_mb'] / max(figures['ours_rss_mb'], 0.1):.0f}x less",
         "ahead")


def side_first_calls(upstream: Upstream, image: str) -> None:
    """Five threads make a new sandbox's first call at once: containers made, and left after stop()."""
    client = docker_client()
    sandbox = DockerSandbox(RUNTIME)
    label_filter = {"label": f"pydantic-deep.session={sandbox.session_id}"}
    barrier = threading.Barrier(5)

    def call(_: int) -> bool:
        barrier.wait()
        return sandbox.execute("echo hi").output == "hi\n"

    with ThreadPoolExecutor(5) as threads:
        answered = sum(threads.map(call, range(5)))
    made = len(client.containers.list(all=True, filters=label_filter))
    sandbox.stop()
    left = len(client.containers.list(all=True, filters=label_filter))
    theirs = upstream("first_calls", image=image, count=5)

    def shown(answered: int, made: int, left: int) -> str:
        leak = f", {left} LEAKED" if left else ", 0 left"
        return f"{answered}/5 answered, {made} container{'s' if made != 1 else ''} made{leak}"

    side("5 concurrent first calls of a new sandbox, then stop() (upstream's leaked containers removed after)",
         shown(answered, made, left), shown(theirs["answered"], theirs["made"], theirs["left"]), "",
         "", "1 made, 0 left")


def side_users(upstream: Upstream, image: str, count: int) -> None:
    """``count`` users' first get_or_create + one command, all at once: ours cold and with warm
    capacity of ``count``, upstream, and plain docker-py; then shutdown and what it left."""
    client = docker_client()

    async def ours(warm: int, **options: object) -> tuple[float, list[float], float, int]:
        name = f"bench-{'warm' if warm else 'cold'}{'-nodisk' if options else ''}"
        manager = SessionManager(RUNTIME, name=name, warm=warm, **options)
        if manager.pool is not None:
            await asyncio.to_thread(manager.pool.wait_ready, 600)
        await manager.recover()  # what a server does when it starts

        async def one(user: str) -> float:
            started = time.perf_counter()
            sandbox = await manager.get_or_create(user)
            assert (await sandbox.aexecute("echo hi")).output == "hi\n"
            return time.perf_counter() - started

        started = time.perf_counter()
        latencies = await asyncio.gather(*(one(f"user-{i}") for i in range(count)))
        serve = time.perf_counter() - started
        started = time.perf_counter()
        assert await manager.shutdown(keep_files=False) == count
        stopped = time.perf_counter() - started
        left = len(client.containers.list(all=True, filters={"label": f"pydantic-deep.manager={name}"})) + len(
            [v for v in client.volumes.list() if v.name.startswith(f"pd-{name}-")]) + len(
            [d for d in list_disks() if d.name.startswith(f"pd-{name}-")])
        return serve, list(latencies), stopped, left

    cold, cold_latencies, cold_shutdown, cold_left = asyncio.run(ours(0))
    bare, _, _, bare_left = asyncio.run(ours(0, disk_size=None))  # upstream has no disk either
    # A burst from warm capacity lasts a tenth of a second: the noisiest figure of the table, so
    # three bursts (a new manager each), the median one by p50 shown, with the three p50s.
    bursts = sorted((asyncio.run(ours(count)) for _ in range(WARM_BURSTS)), key=lambda run: statistics.median(run[1]))
    warm, warm_latencies, warm_shutdown, _ = bursts[len(bursts) // 2]
    warm_left = sum(run[3] for run in bursts)
    warm_p50s = ", ".join(ms(statistics.median(run[1])) for run in bursts)
    theirs = upstream("users", image=image, count=count)
    started = time.perf_counter()
    with ThreadPoolExecutor() as threads:
        def naive(_: int) -> object:
            container = client.containers.run(image, ["sleep", "infinity"], detach=True, init=True)
            container.exec_run(["sh", "-c", "echo hi"])
            return container

        containers = list(threads.map(naive, range(count)))
    plain = time.perf_counter() - started
    with ThreadPoolExecutor() as threads:
        list(threads.map(lambda c: c.remove(force=True), containers))
    u = theirs["seconds"]
    side(f"{count} users' first get_or_create + one command, at once, cold (docker-py: run + exec_run, thread pool)",
         f"{cold:.2f} s", f"{u:.2f} s", f"{plain:.2f} s", f"{times(cold, u)} upstream, {times(cold, plain)} docker-py",
         "<= 0.8x upstream" if count == 20 else "all served")
    side(f"{count} users at once, cold, without the capped disk (`disk_size=None`; upstream has none)",
         f"{bare:.2f} s", f"{u:.2f} s", f"{plain:.2f} s", f"{times(bare, u)} upstream, {times(bare, plain)} docker-py",
         "")
    side(f"{count} users at once, with warm capacity of {count}, the median of {WARM_BURSTS} bursts "
         "(upstream has none: its cold figure)",
         f"{warm:.3f} s", f"{u:.2f} s", f"{plain:.2f} s", f"{times(warm, u)} upstream",
         "<= 0.3 s" if count == 20 else "all served")
    side(f"{count} users: p50 / p95 per user, warm / cold (upstream: cold)",
         f"{ms(statistics.median(warm_latencies))} / {ms(percentile(warm_latencies, 0.95))} warm "
         f"(p50s of the {WARM_BURSTS} bursts: {warm_p50s}), "
         f"{ms(statistics.median(cold_latencies))} / {ms(percentile(cold_latencies, 0.95))} cold",
         f"{ms(statistics.median(theirs['latencies']))} / {ms(percentile(theirs['latencies'], 0.95))}", "", "",
         "warm p50 <= 50 ms" if count == 100 else "")
    side(f"{count} users: shutdown, and what it left (containers, volumes, disks)",
         f"{cold_shutdown:.2f} s cold / {warm_shutdown:.2f} s warm (files removed), "
         f"{cold_left + warm_left + bare_left} left",
         f"{theirs['shutdown']:.2f} s, {theirs['left']} left" + (" (LEAKED, removed after)" if theirs["left"] else ""),
         "", "", "0 left")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer calls and sandboxes")
    parser.add_argument("--only", nargs="+", choices=GROUPS, metavar="GROUP",
                        help=f"run only these groups of cases ({', '.join(GROUPS)}; all by default). 'node' runs "
                             "node-minimal's rows, each beside python-minimal's as the baseline of the same run")
    parser.add_argument("--case", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        case, *rest = args.case
        figures = bench_files_case(int(rest[0])) if case == "files" else bench_output_case(rest[0])
        print(json.dumps(figures))
        return
    image_of(RUNTIME)  # build before timing anything
    calls = 100 if args.quick else 500
    groups = {
        "echo": lambda: bench_echo(calls),
        "concurrency": bench_concurrency,
        "start": lambda: bench_start(5 if args.quick else 10),
        "disk": lambda: bench_disk(5 if args.quick else 10),
        "network": lambda: bench_network_start(5 if args.quick else 10),
        "egress": lambda: bench_egress(3 if args.quick else 6),
        "files": bench_files,
        "output": bench_output,
        "idle": lambda: bench_idle(20 if args.quick else 100),
        "sessions": lambda: bench_sessions(20 if args.quick else 100),
        "node": lambda: bench_node(calls),
        "snapshots": lambda: bench_snapshots(3 if args.quick else 5),
        "cluster": lambda: bench_cluster(20 if args.quick else 60, calls),
        "preview": lambda: bench_preview(100 if args.quick else 300),
        "upstream": lambda: bench_upstream(5 if args.quick else 10, 100 if args.quick else 300,
                                           (20,) if args.quick else (20, 100)),
    }
    for name in args.only or GROUPS:
        groups[name]()
    print(f"\npydantic_deep benchmarks, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores\n")
    print("| case | ours | baseline | ratio | target |\n|---|---|---|---|---|")
    for case, ours, baseline, ratio, target in ROWS:
        print(f"| {case} | {ours} | {baseline} | {ratio} | {target} |")
    if SIDE_ROWS:
        print(f"\nSide by side with upstream (pydantic-deep {UPSTREAM_VERSIONS['pydantic-deep']}, pydantic-ai-backend "
              f"{UPSTREAM_VERSIONS['pydantic-ai-backend']}) and plain docker-py, on one image ({UPSTREAM_IMAGE})\n")
        print("| case | ours | upstream | plain docker-py | ours against them | target |\n|---|---|---|---|---|---|")
        for side_row in SIDE_ROWS:
            print("| " + " | ".join(side_row) + " |")


if __name__ == "__main__":
    main()
