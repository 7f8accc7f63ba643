"""Snapshots of disks: a sandbox's disk (``disk_size``) kept whole, as a file, by a snapshot.

A sandbox with a disk has its work dir, ``/uploads`` and home on one ext4 filesystem in a sparse
file (see :mod:`pydantic_deep.sandbox.disk`). A snapshot keeps that file as it is: with the sandbox
paused (no process of it writes), the filesystem is frozen and thawed at once (``fsfreeze``: what
was written reaches the file, consistent, the journal checkpointed), and the file copied (``cp``:
only the blocks written, in the kernel) before the sandbox resumes. A freeze held for the whole copy
would be no more consistent (nothing writes), and a process killed meanwhile would leave the disk
frozen. That is one copy of the bytes at the disk's speed, where copying the files into an image
(a tar stream through the engine into a helper's layer, then the commit of that layer) is three.
What starts from the snapshot gets a copy of the file as its disk, mounted: its files are there at
once, nothing is unpacked. A fork's copies are made the same way, straight as the forks' disks.

The files live on the engine's host, in the disk directory's ``snapshots`` folder, as
``<file>.img``; the snapshot's image names its file (:data:`~pydantic_deep.engine.labels.SNAPSHOT_DISK`)
and which of the disk's directories were mounted where. ``<file>.owner`` marks a file whose image is
not committed yet, with the process making it: ``pydantic-deep prune`` removes the files of
snapshots that failed half-way (their process gone), and any no image names.

Operations run in the disk agent, as the disk's own do (one ``docker exec`` each).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import docker

from ..engine import labels as label
from ..engine.containers import remove_container
from .disk import _agent, disk_dir, disk_owner, open_disk, release_disk
from .disk_prune import disk_owner_gone

__all__ = ["clone_disk", "copy_disk", "drop_snapshot_disks", "fill_volumes", "mark_committed", "new_snapshot_disk",
           "prune_snapshot_disks", "snapshot_disk_sizes", "spread_disk", "unpack_snapshot_disk"]

# Run in the disk agent (see disk.py): /disks is the engine's disk directory, and a disk NAME is
# mounted at $HOST_DIR/NAME in the mount namespace of the shim, reached through its /proc root.
# A target is a path under /disks without ".img": "snapshots/FILE" or a new disk's name.
_SCRIPT = r"""
set -eu
op=$1; shift
owned() { printf '%s\n' "$owner" > "/disks/$1.owner"; }
case $op in
copy)
  # copy NAME OWNER TARGET: the mounted disk NAME's file, copied to TARGET. Its container is
  # paused: no process writes to the disk. A freeze writes everything cached to the file (and,
  # with a journal, in place: a clean copy); thawed at once, so that a process killed meanwhile
  # (and this script with it, trap or not) cannot leave the disk frozen, as it could for the copy.
  name=$1 owner=$2 target=$3
  mkdir -p /disks/snapshots
  owned "$target"  # before any byte: prune sees it as being made
  mounted=/proc/$(cat /run/shim)/root$HOST_DIR/$name
  fsfreeze -f "$mounted" && fsfreeze -u "$mounted"
  cp --reflink=auto "/disks/$name.img" "/disks/$target.img.new"
  mv "/disks/$target.img.new" "/disks/$target.img";;
spread)
  # spread NAME OWNER TARGET...: the unmounted disk NAME (a fork's first) copied to the other
  # TARGETs side by side.
  name=$1 owner=$2; shift 2
  pids=
  for target; do
    owned "$target"
    { cp --reflink=auto "/disks/$name.img" "/disks/$target.img.new" &&
      mv "/disks/$target.img.new" "/disks/$target.img"; } &
    pids="$pids $!"
  done
  for pid in $pids; do wait "$pid"; done;;
clone)
  # clone FILE NAME SIZE KEEP OWNER: the disk NAME made a copy of the snapshot's FILE (unless it
  # exists), grown or shrunk to SIZE, with a journal if KEEP (a session's). Mounted by "open" after.
  file=$1 name=$2 size=$3 keep=$4 owner=$5
  img=/disks/$name.img
  [ -e "$img" ] && exit
  owned "$name"
  cp --reflink=auto "/disks/snapshots/$file.img" "$img.new"
  if [ "$(stat -c %s "$img.new")" != "$size" ]; then
    e2fsck -fp "$img.new" >/dev/null || [ $? -le 1 ]  # 1: fixed (a frozen copy is marked unclean)
    [ "$(stat -c %s "$img.new")" -lt "$size" ] && truncate -s "$size" "$img.new"
    resize2fs -f "$img.new" "$((size / 1024))K" >/dev/null 2>&1 || {
      rm -f "$img.new"; echo "the snapshot's files do not fit in a disk of $size bytes: pass a larger disk_size" >&2
      exit 1; }
    truncate -s "$size" "$img.new"
  fi
  if [ "$keep" = 1 ] && ! dumpe2fs -h "$img.new" 2>/dev/null | grep -q has_journal; then
    tune2fs -O has_journal "$img.new" >/dev/null
  fi
  mv "$img.new" "$img"
  echo new;;
