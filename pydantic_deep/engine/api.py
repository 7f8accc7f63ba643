"""The one adapter over docker-py's low-level internals: raw exec streams, attach sockets, the
multiplexed frame reader, the archive endpoint's stat, a container's creation without its lookup.

docker-py hands out a hijacked socket only through private attributes (``_sock``), and has no call
for ``HEAD /containers/{id}/archive``. Everything that needs them goes through this module, so a
docker-py upgrade that moves them breaks one file, which ``tests/test_channel.py`` and
``tests/test_sandbox.py`` cover.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import struct
from collections.abc import Iterator
from typing import Any

import docker

from .relay import plain_end

__all__ = ["Exec", "archive_stat", "attach_stdin", "attach_stdio", "create_container", "create_network",
           "docker_frames", "engine_client", "engine_key"]

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
                 stdin: bool = False, tty: bool = False, environment: dict[str, str] | None = None) -> None:
        self._api = client.api
        # With a tty the engine gives the process a pseudo-terminal, and the stream is raw (no frames).
        self._tty = tty
        self.id: str = self._api.exec_create(container_id, argv, stdin=stdin, tty=tty, environment=environment)["Id"]

    def run(self) -> None:
        """Start it and wait for it to end; its output is dropped."""
        self._api.exec_start(self.id)

    def output(self) -> Iterator[tuple[bytes | None, bytes | None]]:
        """Start it and yield ``(stdout, stderr)`` chunks (one of them ``None``) until it ends."""
        yield from self._api.exec_start(self.id, stream=True, demux=True)

    def open_socket(self) -> socket.socket:
        """Start it and return the raw stream, blocking: write its stdin there, read its output
        with :func:`docker_frames` (with a tty: as it is). The caller closes it."""
        return _own_socket(self._api.exec_start(self.id, socket=True, tty=self._tty))

    def resize(self, cols: int, rows: int) -> None:
        """Set the size of a started ``tty`` exec's pseudo-terminal."""
        self._api.exec_resize(self.id, height=rows, width=cols)

    @property
    def exit_code(self) -> int:
        """Its exit code, once it ended."""
        return int(self._api.exec_inspect(self.id)["ExitCode"])


def create_container(client: docker.DockerClient, image: str, **options: Any) -> str:
    """Create a container as ``client.containers.create(image, **options)`` does, and return its
    id: without the lookup that follows there, one engine call less on every sandbox's start."""
    arguments = docker.models.containers._create_container_args(
        {**options, "image": image, "command": options.get("command"), "version": client.api._version})
    return str(client.api.create_container(**arguments)["Id"])


def attach_stdin(client: docker.DockerClient, container_id: str) -> Any:
    """A stream to the container's main process's standard input (closed, it reads end of file)."""
    return client.api.attach_socket(container_id, params={"stdin": 1, "stream": 1})


def attach_stdio(client: docker.DockerClient, container_id: str) -> socket.socket:
    """A blocking stream to and from the container's main process: write its standard input there,
    read its output with :func:`docker_frames` (closed, the process reads end of file). Attach
    before the container starts to have all of its output."""
    return _own_socket(client.api.attach_socket(container_id, params={"stdin": 1, "stdout": 1, "stderr": 1,
                                                                      "stream": 1}))


def _own_socket(raw: Any) -> socket.socket:
    """The hijacked connection docker-py returns for a stream, as a blocking socket of our own."""
    if isinstance(raw, ssl.SSLSocket):  # an engine over TLS: docker-py hands out the TLS socket itself
        return plain_end(raw)
    # The socket is still the connection's that docker-py's pool may close (or hand out again)
    # once the response behind it is collected: take its descriptor into a socket of our own.
    sock = socket.socket(fileno=raw._sock.detach())
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


def engine_client(address: str, tls: docker.tls.TLSConfig | None, *, timeout: float, max_pool_size: int = 10,
                  version: str = "auto") -> docker.DockerClient:
    """A client of the engine at ``address``, over TLS with ``tls``.

    Unlike ``docker.DockerClient(tls=...)`` alone, the TLS settings hold whatever the environment
    says: requests lets ``$REQUESTS_CA_BUNDLE`` (or ``$CURL_CA_BUNDLE``) replace a session's CA
    (psf/requests#3829), so an engine whose certificate the given CA signed would fail to verify
    wherever that variable is set (Debian's and many images' default). With ``tls`` the client
    therefore ignores the environment (it is not sent through ``$HTTPS_PROXY`` either), and asks
    the engine's API version itself, after that.
    """
    if tls is None:
        return docker.DockerClient(base_url=address, version=version, timeout=timeout, max_pool_size=max_pool_size)
    client = docker.DockerClient(base_url=address, tls=tls, version="1.41" if version == "auto" else version,
                                 timeout=timeout, max_pool_size=max_pool_size)
    client.api.trust_env = False
    if version == "auto":
        client.api._version = client.api._retrieve_server_version()
    return client


def engine_key(client: docker.DockerClient) -> str:
    """What tells the engine of ``client`` from others: its address, and for a unix socket the
    socket's path (docker-py gives every unix socket the one base URL ``http+docker://localhost``)."""
    adapter = client.api.adapters.get("http+docker://")
    return f"{client.api.base_url}{getattr(adapter, 'socket_path', '')}"


def create_network(client: docker.DockerClient, body: dict[str, Any]) -> None:
    """``POST /networks/create`` with ``body`` as the Engine API takes it: docker-py's
    ``create_network`` has no ``ConfigOnly`` nor ``ConfigFrom``. Refusals raise ``APIError``."""
    api = client.api
    api._result(api._post_json(api._url("/networks/create"), data=body), json=True)
