"""Capped disks: everything a sandbox writes to the host's disk, on one size-capped filesystem.

Docker cannot cap a container's writable layer on overlay2 over ext4 (the common host), nor a
named volume on any storage driver. So a sandbox with ``disk_size`` gets a *disk* of its own: an
ext4 filesystem in a sparse file of that size, attached to a loop device and mounted on the
engine's host under ``/var/lib/pydantic-deep/disks/<engine>/<disk>``. Its ``work``, ``uploads``
and ``home`` directories are bind-mounted at the sandbox's work dir, ``/uploads`` and home (and
``tmp`` at ``/tmp`` when ``tmp_size=None`` puts ``/tmp`` on disk), and
the container's root filesystem is read-only: nothing else it can write lives on the host's disk
(``/tmp`` is memory, see ``tmp_size``). A writer past the cap gets ``No space left on device``
from its own filesystem; the host's filesystem never fills, and no other sandbox notices.

Why this way: a loop-mounted file works on every engine that can run a container with
``CAP_SYS_ADMIN`` (overlay2 on ext4 or xfs, btrfs, zfs, a Docker Desktop VM), needs no engine
configuration (xfs project quotas need the data root on xfs mounted with ``pquota``), and the
file is sparse: a disk costs only what is written to it. It is made with lazy inode tables and
(for disks that go with their sandbox) no journal, in about 10 ms, and holds about 4 MB when new.
Each process keeps a few disks made ahead (:mod:`.disk_stock`), so that a start or a new session
takes one at once instead of waiting for a disk operation.

Who does the privileged part: a *disk agent*, one small container per process and engine, from
the air-gapped minbase image, with ``CAP_SYS_ADMIN`` (mount), ``CAP_SYS_PTRACE`` (enter the
engine's mount namespace), access to loop devices, and the host's disk directory mounted. Disk
operations are asked of it over its standard input and answered on its output, any number at once
(a few milliseconds each, where a ``docker exec`` took some 80). It works the same whether this process
is root or a user with access to the Docker socket, on the engine's host or elsewhere (a remote
engine, a container holding the socket), because it runs where the engine runs: the mounts are
made in the mount namespace of the agent's containerd shim, where the engine resolves bind mounts.
Like a sandbox, the agent is tied to this process through that standard input: it goes when the
process goes, even by SIGKILL.

What outlives a killed process is found again by ``pydantic-deep prune``
(:func:`pydantic_deep.sandbox.disk_prune.prune_disks`): every disk records its owner (host and
pid); a disk that no container uses and whose owner is gone is unmounted (its loop device goes
with the mount) and, unless it holds a session's files, deleted.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import itertools
import logging
import os
import socket
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import docker
from docker.errors import APIError

from ..engine import labels as label
from ..engine.api import attach_stdio, docker_frames
from ..engine.client import docker_client
from ..engine.containers import remove_container
from ..errors import SandboxError
from ..images.bases import MINBASE, bootstrap_base

__all__ = ["DISK_DIR", "DiskInfo", "disk_dir", "engine_disk_folder", "list_disks", "open_disk", "release_disk"]

logger = logging.getLogger("pydantic_deep.disk")

DISK_DIR = os.environ.get("PYDANTIC_DEEP_DISK_DIR", "/var/lib/pydantic-deep/disks")
"""Where disks live on the engine's host (``$PYDANTIC_DEEP_DISK_DIR``), one folder per engine."""

_READY_TIMEOUT = 60  # seconds a new agent may take to start
_OPERATION_TIMEOUT = 300  # seconds one operation may take (a make of several disks on a slow disk)


