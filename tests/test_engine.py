"""The engine connection: a clear error when none answers, and stale pid files from killed daemons."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pydantic_deep.engine.client import _pid_alive, start_engine


def test_missing_engine_gives_one_clear_error_that_says_how_to_start_it(tmp_path: Path) -> None:
    code = (
        "from pydantic_deep import DockerSandbox, DockerUnavailableError\n"
        "try:\n    DockerSandbox('python-minimal').execute('true')\n"
        "except DockerUnavailableError as exc:\n    print(exc)\n"
    )
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/docker.sock"}
    output = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            check=True).stdout
    assert output.startswith(f"Cannot reach the Docker engine at unix://{tmp_path}/docker.sock (")
    assert "pydantic-deep engine start" in output and "systemctl start docker" in output


def test_stale_pid_file_is_removed_and_a_live_one_kept(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / "docker.pid"
    stale.write_text(str(dead.pid))
    assert not _pid_alive(stale) and not stale.exists()
    live = tmp_path / "live.pid"
    live.write_text(str(os.getpid()))
    assert _pid_alive(live) and live.exists()
    assert not _pid_alive(tmp_path / "absent.pid")


def test_start_engine_leaves_a_running_engine_alone() -> None:
    assert start_engine() == "Docker engine already running"
