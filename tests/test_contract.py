"""The sandbox contract (SandboxBase), run against every backend: DockerSandbox and LocalSandbox.

Each test here runs once per backend. What a backend must do is what SandboxBase says; a test that
passes for one backend and not the other is a broken promise of the contract.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import poll_until

import pydantic_deep
from pydantic_deep import (
    DockerSandbox,
    ExecuteResult,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    LocalSandbox,
    OutputChunk,
    PathOutsideSandboxError,
    ResourceUsage,
    SandboxBase,
    SandboxError,
    SandboxFileNotFoundError,
    SandboxState,
    SandboxStateError,
    errors,
    open_sandbox,
)

pytestmark = pytest.mark.contract

BACKENDS: list[type[SandboxBase]] = [DockerSandbox, LocalSandbox]
IDS = ["docker", "local"]


@pytest.fixture(params=BACKENDS, ids=IDS)
def backend(request: pytest.FixtureRequest) -> type[SandboxBase]:
    """A backend class, for tests that follow one sandbox through its life."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module", params=BACKENDS, ids=IDS)
def box(request: pytest.FixtureRequest) -> Iterator[SandboxBase]:
    """A running sandbox of each backend, shared by the module's tests."""
    with request.param("python-minimal") as running:
        yield running


# -- the contract itself -----------------------------------------------------------------------

def test_a_backend_that_forgets_a_method_cannot_be_made() -> None:
    class Forgetful(SandboxBase):
        def start(self) -> Forgetful:
            return self

    with pytest.raises(TypeError, match="abstract methods.*execute"):
        Forgetful()  # type: ignore[abstract]
    assert issubclass(DockerSandbox, SandboxBase) and issubclass(LocalSandbox, SandboxBase)


def test_open_sandbox_returns_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYDANTIC_DEEP_BACKEND", raising=False)
    for name in ("docker", "local"):
        sandbox = open_sandbox("python-minimal", backend=name)  # type: ignore[arg-type]
        assert isinstance(sandbox, SandboxBase) and sandbox.state is SandboxState.NEW


# -- life cycle --------------------------------------------------------------------------------

def test_with_runs_then_stops_and_stop_twice_is_harmless(backend: type[SandboxBase]) -> None:
    sandbox = backend("python-minimal")
    assert sandbox.state is SandboxState.NEW and not sandbox.alive and sandbox.container_id is None
    sandbox.stop()  # before start: nothing to do
    assert sandbox.state is SandboxState.NEW
    with sandbox as entered:
        assert entered is sandbox and sandbox.state is SandboxState.RUNNING and sandbox.alive
        assert sandbox.has_python and sandbox.container_id
        assert sandbox.start() is sandbox  # running: a no-op
    assert sandbox.state is SandboxState.STOPPED and not sandbox.alive
    sandbox.stop()
    assert sandbox.state is SandboxState.STOPPED
    for call in (lambda: sandbox.execute("true"), sandbox.usage, lambda: sandbox.read_file("x"),
                 lambda: sandbox.write_file("x", "y"), lambda: sandbox.exists("x"), sandbox.list_files):
        with pytest.raises(SandboxStateError, match="stopped"):
            call()
    try:  # start() after stop() runs a fresh one
        assert sandbox.start().state is SandboxState.RUNNING
        assert sandbox.execute("echo again").output == "again\n"
    finally:
        sandbox.stop()
    assert sandbox.state is SandboxState.STOPPED


def test_first_use_starts_a_new_sandbox(backend: type[SandboxBase]) -> None:
    sandbox = backend("python-minimal")
    try:
        assert sandbox.execute("echo lazy").output == "lazy\n"
        assert sandbox.state is SandboxState.RUNNING
    finally:
        sandbox.stop()


def test_async_with_and_every_async_twin(backend: type[SandboxBase], tmp_path: Path) -> None:
    async def scenario() -> SandboxBase:
        async with backend("python-minimal") as sandbox:
            assert sandbox.state is SandboxState.RUNNING and sandbox.alive
            results = await asyncio.gather(*(sandbox.aexecute(f"echo {i}") for i in range(3)))
            assert [r.output for r in results] == ["0\n", "1\n", "2\n"]
            stream = sandbox.astream("echo one; echo two >&2")
            chunks = [chunk async for chunk in stream]
            assert "".join(c.text for c in chunks if c.stream == "stdout") == "one\n"
            assert stream.result.exit_code == 0 and stream.result.stderr == "two\n"
            assert await sandbox.awrite_file("a.txt", "A") == f"{sandbox.work_dir}/a.txt"
            assert await sandbox.aread_file("a.txt") == b"A" and await sandbox.aexists("a.txt")
            assert "a.txt" in [e.name for e in await sandbox.alist_files(".")]
            assert await sandbox.aupload(b"B", "/uploads/b.txt") == "/uploads/b.txt"
            assert (await sandbox.adownload("/uploads/b.txt", tmp_path / "b.txt")).read_bytes() == b"B"
            assert isinstance(await sandbox.ausage(), ResourceUsage)
            seen: list[OutputChunk] = []
            process = await sandbox.aspawn("echo spawned", on_output=seen.append)
            await asyncio.to_thread(poll_until, lambda: process.finished, "the spawned process to finish")
            assert "".join(c.text for c in seen) == "spawned\n"
        return sandbox

    sandbox = asyncio.run(scenario())
    assert sandbox.state is SandboxState.STOPPED
    asyncio.run(sandbox.astop())  # twice is harmless
    with pytest.raises(SandboxStateError):
        asyncio.run(sandbox.aexecute("true"))