# Run in the agent. $1 is the operation; the disk directory of this engine is /disks in the agent
# and "$HOST_DIR" on the engine's host. Mounts happen in the shim's mount namespace (its pid is
# in /run/shim), with the host's own mount, which sets up the loop device and frees it on umount.
_SCRIPT = r"""
set -eu
op=$1; shift
host() { nsenter -t "$(cat /run/shim)" -m -- sh -c "$@"; }
case $op in
open)
  name=$1 size=$2 uid=$3 gid=$4 keep=$5 owner=$6
  img=/disks/$name.img
  # The owner first: a make cut short (its process killed, and this agent with it) leaves a
  # half-made "$img.new" that prune then finds as that owner's.
  printf '%s\n' "$owner" > "/disks/$name.owner"
  if [ ! -e "$img" ]; then
    skel=/tmp/skel-$name
    rm -rf "$skel" && mkdir -p "$skel/work" "$skel/uploads" "$skel/home" "$skel/tmp"
    chown -R "$uid:$gid" "$skel" && chmod 1777 "$skel/tmp"
    journal=; [ "$keep" != 0 ] || journal="-O ^has_journal"  # 2: a session's to be (disk_stock.py)
    lazy=lazy_itable_init=1,lazy_journal_init=1,assume_storage_prezeroed=1
    { truncate -s "$size" "$img.new" &&
      mkfs.ext4 -q -m 0 $journal -E "$lazy,root_owner=$uid:$gid" -d "$skel" "$img.new"; } ||
      { rm -rf "$skel" "$img.new" "/disks/$name.owner"; exit 1; }
    rm -rf "$skel"
    mv "$img.new" "$img"
    echo new
  fi
  if [ "$keep" = 1 ]; then : > "/disks/$name.keep"; fi
  host 'grep -q " $1 ext4 " /proc/self/mounts && exit
        mkdir -p "$1" && mount -o loop,nosuid,nodev "$1.img" "$1" || { rmdir "$1"; exit 1; }' sh "$HOST_DIR/$name";;
release)
  # Pairs of name and delete flag: the disks released at once (a shutdown's) go in one operation,
  # their unmounts side by side. A disk that cannot be unmounted is kept, and said ("failed NAME").
  failed=$(host 'h=$1; shift
        while [ $# -ge 2 ]; do
          { if grep -q " $h/$1 ext4 " /proc/self/mounts; then
              umount "$h/$1" 2>/dev/null || umount -l "$h/$1" >&2 || { echo "failed $1"; exit; }
            fi
            rmdir "$h/$1" 2>/dev/null || true; } &
          shift 2
        done
        wait' sh "$HOST_DIR" "$@")
  while [ $# -ge 2 ]; do  # freeing a file's blocks takes a while: side by side too
    name=$1 delete=$2; shift 2
    case "
$failed
" in *"
failed $name
"*) echo "failed $name"; continue;; esac
    rm -f "/disks/$name.owner"
    if [ "$delete" = 1 ]; then rm -f "/disks/$name.img" "/disks/$name.img.new" "/disks/$name.keep" & fi
  done
  wait;;
list)
  mounts=$(host 'grep " $1/" /proc/self/mounts | cut -d" " -f2' sh "$HOST_DIR" || true)
  for img in /disks/*.img /disks/*.img.new; do  # .img.new alone: half made (see open)
    [ -e "$img" ] || continue
    name=${img##*/}; name=${name%.new}; name=${name%.img}
    [ "$img" = "/disks/$name.img" ] || [ ! -e "/disks/$name.img" ] || continue
    keep=0; [ -e "/disks/$name.keep" ] && keep=1
    mounted=0; case "
$mounts
" in *"
$HOST_DIR/$name
"*) mounted=1;; esac
    owner=$(cat "/disks/$name.owner" 2>/dev/null || true)
    kilobytes=$(du -k "$img" 2>/dev/null | cut -f1)
    [ -n "$kilobytes" ] || continue  # deleted meanwhile (a killed process's agent releasing it)
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$keep" "$mounted" "$kilobytes" "$owner"
  done;;
esac
"""

