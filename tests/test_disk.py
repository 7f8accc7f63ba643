"""disk_size (issue 22): everything a sandbox or a session writes to the host's disk is capped, a full
disk hurts only its writer, and no loop device, disk file or mount outlives its sandbox, session, or
a killed owner once `pydantic-deep prune` ran. See docs/security.md and pydantic_deep/sandbox/disk.py.

The checks of what is left read this host's loop devices, mounts and disk directory: the engine
runs here."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import poll_until

from pydantic_deep import (
    DiskFullError,
    DockerSandbox,
    InvalidArgumentError,
    RuntimeConfig,
    SandboxPool,
    SessionManager,
    SwarmCluster,
    get_runtime,
)
from pydantic_deep.cli import main as cli
from pydantic_deep.engine.client import docker_client
from pydantic_deep.errors import SandboxError
from pydantic_deep.sandbox.disk import DISK_DIR, _Agent, disk_dir, list_disks, open_disk
from pydantic_deep.sandbox.disk_prune import prune_disks
from pydantic_deep.sandbox.docker import FROM_RUNTIME, resolved_disk_size

pytestmark = [pytest.mark.adversarial, pytest.mark.disk, pytest.mark.anyio]

MB = 1024 ** 2


def assert_answers(sandbox: DockerSandbox) -> None:
    result = sandbox.execute("echo $((6 * 7))", timeout=60)
    assert (result.output, result.exit_code) == ("42\n", 0)


def leftovers(disk: str) -> list[str]:
    """What of the disk ``disk`` is still on this host: loop devices, mounts, files."""
    where = disk_dir(disk)
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    found = [f"loop device: {line}" for line in loops.splitlines() if f"{where}.img" in line]
    found += [f"mount: {line}" for line in Path("/proc/mounts").read_text().splitlines() if f" {where} " in line]
    return found + glob.glob(f"{where}*")


@pytest.fixture(scope="module")
def capped() -> Iterator[DockerSandbox]:
    with DockerSandbox(runtime="python-minimal", disk_size="200m") as running:
        yield running


@pytest.fixture(scope="module")
def witness() -> Iterator[DockerSandbox]:
    with DockerSandbox(runtime="python-minimal") as running:
        yield running


@pytest.mark.parametrize("where", ["$PWD", "$HOME", "/uploads"])
def test_writing_past_the_disk_fails_with_enospc_and_hurts_nobody_else(
        capped: DockerSandbox, witness: DockerSandbox, where: str) -> None:
    result = capped.execute(f"head -c 300m /dev/zero > {where}/big; echo status=$?; du -m {where}/big | cut -f1; "
                            f"rm {where}/big", timeout=120)
    lines = result.output.splitlines()
    assert "No space left on device" in lines[0] and lines[1] == "status=1", result.output
    assert 150 < int(lines[2]) < 200  # it wrote until the disk was full, no further
    assert_answers(capped)
    assert witness.execute("head -c 300m /dev/zero > big; du -m big | cut -f1; rm big").output == "300\n"


def test_the_file_api_gets_disk_full_and_leaves_no_partial_file(capped: DockerSandbox, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as handle:
        handle.truncate(300 * MB)  # sparse: nothing on the host's disk
    with pytest.raises(DiskFullError, match="disk_size"):
        capped.upload(big, "big.bin")
    assert capped.list_files(".") == [] and capped.list_files("/uploads") == []
    assert capped.usage().disk_bytes < 10 * MB  # the partial file is gone too
    capped.write_file("small.txt", "still works")
    assert capped.read_file("small.txt") == b"still works"
    capped.execute("rm small.txt")


def test_nothing_else_is_writable_and_usage_reports_the_disk(capped: DockerSandbox) -> None:
    result = capped.execute("for p in / /etc /usr /var/tmp /opt /run /var/lib; do touch $p/x; done 2>&1; "
                            "grep ' / ' /proc/self/mounts | cut -d' ' -f4 | cut -d, -f1")
    assert result.output.count("Read-only file system") == 7 and result.output.endswith("\nro\n"), result.output
    writable = capped.execute("df -B1 --output=fstype,size,target $PWD $HOME /uploads /tmp | tail -n +2").output
    sizes = {target: (kind, int(size)) for kind, size, target in map(str.split, writable.splitlines())}
    assert sizes["/tmp"] == ("tmpfs", 512 * MB)  # memory, as before
    assert {sizes[p] for p in ("/workspace", "/home/sandbox", "/uploads")} == {sizes["/workspace"]}  # one disk
    assert sizes["/workspace"][0] == "ext4" and 180 * MB < sizes["/workspace"][1] <= 200 * MB
    capped.execute("head -c 20m /dev/zero > twenty")
    usage = capped.usage()
    assert usage.disk_limit_bytes == sizes["/workspace"][1]
    assert 20 * MB <= usage.disk_bytes < 30 * MB
    capped.execute("rm twenty")


def test_default_disk_and_uncapped_opt_out() -> None:
    with DockerSandbox(runtime="python-minimal") as box:
        assert box.disk_size == 10 * 1024 ** 3
        assert box.usage().disk_limit_bytes is not None
    with DockerSandbox(runtime="python-minimal", disk_size=None) as box:
        assert box.usage().disk_limit_bytes is None and box.execute("touch /home/sandbox/x").ok


def test_files_the_image_holds_in_the_work_dir_and_home_are_on_a_new_disk() -> None:
    runtime = RuntimeConfig(name="seeded", base_image="python:3.12-slim", setup_commands=[
        "mkdir -p /workspace/data /home/sandbox && echo rows > /workspace/data/t.csv && echo hi > /home/sandbox/.rc"])
    with DockerSandbox(runtime, disk_size="64m") as box:
        assert box.execute("cat data/t.csv ~/.rc; df --output=fstype . | tail -1").output == "rows\nhi\next4\n"
        owners = box.execute("stat -c %U . data/t.csv").output
    with DockerSandbox(runtime, disk_size=None) as plain:
        assert plain.execute("stat -c %U . data/t.csv").output == owners == "sandbox\nroot\n"  # as in the image


@pytest.mark.parametrize("size", ["1m", "0", "-5g", "lots"])
def test_bad_disk_sizes_are_refused(size: str) -> None:
    with pytest.raises(ValueError, match="disk_size"):
        DockerSandbox(runtime="python-minimal", disk_size=size)
    with pytest.raises(ValueError, match="disk_size"):
        RuntimeConfig(name="x", image="debian", disk_size=size)


def test_the_runtime_sets_the_default_and_the_sandbox_overrides_it() -> None:
    runtime = RuntimeConfig(**{**get_runtime("python-minimal").model_dump(), "disk_size": "64m"})
    assert DockerSandbox(runtime).disk_size == 64 * MB
    assert DockerSandbox(runtime, disk_size="1g").disk_size == 1024 * MB
    assert DockerSandbox(runtime, disk_size=None).disk_size is None
    assert SandboxPool(runtime, disk_size="32m").sandbox_options["disk_size"] == "32m"


def test_stop_and_garbage_collection_leave_nothing() -> None:
    box = DockerSandbox(runtime="python-minimal", disk_size="64m").start()
    disk = box.disk_name
    assert leftovers(disk)  # mounted while it runs
    box.stop()
    assert leftovers(disk) == []
    dropped = DockerSandbox(runtime="python-minimal", disk_size="64m").start()
    disk = dropped.disk_name
    del dropped  # remove_on_exit: the finalizer removes the container, then the disk
    assert leftovers(disk) == []


async def test_a_session_quota_holds_across_a_container_loss_and_release_frees_it() -> None:
    manager = SessionManager("python-minimal", name=f"test-{uuid.uuid4().hex[:8]}", disk_size="200m")
    try:
        sandbox = await manager.get_or_create("ann")
        disk = sandbox.disk_name
        assert sandbox.execute("head -c 120m /dev/zero > first").ok
        docker_client().api.remove_container(sandbox.container_id, force=True)  # the container is lost
        again = await manager.get_or_create("ann")
        assert again.container_id != sandbox.container_id and again.disk_name == disk
        assert again.execute("stat -c %s first").output == f"{120 * MB}\n"
        result = again.execute("head -c 120m /dev/zero > second; echo status=$?")
        assert "No space left on device" in result.output and "status=1" in result.output  # the same quota
        info, = await manager.list_sessions()
        assert info.disk_limit_bytes and info.disk_bytes > info.disk_limit_bytes - 8 * MB  # full
        assert await manager.release("ann")
        assert leftovers(disk) == []
    finally:
        await manager.shutdown(keep_files=False)


async def test_session_shutdown_keeps_or_removes_the_disk() -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    manager = SessionManager("python-minimal", name=name, disk_size="64m")
    disk = (await manager.get_or_create("bo")).disk_name
    (await manager.get_or_create("bo")).write_file("kept.txt", "yes")
    await manager.shutdown()  # keep_files: unmounted, the file stays
    successor = SessionManager("python-minimal", name=name, disk_size="64m")
    try:
        assert sorted(leftovers(disk)) == [f"{disk_dir(disk)}.img", f"{disk_dir(disk)}.keep"]
        assert (await successor.get_or_create("bo")).read_file("kept.txt") == b"yes"
    finally:
        await successor.shutdown(keep_files=False)
    assert leftovers(disk) == []


EXITING_OWNER = """
import os
from pydantic_deep import DockerSandbox
box = DockerSandbox("python-minimal", disk_size="64m").start()  # then a disk made ahead, in the background
print(box.disk_name, os.getpid(), flush=True)
"""


def owned_disks(pid: str) -> list[str]:
    return [disk.name for disk in list_disks() if disk.owner.endswith(f" {pid}")]


def test_interpreter_exit_releases_the_disk_and_the_one_made_ahead() -> None:
    exited = subprocess.run([sys.executable, "-c", EXITING_OWNER], capture_output=True, text=True, check=True)
    disk, pid = exited.stdout.split()
    assert leftovers(disk) == [] and owned_disks(pid) == []


KILLED_OWNER = """
import os, signal, sys
from pydantic_deep import DockerSandbox
box = DockerSandbox("python-minimal", disk_size="64m").start()
print(box.disk_name, os.getpid(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_disk_of_a_killed_owner_is_released_by_its_agent() -> None:
    killed = subprocess.run([sys.executable, "-c", KILLED_OWNER], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    disk, pid = killed.stdout.split()
    # The sandbox and the disk agent are tied to their process: they remove themselves.
    owned = {"label": f"pydantic-deep.owner-pid={pid}"}
    poll_until(lambda: not docker_client().api.containers(all=True, filters=owned),
               "the killed owner's containers remove themselves")
    # Its disk agent, once it found its process gone, released the sandbox's disk and the one
    # made ahead, without a prune.
    poll_until(lambda: leftovers(disk) == [] and owned_disks(pid) == [], "the killed owner's disks are released")
    assert os.path.isdir(os.path.dirname(disk_dir(disk)))


KILLED_MANAGER = """
import json, os, signal, socket, subprocess, sys, time
from pydantic_deep import DockerSandbox, SyncSessionManager
from pydantic_deep.engine.client import docker_client
from pydantic_deep.sandbox.disk import DISK_DIR, _Agent, list_disks
name, other = sys.argv[1:]
manager = SyncSessionManager("python-minimal", name=name, disk_size="64m", warm=1)
kept = manager.get_or_create("kept")  # the warm sandbox, its disk named for the pool, now a session's
kept.write_file("a.txt", "kept on purpose")
manager.stop("kept")  # unmounted, files kept
running = manager.get_or_create("running")  # its container outlives the kill (a session's does)
box = DockerSandbox("python-minimal", disk_size="64m").start()  # then one made ahead
# A disk in another engine's folder (an engine gone since, a swarm node's...), of a process
# whose agent could not release it (a pid no process has any more): prune's to find.
gone = subprocess.Popen(["true"])
gone.wait()
_Agent(docker_client(), host_dir=f"{DISK_DIR}/{other}").run(
    "open", "pd-disk-elsewhere", str(64 << 20), "1000", "1000", "0", f"{socket.gethostname()} {gone.pid}")
def made() -> list[str]:
    return [d.name for d in list_disks() if d.owner.endswith(f" {os.getpid()}")]
while not ([d for d in made() if d.startswith(f"pd-{name}-pool-") and d != kept.disk_name]
           and [d for d in made() if d.startswith("pd-disk-") and d != box.disk_name]):
    time.sleep(0.05)  # the pool's next warm sandbox and the next disk, made in the background
print(json.dumps({"kept": kept.disk_name, "running": running.disk_name, "box": box.disk_name,
                  "made": made(), "pid": os.getpid()}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


async def test_prune_finds_every_disk_a_killed_process_left_and_keeps_sessions_files(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A killed session manager with a warm pool, a sandbox, the disk made ahead and a disk in
    another engine's folder: its disk agent releases the disks nobody holds, prune deletes the
    rest but the sessions' disks, which it only unmounts, and leaves this (live) process's disks
    alone."""
    name, other = f"test-{uuid.uuid4().hex[:8]}", f"test-gone-engine-{uuid.uuid4().hex[:8]}"
    mine = DockerSandbox("python-minimal", disk_size="64m").start()  # a live owner's disks: its own, one made ahead
    try:
        poll_until(lambda: len(owned_disks(str(os.getpid()))) >= 2, "this process's disk made ahead")
        live = owned_disks(str(os.getpid()))
        killed = subprocess.run([sys.executable, "-c", KILLED_MANAGER, name, other], capture_output=True, text=True,
                                timeout=300)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        left = json.loads(killed.stdout)
        owned = {"label": f"pydantic-deep.owner-pid={left['pid']}"}
        poll_until(lambda: all(c["Labels"].get("pydantic-deep.manager") == name
                               for c in docker_client().api.containers(all=True, filters=owned)),
                   "the killed owner's sandbox and disk agents to remove themselves (its sessions' stay)")
        sessions = {left["kept"], left["running"]}
        assert left["kept"].startswith(f"pd-{name}-pool-")  # named for the pool: a session's by its record
        gone = [disk for disk in left["made"] if disk not in sessions]
        assert len(gone) >= 3  # the sandbox's, the one made ahead, the next warm sandbox's
        elsewhere = f"{DISK_DIR}/{other}/pd-disk-elsewhere"
        assert os.path.ismount(elsewhere)  # the disk agent released the killed process's own free disks
        cli(["prune"])
        assert "Released" in capsys.readouterr().out
        for disk in gone:
            assert leftovers(disk) == [], disk
        assert not glob.glob(f"{elsewhere}*")
        for disk in sessions:  # unmounted, their files kept
            assert sorted(leftovers(disk)) == [f"{disk_dir(disk)}.img", f"{disk_dir(disk)}.keep"], disk
        assert all(os.path.ismount(disk_dir(disk)) for disk in live)  # the live process's: untouched
        successor = SessionManager("python-minimal", name=name, disk_size="64m")
        assert (await successor.get_or_create("kept")).read_file("a.txt") == b"kept on purpose"
        await successor.get_or_create("running")
        await successor.shutdown(keep_files=False)
        assert all(leftovers(disk) == [] for disk in sessions)
    finally:
        mine.stop()
        cleanup = SessionManager("python-minimal", name=name, disk_size="64m")  # whatever a failure left
        for user in ("kept", "running"):
            with contextlib.suppress(Exception):
                await cleanup.get_or_create(user)
        await cleanup.shutdown(keep_files=False)
        with contextlib.suppress(OSError):
            os.rmdir(f"{DISK_DIR}/{other}")


def test_prune_deletes_a_disk_whose_make_was_cut_short_and_leaves_one_being_made() -> None:
    """A process killed while its disk agent made a disk takes the agent with it, mid-mkfs: the
    disk's file is left half made, under its temporary name, with its owner recorded. Prune
    deletes it; one that a live process is making is left alone."""
    folder = os.path.dirname(disk_dir("x"))
    gone = subprocess.Popen(["true"])
    gone.wait()
    cut_short, being_made = (f"pd-disk-{uuid.uuid4().hex[:16]}" for _ in range(2))
    for name, pid in ((cut_short, gone.pid), (being_made, os.getpid())):
        with open(f"{folder}/{name}.img.new", "wb") as half_made:
            half_made.truncate(64 << 20)
        Path(f"{folder}/{name}.owner").write_text(f"{socket.gethostname()} {pid}\n")
    try:
        assert {cut_short, being_made} <= {disk.name for disk in list_disks()}
        prune_disks()
        assert leftovers(cut_short) == []
        assert sorted(leftovers(being_made)) == [f"{folder}/{being_made}.img.new", f"{folder}/{being_made}.owner"]
    finally:
        for path in glob.glob(f"{folder}/{being_made}.*") + glob.glob(f"{folder}/{cut_short}.*"):
            os.remove(path)


def test_a_disk_that_cannot_be_made_leaves_nothing_behind() -> None:
    with pytest.raises(SandboxError, match="the disk operation open"):
        open_disk(name := f"pd-disk-{uuid.uuid4().hex[:16]}", 4096, 1000, 1000, keep=False)  # too small for ext4
    assert leftovers(name) == []


# Its arguments, 200 kB on stdout and a line on stderr; exit code $2.
_ANSWERING = 'head -c 200000 /dev/zero | tr "\\0" "$1"; echo "err $1" >&2; exit "$2"'


def test_the_disk_agent_answers_operations_asked_at_once_over_its_stream_without_an_exec() -> None:
    agent = _Agent(docker_client())
    try:
        assert agent.run(script="echo first") == "first\n"
        with ThreadPoolExecutor(16) as threads:  # answers of 200 kB, ending together
            outcomes = list(threads.map(lambda n: _outcome(agent, chr(ord("a") + n), n % 3), range(16)))
        assert outcomes == [(chr(ord("a") + n) * 200_000 if n % 3 == 0 else f"err {chr(ord('a') + n)}")
                            for n in range(16)]
        assert agent.run("two words", "", "x", script='printf "%s|" "$@"') == "two words||x|"  # each argument a line
        with pytest.raises(ValueError, match="lines"):
            agent.run("a\nb", script="true")
        assert docker_client().api.inspect_container(agent.container_id)["ExecIDs"] is None
    finally:
        agent.close()


def _outcome(agent: _Agent, letter: str, code: int) -> str:
    try:
        return agent.run(letter, str(code), script=_ANSWERING)
    except SandboxError as exc:  # the operation failed: its standard error says why
        return str(exc).rsplit(": ", 1)[1]


def test_a_disk_agent_removed_from_outside_is_replaced_even_during_an_operation() -> None:
    client = docker_client()
    agent = _Agent(client)
    try:
        agent.run(script="true")
        first = agent.container_id
        client.api.remove_container(first, force=True)  # between operations
        assert agent.run(script="echo again") == "again\n" and agent.container_id != first
        second = agent.container_id
        with ThreadPoolExecutor(1) as thread:  # during one: it runs again in a new agent
            slow = thread.submit(agent.run, script="sleep 1; echo done")
            poll_until(lambda: any("sleep 1" in " ".join(process) for process in client.api.top(second)["Processes"]),
                       "the operation to run", timeout=20)
            client.api.remove_container(second, force=True)
            assert slow.result(30) == "done\n"
        assert agent.container_id not in (first, second)
    finally:
        agent.close()
    assert client.containers.list(all=True, filters={"id": agent.container_id or "none"}) == []


def test_on_a_cluster_the_default_is_no_disk_and_a_sessions_disk_needs_the_session_storage(tmp_path: Path) -> None:
    """On a cluster a sandbox's own disk is made on every node it may go to, not by default; a
    session's (kept) disk only in a session storage every node mounts (never on one node, where it
    would stay while the session moves), and there by default."""
    cluster = SwarmCluster("tcp://manager:2376")
    runtime = get_runtime("python-minimal")
    assert resolved_disk_size(FROM_RUNTIME, runtime, None) == runtime.disk_size == "10g"
    assert resolved_disk_size(FROM_RUNTIME, runtime, cluster) is None
    assert resolved_disk_size(None, runtime, cluster) is None
    assert resolved_disk_size("1g", runtime, cluster, kept=False) == "1g"  # a sandbox's own (tests/test_cluster.py)
    with pytest.raises(InvalidArgumentError, match="cannot have a disk without a session storage: disk_size='1g'"):
        resolved_disk_size("1g", runtime, cluster)
    with pytest.raises(InvalidArgumentError, match="runtime 'python-minimal'.s disk_size='2g'"):
        resolved_disk_size(FROM_RUNTIME, RuntimeConfig.model_validate(
            {**runtime.model_dump(exclude_unset=True), "disk_size": "2g"}), cluster)
    stored = SwarmCluster("tcp://manager:2376", volume_driver="local", session_storage=tmp_path,
                          volume_driver_options={"type": "nfs", "o": "addr=10.0.0.5,rw", "device": ":/x/{name}"})
    assert resolved_disk_size(FROM_RUNTIME, runtime, stored) == "10g"  # a session's quota by default
    assert resolved_disk_size("1g", runtime, stored) == "1g"
    assert resolved_disk_size(FROM_RUNTIME, runtime, stored, kept=False) is None
    # The session's directories in the storage reach its task as volumes of the driver.
    spec = stored.service_spec("image", {"name": "s", "mounts": [
        {"Type": "bind", "Source": f"{tmp_path}/pd-x-disk/work", "Target": "/workspace"}]})
    [mount] = spec["task_template"]["ContainerSpec"]["Mounts"]
    assert (mount["Type"], mount["Source"], mount["VolumeOptions"]["DriverConfig"]["Options"]["device"]) == (
        "volume", "pd-x-disk-work", ":/x/pd-x-disk/work")
