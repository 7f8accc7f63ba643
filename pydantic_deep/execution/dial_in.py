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

The socket's directory stays while the container does (the engine's archive calls, ``docker cp``
among them, mount every bind mount's source again). The sandbox removes it when it removes the
container; what containers removed otherwise left (by their engine when their process died, by
another process) goes at the next process's first dial-in on that engine, or at ``pydantic-deep
prune``: a directory no container names in its :data:`~pydantic_deep.engine.labels.DIAL_IN` label.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable

import docker

from ..engine import labels as label
from ..engine.client import engine_id

__all__ = ["CONTAINER_PATH", "DialIn", "remove_dial_in", "sweep_dial_ins", "unused_dial_ins"]

CONTAINER_PATH = "/run/pydantic-deep-channel.sock"
"""Where a container finds the socket to dial."""
_CHECK_EVERY = 0.25  # seconds between looks at whether the container still runs
_PREFIX = "pydantic-deep-dial-"  # then the engine's id, the pid of the process that listened, a random part
# A directory younger than this may be another process's, whose container is not yet created.
_SWEEP_AFTER = 600.0
_swept: set[str] = set()  # engines swept by this process
_swept_lock = threading.Lock()


def _engine_prefix(client: docker.DockerClient) -> str:
    return _PREFIX + re.sub(r"[^A-Za-z0-9]", "", engine_id(client))[:16] + "-"


class DialIn:
    """A socket, listening in a private directory, for one supervisor to dial.

    Args:
        client: The engine the container runs on (one of this machine).
        supervisor: The argv that starts the supervisor in the container (it gets ``--dial PATH``).
    """

    def __init__(self, client: docker.DockerClient, supervisor: list[str]) -> None:
        self.supervisor = supervisor
        with _swept_lock:
            first = _engine_prefix(client) not in _swept
            _swept.add(_engine_prefix(client))
        if first:
            sweep_dial_ins(client)
        directory = tempfile.mkdtemp(prefix=f"{_engine_prefix(client)}{os.getpid()}-")
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
            remove_dial_in(self.name)
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
        directory stays for the container (:func:`remove_dial_in`)."""
        self._listener.close()


def remove_dial_in(name: str) -> None:
    """Remove the directory of a dial-in socket (its container is removed)."""
    if name.startswith(_PREFIX) and "/" not in name:
        shutil.rmtree(os.path.join(tempfile.gettempdir(), name), ignore_errors=True)


def sweep_dial_ins(client: docker.DockerClient) -> int:
    """Remove the dial-in directories made for ``client``'s engine that no container of it names
    (their containers were removed by the engine, or by another process); how many."""
    unused = unused_dial_ins(client, older_than=_SWEEP_AFTER)
    for name in unused:
        remove_dial_in(name)
    return len(unused)


def unused_dial_ins(client: docker.DockerClient, *, older_than: float) -> list[str]:
    """The dial-in directories made for ``client``'s engine more than ``older_than`` seconds ago
    that no container of it names."""
    prefix = _engine_prefix(client)
    named = {c["Labels"].get(label.DIAL_IN) for c in client.api.containers(all=True, filters={"label": label.DIAL_IN})}
    return sorted(entry.name for entry in os.scandir(tempfile.gettempdir())
                  if entry.name.startswith(prefix) and entry.name not in named
                  and time.time() - entry.stat(follow_symlinks=False).st_mtime >= older_than)
