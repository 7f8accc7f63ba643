"""The pydantic-deep command: the demo, and pruning containers of killed processes."""

from __future__ import annotations

import subprocess
import sys

import docker.errors
import pytest

from pydantic_deep.engine import docker_client

CLI = [sys.executable, "-m", "pydantic_deep.cli"]


def run_cli(*args: str) -> str:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, check=True, timeout=600).stdout


def test_demo_analyses_the_csv_with_pandas_inside_the_container() -> None:
    output = run_cli("demo")
    assert "Uploaded /uploads/sales.csv" in output
    assert output.splitlines()[-1].startswith("Total revenue: 300.00 from 8 rows (pandas ")
    assert "south" in output and "107.5" in output


def test_prune_removes_the_container_of_a_killed_process() -> None:
    code = (
        "import os, signal\nfrom pydantic_deep import DockerSandbox\n"
        "sandbox = DockerSandbox('python-minimal').start()\nprint(sandbox.container_id, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert killed.returncode == -9
    container_id = killed.stdout.strip()
    assert docker_client().containers.get(container_id).status == "running"  # orphaned, but labelled
    assert run_cli("prune").startswith("Removed ")
    with pytest.raises(docker.errors.NotFound):
        docker_client().containers.get(container_id)


def test_images_list_shows_built_runtime_images() -> None:
    assert "pydantic-deep/debian-python:3.11-bookworm" in run_cli("images", "list")
