"""Find and release the disks (``disk_size``) that processes which are gone left on the engine's host.

A process releases its disks when its sandboxes stop and, for the disks it made ahead, at exit.
A process killed with SIGKILL, a test run interrupted half-way, or an engine removed with its
sandboxes running leaves them attached to loop devices and mounted. ``pydantic-deep prune``
(:func:`prune_disks`) finds every such disk on the engine's host, in the folder of every engine
that ever had disks there (a private engine's, a swarm node's, not only this engine's), and tells
apart, from how disks are recorded:

- *in use*: a container of any engine on the host mounts one of its directories (seen in the
  mount tables of the host's processes: a sandbox mounts ``work``, ``home``..., never the disk's
  root), or a container of this engine names it in its labels. Never touched.
- *owned by a live process*: the disk's ``.owner`` file names a process on this host that runs
  (or one on another host, which cannot be checked). Never touched (``--all`` releases this
  engine's disks whatever their owner).
- *a session's files* (a ``.keep`` file): a session's disk, or one a caller named with
  ``disk_name``. Unmounted only: its files stay for the session's next container. The disk of a
  session manager's warm sandbox that no user got is kept too but named by no session volume
  (the engine's record of a session): that one is deleted.
- anything else (a sandbox's own disk, a disk made ahead): unmounted and deleted.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from ..engine import labels as label
from ..engine.client import docker_client
from ..errors import SandboxError
from .disk import DISK_DIR, IN_USE, _Agent, _agent

__all__ = ["FoundDisk", "find_disks", "prune_disks"]

logger = logging.getLogger("pydantic_deep.disk")

# Run in a disk agent, in the host's mount namespace: one line per disk under $1 (DISK_DIR), in
# any engine's folder; busy as IN_USE judges.
_SURVEY = r"""
set -eu
nsenter -t "$(cat /run/shim)" -m -- sh -c '
root=$1""" + IN_USE + r"""
mounts=$(cut -d" " -f2,3 /proc/self/mounts)
for img in "$root"/*/*.img "$root"/*/*.img.new; do  # .img.new alone: a make cut short (disk.py)
  [ -e "$img" ] || continue
  disk=${img%.new}; disk=${disk%.img}; folder=${disk%/*}; folder=${folder##*/}; name=${disk##*/}
  [ "$img" = "$disk.img" ] || [ ! -e "$disk.img" ] || continue
  keep=0; [ -e "$disk.keep" ] && keep=1
  mounted=0; printf "%s\n" "$mounts" | grep -qxF "$disk ext4" && mounted=1
  used=0; in_use "$img" && used=1
  owner=$(cat "$disk.owner" 2>/dev/null || true)
  printf "%s\t%s\t%s\t%s\t%s\t%s\n" "$folder" "$name" "$keep" "$mounted" "$used" "$owner"
done' sh "$1"
"""


@dataclass(frozen=True)
class FoundDisk:
    """A disk on the engine's host, in any engine's folder, as :func:`find_disks` finds it.

    Attributes:
        folder: Its engine's folder under ``DISK_DIR`` (this engine's, another engine's, or
            ``swarm-<node id>`` for a cluster node's).
        name: The disk's name.
        keep: It holds files meant to outlive their container (a session's; a ``.keep`` file).
        mounted: Its filesystem is mounted on the host (a loop device attached).
        in_use: A container (of any engine on the host) mounts one of its directories.
        owner: ``"<host> <pid>"`` of the process that last mounted it, or ``""``.
    """

    folder: str
    name: str
    keep: bool
    mounted: bool
    in_use: bool
    owner: str


def find_disks() -> list[FoundDisk]:
    """Every disk on this engine's host, of every engine's folder under ``DISK_DIR``."""
    found = []
    for line in _agent().run(DISK_DIR, script=_SURVEY).splitlines():
        folder, name, keep, mounted, used, owner = line.split("\t", 5)
        found.append(FoundDisk(folder, name, keep == "1", mounted == "1", used == "1", owner))
    return found


def prune_disks(*, everything: bool = False, warm: Callable[[str], bool] = lambda name: False) -> int:
    """Release the disks no container uses and whose owning process is gone, of every engine's
    folder on the engine's host (see the module's docstring for which are unmounted only).

    Args:
        everything: A live owner does not keep a disk of this engine (other engines' disks,
            whose containers this engine cannot list, still need their owner gone).
        warm: Whether a kept disk's name is a warm pool sandbox's (the session manager's
            naming): such a disk that no session volume names is deleted.

    Returns:
        How many disks were released.
    """
    client = docker_client()
    home = _agent()
    own_folder = home.host_dir.rsplit("/", 1)[-1]
    labelled = {container.labels.get(label.DISK) for container in
                client.containers.list(all=True, filters={"label": label.DISK}, ignore_removed=True)}
    recorded = {volume["Labels"][label.DISK] for volume in
                client.api.volumes(filters={"label": label.DISK}).get("Volumes") or []}
    releases: dict[str, list[tuple[str, bool]]] = {}
    for disk in find_disks():
        ours = disk.folder == own_folder
        if disk.in_use or (ours and disk.name in labelled):
            continue
        if not (everything and ours) and not disk_owner_gone(disk.owner):
            continue
        delete = not disk.keep or (ours and warm(disk.name) and disk.name not in recorded)
        if disk.mounted or delete:  # else a stopped session's files, unmounted already
            releases.setdefault(disk.folder, []).append((disk.name, delete))
    released = 0
    for folder, disks in releases.items():
        agent = home if folder == own_folder else _Agent(client, host_dir=f"{DISK_DIR}/{folder}")
        try:
            for name, delete in disks:
                try:
                    agent.release(name, delete)
                except SandboxError as exc:  # busy after all: left for the next prune
                    logger.warning("%s", exc)
                    continue
                released += 1
        finally:
            if agent is not home:
                agent.close()
    return released


def disk_owner_gone(owner: str) -> bool:
    """Whether ``"<host> <pid>"`` names a process of this host that has ended ("" has no owner)."""
    host, _, pid = owner.partition(" ")
    if not owner:
        return True
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return True
    except PermissionError:
        return False
    return False
