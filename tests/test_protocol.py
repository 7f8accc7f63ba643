"""One conformance suite for every supervisor: frames in, frames out, the same behaviour.

Each test runs against the Python supervisor (``_guest/supervisor.py``) and its Node.js twin
(``supervisor.js``), both as a local subprocess fed through pipes and inside a real container
(python-minimal, node-minimal) through ``docker exec -i``, the way the channel starts them; the
Node.js one with each of its ways to fork (the forker program, the perl forker, Node.js's own). A
behaviour one supervisor has and the other lacks fails here, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import poll_until

from pydantic_deep import BUILTIN_RUNTIMES, DockerSandbox
from pydantic_deep._guest import supervisor as protocol
from pydantic_deep.images import forker
from pydantic_deep.images.prepare import FORKER_PATH, supervisor_command

pytestmark = pytest.mark.protocol

GUEST = Path(protocol.__file__).parent
LOCAL = {"python": [sys.executable, "-I", "-S", str(GUEST / "supervisor.py")],
         "node": ["node", str(GUEST / "supervisor.js")]}
RUNTIMES = {"python": "python-minimal", "node": "node-minimal"}
# node-local: the perl forker (no forker program beside the package's supervisor.js); -program: the
# forker program beside a copy of it; -spawner: as where there is no forker (Node.js spawns the
# shells); node-minimal: the forker program, -perl: the perl forker in the same container.
SUPERVISORS = ["python-local", "node-local", "node-local-program", "node-local-spawner", "python-minimal",
               "node-minimal", "node-minimal-perl"]
NO_FORKER = "PYDANTIC_DEEP_FORKER=off"
PERL_FORKER = "PYDANTIC_DEEP_FORKER=perl"
TIMEOUT = 30  # seconds any one frame may take to come


@dataclass
class Exit:
    """One command's frames, from RUN to EXIT."""

    stdout: bytes = b""
    stderr: bytes = b""
    status: dict = field(default_factory=dict)


