"""DockerSandbox against the real engine: life cycle, commands, files, defaults and display."""

from __future__ import annotations

import hashlib
import os
import threading
import tracemalloc
from pathlib import Path

import docker
import pytest
from helpers import own_containers

from pydantic_deep import (
    DockerSandbox,
    DockerUnavailableError,
    InvalidArgumentError,
    PathOutsideSandboxError,
    RuntimeConfig,
    SandboxFileNotFoundError,
    SandboxState,
    SandboxStateError,
)
from pydantic_deep.engine import client as engine
from pydantic_deep.engine.client import docker_client

# -- commands ---------------------------------------------------------------------------------


def test_execute_returns_output_and_exit_code(sandbox: DockerSandbox) -> None:
    result = sandbox.execute("echo hello")
    assert (result.output, result.exit_code, result.ok) == ("hello\n", 0, True)
    assert sandbox.execute("exit 7").exit_code == 7


def test_shell_semantics(sandbox: DockerSandbox) -> None:
    result = sandbox.execute("""x='two words'; printf '%s|' "$x" $x; echo; seq 5 | grep -c '[24]'; pwd""")
    assert result.output == "two words|two|words|\n2\n/workspace\n"


def test_stdout_and_stderr_are_kept_apart_and_together(sandbox: DockerSandbox) -> None:
    result = sandbox.execute("echo out; echo err >&2; false")
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 1)
    assert sorted(result.output.splitlines()) == ["err", "out"]


def test_runtime_env_vars_and_user(sandbox: DockerSandbox) -> None:
    with DockerSandbox(RuntimeConfig(name="envs", base_image="python:3.12-slim",
                                     env_vars={"GREETING": "hi there"}, work_dir="/srv/app")) as box:
        assert box.execute('echo "$GREETING"; whoami; id -u; pwd; echo $HOME').output == (
            "hi there\nsandbox\n1000\n/srv/app\n/home/sandbox\n")
        assert box.execute("touch /srv/app/x ~/y /uploads/z").exit_code == 0


def test_other_user_gets_its_own_prepared_image() -> None:
    with DockerSandbox("python-minimal", user="1001:1002") as box:
        assert box.execute("id -u; id -g; whoami; stat -c %u /workspace /uploads").output == (
            "1001\n1002\nsandbox\n1001\n1001\n")
    tags = [tag for image in docker_client().images.list("pydantic-deep/prepared") for tag in image.tags]
    assert len(tags) >= 2  # one per image, user and directories


def test_timeout_kills_the_process_group_and_the_sandbox_stays_usable(sandbox: DockerSandbox) -> None:
    result = sandbox.execute("sleep 60 & echo $! > bg.pid; echo started; sleep 60", timeout=1)
    assert result.timed_out and result.exit_code == 137
    assert result.output == "started\n"
    # The background child died with the command.
    assert sandbox.execute("kill -0 $(cat bg.pid)").exit_code != 0
    assert sandbox.execute("echo still here").output == "still here\n"


def test_a_command_that_fails_fast_is_not_a_timeout(sandbox: DockerSandbox) -> None:
    result = sandbox.execute("exit 137", timeout=30)
    assert result.exit_code == 137 and not result.timed_out


def test_output_is_capped_without_the_host_holding_it_all() -> None:
    with DockerSandbox("python-minimal", max_output=1000) as box:
        tracemalloc.start()
        result = box.execute("head -c 50000000 /dev/zero | tr '\\0' a")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert result.truncated and result.output == "a" * 1000 and result.exit_code == 0
    assert peak < 5_000_000, f"host held {peak} bytes for 50 MB of output"


def test_invalid_utf8_output_is_replaced_not_fatal(sandbox: DockerSandbox) -> None:
    assert sandbox.execute("printf 'ok \\377\\n'").output == "ok \ufffd\n"


# -- life cycle -------------------------------------------------------------------------------


def test_lazy_start_and_idempotent_stop() -> None:
    box = DockerSandbox("python-minimal")
    assert box.state is SandboxState.NEW and box.container_id is None
    assert box.execute("echo lazy").output == "lazy\n"
    assert box.state is SandboxState.RUNNING
    container_id = box.container_id
    box.stop()
    box.stop()
    assert box.state is SandboxState.STOPPED
    assert container_id not in {c.id for c in docker_client().containers.list(all=True)}
    with pytest.raises(SandboxStateError, match="stopped"):
        box.execute("echo again")
    box.start()  # an explicit start runs a fresh container
    try:
        assert box.container_id != container_id and box.execute("echo fresh").ok
    finally:
        box.stop()


