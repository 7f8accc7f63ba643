"""binder/: the notebooks open on Binder, which has no Docker engine, and run there on LocalSandbox.

Checked the way Binder would do it, as far as this machine can: a fresh virtualenv gets
binder/requirements.txt and binder/postBuild (run from the repository root, as repo2docker does),
plus the Jupyter pieces Binder's base image brings; then binder/start runs the notebooks in it with
DOCKER_HOST pointing nowhere, so any use of Docker would fail. Cells tagged ``needs-docker`` (the
sessions part of the agents notebook) are left out; the runtimes and sessions notebooks are Docker
only and say so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
RUNS_ON_BINDER = ["01-quickstart.ipynb", "04-magics-and-widgets.ipynb", "05-agents.ipynb"]
BINDER_BASE = ["ipykernel", "nbclient", "nbformat"]  # what Binder's own image provides

EXECUTE = """
import json, sys
import nbformat
from nbclient import NotebookClient

book = nbformat.read(sys.argv[1], 4)
book.cells = [cell for cell in book.cells if "needs-docker" not in cell.metadata.get("tags", [])]
NotebookClient(book, timeout=300, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}).execute()
outputs = [output for cell in book.cells if cell.cell_type == "code" for output in cell.outputs]
print(json.dumps(outputs))
"""


@pytest.fixture(scope="module")
def binder_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Python of a fresh virtualenv set up as Binder sets up this repository."""
    home = tmp_path_factory.mktemp("binder-env")
    venv.create(home, with_pip=True)
    python = home / "bin" / "python"
    env = {**os.environ, "PATH": f"{home / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    # A copy of the repository, as Binder's own: installing from it leaves build/ behind, not in this tree.
    checkout = tmp_path_factory.mktemp("binder-repo") / "repo"
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(
        ".git", ".venv", "site", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    for command in ([str(python), "-m", "pip", "install", "-q", "-r", "binder/requirements.txt", *BINDER_BASE],
                    ["binder/postBuild"]):
        subprocess.run(command, cwd=checkout, env=env, check=True, timeout=900)
    return python


@pytest.mark.parametrize("name", RUNS_ON_BINDER)
def test_notebook_runs_on_binder_without_docker(binder_python: Path, name: str, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{binder_python.parent}{os.pathsep}{os.environ['PATH']}",
           "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    env.pop("PYDANTIC_DEEP_BACKEND", None)  # binder/start must set it
    finished = subprocess.run(
        [str(ROOT / "binder" / "start"), str(binder_python), "-c", EXECUTE, str(ROOT / "notebooks" / name),
         str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    outputs = json.loads(finished.stdout)
    assert not [output for output in outputs if output["output_type"] == "error"]
    shown = " ".join(json.dumps(output) for output in outputs)
    assert "NOT ISOLATED" in shown  # the banner of %load_ext, and LocalSandbox's own display
    assert "DockerSandbox" not in shown
    assert sys.executable != str(binder_python)