class Driver:
    """A supervisor started with ``argv``, spoken to in frames over its standard streams."""

    def __init__(self, argv: list[str], kind: str) -> None:
        self.kind = kind
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.frames: queue.Queue[tuple[int, int, bytes] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        kind_, _, hello = self.read()
        assert kind_ == protocol.HELLO
        self.hello = json.loads(hello)

    def _read(self) -> None:
        assert self.process.stdout is not None
        stream = self.process.stdout

        def read_exactly(size: int) -> bytes:
            data = b""
            while len(data) < size and (chunk := stream.read(size - len(data))):
                data += chunk
            return data

        try:
            while len(header := read_exactly(protocol.HEADER.size)) == protocol.HEADER.size:
                kind, request_id, length = protocol.HEADER.unpack(header)
                self.frames.put((kind, request_id, read_exactly(length)))
        finally:
            self.frames.put(None)

    def write(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)

    def send(self, kind: int, request_id: int, payload: bytes | dict = b"") -> None:
        data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        self.write(protocol.HEADER.pack(kind, request_id, len(data)) + data)

    def run(self, request_id: int, command: str, *, timeout: float | None = 20, max_output: int | None = 100_000,
            stdin: bool = False) -> None:
        self.send(protocol.RUN, request_id,
                  {"command": command, "timeout": timeout, "max_output": max_output, "stdin": stdin})

    def read(self) -> tuple[int, int, bytes]:
        frame = self.frames.get(timeout=TIMEOUT)
        assert frame is not None, "the supervisor's stream ended"
        return frame

    def until_exit(self, request_id: int) -> Exit:
        result = Exit()
        while True:
            kind, rid, payload = self.read()
            assert rid == request_id, (kind, rid, payload)
            if kind == protocol.EXIT:
                result.status = json.loads(payload)
                return result
            assert kind in (protocol.STDOUT, protocol.STDERR), (kind, payload)
            if kind == protocol.STDOUT:
                result.stdout += payload
            else:
                result.stderr += payload

    def execute(self, request_id: int, command: str, **options: object) -> Exit:
        self.run(request_id, command, **options)  # type: ignore[arg-type]
        return self.until_exit(request_id)

    def ended(self) -> bool:
        """Whether the stream ends (with nothing else on it) within TIMEOUT."""
        return self.frames.get(timeout=TIMEOUT) is None

    def close(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()  # the supervisor kills what runs and exits
        return self.process.wait(timeout=TIMEOUT)


@pytest.fixture(scope="module")
def boxes() -> Iterator[dict[str, DockerSandbox]]:
    """The containers of this module, one per runtime, started when a test first needs one."""
    started: dict[str, DockerSandbox] = {}
    try:
        yield started
    finally:
        for box in started.values():
            box.stop()


def box_for(boxes: dict[str, DockerSandbox], runtime: str) -> DockerSandbox:
    if runtime not in boxes:
        boxes[runtime] = DockerSandbox(runtime).start()
    return boxes[runtime]


def in_container(box: DockerSandbox, *, perl_forker: bool = False) -> list[str]:
    """What starts ``box``'s own supervisor through ``docker exec -i`` (with the perl forker, if asked)."""
    command = supervisor_command(box._python, box._node)
    assert command is not None
    return ["docker", "exec", "-i", *(["-e", PERL_FORKER] if perl_forker else []), box.container_id or "", *command]


def supervisor_beside(directory: Path, forker: bytes) -> list[str]:
    """supervisor.js copied into ``directory``, with ``forker`` as the forker program beside it."""
    directory.mkdir(exist_ok=True)
    shutil.copy(GUEST / "supervisor.js", directory / "supervisor.js")
    (directory / "forker").write_bytes(forker)
    (directory / "forker").chmod(0o755)
    return ["node", str(directory / "supervisor.js")]


@pytest.fixture(scope="module")
def program_supervisor(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    program = forker._built()
    if program is None:
        pytest.fail("the forker program cannot be built here (cc, libc6-dev): scripts/setup installs them")
    return supervisor_beside(tmp_path_factory.mktemp("program"), program)


@pytest.fixture(params=SUPERVISORS)
def driver(request: pytest.FixtureRequest, boxes: dict[str, DockerSandbox]) -> Iterator[Driver]:
    kind, where = request.param.split("-", 1)
    if where.startswith("local"):
        if shutil.which(LOCAL[kind][0]) is None:
            pytest.fail(f"{LOCAL[kind][0]} is missing on this machine: scripts/setup installs it")
        argv = {"local": LOCAL[kind], "local-spawner": ["env", NO_FORKER, *LOCAL[kind]]}.get(where) \
            or request.getfixturevalue("program_supervisor")
    else:
        box = box_for(boxes, RUNTIMES[kind])
        assert box.supervisor == ("python3" if kind == "python" else "node")  # what the sandbox itself runs
        argv = in_container(box, perl_forker=where.endswith("-perl"))
    running = Driver(argv, kind)
    running.where = where  # type: ignore[attr-defined]
    running.box = None if where.startswith("local") else box_for(boxes, RUNTIMES[kind])  # type: ignore[attr-defined]
    try:
        yield running
    finally:
        if running.process.poll() is None:
            assert running.close() == 0


# -- frames and exit codes ------------------------------------------------------------------------


def test_hello_names_the_protocol_version_and_the_supervisor(driver: Driver) -> None:
    assert driver.hello["version"] == protocol.VERSION and isinstance(driver.hello["pid"], int)
    assert set(driver.hello) == {"version", "pid", "python" if driver.kind == "python" else "node"}


def test_exit_codes_and_deaths_by_signal(driver: Driver) -> None:
    for request_id, (command, code) in enumerate([("true", 0), ("exit 3", 3), ("kill -TERM $$", 143),
                                                   ("kill -KILL $$", 137), ("nonexistent-cmd", 127)], 1):
        status = driver.execute(request_id, command).status
        assert status == {"exit_code": code, "timed_out": False, "dropped": 0, "oom_killed": False}, command


def test_stdout_and_stderr_stay_apart_and_are_real_pipes(driver: Driver) -> None:
    # A socket in their place would make `> /dev/stderr` fail (ENXIO): scripts use it all the time.
    result = driver.execute(1, "echo out; echo err >&2; echo out2 > /dev/stdout; echo err2 > /dev/stderr; "
                               "[ -p /dev/stdout ] && [ -p /dev/stderr ] && echo pipes; cat /dev/stdin")
    assert (result.stdout, result.stderr, result.status["exit_code"]) == (b"out\nout2\npipes\n", b"err\nerr2\n", 0)


def test_commands_get_a_plain_shell(driver: Driver) -> None:
    # sh -c with no arguments; SIGPIPE at its default (`yes | head` ends quietly); only SIGXFSZ
    # ignored (see the next test); the same for a command long enough to skip the waiting shell.
    probe = 'echo "$0 $#"; yes | head -1; grep SigIgn /proc/self/status'
    for request_id, command in enumerate((probe, probe + "   #" + "x" * 2000), 1):
        arguments, first, ignored = driver.execute(request_id, command).stdout.decode().splitlines()
        assert (arguments, first) == ("sh 0", "y")
        # Signals 1-31 only: C libraries keep 32 and up (real-time signals) for themselves.
        assert int(ignored.split()[1], 16) & 0x7FFFFFFF == 1 << (signal.SIGXFSZ - 1), ignored


def test_a_write_past_the_file_size_limit_fails_with_a_message(driver: Driver) -> None:
    result = driver.execute(1, 'cd "$(mktemp -d)" && ulimit -f 1 && head -c 5000 /dev/zero > big; '
                               'echo status=$?; stat -c %s big; rm -r "$PWD"')
    status, size = result.stdout.decode().split()
    assert status == "status=1" and int(size) < 5000 and b"File too large" in result.stderr


def test_partial_frames_and_frames_sent_together(driver: Driver) -> None:
    one = json.dumps({"command": "echo one", "timeout": 10, "max_output": 100}).encode()
    frame = protocol.HEADER.pack(protocol.RUN, 1, len(one)) + one
    for index in range(len(frame)):  # a byte at a time: a header, then a payload, cut anywhere
        driver.write(frame[index:index + 1])
        time.sleep(0.001)
    assert driver.until_exit(1).stdout == b"one\n"
    frames = b"".join(protocol.HEADER.pack(protocol.RUN, rid, len(payload)) + payload for rid, payload in (
        (2, json.dumps({"command": "echo two", "timeout": 10, "max_output": 100}).encode()),
        (3, json.dumps({"command": "sleep 0.2; echo three", "timeout": 10, "max_output": 100}).encode())))
    driver.write(frames[:-3])
    driver.write(frames[-3:])
    assert driver.until_exit(2).stdout == b"two\n"
    assert driver.until_exit(3).stdout == b"three\n"


def test_long_commands_and_refused_ones(driver: Driver) -> None:
    assert driver.execute(1, "echo " + "x" * 5000, max_output=None).stdout == b"x" * 5000 + b"\n"
    driver.send(protocol.RUN, 2, {"command": "echo a\0b", "timeout": 10, "max_output": 100})
    kind, rid, payload = driver.read()
    assert (kind, rid) == (protocol.ERROR, 2) and "NUL" in json.loads(payload)["message"]
    driver.send(protocol.RUN, 3, {"timeout": 10, "max_output": 100})
    kind, rid, payload = driver.read()
    assert (kind, rid) == (protocol.ERROR, 3) and json.loads(payload)["message"].startswith("cannot run the command")
    assert driver.execute(4, "echo still here").stdout == b"still here\n"  # one bad command fails alone


@pytest.mark.parametrize("spelling", ["ascii", "utf-8", "indented", "slashes escaped", "an unknown key"])
def test_a_command_reads_the_same_in_any_json_spelling(driver: Driver, spelling: str) -> None:
    # The Node.js supervisor's forker program reads the commonest commands itself (not JSON.parse).
    text = 'é中😀 "q" \\ a/b\t.'
    spec: dict[str, object] = {"command": "printf '%s\\n' " + shlex.quote(text), "timeout": 10.5, "max_output": None,
                               "stdin": None}
    if spelling == "an unknown key":
        spec["later"] = [1, {"x": None}]
    payload = {"utf-8": json.dumps(spec, ensure_ascii=False), "indented": json.dumps(spec, indent=1),
               "slashes escaped": json.dumps(spec).replace("/", "\\/")}.get(spelling, json.dumps(spec))
    driver.send(protocol.RUN, 1, payload.encode())
    result = driver.until_exit(1)
    assert (result.stdout.decode(), result.status["exit_code"]) == (text + "\n", 0)
    driver.send(protocol.RUN, 2, b'{"command": "echo \\ud800", "timeout": 10, "max_output": 100}')
    kind, rid, error = driver.read()
    assert (kind, rid) == (protocol.ERROR, 2) and "surrogate" in json.loads(error)["message"]


# -- stdin and signals ----------------------------------------------------------------------------


def test_stdin_frames_feed_the_command(driver: Driver) -> None:
    driver.run(1, "tr a-z A-Z", stdin=True)
    driver.send(protocol.STDIN, 1, b"hello ")
    driver.send(protocol.STDIN, 1, b"world\n")
    driver.send(protocol.STDIN, 1, b"")  # closes stdin
    result = driver.until_exit(1)
    assert (result.stdout, result.status["exit_code"]) == (b"HELLO WORLD\n", 0)


def test_signal_frame_reaches_the_process_group(driver: Driver) -> None:
    command = "trap 'echo got INT; exit 5' INT; echo ready; while :; do sleep 0.01; done"
    driver.run(2, command)
    assert driver.read() == (protocol.STDOUT, 2, b"ready\n")
    driver.send(protocol.SIGNAL, 2, {"signal": int(signal.SIGINT)})
    result = driver.until_exit(2)
    assert result.stdout == b"got INT\n" and result.status["exit_code"] == 5


# -- limits ---------------------------------------------------------------------------------------


def test_output_budget_applies_inside_the_supervisor(driver: Driver) -> None:
    result = driver.execute(1, "head -c 5000 /dev/zero; echo tail >&2", max_output=10)
    assert result.stdout == b"\0" * 10 and result.stderr == b""
    assert result.status == {"exit_code": 0, "timed_out": False, "dropped": 4995, "oom_killed": False}
    assert len(driver.execute(2, "head -c 3000000 /dev/zero", max_output=None).stdout) == 3_000_000


def test_timeout_kills_the_whole_process_group(driver: Driver) -> None:
    result = driver.execute(1, "sleep 300 & echo $!; sleep 300", timeout=0.5)
    assert result.status == {"exit_code": 137, "timed_out": True, "dropped": 0, "oom_killed": False}
    pid = int(result.stdout)
    wait_gone = f"while kill -0 {pid} 2>/dev/null; do sleep 0.01; done; echo gone"
    assert driver.execute(2, wait_gone, timeout=10).stdout == b"gone\n"


def test_concurrent_commands_interleave(driver: Driver) -> None:
    # The slow one is sent first and waits for a file that the quick ones create: only commands
    # that run at the same time can finish this way.
    marker = f"/tmp/pd-protocol-{os.getpid()}-{driver.kind}"
    driver.run(1, f"while [ ! -e {marker} ]; do sleep 0.01; done; rm {marker}; echo slow")
    for rid in range(2, 12):
        driver.run(rid, f"echo quick{rid}")
    driver.run(12, f"touch {marker}")
    stdout: dict[int, bytes] = {}
    exits: list[int] = []
    while len(exits) < 12:
        kind, rid, payload = driver.read()
        if kind == protocol.EXIT:
            exits.append(rid)
        else:
            stdout[rid] = stdout.get(rid, b"") + payload
    assert stdout[1] == b"slow\n"
    assert all(stdout[rid] == f"quick{rid}\n".encode() for rid in range(2, 12))


def test_background_output_is_discarded_and_never_blocks(driver: Driver) -> None:
    started = driver.execute(1, "(while :; do echo tick; done) & echo $!")
    [pid] = [int(line) for line in started.stdout.split() if line.isdigit()]
    assert started.status["exit_code"] == 0
    # The ticker writes on, more than any pipe holds; nothing of request 1 comes after its EXIT.
    result = driver.execute(2, f"head -c 300000 /dev/zero > /dev/null; kill {pid}; echo done")
    assert result.stdout == b"done\n"


# -- the supervisor's own life ------------------------------------------------------------------


def test_closing_the_stream_kills_what_runs_and_ends_the_supervisor(driver: Driver) -> None:
    result = driver.execute(1, "true")
    assert result.status["exit_code"] == 0
    driver.run(2, "sleep 300 & echo $!; wait")
    kind, _, payload = driver.read()
    pid = int(payload)
    assert driver.close() == 0
    check = f"kill -0 {pid} 2>/dev/null && echo alive || echo gone"
    deadline = time.monotonic() + TIMEOUT
    while _shell(driver, check) != "gone\n":
        assert time.monotonic() < deadline, "the command outlived its supervisor's stream"
        time.sleep(0.05)


def test_a_supervisor_killed_mid_command_ends_the_stream(driver: Driver) -> None:
    driver.run(1, "echo started; sleep 10")
    assert driver.read() == (protocol.STDOUT, 1, b"started\n")
    driver.run(2, "kill -9 $PPID")  # $PPID: the supervisor
    assert driver.ended()  # no EXIT for either command: the host fails them
    assert driver.process.wait(timeout=TIMEOUT) != 0


def _shell(driver: Driver, command: str) -> str:
    """``command``'s output, run where the driver's supervisor runs (not through it)."""
    box = driver.box  # type: ignore[attr-defined]
    if box is None:
        return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout
    return box.execute(command).output


# -- out of memory, in real containers ------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES.values())
def test_out_of_memory_is_reported(runtime: str) -> None:
    # Pure shell, so the same in every image: a command substitution holds 400 MB in the shell.
    hog = "x=$(head -c 400000000 /dev/zero | tr '\\0' x); echo survived"
    with DockerSandbox(runtime, memory="256m") as box:
        assert box.supervisor is not None
        result = box.execute(hog, timeout=60)
        assert (result.oom_killed, result.exit_code) == (True, 137), result
        after = box.execute("echo fine")
        assert (after.output, after.oom_killed) == ("fine\n", False)


@pytest.mark.parametrize("supervisor", ["python-minimal", "node-minimal", "node-minimal-perl"])
def test_out_of_memory_is_told_to_the_command_it_killed_not_to_one_beside_it(supervisor: str) -> None:
    # A command with stdin runs in a shell of the supervisor's own, one without in the forker's
    # (Node.js): each order of the two, so that each side learns of the other's commands.
    hog = "x=$(head -c 400000000 /dev/zero | tr '\\0' x); echo survived"
    kind = supervisor.split("-")[0]
    with DockerSandbox(RUNTIMES[kind], memory="256m") as box:
        driver = Driver(in_container(box, perl_forker=supervisor.endswith("-perl")), kind)
        try:
            # The first waits for its stdin to end, or (without one) for a file.
            waits = {1: "cat >/dev/null", 3: "until [ -e /tmp/hog-done ]; do sleep 0.05; done"}
            for first, second in ((1, 2), (3, 4)):
                driver.run(first, f"echo started; {waits[first]}; sleep 0.2", stdin=first == 1, timeout=60)
                assert driver.read() == (protocol.STDOUT, first, b"started\n")
                driver.run(second, hog, stdin=second == 4, timeout=60)
                assert driver.until_exit(second).status == {
                    "exit_code": 137, "timed_out": False, "dropped": 0, "oom_killed": True}
                if first == 1:
                    driver.send(protocol.STDIN, first, b"")
                else:
                    box.execute("touch /tmp/hog-done")
                assert driver.until_exit(first).status == {
                    "exit_code": 0, "timed_out": False, "dropped": 0, "oom_killed": False}
        finally:
            assert driver.close() == 0


def test_the_users_node_options_reach_commands_not_the_supervisor() -> None:
    # NODE_OPTIONS could make Node.js load code, or refuse to start: the supervisor runs without it.
    runtime = BUILTIN_RUNTIMES["node-minimal"].model_copy(
        update={"name": "test-node-options", "env_vars": {"NODE_OPTIONS": "--require /nonexistent.js"}})
    with DockerSandbox(runtime) as box:
        assert box.supervisor == "node"
        result = box.execute("echo \"$NODE_OPTIONS\"; env | grep -c PYDANTIC_DEEP")
        assert result.output == "--require /nonexistent.js\n0\n"


# -- terminals ------------------------------------------------------------------------------------


def _terminal_output(driver: Driver, request_id: int, expected: bytes) -> bytes:
    """The terminal's output up to and including ``expected`` (its EXIT fails the test)."""
    seen = b""
    while expected not in seen:
        kind, rid, payload = driver.read()
        assert (kind, rid) == (protocol.STDOUT, request_id), (kind, rid, payload, seen)
        seen += payload
    return seen


def _terminal_exit(driver: Driver, request_id: int) -> dict:
    while True:
        kind, rid, payload = driver.read()
        assert rid == request_id and kind in (protocol.STDOUT, protocol.EXIT), (kind, rid, payload)
        if kind == protocol.EXIT:
            return json.loads(payload)


def test_a_terminal_is_a_pty_of_its_size_that_follows_resizes(driver: Driver) -> None:
    driver.send(protocol.TERMINAL, 1, {"command": None, "cols": 80, "rows": 24})
    driver.send(protocol.TERMINAL_INPUT, 1, b"stty size; tty; echo \"term=${TERM:+set}\"\n")
    seen = _terminal_output(driver, 1, b"term=set")
    assert b"24 80\r\n/dev/pts/" in seen  # \r\n: the pty's line discipline, not a pipe
    driver.send(protocol.TERMINAL_RESIZE, 1, {"cols": 100, "rows": 30})
    driver.send(protocol.TERMINAL_INPUT, 1, b"stty size\n")
    _terminal_output(driver, 1, b"30 100")
    driver.send(protocol.TERMINAL_INPUT, 1, b"exit 3\n")
    assert _terminal_exit(driver, 1) == {"exit_code": 3, "timed_out": False, "dropped": 0, "oom_killed": False}
    assert driver.execute(2, "echo still here").stdout == b"still here\n"


def test_ctrl_c_in_a_terminal_interrupts_the_foreground_process_only(driver: Driver) -> None:
    driver.send(protocol.TERMINAL, 1, {"command": "sh -i", "cols": 80, "rows": 24})
    # "ready" (not in the echo of the line typed) comes once the job runs in the foreground.
    driver.send(protocol.TERMINAL_INPUT, 1, b"sh -c 'echo rea\"\"dy; exec sleep 100'\n")
    _terminal_output(driver, 1, b"ready")
    driver.send(protocol.TERMINAL_INPUT, 1, b"\x03")
    _terminal_output(driver, 1, b"^C")
    driver.send(protocol.TERMINAL_INPUT, 1, b"echo status=$?\n")
    _terminal_output(driver, 1, b"status=130\r\n")  # the shell lives on, and saw sleep die of SIGINT
    driver.send(protocol.TERMINAL_CLOSE, 1)
    assert _terminal_exit(driver, 1)["exit_code"] == 128 + signal.SIGKILL


def test_closing_a_terminal_kills_its_whole_session(driver: Driver) -> None:
    driver.send(protocol.TERMINAL, 2, {"command": "echo second; exec cat", "cols": 80, "rows": 24})
    _terminal_output(driver, 2, b"second\r\n")
    driver.send(protocol.TERMINAL, 1, {"command": None, "cols": 80, "rows": 24})
    driver.send(protocol.TERMINAL_INPUT, 1, b"sleep 300 & echo \"pid=<$!>\"\n")
    pid = int(re.findall(rb"pid=<(\d+)>", _terminal_output(driver, 1, b">\r\n"))[0])
    driver.send(protocol.TERMINAL_CLOSE, 1)
    assert _terminal_exit(driver, 1)["exit_code"] == 128 + signal.SIGKILL
    # Killed, then reaped by init (a zombie still answers `kill -0`).
    running = f"grep -qs '^State:.*[RSD]' /proc/{pid}/status && echo running || echo gone"
    poll_until(lambda: _shell(driver, running) == "gone\n", f"the terminal's background job {pid} is gone",
               timeout=TIMEOUT)
    driver.send(protocol.TERMINAL_INPUT, 2, b"typed\n")  # the other terminal lives on
    _terminal_output(driver, 2, b"typed\r\ntyped\r\n")  # the echo, then cat's copy


def test_a_terminal_of_a_bad_size_is_refused(driver: Driver) -> None:
    driver.send(protocol.TERMINAL, 1, {"command": None, "cols": 0, "rows": 24})
    kind, rid, payload = driver.read()
    assert (kind, rid) == (protocol.ERROR, 1) and "size" in json.loads(payload)["message"]


# -- ports: streams to TCP ports on the supervisor's loopback (issue 15) -------------------------

# A server for the port tests, as each supervisor's language writes it: it prints its port, then per
# connection reads a first line; "blast N" gets N bytes and the end, anything else is echoed (the
# line too) until the client's end, which it answers with its own.
PORT_SERVERS = {
    "python": """python3 -u -c '
import socket, threading
def serve(c):
    line = b""
    while not line.endswith(b"\\n"):
        byte = c.recv(1)
        if not byte:
            break
        line += byte
    if line.startswith(b"blast "):
        c.sendall(b"x" * int(line.split()[1]))
    else:
        c.sendall(line)
        while True:
            data = c.recv(65536)
            if not data:
                break
            c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    c.close()
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(64)
print(s.getsockname()[1])
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
'""",
    "node": """node -e '
require("net").createServer({ allowHalfOpen: true }, (s) => {
  let head = Buffer.alloc(0), mode = null;
  s.on("data", (d) => {
    if (mode === "echo") return void s.write(d);
    head = Buffer.concat([head, d]);
    const end = head.indexOf(10);
    if (end < 0) return;
    const line = head.subarray(0, end).toString();
    mode = line.startsWith("blast ") ? "blast" : "echo";
    if (mode === "blast") s.end(Buffer.alloc(Number(line.split(" ")[1]), "x"));
    else s.write(head);
  });
  s.on("end", () => { if (mode !== "blast") s.end(); });
  s.on("error", () => {});
}).listen(0, "127.0.0.1", function () { console.log(this.address().port); });
'""",
}


def start_port_server(driver: Driver, request_id: int) -> int:
    driver.run(request_id, PORT_SERVERS[driver.kind], timeout=None, max_output=None)
    line = b""
    while not line.endswith(b"\n"):
        kind, rid, payload = driver.read()
        assert (kind, rid) == (protocol.STDOUT, request_id), payload
        line += payload
    return int(line)


def open_stream(driver: Driver, stream_id: int, port: int) -> None:
    driver.send(protocol.PORT_OPEN, stream_id, {"port": port})


def test_a_port_stream_carries_bytes_both_ways_and_ends_both_ways(driver: Driver) -> None:
    port = start_port_server(driver, 1)
    open_stream(driver, 7, port)
    driver.send(protocol.PORT_DATA, 7, b"hello\n")
    driver.send(protocol.PORT_DATA, 7, b"more")
    driver.send(protocol.PORT_END, 7)
    received, acked, ended = b"", 0, False
    while not ended:
        kind, rid, payload = driver.read()
        assert rid == 7, (kind, rid, payload)
        if kind == protocol.PORT_DATA:
            received += payload
        elif kind == protocol.PORT_ACK:
            acked += protocol.ACK.unpack(payload)[0]
        else:
            assert kind == protocol.PORT_END, (kind, payload)
            ended = True
    assert received == b"hello\nmore"
    # Everything the host sent was written to the socket and acknowledged (the last ACK may come
    # just after END); the stream is then forgotten: a second one gets a server of its own.
    while acked < 10:
        kind, rid, payload = driver.read()
        assert (kind, rid) == (protocol.PORT_ACK, 7)
        acked += protocol.ACK.unpack(payload)[0]
    assert acked == 10
    open_stream(driver, 8, port)
    driver.send(protocol.PORT_DATA, 8, b"blast 3\n")
    frames = [driver.read(), driver.read(), driver.read()]
    assert sorted(frames) == sorted([(protocol.PORT_ACK, 8, protocol.ACK.pack(8)), (protocol.PORT_DATA, 8, b"xxx"),
                                     (protocol.PORT_END, 8, b"")])


def test_a_port_stream_sends_no_more_than_its_window_until_acknowledged(driver: Driver) -> None:
    port = start_port_server(driver, 1)
    size = 3 * protocol.PORT_WINDOW
    open_stream(driver, 5, port)
    driver.send(protocol.PORT_DATA, 5, f"blast {size}\n".encode())
    received = 0

    def take_until_quiet() -> None:
        nonlocal received
        while True:
            try:
                frame = driver.frames.get(timeout=1.0)  # the window is full once nothing comes for a second
            except queue.Empty:
                return
            assert frame is not None
            kind, rid, payload = frame
            if kind == protocol.PORT_DATA:
                received += len(payload)

    take_until_quiet()
    assert received == protocol.PORT_WINDOW
    driver.send(protocol.PORT_ACK, 5, protocol.ACK.pack(100_000))
    take_until_quiet()
    assert received == protocol.PORT_WINDOW + 100_000
    driver.send(protocol.PORT_ACK, 5, protocol.ACK.pack(size))  # all the rest may come
    while received < size:
        kind, rid, payload = driver.read()
        if kind == protocol.PORT_DATA:
            received += len(payload)
    assert received == size
    assert driver.read() == (protocol.PORT_END, 5, b"")


def test_a_port_nothing_listens_on_is_closed_with_a_reason(driver: Driver) -> None:
    open_stream(driver, 3, 1)  # tcpmux: nothing listens there
    kind, rid, payload = driver.read()
    assert (kind, rid) == (protocol.PORT_CLOSE, 3)
    assert "nothing listens on port" in json.loads(payload)["error"]
    driver.send(protocol.PORT_OPEN, 4, {"port": 70000})
    kind, rid, payload = driver.read()
    assert (kind, rid) == (protocol.PORT_CLOSE, 4) and "out of range" in json.loads(payload)["error"]
    # Frames for streams the supervisor does not know are ignored; commands go on.
    driver.send(protocol.PORT_DATA, 99, b"stray")
    driver.send(protocol.PORT_ACK, 99, protocol.ACK.pack(1))
    assert driver.execute(5, "echo still here").stdout == b"still here\n"



# -- the Python supervisor's JSON: json's C half, without the module (and the module where there is none)

PAYLOADS = [
    {"command": "echo hi", "timeout": 30, "max_output": 1_000_000, "stdin": False},
    {"command": 'printf "%s\\n" \'a "quoted" \\\\ path\'\t\u00e9\u4e2d\U0001f600 \x01\x1f', "timeout": 0.25,
     "max_output": None, "stdin": True},
    {"command": None, "cols": 80, "rows": 24},
    {"signal": 9},
    {"port": 5173, "nested": {"list": [1, 2.5, -3e-7, True, None]}},
]


@pytest.fixture(params=["c-half", "json-module"])
def json_way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "json-module":  # as under a Python built without _json
        monkeypatch.setattr(protocol, "_json", None)
        monkeypatch.setattr(protocol, "_scan_json", None)
    return str(request.param)


def test_the_python_supervisor_writes_a_turns_frames_at_once_and_a_reads_worth_at_once() -> None:
    # In a process of its own: a Supervisor takes over SIGCHLD and the signal wake-up descriptor.
    script = """if True:
        import json, os, socket, sys
        sys.path.insert(0, sys.argv[1])
        import supervisor as protocol
        host, here = socket.socketpair()
        here.setblocking(False)
        s = protocol.Supervisor(host_in=host.fileno(), host_out=host.fileno())
        def pending():
            try:
                return here.recv(1 << 20)
            except BlockingIOError:
                return b""
        s.send(protocol.STDOUT, 1, b"hi\\n")
        s.send_json(protocol.EXIT, 1, {"exit_code": 0})
        before = pending()
        s.flush()
        turn = pending()
        s.send(protocol.STDOUT, 2, b"x" * 65536)
        print(json.dumps({"before": len(before), "turn": turn.hex(), "big": len(pending())}))
    """
    done = subprocess.run([sys.executable, "-I", "-c", script, str(GUEST)], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    header = protocol.HEADER.size
    assert seen["before"] == 0  # nothing goes out in the middle of a turn...
    # ...and then the command's output and its EXIT go out together, in one read of the host's
    frames = bytes.fromhex(seen["turn"])
    assert protocol.HEADER.unpack_from(frames) == (protocol.STDOUT, 1, 3)
    kind, request_id, length = protocol.HEADER.unpack_from(frames, header + 3)
    assert (kind, request_id) == (protocol.EXIT, 1) and len(frames) == 2 * header + 3 + length
    assert seen["big"] == header + 65536  # a read's worth of output does not wait for the turn to end


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_supervisor_reads_frames_as_json_loads_does(json_way: str, payload: dict) -> None:
    for text in (json.dumps(payload), json.dumps(payload, ensure_ascii=False), json.dumps(payload, indent=1)):
        assert protocol._loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize("bad", [b"", b"{", b'{"command": "x"} trailing', b'{"a": 1,}', b"\xff\xfe", b"[1, 2"])
def test_a_malformed_frame_fails_as_json_loads_fails(json_way: str, bad: bytes) -> None:
    with pytest.raises(ValueError) as ours:
        protocol._loads(bad)
    with pytest.raises(ValueError) as theirs:
        json.loads(bad)
    assert type(ours.value) is type(theirs.value) and str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("message", [
    {"version": 1, "python": "3.11.2", "pid": 7},
    {"exit_code": 137, "timed_out": True, "dropped": 0, "oom_killed": False},
    {"message": 'cannot run the command: \'x\\y "z"\'\n\t\u00e9\u4e2d\U0001f600\x00\x7f'},
])
def test_the_supervisor_writes_what_json_dumps_writes(json_way: str, message: dict) -> None:
    assert protocol._dumps(message) == json.dumps(message).encode()


# -- the forker's forms ---------------------------------------------------------------------------


@pytest.mark.parametrize(("perl_forker", "expected"), [(False, FORKER_PATH), (True, "/usr/bin/perl")])
def test_node_sandboxes_fork_through_the_forker_program_or_perl_when_told(
        boxes: dict[str, DockerSandbox], perl_forker: bool, expected: str) -> None:
    # A command's parent is the forker that forked its shell (see FORKER in supervisor.js).
    driver = Driver(in_container(box_for(boxes, "node-minimal"), perl_forker=perl_forker), "node")
    try:
        assert driver.execute(1, "readlink /proc/$PPID/exe").stdout.decode().strip() == expected
    finally:
        assert driver.close() == 0


def test_the_forker_program_asks_for_short_time_slices_and_commands_get_the_default(
        boxes: dict[str, DockerSandbox]) -> None:
    # As the Python supervisor does (test_channel): `exec`, so that /proc/self is the command's
    # own process and $PPID its forker. The kernel shows a task's slice where it has sched debug.
    driver = Driver(in_container(box_for(boxes, "node-minimal")), "node")
    try:
        shown = driver.execute(1, "exec sed -n 's/^se.slice *: *//p' /proc/$PPID/sched /proc/self/sched").stdout
    finally:
        assert driver.close() == 0
    slices = shown.split()
    if len(slices) != 2:
        pytest.skip("this kernel does not show time slices in /proc/PID/sched (Linux 6.12+ with sched debug)")
    forker_slice, command_slice = map(int, slices)
    assert forker_slice == 100_000  # forker.c's ask_for_short_slices
    assert command_slice > forker_slice  # SCHED_FLAG_RESET_ON_FORK: the default, not the forker's


@pytest.mark.parametrize("program", ["#!/bin/sh\necho 'fail made to fail'\nexit 1\n", "#!/bin/sh\nexit 3\n"])
def test_a_forker_program_that_fails_to_start_leaves_the_host_to_the_supervisor(tmp_path: Path, program: str) -> None:
    # It says `fail`, or exits without a word: Node.js spawns the shells and reads the host's frames itself.
    driver = Driver(supervisor_beside(tmp_path, program.encode()), "node")
    try:
        assert driver.execute(1, "echo quick").stdout == b"quick\n"
        driver.run(2, "tr a-z A-Z", stdin=True)
        driver.send(protocol.STDIN, 2, b"slow\n")
        driver.send(protocol.STDIN, 2, b"")
        assert driver.until_exit(2).stdout == b"SLOW\n"
        assert driver.execute(3, "sleep 5", timeout=0.3).status["timed_out"]
    finally:
        assert driver.close() == 0


def test_without_a_c_compiler_the_forker_program_is_left_out_and_said_once(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("PYDANTIC_DEEP_CACHE_DIR", str(tmp_path))
    forker._built.cache_clear()
    forker._unavailable.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="pydantic_deep.images"):
            assert forker._built() is None and forker._built() is None
        warnings = [r.getMessage() for r in caplog.records if "forker program" in r.getMessage()]
        assert len(warnings) == 1 and "no-such-cc" in warnings[0] and "perl" in warnings[0], warnings
    finally:
        forker._built.cache_clear()
        forker._unavailable.cache_clear()


def test_the_forker_program_is_built_once_into_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYDANTIC_DEEP_CACHE_DIR", str(tmp_path))
    forker._built.cache_clear()
    try:
        program = forker._built()
        assert program is not None and program.startswith(b"\x7fELF")
        [built] = (tmp_path / "forker").iterdir()
        assert built.read_bytes() == program
        forker._built.cache_clear()
        before = built.stat().st_mtime_ns
        assert forker._built() == program and built.stat().st_mtime_ns == before  # taken, not compiled again
    finally:
        forker._built.cache_clear()