# The agent's main process: note the shim's pid (whose mount namespace the engine's bind mounts are
# resolved in), say "ready", then serve requests from the lifeline until it ends (then wait for those
# under way). "define DIGEST" and a line of base64 keep a script; "run ID DIGEST COUNT" and COUNT
# lines of arguments run it in the background. Each answer, "ID CODE OUT_BYTES ERR_BYTES" and those
# bytes, is written whole under a lock, as several may end at once.
_SERVE = r"""
echo $PPID > /run/shim
mkdir -p /tmp/scripts /tmp/answers
answer() {
  a=/tmp/answers/$1
  { printf '%s %s %s %s\n' "$1" "$2" "$(wc -c < "$a.out")" "$(wc -c < "$a.err")"; cat "$a.out" "$a.err"; } > "$a"
  flock /tmp/answers cat "$a"
  rm -f "$a" "$a.out" "$a.err"
}
set -f
echo ready
while read -r word id script count; do
  case $word in
  define) read -r text && printf '%s' "$text" | base64 -d > "/tmp/scripts/$id";;
  run)
    set --
    while [ $# -lt "$count" ] && IFS= read -r arg; do set -- "$@" "$arg"; done
    { sh "/tmp/scripts/$script" "$@" > "/tmp/answers/$id.out" 2> "/tmp/answers/$id.err"; answer "$id" $?; } &
    ;;
  esac
done
wait
set +f
"""

# Shell, in the host's mount namespace (inside a single-quoted `sh -c`): `in_use IMG` is true when a
# loop device of the disk file IMG is mounted anywhere at a path inside its filesystem (a sandbox's
# bind of its work dir, say). Every process's mount table is read, so containers of any engine on
# this host count; the disk's own mount (at its root, "/") does not.
IN_USE = r"""
busy=$(cat /proc/[0-9]*/mountinfo 2>/dev/null | awk "\$4 != \"/\" {print \$3}" | sort -u)
in_use() {
  for device in $(losetup -n -O NAME -j "$1" 2>/dev/null); do
    printf "%s\n" "$busy" | grep -qxF "$(cat "/sys/block/${device#/dev/}/dev")" && return 0
  done
  return 1
}
"""

# Run by the agent when its lifeline ends without the agent being removed: its process was killed.
# The disks that process owned and nobody else holds (its stock made ahead, a sandbox's whose
# container went with it) are released and deleted then and there, as prune would; a disk holding
# a session's files (.keep), or that a container still mounts after 10 s (IN_USE), is left to prune.
_WHEN_THE_OWNER_IS_GONE = r"""
for round in $(seq 20); do
  found=$(nsenter -t "$(cat /run/shim)" -m -- sh -c '
    h=$1 owner=$2""" + IN_USE + r"""
    for o in "$h"/*.owner; do
      [ -e "$o" ] && [ "$(cat "$o")" = "$owner" ] || continue
      disk=${o%.owner}
      [ -e "$disk.keep" ] && continue
      used=0; in_use "$disk.img" && used=1
      echo "$used ${disk##*/}"
    done' sh "$HOST_DIR" "$OWNER")
  free=$(printf '%s\n' "$found" | sed -n 's/^0 //p')
  [ -z "$free" ] || sh -c "$DISK_SCRIPT" sh release $(printf '%s 1 ' $free) >/dev/null 2>&1 || true
  printf '%s\n' "$found" | grep -q '^1 ' || break
  sleep 0.5
done
"""


@dataclass(frozen=True)
class DiskInfo:
    """A disk on the engine's host, as :func:`list_disks` finds it.

    Attributes:
        name: The disk's name (a sandbox's container name, or a session's disk).
        keep: It holds a session's files: stopping its sandbox keeps it.
        mounted: Its filesystem is mounted (a loop device is attached).
        host_bytes: What its file takes on the host's disk now (it is sparse).
        owner: ``"<host> <pid>"`` of the process that last mounted it, or ``""``.
    """

    name: str
    keep: bool
    mounted: bool
    host_bytes: int
    owner: str