def test_concurrent_first_use_starts_one_container() -> None:
    box = DockerSandbox("python-minimal")
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(box.execute("hostname").output))
               for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        labelled = docker_client().containers.list(
            all=True, filters={"label": f"pydantic-deep.session={box.session_id}"})
        assert len(labelled) == 1 and len(set(results)) == 1 and len(results) == 8
    finally:
        box.stop()


def test_context_manager_removes_the_container() -> None:
    with DockerSandbox("python-minimal") as box:
        assert box.state is SandboxState.RUNNING
        name = own_containers()
    assert box.state is SandboxState.STOPPED
    assert set(own_containers()) < set(name)


@pytest.mark.anyio
async def test_async_twins_and_async_context_manager() -> None:
    async with DockerSandbox("python-minimal") as box:
        assert (await box.aexecute("echo async")).output == "async\n"
        await box.awrite_file("a.txt", "text")
        assert await box.aread_file("a.txt") == b"text"
        assert await box.aexists("a.txt")
        assert [entry.name for entry in await box.alist_files()] == ["a.txt"]
    assert box.state is SandboxState.STOPPED


def test_a_container_removed_from_outside_gives_a_clear_error() -> None:
    with DockerSandbox("python-minimal") as box:
        docker_client().api.remove_container(box.container_id, force=True)
        with pytest.raises(SandboxStateError, match="is gone"):
            box.execute("echo hi")


def test_lost_engine_gives_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # An engine that went away: the shared client now points at a socket nobody listens on.
    monkeypatch.setattr(engine, "_client", docker.DockerClient(base_url=f"unix://{tmp_path}/gone.sock", version="1.41"))
    with pytest.raises(DockerUnavailableError, match="Lost the Docker engine .*pydantic-deep engine start"):
        DockerSandbox("python-minimal").start()


# -- files ------------------------------------------------------------------------------------


def test_write_read_list_exists(sandbox: DockerSandbox) -> None:
    assert sandbox.write_file("notes/deep/todo.txt", "one\ntwo\n") == "/workspace/notes/deep/todo.txt"
    assert sandbox.read_file("/workspace/notes/deep/todo.txt") == b"one\ntwo\n"
    assert sandbox.execute("wc -l < notes/deep/todo.txt; stat -c %U notes/deep notes/deep/todo.txt").output == (
        "2\nsandbox\nsandbox\n")
    [entry] = sandbox.list_files("notes/deep")
    assert (entry.name, entry.path, entry.size, entry.is_dir) == (
        "todo.txt", "/workspace/notes/deep/todo.txt", 8, False)
    assert [(e.name, e.is_dir) for e in sandbox.list_files("notes")] == [("deep", True)]
    assert sandbox.exists("notes/deep") and not sandbox.exists("notes/missing")


def test_upload_into_uploads_and_download(sandbox: DockerSandbox, tmp_path: Path) -> None:
    source = tmp_path / "data.csv"
    source.write_text("a,b\n1,2\n")
    assert sandbox.upload(source) == "/uploads/data.csv"
    assert sandbox.upload(source, "inputs/") == "/workspace/inputs/data.csv"
    assert sandbox.execute("cat /uploads/data.csv").output == "a,b\n1,2\n"
    assert sandbox.download("/uploads/data.csv", tmp_path / "back.csv").read_text() == "a,b\n1,2\n"


def test_upload_bytes_needs_a_destination(sandbox: DockerSandbox) -> None:
    assert sandbox.upload(b"raw", "/uploads/raw.bin") == "/uploads/raw.bin"
    assert sandbox.read_file("/uploads/raw.bin") == b"raw"
    with pytest.raises(ValueError, match="needs dest"):
        sandbox.upload(b"raw")


def test_100_mb_file_round_trips(sandbox: DockerSandbox, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    with source.open("wb") as handle:
        for _ in range(100):
            handle.write(os.urandom(1024 * 1024))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    sandbox.upload(source)
    assert sandbox.execute("sha256sum /uploads/big.bin").output.split()[0] == digest
    back = sandbox.download("/uploads/big.bin", tmp_path / "back.bin")
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
    sandbox.execute("rm /uploads/big.bin")


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "/uploads/../etc/shadow",
                                  "/workspace/../../root", "/workspacex/file"])
def test_paths_outside_the_sandbox_are_refused(sandbox: DockerSandbox, path: str) -> None:
    with pytest.raises(PathOutsideSandboxError, match="outside the sandbox"):
        sandbox.read_file(path)
    with pytest.raises(PathOutsideSandboxError):
        sandbox.write_file(path, b"x")


@pytest.mark.parametrize(("path", "problem"), [("a\0b", "contains a NUL byte"), ("", "is empty"),
                                               ("a\ud800", "lone surrogate"), ("x" * 256, "at most 255")])