volumes)
  # volumes FILE OWNER SOURCE...: each named volume's files (SOURCE: where they are on the host)
  # copied as FILE.vol/N, side by side (the container is paused: nothing changes them meanwhile).
  file=$1 owner=$2; shift 2
  mkdir -p "/disks/snapshots/$file.vol"
  owned "snapshots/$file"
  root=/proc/$(cat /run/shim)/root
  n=0 pids=
  for source; do
    cp -a --reflink=auto "$root$source/." "/disks/snapshots/$file.vol/$n" & pids="$pids $!"
    n=$((n + 1))
  done
  for pid in $pids; do wait "$pid"; done;;
fill)
  # fill FILE N TARGET ...: copy FILE.vol/N into each empty TARGET (a named volume's files on the
  # host); one that holds files keeps them. Says "filled N" for each.
  file=$1; shift
  root=/proc/$(cat /run/shim)/root
  pids=
  while [ $# -ge 2 ]; do
    n=$1 target=$2; shift 2
    if [ -z "$(ls -A "$root$target")" ]; then
      { cp -a --reflink=auto "/disks/snapshots/$file.vol/$n/." "$root$target/" && echo "filled $n"; } &
      pids="$pids $!"
    fi
  done
  for pid in $pids; do wait "$pid"; done;;
committed)
  rm -f "/disks/snapshots/$1.owner";;
drop)
  for file; do
    rm -rf "/disks/snapshots/$file.img" "/disks/snapshots/$file.img.new" "/disks/snapshots/$file.vol" &
  done
  wait
  for file; do rm -f "/disks/snapshots/$file.owner"; done  # last: till then prune sees them as being made
  wait;;
list)
  # FILE, kilobytes on the host's disk, owner (empty once its image is committed)
  cd /disks/snapshots 2>/dev/null || exit 0
  for path in *.img *.img.new *.owner *.vol; do
    [ -e "$path" ] || continue
    file=${path%.new}; file=${file%.img}; file=${file%.owner}; file=${file%.vol}
    case " ${seen:-} " in *" $file "*) continue;; esac
    seen="${seen:-} $file"
    kilobytes=$(du -skc "$file".img* "$file".vol 2>/dev/null | tail -n 1 | cut -f1)
    printf '%s\t%s\t%s\n' "$file" "$kilobytes" "$(cat "/disks/snapshots/$file.owner" 2>/dev/null || true)"
  done;;
