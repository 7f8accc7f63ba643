"""Faults: nothing lost, nothing leaked.

The Docker engine crashes and restarts while sessions run commands (on a private engine: the
shared one is never touched); the host process is SIGKILLed in the middle of an image build and
of an upload; a container is killed or removed from outside in the middle of a command or a file
transfer. Each time, calls fail fast with one clear error, no half-made image or file is ever
taken for a whole one, and sessions come back with their files.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import poll_until
from private_engine import PrivateEngine, image_with_ancestors

from pydantic_deep import ContainerGoneError, DockerSandbox, RuntimeConfig, SessionManager
from pydantic_deep.engine.client import docker_client
from pydantic_deep.engine.containers import remove_container
from pydantic_deep.images.bases import MINBASE
from pydantic_deep.images.builder import image_exists, image_lock
from pydantic_deep.images.certs import resolve_ca_bundle
from pydantic_deep.images.runtime import ensure_runtime_image, runtime_image_tag
from pydantic_deep.runtimes import get_runtime

pytestmark = pytest.mark.adversarial

HERE = Path(__file__).parent


def unique_name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


class Child:
    """A Python child process that reports JSON lines or plain lines on stdout and takes cues on stdin."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen([sys.executable, *argv], env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def line(self, timeout: float = 120) -> str:
        """The next line the child prints (fails the test when it ends or stays silent)."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the child printed nothing for {timeout:.0f} s; its stderr:\n{self.stderr()}")
        if line is None:
            pytest.fail(f"the child ended (exit {self.process.wait()}); its stderr:\n{self.stderr()}")
        return line

    def report(self, event: str, timeout: float = 120) -> dict[str, Any]:
        reported: dict[str, Any] = json.loads(self.line(timeout))
        assert reported["event"] == event, reported
        return reported

    def cue(self, word: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(word + "\n")
        self.process.stdin.flush()

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-4000:]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._stderr.close()


# -- the engine crashes and restarts ----------------------------------------------------------


@pytest.fixture(scope="module")
def private_engine() -> Iterator[PrivateEngine]:
    """A dockerd of its own with the python-minimal image, to crash at will; always removed."""
    runtime_image = ensure_runtime_image(docker_client(), get_runtime("python-minimal"),
                                         ca_bundle=resolve_ca_bundle(None))
    began = time.monotonic()
    engine = PrivateEngine()
    try:
        engine.start()
        started = time.monotonic()
        engine.load(image_with_ancestors(docker_client(), runtime_image))
        loaded = time.monotonic()
        print(f"\nprivate engine: started in {started - began:.1f} s, images loaded in {loaded - started:.1f} s")
        yield engine
    finally:
        closing = time.monotonic()
        engine.close()
        print(f"\nprivate engine: removed in {time.monotonic() - closing:.1f} s")
    assert not engine.root.exists()


def test_engine_crash_fails_calls_fast_and_sessions_come_back_with_their_files(
        private_engine: PrivateEngine) -> None:
    child = Child([str(HERE / "engine_restart_client.py"), unique_name()],
                  env={**os.environ, "DOCKER_HOST": private_engine.address})
    try:
        assert child.report("running", timeout=180)["started"] == ["alice", "bob", "plain"]
        private_engine.kill()
        child.cue("killed")
        down = child.report("down")
        private_engine.start()
        child.cue("restarted")
        up = child.report("up", timeout=180)
        assert child.process.wait(60) == 0, child.stderr()
    finally:
        child.close()
    print_outcomes("the engine crashed", down["in_flight"] + down["calls"])
    print_outcomes("the engine came back", up["calls"])

    # Down: the three running commands and every new call fail with one clear error.
    for call in down["in_flight"] + down["calls"]:
        assert call["error"] == "DockerUnavailableError", call
        assert call["message"].startswith(f"Lost the Docker engine at {private_engine.address} ("), call
        assert "stopped, or crashed" in call["message"], call
    # Up: the sessions are back, in new containers, with their files; the plain sandbox says its
    # container is gone.
    alice_notes, alice_execute, bob_data, carol, plain = up["calls"]
    assert alice_notes["error"] is None and alice_notes["message"] == repr(b"alice's notes")
    assert alice_execute["error"] is None and "alice's notes\\nsandbox\\n" in alice_execute["message"]
    assert bob_data["error"] is None and bob_data["message"] == repr(b"a,b\n1,2\n")
    assert carol["error"] is None
    assert plain["error"] == "ContainerGoneError" and "is gone" in plain["message"]
    assert up["replaced"] == [True, True]
    # And nothing is left in the engine: the dead containers and every volume went with shutdown().
    # (A container the engine is still removing, as it does those of the child's ended lifelines,
    # is listed until it is gone: the low-level list does not inspect each, which would fail on it.)
    client = private_engine.client()
    poll_until(lambda: client.api.containers(all=True) == [] and client.volumes.list() == [],
               lambda: f"an empty engine; it holds {client.api.containers(all=True)} and {client.volumes.list()}",
               timeout=30)


def print_outcomes(title: str, calls: list[dict[str, Any]]) -> None:
    print(f"\n{title}:")
    for call in calls:
        print(f"  {call['call']:<48} {call['seconds']:>7.3f} s  {call['error'] or 'ok'}: {call['message'][:90]}")


# -- the host process is killed mid-build and mid-upload --------------------------------------

BUILD = """
import sys
from pydantic_deep import RuntimeConfig
from pydantic_deep.engine.client import docker_client
from pydantic_deep.images.runtime import ensure_runtime_image