def test_unusable_paths_are_refused_with_the_reason(sandbox: DockerSandbox, path: str, problem: str) -> None:
    for operation in (sandbox.read_file, sandbox.exists, sandbox.list_files, lambda p: sandbox.write_file(p, b"x")):
        with pytest.raises(InvalidArgumentError, match=problem):
            operation(path)


def test_a_path_through_a_file_or_onto_a_directory_is_refused_clearly(sandbox: DockerSandbox) -> None:
    sandbox.execute("mkdir -p keep && echo precious > keep/file && echo x > plain")
    with pytest.raises(IsADirectoryError, match="/workspace/keep is a directory"):
        sandbox.write_file("keep", b"would replace the directory")
    assert sandbox.read_file("keep/file") == b"precious\n"
    with pytest.raises(NotADirectoryError, match="/workspace/plain is not a directory"):
        sandbox.write_file("plain/a/b", b"x")
    with pytest.raises(SandboxFileNotFoundError):
        sandbox.read_file("plain/a")
    assert not sandbox.exists("plain/a/b")
    sandbox.execute("rm -rf keep plain")


def test_missing_files_and_directories(sandbox: DockerSandbox, tmp_path: Path) -> None:
    with pytest.raises(SandboxFileNotFoundError, match="/workspace/nope.txt"):
        sandbox.read_file("nope.txt")
    with pytest.raises(SandboxFileNotFoundError):
        sandbox.list_files("no-such-dir")
    with pytest.raises(IsADirectoryError):
        sandbox.read_file("/uploads")
    with pytest.raises(SandboxFileNotFoundError):
        sandbox.download("nope.txt", tmp_path / "nope.txt")
    assert not (tmp_path / "nope.txt").exists() and not (tmp_path / "nope.txt.part").exists()


# -- safe defaults ----------------------------------------------------------------------------


def test_security_defaults_hold_inside_the_container(sandbox: DockerSandbox) -> None:
    status = sandbox.execute("grep -E '^(CapEff|NoNewPrivs)' /proc/self/status").output.split()
    assert status == ["CapEff:", "0000000000000000", "NoNewPrivs:", "1"]
    assert sandbox.execute("id -u").output == "1000\n"
    # Network off: only the loopback interface exists.
    interfaces = sandbox.execute("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '").output.split()
    assert interfaces == ["lo"]
    config = docker_client().api.inspect_container(sandbox.container_id)
    host = config["HostConfig"]
    assert (host["PidsLimit"], host["Memory"], host["NanoCpus"]) == (512, 2 * 1024**3, 10**9)
    assert (host["CapDrop"], host["SecurityOpt"], host["Init"], host["NetworkMode"]) == (
        ["ALL"], ["no-new-privileges"], True, "none")
    labels = config["Config"]["Labels"]
    assert labels["pydantic-deep.managed"] == "true" and labels["pydantic-deep.runtime"] == "python-minimal"
    assert labels["pydantic-deep.session"] == sandbox.session_id and labels["pydantic-deep.created"]
    assert labels["pydantic-deep.owner-pid"] == str(os.getpid())


def test_pids_limit_stops_a_fork_flood(sandbox: DockerSandbox) -> None:
    with DockerSandbox("python-minimal", pids_limit=32) as box:
        result = box.execute("for i in $(seq 60); do sleep 5 & done; wait", timeout=20)
        assert "fork" in result.output.lower() or "resource" in result.output.lower()
        assert box.execute("echo alive", timeout=20).output == "alive\n"


def test_network_and_ca_bundle_let_pip_reach_the_registry(tmp_path: Path) -> None:
    command = "pip download --no-deps --no-cache-dir -d /tmp/dl six==1.16.0"
    with DockerSandbox("python-minimal", network=True) as box:
        assert box.execute("tail -n +3 /proc/net/dev | cut -d: -f1 | grep -c eth0").output == "1\n"
        result = box.execute(command, timeout=120)
        assert result.exit_code == 0, result.output
    with DockerSandbox("python-minimal", network=True, ca_bundle=False) as box:
        result = box.execute(command, timeout=120)
        assert result.exit_code != 0 and "CERTIFICATE_VERIFY_FAILED" in result.output


# -- display ----------------------------------------------------------------------------------


def test_repr_and_html_show_runtime_image_state_and_container(sandbox: DockerSandbox) -> None:
    text = repr(sandbox)
    assert "runtime='python-minimal'" in text and "state=running" in text
    assert sandbox.container_id is not None and sandbox.container_id[:12] in text
    page = sandbox._repr_html_()
    assert "<table>" in page and sandbox.container_id[:12] in page and "python-minimal" in page
    assert str(sandbox.image) in page
    fresh = DockerSandbox("node-minimal")
    assert "state=new" in repr(fresh) and "(built on start)" in fresh._repr_html_()