esac
"""


def _run(*args: str) -> str:
    return _agent().run(*args, script=_SCRIPT)


def new_snapshot_disk(snapshot_name: str) -> str:
    """A file name for the disk of the snapshot ``snapshot_name`` (unique: a name may be reused)."""
    return f"{snapshot_name}-{uuid.uuid4().hex[:8]}"


def copy_disk(disk: str | None, *, snapshot_file: str | None = None, fork_disk: str | None = None,
              volume_files: str | None = None, volumes: list[str] | None = None) -> None:
    """Copy the mounted disk ``disk`` consistently (its container must be paused) to a snapshot's
    file or as the new, unmounted disk ``fork_disk`` (a fork's:
    :func:`~pydantic_deep.sandbox.disk.open_disk` mounts it); and, side by side, the named volumes
    whose files are at ``volumes`` on the host as ``<volume_files>.vol/<n>``."""
    work: list[tuple[str, ...]] = []
    if disk is not None:
        work.append(("copy", disk, disk_owner(), f"snapshots/{snapshot_file}" if snapshot_file else fork_disk or ""))
    if volumes and volume_files:
        work.append(("volumes", volume_files, disk_owner(), *volumes))
    with ThreadPoolExecutor(len(work) or 1, thread_name_prefix="pydantic-deep-snapshot-copy") as executor:
        list(executor.map(lambda args: _run(*args), work))


def spread_disk(disk: str, copies: tuple[str, ...]) -> None:
    """Copy the unmounted disk ``disk`` (a fork's, made by :func:`copy_disk`) as the new disks
    ``copies``, side by side."""
    if copies:
        _run("spread", disk, disk_owner(), *copies)


def fill_volumes(volume_files: str, targets: Mapping[int, str]) -> set[int]:
    """Copy a snapshot's named volume copies (``<volume_files>.vol/<n>``) into the empty volumes
    whose files are at ``targets[n]`` on the host. Returns the ``n`` filled (the others held files)."""
    said = _run("fill", volume_files, *(arg for n, target in targets.items() for arg in (str(n), target)))
    return {int(line.removeprefix("filled ")) for line in said.splitlines() if line.startswith("filled ")}


def mark_committed(snapshot_file: str) -> None:
    """The snapshot's image is committed: its file is kept by the image's label, not a process."""
    _run("committed", snapshot_file)


def clone_disk(snapshot_file: str, name: str, size: int, *, keep: bool) -> bool:
    """Make the disk ``name`` a copy of a snapshot's file, of ``size`` bytes, unless it exists
    (then it keeps its own files). Mount it with :func:`~pydantic_deep.sandbox.disk.open_disk`.

    Returns:
        Whether it was made now.

    Raises:
        SandboxError: the snapshot's files do not fit in ``size``, or the copy failed.
    """
    return _run("clone", snapshot_file, name, str(size), "1" if keep else "0", disk_owner()).strip() == "new"


def drop_snapshot_disks(*files: str) -> None:
    """Delete snapshots' files (none is an error)."""
    if files:
        _run("drop", *files)


def snapshot_disk_sizes() -> dict[str, tuple[int, str]]:
    """Every snapshot file on this engine: its name → (bytes it takes on the host, owner)."""
    found = {}
    for line in _run("list").splitlines():
        file, kilobytes, owner = line.split("\t", 2)
        found[file] = (int(kilobytes) * 1024, owner)
    return found


def prune_snapshot_disks(kept: set[str], *, everything: bool = False) -> int:
    """Delete the snapshot files no snapshot image names (``kept``), but those a live process is
    still making (with ``everything``, those too).

    Returns:
        How many were deleted.
    """
    orphans = [file for file, (_bytes, owner) in snapshot_disk_sizes().items()
               if file not in kept and (everything or disk_owner_gone(owner))]
    drop_snapshot_disks(*orphans)
    return len(orphans)


def unpack_snapshot_disk(files: str, image: str, *, parts: Mapping[str, str], volume_copies: tuple[str, ...],
                         size: int | None, uid: int, gid: int, target: docker.DockerClient, container_id: str,
                         paths: list[str]) -> None:
    """Copy the files a snapshot keeps beside its image (its disk's, its named volumes') at
    ``paths`` into the created container ``container_id`` of the engine ``target``: for a sandbox
    started from it whose own disk or volumes do not take them at those paths (``disk_size=None``,
    a named volume over a disk's path, a disk over a volume's, a cluster).

    The snapshot's disk file is copied to a disk of this process and mounted; that and the volume
    copies are bound into a container of ``image`` (never started) on this host's engine; each
    path streams from there (through this process, as ``docker cp`` does) into the target. Both go
    after.

    Args:
        parts: Where each of the disk's directories was mounted (``{"work": "/workspace", ...}``).
        volume_copies: The paths of the named volumes copied as ``<files>.vol/<n>``.
        size: The disk's size.
    """
    name = f"pd-disk-{uuid.uuid4().hex[:16]}"
    try:
        sources = {path: f"{disk_dir('snapshots')}/{files}.vol/{n}" for n, path in enumerate(volume_copies)}
        if any(path in parts.values() for path in paths) and size is not None:
            clone_disk(files, name, size, keep=False)
            directory, _new = open_disk(name, size, uid, gid, keep=False)
            sources |= {path: f"{directory}/{part}" for part, path in parts.items()}
        client = _agent().client
        source = client.api.create_container(image, labels=label.managed(), host_config=client.api.create_host_config(
            mounts=[docker.types.Mount(path, sources[path], type="bind", read_only=True) for path in paths]))["Id"]
        try:
            def unpack(path: str) -> None:
                chunks, _stat = client.api.get_archive(source, f"{path}/.")
                target.api.put_archive(container_id, path, chunks)  # streamed

            with ThreadPoolExecutor(len(paths) or 1, thread_name_prefix="pydantic-deep-unpack") as executor:
                list(executor.map(unpack, paths))
        finally:
            remove_container(client, source)
    finally:
        release_disk(name, delete=True)
