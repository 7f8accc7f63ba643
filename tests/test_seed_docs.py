"""The user guide (docs/docker-runtimes.md, the page users have read) runs as written.

Each Python block is found under its heading and run. Blocks for features of later issues are
skipped with the issue that brings them, so a new or renamed block fails here until it is placed.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from pydantic_deep import DockerSandbox, SandboxState, SessionManager
from pydantic_deep.engine.client import docker_client
from pydantic_deep.images.bases import PYTHON
from pydantic_deep.images.runtime import runtime_image_tag

GUIDE = Path(__file__).parents[1] / "docs" / "docker-runtimes.md"
LATER: dict[str, str] = {}  # heading -> the issue that brings what its block needs


def python_blocks() -> dict[str, str]:
    """Heading -> the last Python block under it (with any lead-in text stripped)."""
    blocks: dict[str, str] = {}
    heading = ""
    for match in re.finditer(r"^(#{2,3}) ([^\n]+)$|^ *```python\n(.*?)^ *```", GUIDE.read_text(), re.M | re.S):
        if match.group(2):
            heading = match.group(2).strip()
        else:
            indent = len(match.group(0)) - len(match.group(0).lstrip(" "))
            blocks[heading] = "\n".join(line[indent:] for line in match.group(3).splitlines())
    return blocks


# Some blocks are fragments that rely on the imports of the blocks above them, as a reader who runs
# the page top to bottom has them.
EARLIER_IMPORTS = "from pydantic_deep import BUILTIN_RUNTIMES, DockerSandbox, RuntimeConfig, SessionManager\n"


def run_block(heading: str, check: str = "") -> dict[str, object]:
    """Run the block under ``heading``, then ``check``; stop every sandbox it made."""
    namespace: dict[str, object] = {}
    try:
        code = EARLIER_IMPORTS + python_blocks()[heading] + "\n" + check
        exec(compile(code, f"{GUIDE.name}: {heading}", "exec"), namespace)
    finally:
        for value in namespace.values():
            if isinstance(value, DockerSandbox):
                value.stop()
    return namespace


@pytest.mark.parametrize("heading", sorted(python_blocks()))
def test_every_block_is_checked_here(heading: str) -> None:
    checked = {"Using Built-in Runtimes", "Creating Custom Runtimes", "Runtime Configuration Options",
               "Best Practices", "Session Persistence", "Automatic Cleanup", "Configuration Options",
               "Quick Start", "Basic Usage", "Complete Example", "From Threads and Notebooks", "Terminals"}
    if heading in LATER:
        pytest.skip(LATER[heading])
    assert heading in checked, f"a Python block under {heading!r} is not run by any test"


def test_using_builtin_runtimes() -> None:
    namespace = run_block("Using Built-in Runtimes")
    sandbox = namespace["sandbox"]
    assert isinstance(sandbox, DockerSandbox) and sandbox.runtime.name == "python-datascience"


def test_creating_custom_runtimes() -> None:
    namespace = run_block("Creating Custom Runtimes")
    sandbox = namespace["sandbox"]
    assert isinstance(sandbox, DockerSandbox) and sandbox.runtime.name == "ml-env"
    # Building it would download PyTorch (gigabytes); its recipe is checked instead.
    assert sandbox.runtime.setup_commands == ["apt-get update", "apt-get install -y git"]
    assert runtime_image_tag(sandbox.runtime, docker_client().images.get(PYTHON.tag).id, None).startswith(
        "pydantic-deep/ml-env:")


@pytest.mark.terminal
def test_terminals(capsys: pytest.CaptureFixture[str]) -> None:
    namespace = run_block("Terminals")
    assert capsys.readouterr().out.replace("\r", "").rstrip().endswith("\n2 4 6")  # the output, not the echo
    assert not namespace["term"].alive  # type: ignore[attr-defined]


def test_configuration_options_block_lists_alternatives_and_is_refused_as_such() -> None:
    # The block shows `image=` and `base_image=` together as a menu ("choose one"): taken
    # literally it names two image sources, which RuntimeConfig refuses with a clear message.
    with pytest.raises(ValidationError, match="give exactly one of 'image'"):
        run_block("Runtime Configuration Options")


def test_best_practices_prewarm_starts_the_container() -> None:
    namespace = run_block("Best Practices", check="assert sandbox.state.value == 'running'")
    assert namespace["sandbox"].state is SandboxState.STOPPED  # type: ignore[attr-defined]


async def run_session_blocks(*headings: str) -> dict[str, object]:
    """Run blocks that use the guide's ``manager`` (made as in "Basic Usage") and top-level await."""
    namespace: dict[str, object] = {"manager": SessionManager(default_runtime="python-datascience",
                                                              name="test-seed-docs")}
    try:
        for heading in headings:
            code = compile(EARLIER_IMPORTS + python_blocks()[heading], f"{GUIDE.name}: {heading}", "exec",
                           flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            result = eval(code, namespace)
            if inspect.iscoroutine(result):
                await result
    finally:
        await namespace["manager"].shutdown(keep_files=False)  # type: ignore[attr-defined]
    return namespace


@pytest.mark.anyio
async def test_session_persistence(capsys: pytest.CaptureFixture[str]) -> None:
    namespace = await run_session_blocks("Session Persistence")
    assert capsys.readouterr().out.strip() == "hello"  # the guide: print(result.output)  # "hello"
    assert namespace["result"].exit_code == 0  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_automatic_cleanup_and_configuration_options() -> None:
    namespace = await run_session_blocks("Automatic Cleanup", "Configuration Options")
    assert namespace["manager"]._cleanup_thread is None  # type: ignore[attr-defined]
    configured = SessionManager(default_runtime="python-datascience", default_idle_timeout=3600)
    assert configured.default_idle_timeout == 3600 and configured.default_runtime.name == "python-datascience"


def test_from_threads_and_notebooks(capsys: pytest.CaptureFixture[str]) -> None:
    namespace = run_block("From Threads and Notebooks")
    assert capsys.readouterr().out == "hello\n\n"
    assert namespace["manager"].session_count == 0  # type: ignore[attr-defined]


# The agent blocks need a model: Pydantic AI's offline TestModel, named the documented way.


@pytest.mark.anyio
async def test_quick_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYDANTIC_DEEP_MODEL", "test")
    namespace = await run_session_blocks("Quick Start")
    assert namespace["result"].output  # type: ignore[attr-defined]
    assert namespace["sandbox"].state is SandboxState.STOPPED  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_basic_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYDANTIC_DEEP_MODEL", "test")
    namespace = await run_session_blocks("Basic Usage")
    assert await namespace["handle_user_request"]("test-seed-user", "hello")  # type: ignore[operator]
    await namespace["manager"].shutdown(keep_files=False)  # type: ignore[attr-defined]


def test_complete_example(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PYDANTIC_DEEP_MODEL", "test")
    monkeypatch.chdir(tmp_path)
    for user in ("alice", "bob", "charlie"):
        (tmp_path / f"{user}_data.csv").write_text(f"user,value\n{user},1\n")
    namespace: dict[str, object] = {"__name__": "__main__"}
    try:
        exec(compile(python_blocks()["Complete Example"], f"{GUIDE.name}: Complete Example", "exec"), namespace)
    finally:  # the example keeps its users' files, as shutdown() does by default: remove them here
        manager = SessionManager(name="default")
        for user in ("alice", "bob", "charlie"):
            asyncio.run(manager.release(user))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["alice", "bob", "charlie"]
    assert lines[3:] == ["Active sessions: 3", "Cleaned up 3 sessions"]


def test_examples_complete_example_runs(tmp_path: Path) -> None:
    script = Path(__file__).parents[1] / "examples" / "complete_example.py"
    env = {**os.environ, "PYDANTIC_DEEP_MODEL": "test"}
    try:
        output = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                                text=True, check=True, timeout=600).stdout
    finally:
        manager = SessionManager(name="default")
        for user in ("alice", "bob", "charlie"):
            asyncio.run(manager.release(user))
    assert output.splitlines()[3:] == ["Active sessions: 3", "Cleaned up 3 sessions"]
