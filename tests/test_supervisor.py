"""The supervisor's frame protocol, driven directly through pipes on the host (no Docker).

The channel tests cover it inside real containers; this narrow test reaches the frames the host
does not send yet (stdin, signals), which a later notebook interpreter rides on.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pydantic_deep._guest import supervisor as protocol

SCRIPT = Path(protocol.__file__)


class Driver:
    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, str(SCRIPT)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, bufsize=0)
        kind, _, hello = self.read()
        assert kind == protocol.HELLO and json.loads(hello)["version"] == protocol.VERSION

    def send(self, kind: int, request_id: int, payload: bytes | dict = b"") -> None:
        data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        assert self.process.stdin is not None
        self.process.stdin.write(protocol.HEADER.pack(kind, request_id, len(data)) + data)

    def read(self) -> tuple[int, int, bytes]:
        assert self.process.stdout is not None
        kind, request_id, length = protocol.HEADER.unpack(self.process.stdout.read(protocol.HEADER.size))
        return kind, request_id, self.process.stdout.read(length) if length else b""

    def until_exit(self, request_id: int) -> tuple[bytes, dict]:
        output = b""
        while True:
            kind, rid, payload = self.read()
            assert rid == request_id
            if kind == protocol.EXIT:
                return output, json.loads(payload)
            output += payload


@pytest.fixture
def driver() -> Iterator[Driver]:
    running = Driver()
    yield running
    assert running.process.stdin is not None
    running.process.stdin.close()  # the supervisor kills what runs and exits
    assert running.process.wait(timeout=10) == 0


def test_stdin_frames_feed_the_command(driver: Driver) -> None:
    driver.send(protocol.RUN, 1, {"command": "tr a-z A-Z", "timeout": 10, "max_output": 100, "stdin": True})
    driver.send(protocol.STDIN, 1, b"hello ")
    driver.send(protocol.STDIN, 1, b"world\n")
    driver.send(protocol.STDIN, 1, b"")  # closes stdin
    assert driver.until_exit(1) == (b"HELLO WORLD\n", {"exit_code": 0, "timed_out": False, "dropped": 0,
                                                        "oom_killed": False})


def test_signal_frame_reaches_the_process_group(driver: Driver) -> None:
    command = "trap 'echo got INT; exit 5' INT; echo ready; while :; do sleep 0.01; done"
    driver.send(protocol.RUN, 2, {"command": command, "timeout": 10, "max_output": 100})
    assert driver.read() == (protocol.STDOUT, 2, b"ready\n")
    driver.send(protocol.SIGNAL, 2, {"signal": int(signal.SIGINT)})
    output, status = driver.until_exit(2)
    assert output == b"got INT\n" and status["exit_code"] == 5


def test_output_budget_and_timeout(driver: Driver) -> None:
    driver.send(protocol.RUN, 3, {"command": "head -c 5000 /dev/zero; sleep 30", "timeout": 0.5, "max_output": 10})
    output, status = driver.until_exit(3)
    assert output == b"\0" * 10 and status == {"exit_code": 137, "timed_out": True, "dropped": 4990,
                                                "oom_killed": False}


def test_a_long_command_and_a_bad_one(driver: Driver) -> None:
    long_command = "echo " + "x" * 5000
    driver.send(protocol.RUN, 4, {"command": long_command, "timeout": 10, "max_output": 10000})
    assert driver.until_exit(4)[0] == b"x" * 5000 + b"\n"
    driver.send(protocol.RUN, 5, {"command": "exit 3", "timeout": None, "max_output": None})
    assert driver.until_exit(5)[1]["exit_code"] == 3
