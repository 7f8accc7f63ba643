"""The supervisor's dial-in: a new container's channel without a ``docker exec``.

A new container starts its supervisor beside its main process, and the supervisor connects to a
UNIX socket that this process listens on, bind-mounted into that container alone (at
:data:`CONTAINER_PATH`). That takes ``docker exec`` (some 50 ms of the engine's work) off every
cold start, and the engine's copying of the stream off every command: frames go straight between
this process and the supervisor.

Only for an engine on this machine, which can bind-mount the socket. This process takes one
connection and then stops listening, so nothing in the sandbox can dial in later. Where the
supervisor does not call in time (a Python too old for the supervisor, say), the sandbox opens its
channel with ``docker exec``, as it does for a container it did not start (re-adopted after a
crash) or a channel that broke.

The socket's directory stays while the container does (see
:mod:`~pydantic_deep.engine.dial_in_dirs`).
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable

import docker

from ..engine.dial_in_dirs import make_dial_in_dir, remove_dial_in_dir

__all__ = ["CONTAINER_PATH", "DialIn"]

CONTAINER_PATH = "/run/pydantic-deep-channel.sock"
"""Where a container finds the socket to dial."""
_CHECK_EVERY = 0.25  # seconds between looks at whether the container still runs


class DialIn:
    """A socket, listening in a private directory, for one supervisor to dial.

    Args:
        client: The engine the container runs on (one of this machine).
        supervisor: The argv that starts the supervisor in the container (it gets ``--dial PATH``).
    """

    def __init__(self, client: docker.DockerClient, supervisor: list[str]) -> None:
        self.supervisor = supervisor
        directory = make_dial_in_dir(client)
        self.name = os.path.basename(directory)
        """The directory's name: the container's :data:`~pydantic_deep.engine.labels.DIAL_IN` label."""
        self.path = os.path.join(directory, "channel.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.bind(self.path)
            # The sandbox's user connects, whatever its uid; the directory (0700) keeps everyone
            # else on this machine out.
            os.chmod(self.path, 0o666)
            self._listener.listen(1)
        except BaseException:
            self._listener.close()
            remove_dial_in_dir(self.name)
            raise
    @property
    def mount(self) -> docker.types.Mount:
        """The bind mount that puts the socket at :data:`CONTAINER_PATH` in the container."""
        return docker.types.Mount(CONTAINER_PATH, self.path, type="bind")

    def entrypoint(self, main: str) -> list[str]:
        """The container's entrypoint: start the supervisor dialling in, then run ``main`` (a shell
        command) as the container's main process.

        The subshell that starts the supervisor exits at once, so the container's init adopts the
        supervisor and reaps it when it ends.
        """
        start = f'("$@" --dial {CONTAINER_PATH} </dev/null >/dev/null 2>&1 &); '
        return ["sh", "-c", start + main, "sh", *self.supervisor]

    def accept(self, timeout: float, running: Callable[[], bool]) -> socket.socket | None:
        """The supervisor's connection, or ``None`` when it has not called within ``timeout``
        seconds or the container stopped (``running()`` turned false) first."""
        deadline = time.monotonic() + timeout
        while True:
            wait = min(_CHECK_EVERY, max(deadline - time.monotonic(), 0.0))
            if select.select([self._listener], [], [], wait)[0]:
                connection, _ = self._listener.accept()
                connection.setblocking(True)
                return connection
            if time.monotonic() >= deadline or not running():
                return None

    def close(self) -> None:
        """Stop listening: a later connection is refused (one made stays open). The socket's
        directory stays for the container (see :mod:`~pydantic_deep.engine.dial_in_dirs`)."""
        self._listener.close()
