"""Runtime images: content-hash tags, caching, one build at a time, failed builds, air-gapped bases."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import uuid

import pytest

from pydantic_deep import DockerSandbox, ImageBuildError, ImageNotAvailableError, RuntimeConfig
from pydantic_deep.engine.client import docker_client
from pydantic_deep.images.bases import PYTHON, resolve_base_image
from pydantic_deep.images.builder import image_exists
from pydantic_deep.images.certs import resolve_ca_bundle
from pydantic_deep.images.runtime import ensure_runtime_image, render_dockerfile, runtime_image_tag


def fresh_runtime(**fields: object) -> RuntimeConfig:
    """A runtime whose image was never built: its setup command is unique."""
    marker = uuid.uuid4().hex[:8]
    return RuntimeConfig(**{"name": f"test-{marker}", "base_image": "python:3.12-slim",
                            "setup_commands": [f"echo built-{marker} > /built.txt"], **fields})


def remove_image(tag: str) -> None:
    docker_client().images.remove(tag, force=True)


def test_tag_follows_what_changes_the_build_only() -> None:
    base = RuntimeConfig(name="r", base_image="python:3.12-slim", packages=["six"])
    tag = runtime_image_tag(base, "sha256:base", None)
    same = [base.model_copy(update=change) for change in (
        {"description": "other"}, {"env_vars": {"A": "1"}}, {"work_dir": "/srv"}, {"network": True})]
    assert {runtime_image_tag(r, "sha256:base", None) for r in same} == {tag}
    different = [base.model_copy(update=change) for change in (
        {"packages": ["six==1.16.0"]}, {"setup_commands": ["true"]}, {"package_manager": "apt"})]
    tags = {runtime_image_tag(r, "sha256:base", None) for r in different}
    tags |= {runtime_image_tag(base, "sha256:other-base", None)}
    assert len(tags) == 4 and tag not in tags
    assert tag.startswith("pydantic-deep/r:")


def test_dockerfile_cannot_be_injected() -> None:
    runtime = RuntimeConfig(name="r", base_image="python:3.12-slim",
                            setup_commands=["echo a \\", "echo 'RUN evil'"], packages=["six"])
    lines = render_dockerfile(runtime, "base", None).splitlines()
    assert lines == [
        "FROM base", "USER root",
        'RUN ["/bin/sh", "-c", "echo a \\\\"]',
        'RUN ["/bin/sh", "-c", "echo \'RUN evil\'"]',
        'RUN ["/bin/sh", "-c", "python3 -m pip install --no-cache-dir --disable-pip-version-check '
        '--progress-bar off six"]',
    ]


def test_built_once_then_reused_and_rebuilt_without_cache() -> None:
    runtime = fresh_runtime()
    lines: list[str] = []
    tag = ensure_runtime_image(docker_client(), runtime, ca_bundle=resolve_ca_bundle(), progress=lines.append)
    try:
        assert any("built-" in line for line in lines), "the build log streams to progress"
        lines.clear()
        with DockerSandbox(runtime, progress=lines.append) as sandbox:
            assert sandbox.image == tag and sandbox.execute("cat /built.txt").output.startswith("built-")
        assert lines == [], "a cached image is reused without building"
        uncached = runtime.model_copy(update={"cache_image": False})
        assert ensure_runtime_image(docker_client(), uncached, ca_bundle=resolve_ca_bundle(),
                                    progress=lines.append) == tag
        assert any("Running in" in line for line in lines), "cache_image=False rebuilds every step"
    finally:
        remove_image(tag)


def test_concurrent_sandboxes_cause_one_build() -> None:
    runtime = fresh_runtime()
    lines: list[str] = []
    sandboxes = [DockerSandbox(runtime, progress=lines.append) for _ in range(3)]
    threads = [threading.Thread(target=sandbox.start) for sandbox in sandboxes]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(sandbox.execute("cat /built.txt").ok for sandbox in sandboxes)
        assert sum(line.startswith("Successfully built") for line in lines) == 1
    finally:
        for sandbox in sandboxes:
            sandbox.stop()
        remove_image(sandboxes[0].image or "")


def test_concurrent_processes_cause_one_build() -> None:
    runtime = fresh_runtime()
    code = (
        "import sys\nfrom pydantic_deep import RuntimeConfig\nfrom pydantic_deep.engine.client import docker_client\n"
        "from pydantic_deep.images.runtime import ensure_runtime_image\n"
        f"runtime = RuntimeConfig.model_validate_json({runtime.model_dump_json()!r})\n"
        "ensure_runtime_image(docker_client(), runtime, progress=print)\n"
    )
    processes = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    try:
        assert [process.returncode for process in processes] == [0, 0]
        assert sum(output.count("Successfully built") for output in outputs) == 1
    finally:
        remove_image(runtime_image_tag(runtime, docker_client().images.get(PYTHON.tag).id, None))


def test_failed_build_tags_nothing_leaves_nothing_and_shows_the_log_tail() -> None:
    runtime = fresh_runtime(setup_commands=["echo about-to-fail; echo the-reason >&2; exit 3"])
    client = docker_client()
    containers_before = {c.id for c in client.containers.list(all=True)}
    with pytest.raises(ImageBuildError) as caught:
        DockerSandbox(runtime).start()
    error = caught.value
    assert "returned a non-zero code: 3" in str(error)
    assert "about-to-fail" in str(error) and "the-reason" in str(error)
    assert not image_exists(client, error.tag)
    assert {c.id for c in client.containers.list(all=True)} == containers_before


def test_failed_package_install_names_the_package() -> None:
    runtime = fresh_runtime(packages=["no-such-package-pydantic-deep-test==0.0.1"])
    with pytest.raises(ImageBuildError) as caught:
        ensure_runtime_image(docker_client(), runtime, ca_bundle=resolve_ca_bundle())
    assert "no-such-package-pydantic-deep-test" in "\n".join(caught.value.log_tail)


def test_unpullable_base_resolves_to_the_airgapped_stand_in_with_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="pydantic_deep.images.runtime"):
        assert resolve_base_image(docker_client(), "python:3.10-slim")[0] == PYTHON.tag
        assert resolve_base_image(docker_client(), "python:3.10-slim")[0] == PYTHON.tag
    [record] = caplog.records
    assert record.getMessage() == (
        "Base image python:3.10-slim cannot be pulled; using pydantic-deep/debian-python:3.11-bookworm "
        "(Debian 12, Python 3.11, pip), built from Debian packages")


def test_fallback_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYDANTIC_DEEP_BASE_FALLBACK", "never")
    with pytest.raises(ImageNotAvailableError, match="PYDANTIC_DEEP_BASE_FALLBACK=never"):
        resolve_base_image(docker_client(), "python:3.9-slim")


def test_unknown_image_without_stand_in_says_what_to_do() -> None:
    runtime = RuntimeConfig(name="nowhere", image="registry.invalid/team/tool:1")
    with pytest.raises(ImageNotAvailableError, match="docker load"):
        DockerSandbox(runtime).start()


def test_prebuilt_image_runs_as_is() -> None:
    runtime = RuntimeConfig(name="prebuilt", image=PYTHON.tag, env_vars={"X": "1"})
    with DockerSandbox(runtime) as sandbox:
        assert sandbox.image == PYTHON.tag
        assert sandbox.execute("echo $X; whoami; python --version").output == "1\nsandbox\nPython 3.11.2\n"
