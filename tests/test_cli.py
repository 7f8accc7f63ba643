"""The pydantic-deep command: the demo, and pruning containers of killed processes."""

from __future__ import annotations

import subprocess
import sys

import docker.errors
import pytest
from helpers import answers, poll_until

from pydantic_deep.engine.client import docker_client

CLI = [sys.executable, "-m", "pydantic_deep.cli"]


def run_cli(*args: str) -> str:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, check=True, timeout=600).stdout


def test_demo_analyses_the_csv_with_pandas_inside_the_container() -> None:
    output = run_cli("demo")
    assert "Uploaded /uploads/sales.csv" in output
    assert output.splitlines()[-1].startswith("Total revenue: 300.00 from 8 rows (pandas ")
    assert "south" in output and "107.5" in output


KILLED_OWNER = (
    "import os, signal, sys\nfrom pydantic_deep import DockerSandbox\n"
    "sandbox = DockerSandbox('python-minimal', remove_on_exit=sys.argv[1] == 'tied').start()\n"
    "print(sandbox.container_id, flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n"
)


def killed_owner(mode: str) -> str:
    """Start a sandbox in a process that is then SIGKILLed; return the container id."""
    killed = subprocess.run([sys.executable, "-c", KILLED_OWNER, mode], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    return killed.stdout.strip()


def test_a_sandbox_tied_to_a_killed_process_removes_itself() -> None:
    container_id = killed_owner("tied")  # the default, remove_on_exit=True
    # The engine removes it once the lifeline stream is seen closed.
    poll_until(lambda: not answers(lambda: docker_client().containers.get(container_id), docker.errors.NotFound)(),
               "the container is removed after its process", interval=0.1)


def test_prune_removes_the_container_of_a_killed_process() -> None:
    container_id = killed_owner("untied")  # remove_on_exit=False, as sessions are
    assert docker_client().containers.get(container_id).status == "running"  # orphaned, but labelled
    assert run_cli("prune").startswith("Removed ")
    with pytest.raises(docker.errors.NotFound):
        docker_client().containers.get(container_id)


def test_images_list_shows_built_runtime_images() -> None:
    assert "pydantic-deep/debian-python:3.11-bookworm" in run_cli("images", "list")


def test_images_bootstrap_builds_all_bases_or_the_ones_named() -> None:
    # Present already: one line each (3 bases, netfilter, the egress proxy).
    assert len(run_cli("images", "bootstrap").splitlines()) == 5
    assert run_cli("images", "bootstrap", "python").startswith("pydantic-deep/debian-python:3.11-bookworm: ")
    refused = subprocess.run([*CLI, "images", "bootstrap", "nope"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "no base 'nope'; choose from debian, python, node" in refused.stderr
