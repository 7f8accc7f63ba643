"""What comes back from a sandbox: a command's result and output, a container's usage, a file's entry,
an egress decision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["EgressEvent", "ExecuteResult", "FileInfo", "OutputChunk", "ResourceUsage"]


@dataclass(frozen=True, slots=True)
class ExecuteResult:
    """The outcome of one command run in a sandbox.

    Attributes:
        output: stdout and stderr interleaved as they arrived, decoded as UTF-8.
        exit_code: The command's exit status (124 or 137 after a timeout).
        stdout: The standard output alone.
        stderr: The standard error alone.
        truncated: Output went past the sandbox's ``max_output`` bytes; the rest was discarded.
        timed_out: The command ran past its timeout and its process group was killed.
        oom_killed: The kernel killed a process of the command because the sandbox ran out of
            memory; ``output`` and ``stderr`` then end with a line that says so. Detected by the
            supervisor (images with ``python3``), from the container's cgroup counter.
    """

    output: str
    exit_code: int
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    timed_out: bool = False
    oom_killed: bool = False

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.exit_code == 0


@dataclass(frozen=True, slots=True)
class OutputChunk:
    """A piece of a running command's output, as it was produced.

    Attributes:
        stream: ``"stdout"`` or ``"stderr"``.
        text: The new text, decoded as UTF-8 (a character split across chunks is kept whole).
    """

    stream: Literal["stdout", "stderr"]
    text: str


@dataclass(frozen=True, slots=True)
class ResourceUsage:
    """What a sandbox's container uses now.

    Attributes:
        memory_bytes: Memory in use.
        cpu_seconds: CPU time used so far.
        disk_bytes: Bytes used on the sandbox's disk (work dir, ``/uploads``, home); 0 without one.
        disk_limit_bytes: The size of that disk's filesystem (a little under ``disk_size``: ext4's
            own tables take the rest), or ``None`` when the sandbox has no capped disk.
    """

    memory_bytes: int
    cpu_seconds: float
    disk_bytes: int = 0
    disk_limit_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One entry of a directory listing inside a sandbox."""

    name: str
    path: str
    size: int
    is_dir: bool
    modified: float


@dataclass(frozen=True, slots=True)
class EgressEvent:
    """One decision of the egress proxy about a sandbox's request (``network=[host patterns]``).

    Attributes:
        time: When, in seconds since the epoch.
        host: The host asked for (a CONNECT's, an HTTP request's ``Host``, or a TLS SNI).
        port: Its port.
        allowed: Whether the request went out.
        reason: Why it was refused (empty when allowed).
        how: ``"CONNECT"``, ``"TLS SNI"``, or the HTTP method of a plain HTTP request.
    """

    time: float
    host: str
    port: int
    allowed: bool
    reason: str = ""
    how: str = ""
