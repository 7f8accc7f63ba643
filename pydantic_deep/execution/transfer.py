"""The file API's far end: every file operation runs *inside* the container, as the sandbox user.

The engine's archive API would be quicker to call, but the engine runs it as root and follows
symbolic links planted in the sandbox: ``ln -s /etc d`` in a command, then ``read_file("d/shadow")``,
read the container's ``/etc/shadow``, and ``write_file("d/x")`` wrote into ``/etc``. Here each
operation is one small shell script run with ``docker exec`` (about the same cost as an archive
call) as the container's user, which resolves the path with ``realpath`` and refuses it unless the
*resolved* path lies inside an allowed root. Two barriers, then: the file API follows symlinks only
within the work dir and ``/uploads``, and whatever it does, it does with the sandbox user's own
permissions, so no race between the check and the operation can reach more than a command could.

Needs ``sh``, ``cat``, ``mkdir``, ``mv``, ``find`` and coreutils' ``realpath -m`` in the image (any
Debian or Ubuntu based image has them).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import BinaryIO, Literal

import docker

from ..engine.api import Exec, docker_frames
from ..errors import (
    DiskFullError,
    PathOutsideSandboxError,
    SandboxError,
    SandboxFileNotFoundError,
    TransferInterruptedError,
)

__all__ = ["FileOp", "check_outcome", "file_command", "read_from", "write_into"]

FileOp = Literal["read", "write", "exists", "list"]

# Exit codes of the script below, beside the commands' own.
_OUTSIDE, _IS_DIR, _MISSING, _NOT_DIR, _NOT_FILE, _NO_REALPATH, _CUT_SHORT = 90, 91, 92, 93, 94, 95, 96
# 128 + SIGXFSZ: `cat` went past the container's per-file size limit (RLIMIT_FSIZE).
_FILE_TOO_LARGE = 153
_KILLED = 137  # 128 + SIGKILL: by the kernel's OOM killer, or with its container
_READY = b"ready\n"
_STALL_SECONDS = 30  # a write that moves no data for this long has lost its container (or engine)
_CHUNK = 1024 * 1024

# $1: the operation; $2: the path; $3: a write's size in bytes ("-" otherwise); then the allowed
# roots. A write goes to a temporary name in the same directory and is renamed into place only when
# all its bytes arrived: a failed write, or a writer killed half-way (its stream just ends, as a
# finished one does), leaves no partial file; and the rename replaces a symlink at the target
# instead of following it.
_SCRIPT = r"""
op=$1 path=$2 size=$3 inside=; shift 3
real=$(realpath -m -- "$path" 2>/dev/null && echo .) || exit 95
real=${real%?.}  # realpath's newline and the guard: $(...) would also strip newlines that end the name
for root do
  root=$(realpath -m -- "$root")
  case $real in "$root"|"$root"/*) inside=1;; esac
done
[ -n "$inside" ] || { printf '%s' "$real" >&2; exit 90; }
case $op in
exists) if [ -e "$real" ]; then echo yes; else echo no; fi;;
list)
  [ -e "$real" ] || exit 92
  [ -d "$real" ] || exit 93
  exec find "$real" -mindepth 1 -maxdepth 1 -printf '%y\t%s\t%T@\t%f\0';;
read)
  [ -d "$real" ] && exit 91
  [ -e "$real" ] || exit 92
  [ -f "$real" ] || exit 94
  exec cat -- "$real";;
write)
  [ -d "$real" ] && exit 91
  dir=${real%/*}
  while [ -n "$dir" ] && [ ! -e "$dir" ]; do dir=${dir%/*}; done
  [ -z "$dir" ] || [ -d "$dir" ] || { printf '%s' "$dir" >&2; exit 93; }  # a file where a directory must be
  mkdir -p -- "${real%/*}" || exit 1
  part="${real%/*}/.pydantic-deep-part-$$"  # not from the name: a 255-byte name leaves no room
  echo ready
  cat > "$part"; status=$?
  [ $status = 0 ] || cat > /dev/null  # take the rest, so that the sender finishes and hears why
  [ $status != 0 ] || [ "$(stat -c %s -- "$part")" = "$size" ] || status=96
  if [ $status = 0 ]; then mv -f -- "$part" "$real" || { rm -f -- "$part"; exit 1; }; else rm -f -- "$part"; fi
  exit $status;;
esac
"""


def file_command(op: FileOp, path: str, roots: tuple[str, ...], size: int | None = None) -> list[str]:
    """The argv that performs ``op`` on the absolute ``path``, refusing it outside ``roots``;
    a write expects ``size`` bytes on its standard input."""
    return ["sh", "-c", _SCRIPT, "sh", op, path, "-" if size is None else str(size), *roots]


def check_outcome(exit_code: int, stderr: str, path: str, roots: tuple[str, ...]) -> None:
    """Raise the error that the script's ``exit_code`` stands for; nothing for success.

    Raises:
        PathOutsideSandboxError: a symlink leads the path out of ``roots``.
        SandboxFileNotFoundError: nothing is at the path.
        IsADirectoryError, NotADirectoryError: the path is the wrong kind of entry.
        SandboxError: anything else, with the command's own message.
    """
    if exit_code == 0:
        return
    if exit_code == _OUTSIDE:
        raise PathOutsideSandboxError(path, roots, resolved=stderr)
    if exit_code == _MISSING:
        raise SandboxFileNotFoundError(f"no such file or directory in the sandbox: {path}")
    if exit_code == _IS_DIR:
        raise IsADirectoryError(f"{path} is a directory; use list_files()")
    if exit_code == _NOT_DIR:
        raise NotADirectoryError(f"{stderr or path} is not a directory")
    if exit_code == _NOT_FILE:
        raise SandboxError(f"{path} is not a regular file (a pipe or a device, say), so it cannot be read")
    if exit_code == _CUT_SHORT:
        raise SandboxError(f"writing {path} ended before all its bytes arrived; nothing was written")
    if exit_code == _NO_REALPATH:
        raise SandboxError("the sandbox's image has no coreutils `realpath -m`, which the file API needs")
    if exit_code == _FILE_TOO_LARGE:
        raise SandboxError(f"writing {path} stopped at the sandbox's per-file size limit (max_file_size); "
                           "nothing was written")
    if "No space left on device" in stderr:
        raise DiskFullError(f"writing {path} ran out of disk space: the sandbox's disk (disk_size) is full; "
                            "nothing was written")
    if exit_code == _KILLED:
        raise TransferInterruptedError(f"the transfer of {path} was killed (SIGKILL)")
    raise SandboxError(f"file operation on {path} failed (exit code {exit_code}): {stderr.strip()}")


def read_from(client: docker.DockerClient, container_id: str, path: str, roots: tuple[str, ...],
              target: BinaryIO) -> int:
    """Copy the sandbox file ``path`` into ``target``, streamed; return the byte count."""
    process = Exec(client, container_id, file_command("read", path, roots))
    total, errors = 0, bytearray()
    for out, err in process.output():
        if out:
            target.write(out)
            total += len(out)
        if err:
            errors += err
    check_outcome(process.exit_code, errors.decode(errors="replace"), path, roots)
    return total


def write_into(client: docker.DockerClient, container_id: str, path: str, roots: tuple[str, ...],
               content: BinaryIO, size: int) -> None:
    """Write the ``size`` bytes of ``content`` to the sandbox file ``path``, streamed, creating
    missing directories; the file appears only once all of them arrived."""
    process = Exec(client, container_id, file_command("write", path, roots, size), stdin=True)
    sock = process.open_socket()
    # When the container is removed mid-write, the engine stops reading without closing the stream.
    sock.settimeout(_STALL_SECONDS)
    frames = docker_frames(sock)
    errors = bytearray()
    try:
        # Content is sent only once the script said the path is fine: a refused path never reads
        # its standard input, and sending into it could block.
        if _await_ready(frames, errors):
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # `cat` stopped early
                while chunk := content.read(_CHUNK):
                    sock.sendall(chunk)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        for stream, payload in frames:
            if stream == 2:
                errors += payload
    except TimeoutError:
        raise TransferInterruptedError(f"writing {path} stalled: the engine took no data for {_STALL_SECONDS} s") \
            from None
    except (ConnectionResetError, BrokenPipeError) as exc:
        raise TransferInterruptedError(f"writing {path} was cut off: {exc.strerror}") from None
    finally:
        sock.close()
    check_outcome(process.exit_code, errors.decode(errors="replace"), path, roots)


def _await_ready(frames: Iterator[tuple[int, bytes]], errors: bytearray) -> bool:
    """Read the script's output until it says ``ready`` (True) or ends without saying it (False)."""
    said = b""
    for stream, payload in frames:
        if stream == 2:
            errors += payload
        else:
            said += payload
            if said.startswith(_READY):
                return True
    return False
