"""Pause, snapshot, restore and fork (issue 16), against real containers."""

from __future__ import annotations

import asyncio
import glob
import io
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from pydantic_deep import (
    DockerSandbox,
    InvalidArgumentError,
    SandboxError,
    SandboxState,
    SandboxStateError,
    SessionManager,
    SnapshotNotFoundError,
    delete_snapshot,
    get_snapshot,
    list_snapshots,
)
from pydantic_deep.engine.client import docker_client
from pydantic_deep.notebook.interpreter import SandboxInterpreter
from pydantic_deep.notebook.magics import SandboxMagics
from pydantic_deep.notebook.widgets import SessionMonitor
from pydantic_deep.sandbox.disk import disk_dir
from pydantic_deep.sandbox.snapshot_disks import snapshot_disk_sizes

pytestmark = pytest.mark.snapshot

CLI = [sys.executable, "-m", "pydantic_deep.cli"]
MB = 2 ** 20


def unique(prefix: str = "test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def snapshot_names() -> Iterator[list[str]]:
    """Names of snapshots a test takes: deleted after it, pass or fail."""
    names: list[str] = []
    yield names
    for name in reversed(names):  # a snapshot taken from a later one's sandbox stands on it
        try:
            delete_snapshot(name)
        except SnapshotNotFoundError:
            pass


def engine_read(container_id: str, path: str) -> bytes:
    """A file of the container, read by the engine from outside (works while it is paused)."""
    chunks, _stat = docker_client().api.get_archive(container_id, path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
        member = archive.next()
        assert member is not None
        handle = archive.extractfile(member)
        assert handle is not None
        return handle.read()


def wait_for(condition, what: str, seconds: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_pause_keeps_variables_and_a_background_process_and_the_next_call_resumes() -> None:
    with DockerSandbox("python-minimal") as sandbox:
        interpreter = SandboxInterpreter(sandbox)
        assert interpreter.execute("x = 41").status == "ok"
        counter = "i=0; while true; do i=$((i+1)); echo $i > count.tmp; mv count.tmp count; sleep 0.05; done"
        started = sandbox.execute(f"setsid sh -c '{counter}' >/dev/null 2>&1 & echo $!")
        pid = started.stdout.strip()
        wait_for(lambda: sandbox.exists("count") and sandbox.read_file("count").strip() not in (b"", b"0"),
                 "the background counter")

        sandbox.pause()
        assert sandbox.state is SandboxState.PAUSED
        assert docker_client().api.inspect_container(sandbox.container_id)["State"]["Paused"]
        frozen = engine_read(sandbox.container_id, "/workspace/count")
        time.sleep(0.5)  # ten of the counter's ticks: none may happen while frozen
        assert engine_read(sandbox.container_id, "/workspace/count") == frozen

        # A cell resumes it by itself, with its variables.
        assert interpreter.execute("x + 1").result == {"text/plain": "42"}
        assert sandbox.state is SandboxState.RUNNING
        assert not docker_client().api.inspect_container(sandbox.container_id)["State"]["Paused"]
        # The same process counts on from where it was.
        assert sandbox.execute(f"kill -0 {pid} && echo alive").stdout == "alive\n"
        wait_for(lambda: int(sandbox.read_file("count")) > int(frozen), "the counter to go on")

        # A command resumes it too, sync and async; so does a file call.
        sandbox.pause()
        assert sandbox.execute("echo hi").stdout == "hi\n" and sandbox.state is SandboxState.RUNNING
        sandbox.pause()
        assert asyncio.run(sandbox.aexecute("echo async")).stdout == "async\n"
        sandbox.pause()
        assert sandbox.read_file("count") and sandbox.state is SandboxState.RUNNING
        sandbox.pause()
        sandbox.pause()  # twice is harmless
        sandbox.resume()
        sandbox.resume()
        assert sandbox.state is SandboxState.RUNNING
        interpreter.close()
    with pytest.raises(SandboxStateError, match="only a running sandbox can be paused"):
        sandbox.pause()


def test_a_paused_sandbox_stops_cleanly() -> None:
    sandbox = DockerSandbox("python-minimal").start()
    sandbox.pause()
    sandbox.stop()
    assert sandbox.state is SandboxState.STOPPED
    assert docker_client().containers.list(all=True, filters={"id": sandbox.container_id}) == []


def test_snapshot_modify_restore_gives_the_old_files_back(snapshot_names: list[str]) -> None:
    name = unique()
    snapshot_names.append(name)
    with DockerSandbox("python-minimal") as sandbox:
        sandbox.write_file("kept.txt", "old")
        sandbox.write_file("/uploads/data.csv", "a,b\n1,2\n")
        sandbox.write_file("deleted-later.txt", "here")
        sandbox.execute("echo outside > /home/sandbox/rc")  # outside the file API's roots: committed too
        snapshot = sandbox.snapshot(name)
        assert sandbox.state is SandboxState.RUNNING  # resumed after the copy
        assert snapshot.name == name and snapshot.runtime.name == "python-minimal"
        assert get_snapshot(name) == snapshot and name in [s.name for s in list_snapshots()]
        assert "<table" in snapshot._repr_html_() and name in snapshot._repr_html_()

        sandbox.write_file("kept.txt", "new")
        sandbox.execute("rm deleted-later.txt /uploads/data.csv; echo x > added.txt; echo changed > /home/sandbox/rc")
        sandbox.restore(name)
        assert sandbox.read_file("kept.txt") == b"old"
        assert sandbox.read_file("deleted-later.txt") == b"here"
        assert sandbox.read_file("/uploads/data.csv") == b"a,b\n1,2\n"
        assert not sandbox.exists("added.txt")
        assert sandbox.execute("cat /home/sandbox/rc; id -u").stdout == "outside\n1000\n"

        with pytest.raises(InvalidArgumentError, match="exists already"):
            sandbox.snapshot(name)
    for bad in ("", "-x", "a/b", "x" * 101):
        with pytest.raises(InvalidArgumentError, match="snapshot name"):
            get_snapshot(bad)
    with pytest.raises(SnapshotNotFoundError, match=name):  # the message lists the known ones
        get_snapshot("no-such-snapshot")
    with pytest.raises(InvalidArgumentError, match="differs from the runtime"):
        DockerSandbox("python-web", snapshot=name)


@pytest.mark.anyio
async def test_a_session_starts_from_a_snapshot_and_rolls_back_to_it(snapshot_names: list[str]) -> None:
    manager = SessionManager("python-minimal", name=unique())
    name = unique()
    snapshot_names.append(name)
    try:
        sandbox = await manager.get_or_create("alice")
        sandbox.write_file("notes.txt", "v1")  # on the session's disk
        sandbox.write_file("/uploads/in.bin", b"\x00" * 1000)
        snapshot = await sandbox.asnapshot(name)
        assert snapshot.volume_paths == ("/home/sandbox", "/uploads", "/workspace")  # the disk's paths

        sandbox.write_file("notes.txt", "v2")
        sandbox.execute("rm /uploads/in.bin; echo junk > junk.txt")
        restored = await manager.get_or_create("alice", snapshot=name)
        assert restored.read_file("notes.txt") == b"v1" and not restored.exists("junk.txt")
        assert restored.read_file("/uploads/in.bin") == b"\x00" * 1000
        assert restored.disk_name == sandbox.disk_name  # the same disk, rolled back

        # A snapshot of a session restored from a snapshot: what was deleted since stays deleted.
        later = unique()
        snapshot_names.append(later)
        restored.execute("rm notes.txt; echo v3 > other.txt")
        await restored.asnapshot(later)
        restored.write_file("notes.txt", "back?")
        restored = await manager.get_or_create("alice", snapshot=later)
        assert not restored.exists("notes.txt") and restored.read_file("other.txt") == b"v3\n"

        bob = await manager.get_or_create("bob", snapshot=snapshot)  # a new user, from alice's files
        assert bob.read_file("notes.txt") == b"v1"
        bob.write_file("notes.txt", "bob's")
        assert not restored.exists("notes.txt")
    finally:
        await manager.shutdown(keep_files=False)


@pytest.mark.anyio
async def test_a_session_on_volumes_keeps_them_as_files_and_rolls_back(snapshot_names: list[str]) -> None:
    """Without a disk (disk_size=None) a session's files are in two local named volumes: a snapshot
    copies them as files beside its image, a restore fills the emptied volumes from those, and a
    sandbox with a disk gets them unpacked onto it."""
    manager = SessionManager("python-minimal", name=unique(), disk_size=None)
    name = unique()
    snapshot_names.append(name)
    try:
        sandbox = await manager.get_or_create("alice")
        sandbox.write_file("notes.txt", "v1")
        sandbox.write_file("/uploads/in.txt", "data")
        snapshot = await sandbox.asnapshot(name)
        assert snapshot.volume_copies == ("/uploads", "/workspace") and snapshot.disk_file is None
        assert snapshot.files in snapshot_disk_sizes() and snapshot.size_bytes > 0
        sandbox.execute("rm /uploads/in.txt; echo v2 > notes.txt; echo junk > junk.txt")
        restored = await manager.get_or_create("alice", snapshot=name)
        assert restored.read_file("notes.txt") == b"v1" and not restored.exists("junk.txt")
        assert restored.read_file("/uploads/in.txt") == b"data"
        with DockerSandbox(snapshot=name, disk_size="32m") as on_disk:
            assert on_disk.read_file("notes.txt") == b"v1" and on_disk.read_file("/uploads/in.txt") == b"data"
    finally:
        await manager.shutdown(keep_files=False)


@pytest.mark.disk
def test_a_disk_is_kept_by_snapshots_and_forks_with_its_cap(snapshot_names: list[str]) -> None:
    """The disk (disk_size) is bind-mounted, which docker commit leaves out: a snapshot copies its
    work dir, /uploads and home, and what starts from it gets a disk of the same size with them."""
    name = unique()
    snapshot_names.append(name)
    with DockerSandbox("python-minimal", disk_size="64m") as sandbox:
        sandbox.write_file("work.txt", "in the work dir")
        sandbox.write_file("/uploads/up.txt", "uploaded")
        sandbox.execute("echo at home > ~/home.txt")
        snapshot = sandbox.snapshot(name)
        assert snapshot.disk_size == 64 * 2 ** 20
        assert set(snapshot.volume_paths) == {"/workspace", "/uploads", "/home/sandbox"}

        forks = sandbox.fork(2)
        try:
            for fork in forks:
                assert fork.disk_size == sandbox.disk_size and fork.disk_name != sandbox.disk_name
                assert fork.read_file("work.txt") == b"in the work dir"
                usage = fork.usage()
                assert usage.disk_limit_bytes is not None and 50 * 2 ** 20 < usage.disk_limit_bytes <= 64 * 2 ** 20
                # The cap holds in the fork: the disk fills, not the host.
                full = fork.execute("head -c 100m /dev/zero > big; echo $?")
                assert "No space left on device" in full.output, full.output
        finally:
            for fork in forks:
                fork.stop()

        sandbox.execute("rm work.txt ~/home.txt")
        sandbox.restore(name)
        assert sandbox.read_file("work.txt") == b"in the work dir"
        assert sandbox.execute("cat ~/home.txt /uploads/up.txt").output == "at home\nuploaded"
        assert sandbox.usage().disk_limit_bytes == usage.disk_limit_bytes

    with DockerSandbox(snapshot=name) as started:  # the source's size by default, its files on it
        assert started.disk_size == 64 * 2 ** 20
        assert started.read_file("work.txt") == b"in the work dir"
        assert started.execute("touch /etc/x").exit_code != 0  # the root is read-only, as with any disk
    with DockerSandbox(snapshot=name, disk_size=None) as uncapped:  # no disk: the files in its own layer
        assert uncapped.read_file("work.txt") == b"in the work dir" and uncapped.usage().disk_limit_bytes is None


def on_host(*names: str) -> list[str]:
    """What of the disks or snapshot disk files ``names`` is on this host (the engine's): loop
    devices, mounts, files."""
    paths = [disk_dir(name) for name in names]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout.splitlines()
    mounts = Path("/proc/mounts").read_text().splitlines()
    return ([f"loop device: {line}" for line in loops for path in paths if f"{path}.img" in line]
            + [f"mount: {line}" for line in mounts for path in paths if f" {path} " in line]
            + [found for path in paths for found in glob.glob(f"{path}.*") + glob.glob(path)])


KILLED_MID_DISK_COPY = """
import os, signal, time
from pydantic_deep import DockerSandbox
from pydantic_deep.engine.client import docker_client
from pydantic_deep.sandbox import snapshots
print(os.getpid(), flush=True)
sandbox = DockerSandbox("python-minimal", disk_size="32m").start()
copy = snapshots.copy_disk
def killed(*args, **kwargs):
    copy(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # the file made, its image not committed
snapshots.copy_disk = killed
docker_client().api.commit = lambda *args, **kwargs: time.sleep(60)  # beside the copy: never done
sandbox.snapshot("never-committed")
"""


@pytest.mark.disk
def test_a_disk_is_kept_as_a_file_that_delete_and_prune_leave_nothing_of(snapshot_names: list[str]) -> None:
    """A disk's snapshot is its file, copied (the image holds little); what starts from it has a
    copy, also unpacked into a named volume over one of its paths; delete, and prune after a
    process killed mid-snapshot, leave no image, file, loop device or mount."""
    name = unique()
    snapshot_names.append(name)
    volume = f"{unique('pd-test')}-uploads"
    with DockerSandbox("python-minimal", disk_size="64m") as sandbox:
        sandbox.write_file("a.txt", "old")
        sandbox.write_file("/uploads/u.txt", "uploaded")
        sandbox.execute("head -c 20m /dev/urandom > big.bin")
        snapshot = sandbox.snapshot(name)
        sandbox.write_file("a.txt", "new")
        assert snapshot.disk_file is not None
        assert dict(snapshot.disk_parts) == {"home": "/home/sandbox", "uploads": "/uploads", "work": "/workspace"}
        file_bytes, owner = snapshot_disk_sizes()[snapshot.disk_file]
        assert owner == "" and 20 * MB < file_bytes < 40 * MB  # sparse: what was written, not 64 MB
        # The size shown is the disk file and the image's layer, little (the root is read-only).
        assert file_bytes <= snapshot.size_bytes < file_bytes + MB
        with DockerSandbox(snapshot=name, volumes={volume: "/uploads"}) as started:
            assert started.read_file("a.txt") == b"old" and started.disk_size == 64 * MB
            assert started.read_file("/uploads/u.txt") == b"uploaded"  # in the named volume
            started_disk = started.disk_name
        docker_client().volumes.get(volume).remove()
        with pytest.raises(SandboxError, match="do not fit in a disk of 16777216 bytes: pass a larger disk_size"):
            DockerSandbox(snapshot=name, disk_size="16m").start()
        source_disk = sandbox.disk_name
    assert on_host(started_disk, source_disk) == []
    delete_snapshot(name)
    assert docker_client().api.images(all=True, filters={"label": f"pydantic-deep.snapshot={name}"}) == []
    assert on_host(f"snapshots/{snapshot.disk_file}") == []

    killed = subprocess.run([sys.executable, "-c", KILLED_MID_DISK_COPY], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    orphans = [file for file, (_bytes, owner) in snapshot_disk_sizes().items()
               if owner.endswith(f" {killed.stdout.strip()}")]
    assert len(orphans) == 1 and orphans[0].startswith("never-committed-")
    assert docker_client().api.images(filters={"label": "pydantic-deep.snapshot=never-committed"}) == []
    pruned = subprocess.run([*CLI, "prune"], capture_output=True, text=True, check=True).stdout
    assert "disk file(s) of failed or deleted snapshots" in pruned, pruned
    assert on_host(f"snapshots/{orphans[0]}") == []


def test_fork_gives_independent_copies(snapshot_names: list[str]) -> None:
    with DockerSandbox("python-minimal", memory="256m") as sandbox:
        sandbox.write_file("shared.txt", "base")
        forks = sandbox.fork(3)
        try:
            assert len({fork.container_id for fork in forks} | {sandbox.container_id}) == 4
            assert all(fork.memory == "256m" and fork.state is SandboxState.RUNNING for fork in forks)
            for index, fork in enumerate(forks):
                assert fork.read_file("shared.txt") == b"base"
                fork.write_file("shared.txt", f"fork {index}")
                fork.write_file(f"only-{index}.txt", "mine")
            sandbox.write_file("shared.txt", "source")
            for index, fork in enumerate(forks):
                assert fork.read_file("shared.txt") == f"fork {index}".encode()
                assert sorted(f.name for f in fork.list_files()) == sorted([f"only-{index}.txt", "shared.txt"])
            assert sorted(f.name for f in sandbox.list_files()) == ["shared.txt"]
            assert forks[0].name not in [s.source for s in list_snapshots()]  # a fork's image is not listed
        finally:
            for fork in forks:
                fork.stop()
        with pytest.raises(InvalidArgumentError, match="from 1 to 64"):
            sandbox.fork(0)
    assert forks[0].from_snapshot is not None
    fork_images = {image["Id"] for image in docker_client().api.images(all=True)}
    assert forks[0].from_snapshot.image not in fork_images  # removed with the last fork


NEW_PROCESS = """
import sys
from pydantic_deep import DockerSandbox, list_snapshots
assert sys.argv[1] in [s.name for s in list_snapshots()]
with DockerSandbox(snapshot=sys.argv[1]) as sandbox:
    print(sandbox.runtime.name, sandbox.read_file("state.txt").decode())
"""


def test_snapshots_survive_the_process_and_leave_nothing_after_delete_and_prune(snapshot_names: list[str]) -> None:
    name = unique()
    snapshot_names.append(name)
    with DockerSandbox("python-minimal", volumes={f"{unique('pd-test')}-work": "/workspace"}) as sandbox:
        sandbox.write_file("state.txt", "saved")
        sandbox.snapshot(name)
        volume = next(iter(sandbox.volumes))
    docker_client().volumes.get(volume).remove()
    started = subprocess.run([sys.executable, "-c", NEW_PROCESS, name], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "python-minimal saved"
    listed = subprocess.run([*CLI, "snapshots", "list"], capture_output=True, text=True, check=True).stdout
    assert name in listed

    # A snapshot that failed half-way (its process killed while copying) leaves a helper
    # container and a half-made image: prune removes them, never a named snapshot.
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_SNAPSHOT], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    owner = f"pydantic-deep.owner-pid={killed.stdout.strip()}"
    leftovers = docker_client().api.images(all=True, filters={"label": ["pydantic-deep.kind=snapshot-partial", owner]})
    helpers = docker_client().api.containers(all=True, filters={"label": ["pydantic-deep.kind=snapshot-helper", owner]})
    assert len(leftovers) == 1 and len(helpers) == 1
    pruned = subprocess.run([*CLI, "prune"], capture_output=True, text=True, check=True).stdout
    assert "image(s) of failed snapshots" in pruned
    assert {i["Id"] for i in leftovers} & {i["Id"] for i in docker_client().api.images(all=True)} == set()
    assert {c["Id"] for c in helpers} & {c["Id"] for c in docker_client().api.containers(all=True)} == set()
    assert get_snapshot(name).name == name  # a named snapshot survives prune

    image = get_snapshot(name).image
    subprocess.run([*CLI, "snapshots", "delete", name], check=True, capture_output=True)
    assert docker_client().api.images(all=True, filters={"label": f"pydantic-deep.snapshot={name}"}) == []
    assert image not in {i["Id"] for i in docker_client().api.images(all=True)}
    assert docker_client().api.containers(all=True, filters={"label": f"pydantic-deep.from-snapshot={name}"}) == []
    with pytest.raises(SnapshotNotFoundError):
        delete_snapshot(name)


KILLED_MID_SNAPSHOT = """
import os, signal
from pydantic_deep import DockerSandbox
from pydantic_deep.engine.client import docker_client
print(os.getpid(), flush=True)
sandbox = DockerSandbox("python-minimal").start()
sandbox.volumes = {"pd-test-never-mounted": "/workspace"}  # copied like a volume: a two-step snapshot
def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
docker_client().api.put_archive = killed
sandbox.snapshot("never-finished")
"""


def test_a_snapshot_in_use_is_not_deleted(snapshot_names: list[str]) -> None:
    name = unique()
    snapshot_names.append(name)
    with DockerSandbox("python-minimal") as sandbox:
        sandbox.snapshot(name)
    with DockerSandbox(snapshot=name) as started:
        assert started.from_snapshot is not None and started.from_snapshot.name == name
        with pytest.raises(SandboxStateError, match="stop them first"):
            delete_snapshot(name)
    delete_snapshot(name)


@pytest.mark.anyio
async def test_idle_sessions_pause_before_they_stop() -> None:
    manager = SessionManager("python-minimal", default_idle_timeout=3600, name=unique(), pause_after=0.2)
    try:
        sandbox = await manager.get_or_create("carol")
        never = await manager.get_or_create("dave", pause_after=float("inf"))
        await sandbox.aexecute("echo used")
        await never.aexecute("echo used")
        deadline = time.monotonic() + 30
        while sandbox.state is not SandboxState.PAUSED:
            await manager.cleanup_idle()
            assert time.monotonic() < deadline, "the idle session was not paused"
            await asyncio.sleep(0.1)
        states = {info.user_id: info.state for info in await manager.list_sessions()}
        assert states == {"carol": "paused", "dave": "running"}
        monitor = SessionMonitor(manager, interval=3600)  # the dashboard's table shows it too
        try:
            assert {row["user"]: row["state"] for row in await asyncio.to_thread(monitor.sessions)} == states
        finally:
            monitor.close()
        assert sandbox.state is SandboxState.PAUSED  # looking does not resume it
        assert await manager.get_or_create("carol") is sandbox  # handed back paused...
        assert (await sandbox.aexecute("echo back")).stdout == "back\n"  # ...and resumed by its next call
        assert {info.user_id: info.state for info in await manager.list_sessions()}["carol"] == "running"
        with pytest.raises(InvalidArgumentError, match="pause_after"):
            SessionManager("python-minimal", name=unique(), pause_after=-1)
    finally:
        await manager.shutdown(keep_files=False)


@pytest.fixture(scope="module")
def ip() -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "pydantic_deep")
    yield shell
    shell.run_line_magic("unload_ext", "pydantic_deep")


def test_notebook_magics_pause_snapshot_restore_and_fork(ip: InteractiveShell, snapshot_names: list[str]) -> None:
    name = unique()
    snapshot_names.append(name)
    magics: SandboxMagics = ip.magics_manager.registry["SandboxMagics"]
    magics.runtime = "python-minimal"
    try:
        ip.run_cell_magic("sandbox", "-s snap", "x = 1\nopen('f.txt', 'w').write('kept')")
        ip.run_line_magic("sandbox", "pause -s snap")
        assert magics.sandboxes["snap"].state is SandboxState.PAUSED
        with capture_output() as resumed:
            ip.run_cell_magic("sandbox", "-s snap", "x + 1")
        assert [output.data for output in resumed.outputs] == [{"text/plain": "2"}]

        ip.run_line_magic("sandbox", f"snapshot {name} -s snap")
        ip.run_cell_magic("sandbox", "-s snap --shell", "echo changed > f.txt")
        ip.run_line_magic("sandbox", f"restore {name} -s snap")
        with capture_output() as restored:
            ip.run_cell_magic("sandbox", "-s snap", "print(open('f.txt').read())")
        assert restored.stdout == "kept\n"

        ip.run_line_magic("sandbox", "fork 2 -s snap")
        ip.run_cell_magic("sandbox", "-s snap-fork1 --shell", "echo one > f.txt")
        with capture_output() as forked:
            ip.run_cell_magic("sandbox", "-s snap-fork2", "print(open('f.txt').read())")
        assert forked.stdout == "kept\n"
        with pytest.raises(UsageError, match="usage: %sandbox fork N"):
            ip.run_line_magic("sandbox", "fork many -s snap")
    finally:
        for sandbox_name in ("snap", "snap-fork1", "snap-fork2"):
            magics.stop(sandbox_name)


PAUSED_THEN_KILLED = """
import asyncio, os, signal, sys
from pydantic_deep import SessionManager
async def main():
    manager = SessionManager("python-minimal", name=sys.argv[1], pause_after=0, warm=0)  # reaped: test_warm
    sandbox = await manager.get_or_create("erin")
    print(sandbox.execute("setsid sleep 1000 >/dev/null 2>&1 & echo $!").stdout.strip(), flush=True)
    assert await manager.pause_idle() == 1
    os.kill(os.getpid(), signal.SIGKILL)
asyncio.run(main())
"""


@pytest.mark.anyio
async def test_a_paused_session_of_a_killed_process_is_adopted_with_its_processes() -> None:
    name = unique()
    killed = subprocess.run([sys.executable, "-c", PAUSED_THEN_KILLED, name], capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == -9, killed.stderr
    successor = SessionManager("python-minimal", name=name)
    try:
        assert await successor.recover() == (1, 0)
        sandbox = await successor.get_or_create("erin")
        assert (await sandbox.aexecute(f"kill -0 {killed.stdout.strip()} && echo alive")).stdout == "alive\n"
    finally:
        await successor.shutdown(keep_files=False)