class _Agent:
    """The disk agent of this process for one engine (see the module's docstring)."""

    def __init__(self, client: docker.DockerClient, host_dir: str | None = None) -> None:
        self.client = client
        self.host_dir = host_dir if host_dir is not None else engine_disk_folder(client)
        self.container_id: str | None = None
        self._requests: _Requests | None = None  # the running agent's, which is also its lifeline
        self._lock = threading.Lock()
        self._releases: list[tuple[str, bool, Future[None]]] = []  # waiting for the next release operation
        self._releasing = False  # a thread runs release operations until none waits
        self._releases_lock = threading.Lock()

    def run(self, *args: str, script: str = _SCRIPT) -> str:
        """Run the script's operation ``args`` in the agent (or another ``script`` of the same
        environment: ``$HOST_DIR``, ``/disks``, ``/run/shim``, and this one in ``$DISK_SCRIPT``);
        its standard output.

        An agent that ended (removed or stopped from outside, even during the operation) is
        replaced once and the operation run again: every operation may run twice.
        """
        operation = " ".join(args[:2]) or "of a script"
        for attempt in (1, 2):
            requests = self._ensure()
            try:
                code, out, err = requests.run(script, args)
            except _AgentEnded:
                self._forget(requests)
                if attempt == 1:
                    continue
                raise SandboxError(f"the disk agent ended during the disk operation {operation}, twice; "
                                   "see the engine's log (it must run a container with CAP_SYS_ADMIN)") from None
            except TimeoutError:
                raise SandboxError(f"the disk operation {operation} took more than {_OPERATION_TIMEOUT} s; "
                                   "see the engine's log") from None
            if code != 0:
                detail = err.strip() or f"exit code {code}"
                raise SandboxError(f"the disk operation {operation} failed: {detail}")
            return out
        raise AssertionError("unreachable")

    def release(self, name: str, delete: bool) -> None:
        """Run the ``release`` operation for ``name``, together with the releases other threads
        ask for meanwhile: one operation for a whole shutdown's disks, not one each."""
        asked: Future[None] = Future()
        with self._releases_lock:
            self._releases.append((name, delete, asked))
            lead = not self._releasing
            self._releasing = True
        while lead:  # until no release waits; the others wait for their result
            with self._releases_lock:
                batch, self._releases = self._releases, []
                if not batch:
                    self._releasing = False
                    break
            try:
                said = self.run("release", *(arg for disk, deleting, _ in batch
                                             for arg in (disk, "1" if deleting else "0")))
            except BaseException as exc:
                for *_, future in batch:
                    future.set_exception(exc)
                continue
            failed = {line.removeprefix("failed ") for line in said.splitlines()}
            for disk, _, future in batch:
                if disk in failed:
                    future.set_exception(SandboxError(f"the disk {disk} could not be unmounted (in use?); "
                                                      "`pydantic-deep prune` releases it once nothing uses it"))
                else:
                    future.set_result(None)
        asked.result()

    def close(self) -> None:
        """Remove the agent's container now (it would go by itself once its stream ended)."""
        with self._lock:
            container_id, requests = self.container_id, self._requests
            self.container_id = self._requests = None
        if container_id is not None:
            with contextlib.suppress(Exception):  # gone with its engine
                remove_container(self.client, container_id)
        if requests is not None:
            requests.close()

    def _forget(self, requests: _Requests) -> None:
        with self._lock:
            if self._requests is requests:
                self.container_id = self._requests = None
        requests.close()

    def _ensure(self) -> _Requests:
        with self._lock:
            if self._requests is None:
                self.container_id, self._requests = self._start()
            return self._requests

    def _start(self) -> tuple[str, _Requests]:
        client = self.client
        bootstrap_base(client, MINBASE)  # a no-op where it exists (it is built once, air-gapped)
        try:
            container = client.containers.create(
                MINBASE.tag, name=f"pydantic-deep-disk-agent-{os.getpid()}-{uuid.uuid4().hex[:6]}",
                # Serve operations asked on standard input (_SERVE) until it ends: this process
                # ending ends the agent, once it released what the process left (_WHEN_THE_OWNER_IS_GONE).
                entrypoint=["sh", "-c", _SERVE + _WHEN_THE_OWNER_IS_GONE],
                environment={"HOST_DIR": self.host_dir, "DISK_SCRIPT": _SCRIPT, "OWNER": disk_owner()},
                stdin_open=True, auto_remove=True, user="0:0", network_mode="none",
                pid_mode="host", cap_drop=["ALL"],
                cap_add=["SYS_ADMIN", "SYS_CHROOT", "SYS_PTRACE", "CHOWN", "DAC_OVERRIDE", "FOWNER"],
                # Loop devices (block major 7) and /dev/loop-control, used from the host's /dev.
                device_cgroup_rules=["b 7:* rmw", "c 10:237 rmw"],
                security_opt=["apparmor=unconfined"],
                volumes={self.host_dir: {"bind": "/disks", "mode": "rw"}},
                read_only=True, tmpfs={"/run": "size=1m", "/tmp": "size=64m"},
                log_config=docker.types.LogConfig(type=docker.types.LogConfig.types.NONE),
                labels=label.managed({label.KIND: label.KIND_DISK_AGENT, label.OWNER_PID: str(os.getpid()),
                                      label.OWNER_HOST: socket.gethostname()}),
            )
        except APIError as exc:
            raise _refused(exc) from None
        requests = None
        try:
            requests = _Requests(attach_stdio(client, container.id))  # before the start: its first word is there
            try:
                container.start()
            except APIError as exc:  # a rootless engine, say, creates it and cannot start it
                raise _refused(exc) from None
            requests.wait_ready()
        except BaseException:
            if requests is not None:
                requests.close()
            remove_container(client, container.id)
            raise
        return str(container.id), requests


