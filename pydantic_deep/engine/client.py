"""The connection to the Docker engine, and starting a local one where none answers."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
from docker.errors import DockerException
from requests.exceptions import ConnectionError as EngineConnectionError

from ..errors import DockerUnavailableError

__all__ = ["docker_client", "engine_address", "engine_errors", "engine_id", "engine_on_this_machine", "start_engine"]

logger = logging.getLogger(__name__)

_HOW_TO_START = (
    "Start it with `sudo systemctl start docker`, or run `pydantic-deep engine start` "
    "(installs Debian's docker.io if needed and starts dockerd in the background)."
)
_client: docker.DockerClient | None = None
_client_lock = threading.Lock()
_infos: weakref.WeakKeyDictionary[docker.DockerClient, dict[str, Any]] = weakref.WeakKeyDictionary()


def engine_address() -> str:
    """Where the engine is expected: ``$DOCKER_HOST`` or the default socket."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def docker_client() -> docker.DockerClient:
    """The shared client of this process, connected and checked with a ping.

    Raises:
        DockerUnavailableError: the engine does not answer; the message says how to start it.
    """
    global _client
    with _client_lock:
        if _client is None:
            try:
                client = docker.from_env(timeout=120, max_pool_size=64)
                client.ping()
            except DockerException as exc:
                raise DockerUnavailableError(
                    f"Cannot reach the Docker engine at {engine_address()} ({_reason(exc)}). {_HOW_TO_START}"
                ) from exc
            _client = client
        return _client


def engine_on_this_machine(client: docker.DockerClient) -> bool:
    """Whether ``client``'s engine runs on this machine, beside this process: reached over a UNIX
    socket, and naming itself as this machine does. An engine in a VM (Docker Desktop's) or behind a
    forwarded socket names another machine; its bind mounts cannot share a socket with us."""
    return client.api.base_url.startswith("http+docker://localhost") and _info(client)["Name"] == socket.gethostname()


def engine_id(client: docker.DockerClient) -> str:
    """The engine's own id (``docker info``'s), which tells apart engines of one machine."""
    return str(_info(client)["ID"])


def _info(client: docker.DockerClient) -> dict[str, Any]:
    """What ``docker info`` says of the engine (asked once per client)."""
    if client not in _infos:
        _infos[client] = client.info()
    return _infos[client]


@contextlib.contextmanager
def engine_errors() -> Iterator[None]:
    """Turn a lost connection to the engine into one clear :class:`DockerUnavailableError`.

    Also a decorator, for every public method that talks to the engine.
    """
    try:
        yield
    except EngineConnectionError as exc:
        raise DockerUnavailableError(
            f"Lost the Docker engine at {engine_address()} ({_reason(exc)}). {_HOW_TO_START}"
        ) from exc


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "FileNotFoundError" in text or "No such file" in text:
        return "no socket: the engine is not running"
    if "Permission denied" in text:
        return "permission denied: add your user to the 'docker' group"
    if "Connection refused" in text:
        return "connection refused: the engine stopped, or crashed"
    if "RemoteDisconnected" in text or "Connection reset" in text:
        return "the engine dropped the connection: it stopped, or crashed"
    return text.splitlines()[0][:200]


def _engine_answers() -> bool:
    try:
        docker.from_env(timeout=5).ping()
    except DockerException:
        return False
    return True


def _pid_alive(pid_file: Path) -> bool:
    """Whether the pid file names a live process; a stale file (from a killed daemon) is removed."""
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except FileNotFoundError:
        return False
    except (ValueError, ProcessLookupError):
        logger.info("Removing stale pid file %s", pid_file)
        pid_file.unlink(missing_ok=True)
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


def start_engine(*, timeout: float = 120, log_file: str = "/var/log/pydantic-deep-dockerd.log") -> str:
    """Make sure a Docker engine answers, starting a local ``dockerd`` if needed (needs root).

    Installs Debian's ``docker.io`` when ``dockerd`` is missing, clears stale pid files left by a
    killed daemon, starts ``dockerd`` in the background and waits until its socket answers.
    Safe to call again: an engine that already answers is left alone.

    Returns:
        What was done, in a few words.

    Raises:
        DockerUnavailableError: the engine did not come up within ``timeout`` seconds.
    """
    if _engine_answers():
        return "Docker engine already running"
    if shutil.which("dockerd") is None:
        logger.info("Installing Debian's docker.io")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "docker.io"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    if not _pid_alive(Path("/var/run/docker.pid")):
        _pid_alive(Path("/var/run/docker/containerd/containerd.pid"))
        with open(log_file, "ab") as log:
            subprocess.Popen(["dockerd"], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _engine_answers():
            return f"Docker engine started (log: {log_file})"
        time.sleep(0.2)
    raise DockerUnavailableError(f"dockerd did not answer within {timeout:.0f} s; see {log_file}")
