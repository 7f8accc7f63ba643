"""The one adapter over docker-py's low-level internals: raw exec streams, attach sockets, the
multiplexed frame reader, the archive endpoint's stat.

docker-py hands out a hijacked socket only through private attributes (``_sock``), and has no call
for ``HEAD /containers/{id}/archive``. Everything that needs them goes through this module, so a
docker-py upgrade that moves them breaks one file, which ``tests/test_channel.py`` and
``tests/test_sandbox.py`` cover.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
from collections.abc import Iterator
from typing import Any

import docker

__all__ = ["Exec", "archive_stat", "attach_stdin", "attach_stream", "docker_frames"]

_DOCKER_FRAME = struct.Struct(">BxxxI")  # docker's stdout/stderr multiplexing header: stream, size


def docker_frames(sock: socket.socket) -> Iterator[tuple[int, bytes]]:
    """The ``(stream, payload)`` frames of a hijacked ``docker exec`` stream, until it ends;
    ``stream`` is 1 for standard output, 2 for standard error."""
    buffer = bytearray()
    while chunk := sock.recv(1 << 18):
        buffer += chunk
        while len(buffer) >= _DOCKER_FRAME.size:
            stream, length = _DOCKER_FRAME.unpack_from(buffer)
            if len(buffer) < _DOCKER_FRAME.size + length:
                break
            yield stream, bytes(buffer[_DOCKER_FRAME.size:_DOCKER_FRAME.size + length])
            del buffer[:_DOCKER_FRAME.size + length]


class Exec:
    """One ``docker exec`` of ``argv`` in a running container, created and not yet started.

    Start it one of three ways: :meth:`run` (wait, discard the output), :meth:`output` (the
    output as it comes) or :meth:`open_socket` (a raw stream: stdin in, framed output out).
    """

    def __init__(self, client: docker.DockerClient, container_id: str, argv: list[str], *,
                 stdin: bool = False) -> None:
        self._api = client.api
        self.id: str = self._api.exec_create(container_id, argv, stdin=stdin)["Id"]

    def run(self) -> None:
        """Start it and wait for it to end; its output is dropped."""
        self._api.exec_start(self.id)

    def output(self) -> Iterator[tuple[bytes | None, bytes | None]]:
        """Start it and yield ``(stdout, stderr)`` chunks (one of them ``None``) until it ends."""
        yield from self._api.exec_start(self.id, stream=True, demux=True)

    def open_socket(self) -> socket.socket:
        """Start it and return the raw stream, blocking: write its stdin there, read its output
        with :func:`docker_frames`. The caller closes it."""
        sock: socket.socket = self._api.exec_start(self.id, socket=True)._sock
        sock.settimeout(None)
        return sock

    @property
    def exit_code(self) -> int:
        """Its exit code, once it ended."""
        return int(self._api.exec_inspect(self.id)["ExitCode"])


def attach_stdin(client: docker.DockerClient, container_id: str) -> Any:
    """A stream to the container's main process's standard input (closed, it reads end of file)."""
    return client.api.attach_socket(container_id, params={"stdin": 1, "stream": 1})


def attach_stream(client: docker.DockerClient, container_id: str) -> socket.socket:
    """A raw stream to the container's main process, as :meth:`Exec.open_socket` gives one to an
    exec: its stdin in, its framed stdout and stderr out. Made before the container starts, it
    misses nothing the process writes; closed, the process reads end of file."""
    sock: socket.socket = client.api.attach_socket(
        container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})._sock
    sock.settimeout(None)
    return sock


def archive_stat(client: docker.DockerClient, container_id: str, path: str) -> dict[str, Any] | None:
    """The engine's stat of ``path`` in a container (running or not), or ``None`` when the engine
    says there is nothing (404). Any other refusal raises docker-py's ``APIError``.
    """
    api = client.api
    # docker-py has no call for the archive endpoint's HEAD form, which stats without copying.
    response = api.head(api._url("/containers/{0}/archive", container_id), params={"path": path})
    if response.status_code == 404:
        return None
    api._raise_for_status(response)
    stat: dict[str, Any] = json.loads(base64.b64decode(response.headers["X-Docker-Container-Path-Stat"]))
    return stat