# -- commands ----------------------------------------------------------------------------------

def test_execute(box: SandboxBase) -> None:
    result = box.execute("echo out; echo err >&2; pwd; exit 3")
    assert isinstance(result, ExecuteResult) and result.exit_code == 3
    assert result.stdout.splitlines()[0] == "out" and result.stderr == "err\n"
    assert result.stdout.splitlines()[1].endswith(box.work_dir)  # a local sandbox maps it into its directory
    timed = box.execute("sleep 30", timeout=0.5)
    assert timed.timed_out and timed.exit_code == 137
    chunks: list[OutputChunk] = []
    box.execute("echo streamed", on_output=chunks.append)
    assert chunks == [OutputChunk("stdout", "streamed\n")]


def test_bad_commands_are_refused_before_anything_runs(box: SandboxBase) -> None:
    box.execute("rm -f ran")
    with pytest.raises(InvalidArgumentError, match="NUL"):
        box.execute("touch ran\0")
    with pytest.raises(InvalidArgumentError, match="timeout"):
        box.execute("touch ran", timeout=-1)
    with pytest.raises(InvalidArgumentTypeError):
        box.execute(b"touch ran")  # type: ignore[arg-type]
    assert not box.exists("ran")


def test_busy_while_in_use_then_idle(box: SandboxBase) -> None:
    busy_inside: list[bool] = []
    box.execute("echo x", on_output=lambda _: busy_inside.append(box.busy))
    assert busy_inside == [True] and not box.busy
    idle = box.idle_seconds
    poll_until(lambda: box.idle_seconds > idle, "the sandbox to be idle again")
    box.exists("anything")
    assert box.idle_seconds < 5


def test_usage(box: SandboxBase) -> None:
    usage = box.usage()
    assert isinstance(usage, ResourceUsage) and usage.memory_bytes > 0 and usage.cpu_seconds >= 0


def test_spawn(box: SandboxBase) -> None:
    seen: list[str] = []
    process = box.spawn("cat", on_output=lambda chunk: seen.append(chunk.text))
    try:
        process.write(b"hello\n")
        poll_until(lambda: "".join(seen) == "hello\n", "the spawned process's output")
        assert not process.finished
        process.close_stdin()
        poll_until(lambda: process.finished, "the spawned process to finish")
    finally:
        if not process.finished:
            process.signal(9)


def test_many_threads_share_one_sandbox(box: SandboxBase) -> None:
    outputs: list[str] = []
    threads = [threading.Thread(target=lambda i=i: outputs.append(box.execute(f"echo {i}").output))
               for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outputs) == ["0\n", "1\n", "2\n", "3\n"]


# -- files -------------------------------------------------------------------------------------

def test_files(box: SandboxBase, tmp_path: Path) -> None:
    box.execute('rm -rf files "${PYDANTIC_DEEP_UPLOADS:-/uploads}"/*')
    assert box.write_file("files/deep/note.txt", "héllo") == f"{box.work_dir}/files/deep/note.txt"
    assert box.read_file(f"{box.work_dir}/files/deep/note.txt") == "héllo".encode()
    assert box.exists("files/deep") and box.exists("files/deep/note.txt") and not box.exists("files/none")
    [entry] = box.list_files("files/deep")
    assert (entry.name, entry.path, entry.size, entry.is_dir) == (
        "note.txt", f"{box.work_dir}/files/deep/note.txt", 6, False)
    assert [(e.name, e.is_dir) for e in box.list_files("files")] == [("deep", True)]
    host = tmp_path / "data.csv"
    host.write_bytes(b"x,y\n")
    assert box.upload(host) == "/uploads/data.csv"
    assert box.upload(host, "files/") == f"{box.work_dir}/files/data.csv"
    assert box.upload(b"raw", "/uploads/raw.bin") == "/uploads/raw.bin"
    assert box.download("/uploads/raw.bin", tmp_path / "raw.bin").read_bytes() == b"raw"
    assert box.read_file("/uploads/data.csv") == b"x,y\n"
    box.write_file("files/deep/note.txt", b"replaced")
    assert box.read_file("files/deep/note.txt") == b"replaced"


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.txt", "/uploads/../etc/hosts", "/tmp/x"])
def test_paths_outside_are_refused(box: SandboxBase, path: str) -> None:
    for call in (lambda: box.read_file(path), lambda: box.write_file(path, "x"), lambda: box.exists(path),
                 lambda: box.list_files(path)):
        with pytest.raises(PathOutsideSandboxError):
            call()


