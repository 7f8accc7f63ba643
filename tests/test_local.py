"""LocalSandbox: the same API on local processes (no Docker), marked as not isolated."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pydantic_deep import LocalSandbox, OutputChunk, PathOutsideSandboxError, SandboxFileNotFoundError
from pydantic_deep.interpreter import SandboxInterpreter


def test_commands_files_and_paths() -> None:
    with LocalSandbox("python-minimal") as sandbox:
        directory = sandbox.directory
        assert directory is not None and "NOT ISOLATED" in repr(sandbox) and "NOT ISOLATED" in sandbox._repr_html_()
        result = sandbox.execute("echo hi; echo err >&2; pwd; exit 3")
        assert (result.stdout, result.stderr, result.exit_code) == (f"hi\n{directory / 'workspace'}\n", "err\n", 3)
        assert sandbox.write_file("/uploads/data.csv", "a\n") == "/uploads/data.csv"
        assert sandbox.execute("cat uploads/data.csv \"$PYDANTIC_DEEP_UPLOADS/data.csv\"").output == "a\na\n"
        sandbox.write_file("deep/note.txt", "x")
        assert [e.name for e in sandbox.list_files("deep")] == ["note.txt"] and sandbox.exists("deep/note.txt")
        assert sandbox.read_file("/workspace/deep/note.txt") == b"x"
        with pytest.raises(PathOutsideSandboxError):
            sandbox.read_file("/etc/passwd")
        sandbox.execute("ln -s /etc/passwd leak")
        with pytest.raises(PathOutsideSandboxError):  # a symlink that leads out is refused too
            sandbox.read_file("leak")
        with pytest.raises(SandboxFileNotFoundError):
            sandbox.read_file("missing.txt")
        timed = sandbox.execute("sleep 30 & sleep 30", timeout=0.5)
        assert timed.timed_out and timed.exit_code == 137
        chunks: list[OutputChunk] = []
        sandbox.execute("echo streamed", on_output=chunks.append)
        assert chunks == [OutputChunk("stdout", "streamed\n")]
    assert not directory.exists()


def test_async_and_the_interpreter(tmp_path: Path) -> None:
    with LocalSandbox("python-minimal") as sandbox:
        results = asyncio.run(_many(sandbox))
        assert [r.output for r in results] == ["0\n", "1\n", "2\n"]
        interpreter = SandboxInterpreter(sandbox)
        interpreter.execute("x = 20")
        assert interpreter.execute("x * 2").result == {"text/plain": "40"}
        interpreter.push("items", [1, 2, (3, 4)])
        assert interpreter.pull("items") == [1, 2, (3, 4)]
        sandbox.write_file("helpers.py", "answer = 42\n")  # cells import from the work dir, as in Jupyter
        assert interpreter.execute("import helpers; helpers.answer").result == {"text/plain": "42"}
        assert [entry.name for entry in asyncio.run(sandbox.alist_files("."))] == ["helpers.py", "uploads"]
        interpreter.close()


async def _many(sandbox: LocalSandbox) -> list:
    return list(await asyncio.gather(*(sandbox.aexecute(f"echo {i}") for i in range(3))))


def test_the_backend_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    from pydantic_deep import DockerSandbox, UnknownBackendError, default_backend, open_sandbox

    monkeypatch.delenv("PYDANTIC_DEEP_BACKEND", raising=False)
    assert default_backend() == "docker" and isinstance(open_sandbox("python-minimal"), DockerSandbox)
    monkeypatch.setenv("PYDANTIC_DEEP_BACKEND", "Local")
    local = open_sandbox("python-minimal", memory="1g", command_timeout=5)  # Docker-only options are dropped
    assert isinstance(local, LocalSandbox) and local.command_timeout == 5
    shell = InteractiveShell.instance()
    with capture_output() as shown:  # %load_ext shows a banner, and the magics' backend follows
        shell.run_line_magic("load_ext", "pydantic_deep")
    try:
        assert "NOT ISOLATED" in shown.outputs[0].data["text/html"]
        assert shell.magics_manager.registry["SandboxMagics"].backend == "local"
    finally:
        shell.run_line_magic("unload_ext", "pydantic_deep")
    monkeypatch.setenv("PYDANTIC_DEEP_BACKEND", "kubernetes")
    with pytest.raises(UnknownBackendError, match="'kubernetes' is not a backend; use one of: docker, local"):
        open_sandbox()