class _AgentEnded(Exception):
    """The agent's stream ended: the agent is gone."""


class _Requests:
    """Operations asked of a running agent over its standard input, answered on its standard
    output (see _SERVE): no ``docker exec`` each (about 90 ms of the engine's CPU here), any number
    at once. The stream is also the agent's lifeline: closed, the agent cleans up and ends."""

    def __init__(self, stream: socket.socket) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, Future[tuple[int, str, str]]] = {}
        self._defined: set[str] = set()  # scripts the agent holds, by digest
        self._ready = threading.Event()
        self._ended = False
        threading.Thread(target=self._read, name="pydantic-deep-disk-agent", daemon=True).start()

    def wait_ready(self) -> None:
        """Wait for the agent's first word (it noted the shim's pid)."""
        if not self._ready.wait(_READY_TIMEOUT) or self._ended:
            raise SandboxError(f"the disk agent did not start within {_READY_TIMEOUT} s; see the engine's log")

    def run(self, script: str, args: Sequence[str]) -> tuple[int, str, str]:
        """``sh SCRIPT ARGS...`` in the agent: its exit code, standard output and error.

        Raises:
            _AgentEnded: the agent ended before it answered.
            TimeoutError: it did not answer within _OPERATION_TIMEOUT seconds.
        """
        if any("\n" in arg for arg in args):
            raise ValueError(f"a disk operation's arguments are lines: {args!r}")
        digest = hashlib.sha256(script.encode()).hexdigest()[:16]
        answer: Future[tuple[int, str, str]] = Future()
        with self._lock:
            if self._ended:
                raise _AgentEnded
            request = next(self._ids)
            self._waiting[request] = answer
            message = "" if digest in self._defined else \
                f"define {digest}\n{base64.b64encode(script.encode()).decode()}\n"
            message += f"run {request} {digest} {len(args)}\n" + "".join(f"{arg}\n" for arg in args)
            self._defined.add(digest)
            try:
                self._stream.sendall(message.encode())
            except OSError:
                self._end_locked()
                raise _AgentEnded from None
        return answer.result(_OPERATION_TIMEOUT)

    def close(self) -> None:
        """End the stream: the agent cleans up and ends (its waiting callers get _AgentEnded)."""
        with self._lock:
            self._end_locked()
        with contextlib.suppress(OSError):
            self._stream.close()

    def _end_locked(self) -> None:
        self._ended = True
        self._ready.set()
        waiting, self._waiting = self._waiting, {}
        for answer in waiting.values():
            answer.set_exception(_AgentEnded())

    def _read(self) -> None:
        """Hand each answer (ID CODE OUT_BYTES ERR_BYTES, then those bytes) to its caller."""
        buffer = bytearray()
        try:
            for stream, payload in docker_frames(self._stream):
                if stream != 1:
                    continue
                buffer += payload
                while (end := buffer.find(b"\n")) >= 0:
                    words = buffer[:end].split()
                    if words == [b"ready"]:
                        del buffer[:end + 1]
                        self._ready.set()
                        continue
                    request, code, out_bytes, err_bytes = map(int, words)
                    if len(buffer) < end + 1 + out_bytes + err_bytes:
                        break
                    out = buffer[end + 1:end + 1 + out_bytes].decode(errors="replace")
                    err = buffer[end + 1 + out_bytes:end + 1 + out_bytes + err_bytes].decode(errors="replace")
                    del buffer[:end + 1 + out_bytes + err_bytes]
                    with self._lock:
                        answer = self._waiting.pop(request, None)
                    if answer is not None:
                        answer.set_result((code, out, err))
        except (OSError, ValueError):
            pass  # closed here, or the engine's stream broke: the agent is as good as gone
        finally:
            with self._lock:
                self._end_locked()