runtime = RuntimeConfig.model_validate_json(sys.argv[1])
ensure_runtime_image(docker_client(), runtime, progress=lambda line: print(line, flush=True))
print("built", flush=True)
"""


def test_a_build_killed_midway_tags_nothing_holds_no_lock_and_a_later_build_succeeds() -> None:
    # The setup step runs long enough to be killed in; its marker makes this build's tag unique.
    runtime = RuntimeConfig(name="test-fault-build", base_image=MINBASE.tag,
                            setup_commands=[f"sleep 8 && echo {uuid.uuid4().hex} > /marker"])
    client = docker_client()
    tag = runtime_image_tag(runtime, client.images.get(MINBASE.tag).id, None)
    child = Child(["-c", BUILD, runtime.model_dump_json()])
    try:
        while "Running in" not in (line := child.line()):  # the setup step's container runs
            pass
        step_container = line.split("Running in")[1].strip()
        os.kill(child.process.pid, signal.SIGKILL)
        assert child.process.wait() == -signal.SIGKILL
    finally:
        child.close()
    try:
        # The engine cancels a build whose client went away and removes the step's container.
        poll_until(lambda: not client.containers.list(all=True, filters={"id": step_container}),
                   "the killed build's step container is removed")
        assert not image_exists(client, tag), "a killed build must not tag its image"
        acquired = threading.Event()
        threading.Thread(target=hold_briefly, args=(tag, acquired), daemon=True).start()
        assert acquired.wait(30), f"the build lock of {tag} is still held by the killed process"
        assert ensure_runtime_image(client, runtime) == tag and image_exists(client, tag)
    finally:
        if image_exists(client, tag):
            client.images.remove(tag, noprune=True)  # its base's layers are shared caches


def hold_briefly(tag: str, acquired: threading.Event) -> None:
    """Take the build lock of ``tag`` (in a thread of its own: a lock still held blocks it)."""
    with image_lock(tag):
        acquired.set()


UPLOAD = """
import sys
from pydantic_deep import DockerSandbox

sandbox = DockerSandbox("python-minimal", remove_on_exit=False).start()  # outlives this process
sandbox.write_file("/uploads/big.bin", "the old content")
print(sandbox.container_id, flush=True)
sandbox.upload(sys.argv[1], "/uploads/big.bin")
print("uploaded", flush=True)
"""


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """256 MB, long enough in transfer to be interrupted."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    with path.open("wb") as handle:
        for _ in range(256):
            handle.write(os.urandom(1024 * 1024))
    return path


def upload_under_way(sandbox: DockerSandbox, name: str) -> bool:
    """An upload to ``/uploads/<name>`` has written its first megabyte (under its own name, or the
    file API's temporary one)."""
    found = sandbox.execute(f"find /uploads -maxdepth 1 \\( -name '*{name}*' -o -name '.pydantic-deep-part-*' \\) "
                            "-size +1M")
    return found.output.strip() != ""


def test_an_upload_killed_midway_leaves_the_old_file_never_a_truncated_one(big_file: Path) -> None:
    child = Child(["-c", UPLOAD, str(big_file)])
    container_id = child.line()
    try:
        watcher = DockerSandbox.attach(container_id)  # remove_on_exit=False: stop() removes it
        poll_until(lambda: upload_under_way(watcher, "big.bin"), "the upload is under way")
        os.kill(child.process.pid, signal.SIGKILL)
        assert child.process.wait() == -signal.SIGKILL
        child.close()
        assert watcher.read_file("/uploads/big.bin") == b"the old content"
        visible = [entry.name for entry in watcher.list_files("/uploads") if not entry.name.startswith(".")]
        assert visible == ["big.bin"]
        # A later upload of the same file goes through whole.
        watcher.upload(big_file, "/uploads/big.bin")
        assert watcher.execute("stat -c %s /uploads/big.bin").output == f"{big_file.stat().st_size}\n"
        watcher.stop()
    finally:
        child.close()
        remove_container(docker_client(), container_id)  # the child's: it outlives the child


