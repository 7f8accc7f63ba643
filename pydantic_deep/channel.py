"""Running one shell command in a running container and collecting its result."""

from __future__ import annotations

import time
from dataclasses import dataclass

import docker

from .types import ExecuteResult

__all__ = ["DockerExecChannel", "shell_argv"]

# What `timeout -s KILL` exits with when it had to kill the command (128 + SIGKILL).
_KILLED_BY_TIMEOUT = 137


def shell_argv(command: str, timeout: float | None) -> list[str]:
    """``sh -c command``, under coreutils ``timeout`` when there is a limit.

    ``timeout`` puts the command in a process group of its own and, when the time is up, kills the
    whole group, so background children die with the command and the sandbox stays usable.
    """
    argv = ["sh", "-c", command]
    if timeout is None:
        return argv
    return ["timeout", "-s", "KILL", f"{timeout:.3f}", *argv]


class _OutputBuffer:
    """Collects up to ``limit`` bytes; past that, counts and drops."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


@dataclass
class DockerExecChannel:
    """One ``docker exec`` per command, in the container's user, work dir and environment."""

    client: docker.DockerClient
    container_id: str

    def run(self, command: str, *, timeout: float | None, max_output: int) -> ExecuteResult:
        """Run ``command`` with ``sh -c`` and wait for it.

        Output past ``max_output`` bytes (per stream and combined) is read and discarded, so the
        host never holds more than about three times ``max_output``.
        """
        api = self.client.api
        exec_id = api.exec_create(self.container_id, shell_argv(command, timeout))["Id"]
        started = time.monotonic()
        combined, stdout, stderr = (_OutputBuffer(max_output) for _ in range(3))
        for out, err in api.exec_start(exec_id, stream=True, demux=True):
            for chunk, own in ((out, stdout), (err, stderr)):
                if chunk:
                    combined.add(chunk)
                    own.add(chunk)
        elapsed = time.monotonic() - started
        exit_code = api.exec_inspect(exec_id)["ExitCode"]
        timed_out = timeout is not None and exit_code == _KILLED_BY_TIMEOUT and elapsed >= timeout
        return ExecuteResult(
            output=combined.text(),
            exit_code=exit_code,
            stdout=stdout.text(),
            stderr=stderr.text(),
            truncated=combined.dropped > 0,
            timed_out=timed_out,
        )