def _refused(exc: APIError) -> SandboxError:
    return SandboxError(f"disk_size needs a helper container with CAP_SYS_ADMIN and loop devices, which this "
                        f"Docker engine refused ({exc.explanation}); pass disk_size=None to run without a disk cap")


_agents: dict[int, _Agent] = {}
_agents_lock = threading.Lock()


def _agent() -> _Agent:
    client = docker_client()
    with _agents_lock:
        agent = _agents.get(id(client))
        if agent is None:
            agent = _agents[id(client)] = _Agent(client)
        return agent


def engine_disk_folder(client: docker.DockerClient) -> str:
    """The folder of the disks of ``client``'s engine, on that engine's host."""
    # Engines on one host may share an ID (Docker 20.10 derives it from /etc/docker/key.json),
    # never a data root: the two together name the engine.
    info = client.info()
    engine = hashlib.sha256(f"{info['ID']} {info['DockerRootDir']}".encode()).hexdigest()[:12]
    return f"{DISK_DIR}/{engine}"


def disk_dir(name: str) -> str:
    """Where the disk ``name`` is mounted on the engine's host (its ``work``, ``uploads`` and
    ``home`` directories are bind-mounted into the sandbox)."""
    return f"{_agent().host_dir}/{name}"


def open_disk(name: str, size: int, uid: int, gid: int, *, keep: bool) -> tuple[str, bool]:
    """Make the disk ``name`` of ``size`` bytes (unless it exists) and mount it.

    Returns:
        Its directory on the engine's host, and whether it was made now (it is empty).

    An existing disk keeps its files and its size. Safe to call when it is mounted already.

    Args:
        uid: Owner, with ``gid``, of its directories (the sandbox user).
        keep: It holds files that outlive the sandbox (a session's): it gets a journal, and
            ``pydantic-deep prune`` only unmounts it (unless it is a warm sandbox's that no
            session got).

    Raises:
        SandboxError: the engine cannot make or mount it.
    """
    agent = _agent()
    said = agent.run("open", name, str(size), str(uid), str(gid), "1" if keep else "0",
                     disk_owner())
    return f"{agent.host_dir}/{name}", said.strip() == "new"


def disk_owner() -> str:
    """What a disk records as its owner (this process): ``"<host> <pid>"``."""
    return f"{socket.gethostname()} {os.getpid()}"


@atexit.register
def _at_exit() -> None:
    """Remove the agents (which would go by themselves once this process is gone, a moment later)."""
    with _agents_lock:
        agents = list(_agents.values())
    for agent in agents:
        agent.close()


def release_disk(name: str, *, delete: bool) -> None:
    """Unmount the disk ``name`` (its loop device goes with it), and with ``delete`` remove its file.

    Call it once no container uses the disk. A disk that is not there is fine.
    """
    _agent().release(name, delete)


def list_disks() -> list[DiskInfo]:
    """Every disk of this engine, mounted or not."""
    disks = []
    for line in _agent().run("list").splitlines():
        name, keep, mounted, kilobytes, owner = line.split("\t", 4)
        disks.append(DiskInfo(name, keep == "1", mounted == "1", int(kilobytes) * 1024, owner))
    return disks
