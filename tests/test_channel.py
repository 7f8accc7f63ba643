"""The execution channel against real containers: concurrency, streaming, recovery, fallback."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import platform
import subprocess
import sys
import weakref
from typing import Any

import pytest
from helpers import dial_in_sockets, poll_until

from pydantic_deep import DockerSandbox, OutputChunk, RuntimeConfig, SandboxError
from pydantic_deep.engine.client import docker_client
from pydantic_deep.engine.dial_in_dirs import make_dial_in_dir, remove_dial_in_dir, sweep_dial_in_dirs
from pydantic_deep.execution import channel as channel_module
from pydantic_deep.execution.channel import ChannelClosedError, DockerExecChannel, SupervisorChannel
from pydantic_deep.execution.dial_in import DialIn
from pydantic_deep.sandbox import docker as sandbox_module


def test_commands_go_through_the_supervisor_not_docker_exec(sandbox: DockerSandbox) -> None:
    assert isinstance(sandbox._channel, SupervisorChannel)
    # One exec session (the supervisor's) serves every command.
    execs_before = len(_inspect(sandbox)["ExecIDs"] or [])
    for _ in range(20):
        assert sandbox.execute("true").exit_code == 0
    assert len(_inspect(sandbox)["ExecIDs"] or []) == execs_before


@pytest.mark.anyio
async def test_twenty_commands_run_at_once_in_one_sandbox(sandbox: DockerSandbox) -> None:
    # Each command records when it started and ended; overlap proves they ran together.
    command = "s=$(date +%s%N); sleep 1; e=$(date +%s%N); echo $s $e"
    results = await asyncio.gather(*(sandbox.aexecute(command) for _ in range(20)))
    spans = [tuple(map(int, r.output.split())) for r in results]
    assert all(r.exit_code == 0 for r in results)
    assert max(start for start, _ in spans) < min(end for _, end in spans)


def test_output_streams_to_a_callback_as_it_is_produced(sandbox: DockerSandbox) -> None:
    chunks: list[OutputChunk] = []
    # The command waits for proof that its first line was delivered before it writes the second.
    result = sandbox.execute(
        "echo first; while [ ! -e seen ]; do sleep 0.01; done; echo second >&2; rm seen",
        timeout=20,
        on_output=lambda chunk: (chunks.append(chunk), chunk.text == "first\n" and sandbox_touch(sandbox)),
    )
    assert chunks == [OutputChunk("stdout", "first\n"), OutputChunk("stderr", "second\n")]
    assert result.exit_code == 0 and result.stdout == "first\n" and result.stderr == "second\n"


def sandbox_touch(sandbox: DockerSandbox) -> None:
    # Called from the channel's reader thread while the command still runs.
    sandbox.write_file("seen", b"")


@pytest.mark.anyio
async def test_async_stream_yields_chunks_then_the_result(sandbox: DockerSandbox) -> None:
    stream = sandbox.astream("for i in 1 2 3; do echo line $i; done; printf '\\303'; printf '\\251\\n'; exit 3")
    with pytest.raises(RuntimeError, match="iterate"):
        _ = stream.result
    texts = [chunk.text async for chunk in stream]
    assert "".join(texts) == "line 1\nline 2\nline 3\n\u00e9\n"  # a character split across chunks
    assert stream.result.exit_code == 3 and stream.result.output == "".join(texts)


@pytest.mark.anyio
async def test_cancelling_a_command_kills_its_process_group(sandbox: DockerSandbox) -> None:
    task = asyncio.ensure_future(sandbox.aexecute("sleep 300 & echo $! > cancel.pid; sleep 300"))
    await asyncio.to_thread(poll_until, lambda: sandbox.exists("cancel.pid"), "the command wrote its pid")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    wait_gone = "pid=$(cat cancel.pid); while kill -0 $pid 2>/dev/null; do sleep 0.01; done; echo gone"
    result = await sandbox.aexecute(wait_gone, timeout=10)
    assert result.output == "gone\n"


def test_background_process_outlives_its_command(sandbox: DockerSandbox) -> None:
    # Like starting a server with `&`: the command returns at once, the process keeps running and
    # its later output does not block it.
    result = sandbox.execute("(while true; do echo tick; sleep 0.01; done) & echo $! > ticker.pid; echo started",
                             timeout=10)
    assert "started" in result.output.splitlines() and set(result.output.splitlines()) <= {"tick", "started"}
    assert result.exit_code == 0
    assert sandbox.execute("kill -0 $(cat ticker.pid) && kill $(cat ticker.pid) && echo alive").output == "alive\n"


def test_a_dead_channel_is_reopened_and_the_interrupted_command_fails_clearly(sandbox: DockerSandbox) -> None:
    first = sandbox._channel
    with pytest.raises(SandboxError, match="channel closed while the command ran"):
        sandbox.execute("kill -9 $PPID; sleep 30", timeout=20)  # $PPID: the supervisor
    assert sandbox.execute("echo back").output == "back\n"
    assert sandbox._channel is not first and sandbox.alive


def test_a_frozen_supervisor_never_hangs_the_caller(sandbox: DockerSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channel_module, "_GRACE", 0.5)  # instead of 30 s past the command's timeout
    with pytest.raises(ChannelClosedError, match="did not answer within 2 s"):
        sandbox.execute("kill -STOP $PPID; sleep 10", timeout=1.5)
    assert sandbox.execute("echo recovered").output == "recovered\n"
    # The frozen supervisor was killed, not left behind.
    processes = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done 2>/dev/null"
    supervisors = sandbox.execute(f"{processes} | grep -c '^[^ ]*python3 .*/opt/pydantic-deep/supervisor.py'")
    assert supervisors.output == "1\n"
    assert sandbox.execute(f"{processes} | grep -c '^sleep 10'").output == "0\n"  # its command too


@pytest.mark.anyio
async def test_a_frozen_supervisor_never_hangs_an_async_caller(sandbox: DockerSandbox,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channel_module, "_GRACE", 0.5)
    with pytest.raises(ChannelClosedError, match="did not answer within 2 s"):
        await sandbox.aexecute("kill -STOP $PPID; sleep 10", timeout=1.5)
    assert (await sandbox.aexecute("echo recovered")).output == "recovered\n"


@pytest.mark.anyio
async def test_answers_that_come_while_the_loop_is_busy_wake_it_once(sandbox: DockerSandbox,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    wakeups: list[object] = []
    call_soon_threadsafe = loop.call_soon_threadsafe

    def counted(callback: Any, *args: Any, **kwargs: Any) -> Any:
        wakeups.append(callback)
        return call_soon_threadsafe(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counted)
    commands = [asyncio.create_task(sandbox.aexecute(f"echo {i}")) for i in range(20)]
    await asyncio.sleep(0)  # each task has sent its command and waits: only this loop can end it
    channel = sandbox._channel
    assert isinstance(channel, SupervisorChannel) and not any(command.done() for command in commands)
    # The loop stays busy (this wait holds it) until every answer is in.
    poll_until(lambda: not channel._pending, "the twenty answers", timeout=30)
    results = await asyncio.gather(*commands)
    assert [r.output for r in results] == [f"{i}\n" for i in range(20)]
    assert len(wakeups) == 1, wakeups


def test_an_event_loop_that_ran_commands_is_not_kept_after_it_ends(sandbox: DockerSandbox) -> None:
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def one() -> str:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        return (await sandbox.aexecute("echo hi")).output

    assert asyncio.run(one()) == "hi\n"
    gc.collect()
    assert loops[0]() is None


def test_image_without_python_or_node_falls_back_to_exec_and_says_so_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox_module, "_exec_fallback_logged", set())  # as in a fresh process
    bare = RuntimeConfig(name="test-bare-minbase", image="pydantic-deep/debian:bookworm-minbase")
    with caplog.at_level(logging.WARNING, logger="pydantic_deep.sandbox.docker"):
        with DockerSandbox(bare) as first, DockerSandbox(bare) as second:
            assert isinstance(first._channel, DockerExecChannel) and first.supervisor is None
            assert first.execute("expr 6 \\* 7").output == "42\n"
            assert second.execute("echo $((6*7))").output == "42\n"
            chunks: list[OutputChunk] = []
            assert second.execute("echo streamed", on_output=chunks.append).exit_code == 0
            assert chunks == [OutputChunk("stdout", "streamed\n")]
    messages = [r.getMessage() for r in caplog.records if "docker exec" in r.getMessage()]
    assert len(messages) == 1 and "it has neither python3 nor node" in messages[0]


def test_node_images_get_the_supervisor_channel() -> None:
    with DockerSandbox("node-minimal") as box:
        assert isinstance(box._channel, SupervisorChannel) and box.supervisor == "node" and not box.has_python
        assert box.execute("node -e 'console.log(6*7)'").output == "42\n"
        assert not _inspect(box)["ExecIDs"]  # its supervisor dialled in: no docker exec at all


def test_supervisor_is_not_visible_as_a_user_file(sandbox: DockerSandbox) -> None:
    # It lives outside the work dir and /uploads, read-only for the sandbox user.
    assert sandbox.execute("stat -c '%U %a' /opt/pydantic-deep/supervisor.py").output == "root 644\n"
    assert sandbox.execute("echo x > /opt/pydantic-deep/supervisor.py").exit_code != 0


def _inspect(sandbox: DockerSandbox) -> dict:
    return docker_client().api.inspect_container(sandbox.container_id)


def test_a_new_sandbox_s_supervisor_dials_in_and_nothing_can_dial_in_after_it() -> None:
    with DockerSandbox(runtime="python-minimal") as box:
        # Started with the container (a child of its init, pid 1), not by a docker exec.
        assert not _inspect(box)["ExecIDs"] and _supervisor_parent(box) == "1\n"
        dial = "import socket; socket.socket(socket.AF_UNIX).connect('/run/pydantic-deep-channel.sock')"
        assert "ConnectionRefusedError" in box.execute(f'python3 -c "{dial}"').output
        # No longer listened on, the socket stays while the container does: the engine's archive
        # calls (docker cp) mount every bind mount's source again.
        chunks, _ = docker_client().api.get_archive(box.container_id, "/etc/hostname")
        assert b"".join(chunks)
        with pytest.raises(SandboxError, match="channel closed"):  # the next channel is a docker exec's
            box.execute("kill -9 $PPID", timeout=5)
        assert box.execute("echo back").output == "back\n" and _supervisor_parent(box) == "0\n"
    assert dial_in_sockets() == []  # removed with the container


def test_a_supervisor_that_does_not_dial_in_gets_its_channel_from_docker_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_module, "_DIAL_IN_TIMEOUT", 0.5)
    monkeypatch.setattr(DialIn, "entrypoint", lambda self, main: ["sh", "-c", main])  # no supervisor starts
    with DockerSandbox(runtime="python-minimal") as box:
        assert box.execute("echo hi").output == "hi\n" and _inspect(box)["ExecIDs"]
        assert box.image not in sandbox_module._no_dial_in  # the next container is waited for again
    assert dial_in_sockets() == []


def _supervisor_parent(sandbox: DockerSandbox) -> str:
    """The parent pid of the supervisor (its commands' parent), in the container's pid namespace:
    1 when it started with the container, 0 (outside it) when a docker exec started it."""
    return sandbox.execute("cut -d' ' -f4 /proc/$PPID/stat").output


_SCHED_ATTR_RUNTIME = r"""
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
def runtime(pid):  # sched_getattr(2): sched_runtime is a fair task's time slice (Linux 6.12+)
    attr = ctypes.create_string_buffer(48)
    assert libc.syscall(315, pid, attr, 48, 0) == 0, ctypes.get_errno()
    return struct.unpack("=IIQiIQQQ", attr.raw)[5]
print(runtime(os.getppid()), runtime(0))
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="sched_getattr's number here is x86-64's")
def test_the_supervisor_asks_for_short_time_slices_and_commands_get_the_default(sandbox: DockerSandbox) -> None:
    # `exec`: the command's process is the supervisor's own child, so its parent is the supervisor.
    sandbox.write_file("/workspace/slices.py", _SCHED_ATTR_RUNTIME)
    result = sandbox.execute("exec python3 /workspace/slices.py")
    assert result.exit_code == 0, result.output
    supervisor, command = map(int, result.output.split())
    if command == 0:
        pytest.skip("this kernel does not report time slices (Linux before 6.12)")
    assert supervisor == 100_000  # the supervisor's _SLICE_NS
    assert command > supervisor  # SCHED_FLAG_RESET_ON_FORK: the default, not the supervisor's


def test_a_sweep_takes_dial_in_directories_of_ended_processes_and_leaves_live_ones() -> None:
    client = docker_client()
    made = subprocess.run([sys.executable, "-c", "from pydantic_deep.engine.client import docker_client; "
                           "from pydantic_deep.engine.dial_in_dirs import make_dial_in_dir; "
                           "print(make_dial_in_dir(docker_client()))"], capture_output=True, text=True, check=True)
    orphaned = made.stdout.strip()  # its process ended before any container named it
    assert os.path.isdir(orphaned)
    mine = make_dial_in_dir(client)  # this process's, as if its container were being created
    try:
        sweep_dial_in_dirs(client)
        assert not os.path.exists(orphaned)
        assert os.path.isdir(mine)
    finally:
        for path in (orphaned, mine):
            remove_dial_in_dir(os.path.basename(path))
