"""A private Docker engine for the fault tests: its own dockerd and containerd, to kill and restart.

The shared engine is never touched: other test runs use it. The private one runs in a network
namespace of its own, keeps everything under one temporary directory, has no bridge network and no
iptables rules (sandboxes run without a network), and gets the images it needs from the shared
engine with ``docker save | docker load``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import docker
import pytest
from docker.errors import DockerException
from helpers import answers, poll_until

from pydantic_deep.sandbox.disk import engine_disk_folder

__all__ = ["PrivateEngine", "image_with_ancestors"]

_START_TIMEOUT = 60.0


class PrivateEngine:
    """A ``dockerd`` of its own, started with :meth:`start`, crashed with :meth:`kill`, and
    removed with everything it made by :meth:`close`."""

    def __init__(self) -> None:
        # Short paths: containerd's socket lives under the exec root, and a unix socket's path
        # must fit in 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="pd-engine-"))
        self.address = f"unix://{self.root}/docker.sock"
        self._containerd_pid_file = self.root / "exec" / "containerd" / "containerd.pid"
        (self.root / "daemon.json").write_text("{}")  # never the host's /etc/docker/daemon.json
        self._log = (self.root / "dockerd.log").open("ab")
        self._process: subprocess.Popen[bytes] | None = None
        self._crashed = False

    def _argv(self) -> list[str]:
        # In a network namespace of its own: a dockerd changes the host's network as it starts (one
        # without a bridge deletes the host's docker0, which the shared engine's containers need).
        return [
            "unshare", "--net", "--",
            "dockerd", "--host", self.address, "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "docker.pid"),
            "--config-file", str(self.root / "daemon.json"),
            "--bridge", "none", "--iptables=false", "--ip-masq=false", "--ip-forward=false",
        ]

    def client(self) -> docker.DockerClient:
        """A new client of this engine."""
        return docker.DockerClient(base_url=self.address, version="auto", timeout=60)

    def start(self) -> None:
        """Start the daemon (again, after :meth:`kill`) and wait until it answers."""
        self._process = subprocess.Popen(self._argv(), stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=self._log, start_new_session=True)
        process = self._process
        try:
            poll_until(answers(lambda: self.client().ping(), DockerException), "the private dockerd answers",
                       timeout=_START_TIMEOUT, interval=0.05, give_up=lambda: process.poll() is not None)
        except pytest.fail.Exception:
            pytest.fail(f"the private dockerd did not start; its log:\n{self.log_tail()}")
        self._crashed = False

    def kill(self) -> None:
        """Crash the daemon with SIGKILL. Its containerd goes with it (dockerd starts it with a
        parent-death signal); the shims that hold the containers stay, as after a real crash."""
        assert self._process is not None
        containerd = int(self._containerd_pid_file.read_text())
        self._process.kill()
        self._process.wait()
        self._process, self._crashed = None, True
        # A restart must not find the dying containerd still answering on its socket.
        poll_until(lambda: not _alive(containerd), f"containerd {containerd} ends with its dockerd",
                   timeout=_START_TIMEOUT)
        # Where pid 1 does not reap orphans (a container), the dead containerd stays a zombie,
        # which passes dockerd's check of this pid file: the restart would wait on its socket.
        self._containerd_pid_file.unlink()

    def load(self, images: Iterable[str]) -> None:
        """Copy ``images`` from the shared engine (their common layers once)."""
        save = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE)
        loaded = subprocess.run(["docker", "-H", self.address, "load", "--quiet"], stdin=save.stdout,
                                capture_output=True, text=True)
        assert save.stdout is not None
        save.stdout.close()
        if save.wait() != 0 or loaded.returncode != 0:
            raise RuntimeError(f"loading {list(images)} into the private engine failed: {loaded.stderr}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join((self.root / "dockerd.log").read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        """Remove every container, stop the daemon (which stops its containerd and the shims),
        and delete its directory and its disks' folder."""
        disks = None
        try:
            if self._crashed:  # containers still run in their shims: a daemon must stop them
                self.start()
            if self._process is not None:
                with contextlib.suppress(DockerException):
                    client = self.client()
                    for container in client.containers.list(all=True):
                        container.remove(force=True, v=True)
                    disks = Path(engine_disk_folder(client))  # made by a sandbox's disk agent, if any
                self._process.send_signal(signal.SIGTERM)
                try:
                    self._process.wait(_START_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
        finally:
            self._log.close()
            _unmount_below(self.root)
            shutil.rmtree(self.root, ignore_errors=True)
            if disks is not None:
                _unmount_below(disks)
                shutil.rmtree(disks, ignore_errors=True)


def image_with_ancestors(client: docker.DockerClient, tag: str) -> list[str]:
    """``tag`` and the tags of the images it was built upon (what a fresh engine needs to find
    the image already built and its base already there)."""
    tags = [t for layer in client.images.get(tag).history() for t in layer.get("Tags") or []]
    return list(dict.fromkeys([tag, *tags]))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie no one has reaped yet is gone for our purpose.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    return False


def _unmount_below(root: Path) -> None:
    """Unmount what a daemon killed at the wrong moment may have left mounted under ``root``."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{root}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