def test_symlinks_out_are_refused(box: SandboxBase, tmp_path: Path) -> None:
    box.execute("rm -f leak; ln -s /etc/passwd leak")
    with pytest.raises(PathOutsideSandboxError):
        box.read_file("leak")
    with pytest.raises(PathOutsideSandboxError):
        box.download("leak", tmp_path / "leak")
    assert not (tmp_path / "leak").exists()


def test_file_errors(box: SandboxBase, tmp_path: Path) -> None:
    box.execute("rm -rf errs; mkdir -p errs/dir; echo x > errs/file")
    with pytest.raises(SandboxFileNotFoundError):
        box.read_file("errs/missing")
    with pytest.raises(SandboxFileNotFoundError):
        box.download("errs/missing", tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    with pytest.raises(SandboxFileNotFoundError):
        box.list_files("errs/missing")
    with pytest.raises(IsADirectoryError):
        box.read_file("errs/dir")
    with pytest.raises(IsADirectoryError):
        box.write_file("errs/dir", "x")
    with pytest.raises(NotADirectoryError):
        box.write_file("errs/file/below", "x")
    with pytest.raises(NotADirectoryError):
        box.list_files("errs/file")
    with pytest.raises(InvalidArgumentError, match="needs dest"):
        box.upload(b"bytes")
    with pytest.raises(InvalidArgumentError, match="NUL"):
        box.write_file("errs/a\0b", "x")
    with pytest.raises(FileNotFoundError):
        box.upload(tmp_path / "not-on-the-host")
    assert sorted(e.name for e in box.list_files("errs")) == ["dir", "file"]  # nothing was changed
    assert box.read_file("errs/file") == b"x\n"


# -- arguments and errors ----------------------------------------------------------------------

@pytest.mark.parametrize("options", [{"command_timeout": 0}, {"command_timeout": "10"}, {"max_output": 0},
                                     {"runtime": 42}, {"runtime": "no-such-runtime"}])
def test_bad_arguments_of_every_backend(backend: type[SandboxBase], options: dict[str, object]) -> None:
    with pytest.raises((InvalidArgumentError, pydantic_deep.UnknownRuntimeError)):
        backend(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(("options", "message"), [
    ({"memory": "lots"}, "memory must be a size like '512m'"),
    ({"memory": "1k"}, "memory must be at least 6m"),
    ({"memory": 2.5}, "memory must be a size"),
    ({"tmp_size": "0"}, "tmp_size must be positive"),
    ({"max_file_size": "big"}, "max_file_size must be a size"),
    ({"disk_size": "huge"}, "disk_size must be a size"),
    ({"cpus": 0}, "cpus must be a positive number"),
    ({"cpus": float("nan")}, "cpus must be a positive number"),
    ({"cpus": "2"}, "cpus must be a number"),
    ({"pids_limit": 0}, "pids_limit must be at least 1"),
    ({"pids_limit": 1.5}, "pids_limit must be a whole number"),
    ({"user": "root"}, "user must be numeric 'uid' or 'uid:gid'"),
    ({"user": "1000:x"}, "user must be numeric"),
    ({"user": 1000}, "user must be a str"),
    ({"volumes": {"bad name": "/data"}}, "'bad name' is not a volume name"),
    ({"volumes": {"data": "relative"}}, "must be mounted at an absolute path"),
])
def test_bad_docker_arguments_name_the_argument(options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as caught:
        DockerSandbox("python-minimal", **options)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)  # callers that caught ValueError still do


@pytest.mark.parametrize(("options", "message"), [
    ({"default_idle_timeout": 0}, "default_idle_timeout must be a positive number"),
    ({"default_idle_timeout": "1h"}, "default_idle_timeout must be a number"),
    ({"max_sessions": 0}, "max_sessions must be at least 1"),
    ({"pool_size": -1}, "pool_size must be at least 0"),
    ({"pool_size": 1.0}, "pool_size must be a whole number"),
    ({"orphans": "eat"}, "orphans must be 'adopt' or 'reap'"),
    ({"name": "My App"}, "manager name 'My App' must be"),
])
def test_bad_session_manager_arguments(options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        pydantic_deep.SessionManager(**options)  # type: ignore[arg-type]


def test_every_error_is_in_errors_exported_and_drawn() -> None:
    classes = {name: value for name, value in vars(errors).items()
               if isinstance(value, type) and issubclass(value, SandboxError)}
    assert set(classes) == set(errors.__all__)
    for name, cls in classes.items():
        assert getattr(pydantic_deep, name) is cls and name in pydantic_deep.__all__
        assert re.search(rf"\b{name}\b", errors.__doc__ or ""), f"{name} is not in the tree of errors.py"
    from pydantic_deep.execution.channel import ChannelClosedError
    from pydantic_deep.notebook.interpreter import CellError
    from pydantic_deep.sessions.manager import SessionLimitError

    assert (ChannelClosedError, CellError, SessionLimitError) == (
        errors.ChannelClosedError, errors.CellError, errors.SessionLimitError)