# -- a container is killed or removed from outside --------------------------------------------


@pytest.fixture
async def manager() -> AsyncIterator[SessionManager]:
    running = SessionManager("python-minimal", name=unique_name())
    yield running
    await running.shutdown(keep_files=False)


def docker_kill(container_id: str | None) -> None:
    docker_client().api.kill(container_id)


def docker_rm(container_id: str | None) -> None:
    docker_client().api.remove_container(container_id, force=True)


@pytest.mark.anyio
@pytest.mark.parametrize("fault", [docker_kill, docker_rm], ids=["docker kill", "docker rm -f"])
async def test_a_command_running_when_its_container_dies_fails_clearly_and_the_session_recovers(
        manager: SessionManager, fault: Callable[[str | None], None]) -> None:
    sandbox = await manager.get_or_create("dora")
    await sandbox.awrite_file("kept.txt", "kept")
    started = asyncio.Event()
    loop = asyncio.get_running_loop()
    running = asyncio.ensure_future(sandbox.aexecute(
        "echo started; exec sleep 600",
        on_output=lambda chunk: loop.call_soon_threadsafe(started.set)))
    await asyncio.wait_for(started.wait(), 60)
    fault(sandbox.container_id)
    with pytest.raises(ContainerGoneError, match="is gone"):
        await asyncio.wait_for(running, 60)
    # The next calls on that sandbox say the same, whatever they are.
    with pytest.raises(ContainerGoneError):
        await sandbox.aexecute("echo hi")
    with pytest.raises(ContainerGoneError):
        await sandbox.aread_file("kept.txt")
    with pytest.raises(ContainerGoneError):
        await sandbox.awrite_file("new.txt", "x")
    back = await manager.get_or_create("dora")
    assert back.container_id != sandbox.container_id
    assert await back.aread_file("kept.txt") == b"kept"


@pytest.mark.anyio
async def test_an_upload_when_its_container_is_removed_fails_clearly_and_leaves_no_file(
        manager: SessionManager, big_file: Path) -> None:
    sandbox = await manager.get_or_create("emil")
    await sandbox.awrite_file("/uploads/kept.txt", "kept")
    upload = asyncio.ensure_future(sandbox.aupload(big_file))
    await asyncio.to_thread(poll_until, lambda: upload_under_way(sandbox, big_file.name),
                            "the upload is under way")
    docker_rm(sandbox.container_id)
    with pytest.raises(ContainerGoneError, match="is gone"):
        await asyncio.wait_for(upload, 60)
    back = await manager.get_or_create("emil")
    assert await back.aread_file("/uploads/kept.txt") == b"kept"
    assert not await back.aexists(f"/uploads/{big_file.name}")


def test_a_download_when_its_container_is_removed_is_whole_or_fails_clearly(big_file: Path, tmp_path: Path) -> None:
    dest = tmp_path / "back.bin"
    partial = tmp_path / "back.bin.part"  # where download() writes until the file is whole
    outcome: list[Path | BaseException] = []
    with DockerSandbox("python-minimal") as sandbox:
        sandbox.upload(big_file)
        sandbox_path = f"/uploads/{big_file.name}"
        download = threading.Thread(target=lambda: outcome.append(attempt(sandbox.download, sandbox_path, dest)))
        download.start()
        poll_until(lambda: partial.exists() and partial.stat().st_size > 1 << 20, "the download is under way")
        docker_rm(sandbox.container_id)
        download.join(60)
    [result] = outcome
    print(f"\ndownload when its container was removed: {result!r}")
    # The engine may finish sending what it started; either way no part is taken for the whole.
    if isinstance(result, BaseException):
        assert isinstance(result, ContainerGoneError), result
        assert not dest.exists()
    else:
        assert dest.stat().st_size == big_file.stat().st_size
    assert not partial.exists()


def attempt(function: Any, *args: Any) -> Any:
    """What ``function(*args)`` returned, or raised."""
    try:
        return function(*args)
    except BaseException as exc:
        return exc
