"""The host directories that hold the sockets new containers' supervisors dial in on.

Each is made in this machine's temporary directory for one container, bind-mounted into it (see
``execution/dial_in.py``), and named by the container's :data:`~.labels.DIAL_IN` label. It stays
while the container does: the engine's archive calls (``docker cp`` among them) mount every bind
mount's source again. :func:`~.containers.remove_container` removes it with the container; what
containers removed otherwise left (by their engine, when the process that tied them to itself
died) goes at the next process's first dial-in on that engine, or at ``pydantic-deep prune``: once
no container names it and the process that made it is gone (or it is ten minutes old).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time

import docker

from .client import engine_id
from .labels import DIAL_IN

__all__ = ["make_dial_in_dir", "remove_dial_in_dir", "sweep_dial_in_dirs", "unused_dial_in_dirs"]

_PREFIX = "pydantic-deep-dial-"  # then the engine's id, the pid of the process that made it, a random part
# A directory younger than this may be another process's whose container is not created yet.
_SWEEP_AFTER = 600.0
_swept: set[str] = set()  # engines swept by this process
_swept_lock = threading.Lock()


def _engine_prefix(client: docker.DockerClient) -> str:
    return _PREFIX + re.sub(r"[^A-Za-z0-9]", "", engine_id(client))[:16] + "-"


def make_dial_in_dir(client: docker.DockerClient) -> str:
    """A new private (0700) directory for a container of ``client``'s engine; its path. The first
    call of a process for an engine sweeps that engine's leftovers."""
    prefix = _engine_prefix(client)
    with _swept_lock:
        first = prefix not in _swept
        _swept.add(prefix)
    if first:
        sweep_dial_in_dirs(client)
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")


def remove_dial_in_dir(name: str) -> None:
    """Remove the directory a container's :data:`~.labels.DIAL_IN` label names, if it is one."""
    if name.startswith(_PREFIX) and "/" not in name:
        shutil.rmtree(os.path.join(tempfile.gettempdir(), name), ignore_errors=True)


def sweep_dial_in_dirs(client: docker.DockerClient) -> int:
    """Remove the directories made for ``client``'s engine that no container of it names (and that
    no live process may still be about to use); how many."""
    unused = unused_dial_in_dirs(client, older_than=_SWEEP_AFTER)
    for name in unused:
        remove_dial_in_dir(name)
    return len(unused)


def unused_dial_in_dirs(client: docker.DockerClient, *, older_than: float) -> list[str]:
    """The directories made for ``client``'s engine that no container of it names, made more than
    ``older_than`` seconds ago or by a process that is gone (whose container can no longer come)."""
    prefix = _engine_prefix(client)
    named = {c["Labels"].get(DIAL_IN) for c in client.api.containers(all=True, filters={"label": DIAL_IN})}
    return sorted(entry.name for entry in os.scandir(tempfile.gettempdir())
                  if entry.name.startswith(prefix) and entry.name not in named
                  and (time.time() - entry.stat(follow_symlinks=False).st_mtime >= older_than
                       or _maker_gone(entry.name[len(prefix):])))


def _maker_gone(rest: str) -> bool:
    """Whether the process whose pid begins ``rest`` (``<pid>-<random>``) has ended; a pid in use
    again counts as the maker's."""
    try:
        os.kill(int(rest.split("-", 1)[0]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError):
        pass
    return False
