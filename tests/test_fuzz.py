"""Fuzzing the API's inputs (issue 8): bad input gets a clear error, never runs a command, leaves nothing.

Each entry point gets 1,000 or more generated cases: ``RuntimeConfig`` and the Dockerfile it renders,
image references (checked against the engine's own parser), session names from user ids, sandbox
path resolution, the file API, upload contents, and commands through the supervisor channel. The
nastiest accepted inputs also run for real: runtimes are built and started, sessions are created
for hostile user ids.

Hostile strings carry payloads (``; touch SENTINEL``, ``$(...)``, backticks, newlines) that would
create a sentinel file if they ever reached a shell unquoted; no test may find it, in the container
or on the host.

Hypothesis runs derandomized (the same cases on every run, so CI is reproducible) and keeps no
example database, so nothing is written into the repository.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import posixpath
import random
import re
import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker.errors import APIError, ImageNotFound
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pydantic_deep import (
    DockerSandbox,
    InvalidArgumentError,
    PathOutsideSandboxError,
    RuntimeConfig,
    SandboxError,
    SandboxFileNotFoundError,
    SessionManager,
)
from pydantic_deep.arguments import MAX_TIMEOUT
from pydantic_deep.engine.client import docker_client
from pydantic_deep.execution.channel import MAX_COMMAND_BYTES
from pydantic_deep.images.runtime import render_dockerfile, runtime_image_tag
from pydantic_deep.paths import MAX_NAME_BYTES, MAX_PATH_BYTES, MAX_PATH_DEPTH, UPLOADS_DIR, resolve_sandbox_path

pytestmark = pytest.mark.adversarial

FUZZ = settings(deadline=None, derandomize=True, database=None, max_examples=1000,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

# -- hostile text -----------------------------------------------------------------------------

SENTINEL = f"/tmp/pd-fuzz-pwned-{uuid.uuid4().hex[:8]}"
INJECTIONS = [
    f"; touch {SENTINEL}", f"$(touch {SENTINEL})", f"`touch {SENTINEL}`", f"\ntouch {SENTINEL}\n",
    f"' ; touch {SENTINEL} ; '", f'" ; touch {SENTINEL} ; "', f"| touch {SENTINEL}", f"&& touch {SENTINEL}",
    f"\r\ntouch {SENTINEL}", f"${{IFS}}touch${{IFS}}{SENTINEL}", f"\\\ntouch {SENTINEL}", f"\"]\nRUN touch {SENTINEL}",
]
# Characters that mean something to a shell, a Dockerfile, JSON, tar or a path, and ones that do
# not survive every encoding: NUL, a lone surrogate, DEL, a Unicode line separator.
SPECIAL = list(" \t\n\r\\'\"`$(){}[]<>|&;*?!#~=%^,.:-_/@+") + ["\0", "\ud800", "\udcff", "\x7f", "\u2028", "é", "用",
                                                               "\U0001f600", "\ufeff"]
any_char = st.characters(exclude_categories=())  # every code point, lone surrogates included
nasty_char = st.one_of(st.sampled_from(SPECIAL), any_char)
nasty_text = st.one_of(
    st.text(nasty_char, max_size=30),
    st.lists(st.one_of(st.text(nasty_char, max_size=6), st.sampled_from(INJECTIONS)), max_size=4).map("".join),
)


# Up to past the 128 KiB a command may have (cheap to generate: repeated).
long_text = st.builds(lambda text, times: (text or "x")[:20] * times, nasty_text, st.integers(60, 8000))


def valid_text(text: str) -> bool:
    """Text a container can receive unchanged: UTF-8, no NUL."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\0" not in text


@pytest.fixture(scope="module")
def sandbox() -> Iterator[DockerSandbox]:
    """One sandbox for every example of the module's tests that need a container."""
    with DockerSandbox(runtime="python-minimal") as running:
        yield running
        assert sentinel_absent(running)


@pytest.fixture(scope="module", params=["python-minimal", "node-minimal"])
def command_sandbox(request: pytest.FixtureRequest) -> Iterator[DockerSandbox]:
    """A sandbox of each supervisor, for the commands' examples: node-minimal's commonest commands
    are read by the forker program's own JSON reader (see _guest/forker.c), python-minimal's by
    Python's json."""
    with DockerSandbox(runtime=request.param) as running:
        yield running
        assert sentinel_absent(running)


def sentinel_absent(sandbox: DockerSandbox) -> bool:
    return not os.path.exists(SENTINEL) and sandbox.execute(f"test -e {SENTINEL}").exit_code == 1


# -- RuntimeConfig and its Dockerfile ---------------------------------------------------------

MANAGERS = ["pip", "npm", "apt", "cargo"]
FIELDS = set(RuntimeConfig.model_fields)
DOCKER_TAG = re.compile(r"pydantic-deep/[a-z0-9]+(?:-[a-z0-9]+)*:[0-9a-f]{16}")

# Image references from Docker's grammar, then bent: upper case, doubled separators, stray characters.
path_components = st.from_regex(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", fullmatch=True)
grammar_refs = st.builds(
    lambda domain, path, tag, digest: f"{domain}{'/'.join(path)}{tag}{digest}",
    st.sampled_from(["", "localhost/", "localhost:5000/", "registry.example.com/", "Reg-1.io:443/", "[::1]:5000/"]),
    st.lists(path_components, min_size=1, max_size=3),
    st.one_of(st.just(""), st.from_regex(r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)),
    st.sampled_from(["", "@sha256:" + "a" * 64, "@sha256:" + "F" * 64, "@sha512:" + "0" * 128, "@md5:" + "0" * 32]),
)


@st.composite
def bent_refs(draw: st.DrawFn) -> str:
    ref = draw(grammar_refs)
    for _ in range(draw(st.integers(0, 2))):
        position = draw(st.integers(0, len(ref)))
        bend = draw(st.sampled_from([*"A:/@.-_#+ ", "//", "::", "..", "__", "--"]))
        ref = ref[:position] + bend + ref[position:]
    return ref


image_refs = st.one_of(grammar_refs, bent_refs(), st.text(nasty_char, max_size=20),
                       st.just("a" * 256), st.just("x/" * 127 + "y"))
packages = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,8}(?:==1\.[0-9]|@[0-9.^~]{1,4}|=[0-9.:~+-]{1,5})?", fullmatch=True),
    st.sampled_from(["@types/react", "react@^18.2.0", "uvicorn[standard]>=0.30,<1", "g++", "--force", "-x", "a-"]),
    nasty_text,
)


env_names = st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True), nasty_text)


@st.composite
def runtime_fields(draw: st.DrawFn) -> dict[str, object]:
    """Keyword arguments for RuntimeConfig: mostly well-formed, each field sometimes hostile."""
    fields: dict[str, object] = {
        "name": draw(st.one_of(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,70}", fullmatch=True), nasty_text))}
    source = draw(st.sampled_from(["base_image", "base_image", "image", "both", "neither"]))
    for key in (["image", "base_image"] if source == "both" else [source] if source != "neither" else []):
        fields[key] = draw(image_refs)
    optional = {
        "description": nasty_text,
        "packages": st.lists(packages, max_size=4),
        "package_manager": st.one_of(st.sampled_from(MANAGERS), nasty_text),
        "setup_commands": st.lists(nasty_text, max_size=4),
        "env_vars": st.dictionaries(env_names, nasty_text, max_size=3),
        "work_dir": st.one_of(st.from_regex(r"(?:/[A-Za-z0-9._-]{1,10}){1,4}", fullmatch=True), nasty_text,
                              st.sampled_from(["/opt", "/opt/pydantic-deep/x", "/etc", "/uploads", "/"])),
        "network": st.booleans(),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            fields[key] = draw(strategy)
    return fields


def assert_dockerfile_is_exactly(runtime: RuntimeConfig) -> None:
    """The rendered Dockerfile holds FROM, USER and one RUN per setup command (and one for the
    packages), each command whole in a JSON array: nothing in a field adds or continues a line."""
    lines = render_dockerfile(runtime, "base:tag", None).split("\n")
    assert lines.pop() == ""
    assert lines[:2] == ["FROM base:tag", "USER root"]
    runs = lines[2:]
    assert len(runs) == len(runtime.setup_commands) + bool(runtime.packages)
    for line in lines:  # Docker reads \r\n as a line end and a trailing backslash as a continuation
        assert line.isascii() and "\r" not in line and not line.endswith("\\")
    argvs = []
    for line in runs:
        assert line.startswith("RUN [")
        argvs.append(json.loads(line.removeprefix("RUN ")))
    assert all(argv[:2] == ["/bin/sh", "-c"] and len(argv) == 3 for argv in argvs)
    assert [argv[2] for argv in argvs[:len(runtime.setup_commands)]] == runtime.setup_commands
    if runtime.packages:
        words = shlex.split(argvs[-1][2])
        start = words.index(runtime.packages[0])
        assert words[start:start + len(runtime.packages)] == runtime.packages  # each package one word


def assert_names_the_problem(error: ValidationError) -> None:
    for detail in error.errors():
        message = detail["msg"]
        assert message and len(message) < 1000, message  # a megabyte of input makes no megabyte of error
        if detail["loc"]:
            assert detail["loc"][0] in FIELDS
        else:  # a check across fields names them
            assert any(name in message for name in ("image", "package")), message


@settings(FUZZ, max_examples=1000)
@given(fields=runtime_fields())
def test_runtime_config_accepts_only_what_it_can_render_and_run(fields: dict[str, object]) -> None:
    try:
        runtime = RuntimeConfig(**fields)  # type: ignore[arg-type]
    except ValidationError as error:
        assert_names_the_problem(error)
        return
    assert RuntimeConfig.model_validate_json(runtime.model_dump_json()) == runtime  # how sessions keep it
    if runtime.base_image is not None:
        assert_dockerfile_is_exactly(runtime)
        assert DOCKER_TAG.fullmatch(runtime_image_tag(runtime, "sha256:" + "0" * 64, None))
    options = DockerSandbox(runtime, ca_bundle=False)._container_options()
    assert options["environment"] == {"HOME": "/home/sandbox", **runtime.env_vars}
    assert all(valid_text(value) for value in [*options["labels"].values(), *options["environment"].values()])


@settings(FUZZ, max_examples=1000)
@given(ref=image_refs)
def test_image_references_are_accepted_only_when_the_engine_can_parse_them(ref: str) -> None:
    try:
        RuntimeConfig(name="fuzz", image=ref)
    except ValidationError as error:
        assert_names_the_problem(error)
        return
    try:
        docker_client().api.inspect_image(ref)
    except ImageNotFound:
        pass  # not there, but the engine parsed the reference
    except APIError as error:
        pytest.fail(f"accepted {ref!r}, which the engine refuses: {error.explanation}")


# -- user ids and session names ---------------------------------------------------------------

DOCKER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")  # containers and volumes alike
_names_seen: dict[str, str] = {}


@settings(FUZZ, max_examples=1000)
@given(user_id=st.one_of(st.text(nasty_char, max_size=40), st.sampled_from(INJECTIONS), st.just("x" * 100_000)),
       manager_name=st.one_of(st.sampled_from(["default", "test-fuzz", "a", "9-z"]), nasty_text))
def test_user_ids_make_valid_distinct_names(user_id: str, manager_name: str) -> None:
    try:
        manager = SessionManager(name=manager_name)
    except InvalidArgumentError as error:
        assert repr(manager_name)[:40] in str(error)
        return
    assert manager.name == manager_name  # used as given: two names never share containers
    if not user_id:
        with pytest.raises(InvalidArgumentError, match="must not be empty"):
            manager._key(user_id)
        return
    container = manager._container_name(manager._key(user_id))
    for name in (container, f"{container}-work", f"{container}-uploads"):
        assert DOCKER_NAME.fullmatch(name) and len(name) <= 128
    assert _names_seen.setdefault(container, user_id) == user_id, "two user ids share a container"


NASTY_USER_IDS = [*INJECTIONS[::2], "a\0b", "\ud800", "\udcff-surrogate", "é" * 300, "用户", " ", "\n",
                  "../../etc/passwd", "x" * 20_000, "\U0001f600\u2028\ufeff"]


@pytest.mark.anyio
async def test_hostile_user_ids_get_real_sessions_that_come_back_and_go_away() -> None:
    name = f"test-fuzz-{uuid.uuid4().hex[:8]}"
    first = SessionManager("python-minimal", name=name)
    try:
        sandboxes = await asyncio.gather(*(first.get_or_create(user_id) for user_id in NASTY_USER_IDS))
        assert len({s.container_id for s in sandboxes}) == len(NASTY_USER_IDS)
        for user_id, session in zip(NASTY_USER_IDS, sandboxes, strict=True):
            session.write_file("owner", user_id.encode("utf-8", "surrogatepass"))
            assert sentinel_absent(session)
        await first.shutdown()  # containers go, files stay, the in-memory registry is forgotten
        second = SessionManager("python-minimal", name=name)  # finds every session in the engine
        try:
            for user_id in NASTY_USER_IDS:
                again = await second.get_or_create(user_id)
                assert again.read_file("owner") == user_id.encode("utf-8", "surrogatepass")
            assert sorted(info.user_id for info in await second.list_sessions()) == sorted(NASTY_USER_IDS)
        finally:
            await second.shutdown(keep_files=False)
    finally:
        await first.shutdown(keep_files=False)
    assert not docker_client().volumes.list(filters={"label": f"pydantic-deep.manager={name}"})
    assert not docker_client().containers.list(all=True, filters={"label": f"pydantic-deep.manager={name}"})
    assert not os.path.exists(SENTINEL)


# -- paths ------------------------------------------------------------------------------------

WORK_DIR = "/workspace"
ROOTS = (WORK_DIR, UPLOADS_DIR)
segments = st.one_of(
    st.sampled_from([".", "..", "", "uploads", "workspace", "sub", "a b", "-rf", "~", "*", "x" * 255, "é" * 128]),
    st.text(nasty_char, min_size=1, max_size=12),
    st.sampled_from(INJECTIONS),
)
sandbox_paths = st.one_of(
    st.builds(lambda head, parts: head + "/".join(parts),
              st.sampled_from(["", "/", "//", "/workspace/", "/uploads/", "uploads/", "../", "/etc/", "/workspacex/"]),
              st.lists(segments, max_size=5)),
    st.text(nasty_char, max_size=20),
    st.just("a/" * (MAX_PATH_DEPTH + 1)), st.just("/uploads/" + "b" * MAX_PATH_BYTES),
)


def expected_resolution(path: str) -> type[Exception] | str:
    """What resolving ``path`` must give, worked out from POSIX path rules alone."""
    if not valid_text(path) or not path.strip():
        return InvalidArgumentError
    absolute = "/" + posixpath.normpath(posixpath.join(WORK_DIR, path)).lstrip("/")
    if not any(absolute == root or absolute.startswith(root + "/") for root in ROOTS):
        return PathOutsideSandboxError
    names = absolute.split("/")[1:]
    if (max(len(name.encode()) for name in names) > MAX_NAME_BYTES or len(absolute.encode()) > MAX_PATH_BYTES
            or len(names) > MAX_PATH_DEPTH):
        return InvalidArgumentError
    return absolute


@settings(FUZZ, max_examples=2000)
@given(path=sandbox_paths)
def test_resolve_sandbox_path_matches_posix_rules(path: str) -> None:
    expected = expected_resolution(path)
    if isinstance(expected, str):
        assert resolve_sandbox_path(path, WORK_DIR, ROOTS) == expected
        assert resolve_sandbox_path(expected, WORK_DIR, ROOTS) == expected
    else:
        with pytest.raises(expected) as caught:
            resolve_sandbox_path(path, WORK_DIR, ROOTS)
        assert repr(path)[:60] in str(caught.value) and len(str(caught.value)) < 500


FILE_OPERATIONS = ["exists", "exists", "read", "read", "list", "list", "write", "write", "download", "upload"]


def test_file_api_refuses_bad_paths_and_never_escapes(sandbox: DockerSandbox, tmp_path: Path) -> None:
    client = docker_client()
    before = {change["Path"] for change in client.api.diff(sandbox.container_id)}
    sandbox.execute("mkdir -p /workspace/sub /uploads/sub && echo file > /workspace/file && echo f > /uploads/file")

    @settings(FUZZ, max_examples=1000)
    @given(path=sandbox_paths, operation=st.sampled_from(FILE_OPERATIONS), content=st.binary(max_size=64))
    def check(path: str, operation: str, content: bytes) -> None:
        expected = expected_resolution(path)
        target = expected if isinstance(expected, str) else None
        if operation == "upload" and (not path or path.endswith("/")):
            expected = InvalidArgumentError  # bytes need a file's path, not a directory's
        try:
            outcome = run_file_operation(sandbox, operation, path, content, tmp_path)
        except (InvalidArgumentError, PathOutsideSandboxError) as error:
            assert type(error) is expected, (path, operation, error)
            assert repr(path)[:60] in str(error) or operation == "upload"
            return
        except (SandboxFileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
            assert target is not None and any(name in str(error) for name in lineage(target)), (path, error)
            return
        assert target is not None, (path, operation, outcome)
        if operation in ("write", "upload"):
            assert outcome == target
            copied = sandbox.execute(f"base64 -w0 -- {shlex.quote(target)}")
            assert base64.b64decode(copied.stdout) == content, copied.stderr
        elif operation == "exists":
            assert outcome == (sandbox.execute(f"test -e {shlex.quote(target)}").exit_code == 0)
        assert sorted(tmp_path.iterdir()) == [], "a download left a file behind"

    check()
    # Whatever the paths held, every file that changed lies in the sandbox's roots.
    changed = {change["Path"] for change in client.api.diff(sandbox.container_id)} - before
    assert all(any(p == root or p.startswith(root + "/") for root in (*ROOTS, "/tmp")) for p in changed), changed
    assert sentinel_absent(sandbox)
    sandbox.execute("rm -rf /workspace/* /uploads/*")


def lineage(path: str) -> list[str]:
    """``path`` and its parents, up to the sandbox root it lies in."""
    chain = [path]
    while chain[-1] not in ROOTS:
        chain.append(posixpath.dirname(chain[-1]))
    return chain


def run_file_operation(sandbox: DockerSandbox, operation: str, path: str, content: bytes, tmp_path: Path) -> object:
    if operation == "exists":
        return sandbox.exists(path)
    if operation == "read":
        return sandbox.read_file(path)
    if operation == "list":
        return sandbox.list_files(path)
    if operation == "write":
        return sandbox.write_file(path, content)
    if operation == "upload":
        return sandbox.upload(content, path)
    back = sandbox.download(path, tmp_path / "back")
    back.unlink()
    return back


# -- upload contents --------------------------------------------------------------------------

contents = st.one_of(
    st.binary(max_size=2048),
    st.builds(lambda size, seed: random.Random(seed).randbytes(size),
              st.sampled_from([511, 512, 513, 10_239, 10_240, 10_241, 65_536, 300_000]), st.integers(0, 2**32)),
    st.text(any_char.filter(valid_text), max_size=200).map(str.encode),
)


def test_upload_contents_round_trip_exactly(sandbox: DockerSandbox, tmp_path: Path) -> None:
    """Bytes go in through the file API and are read back through the channel, and the other way:
    each direction is checked on its own, so two faults cannot cancel out."""
    host_file = tmp_path / "upload.bin"

    @settings(FUZZ, max_examples=1000)
    @given(content=contents, direction=st.sampled_from(["write_file", "upload bytes", "upload file", "read_file",
                                                        "download"]))
    def check(content: bytes, direction: str) -> None:
        if direction in ("write_file", "upload bytes", "upload file"):
            if direction == "write_file":
                sandbox.write_file("/uploads/content", content)
            elif direction == "upload bytes":
                sandbox.upload(content, "/uploads/content")
            else:
                host_file.write_bytes(content)
                sandbox.upload(host_file, "/uploads/content")
            result = sandbox.execute("base64 -w0 /uploads/content")
            assert base64.b64decode(result.stdout) == content
        else:
            sandbox.execute(": > /uploads/content")
            for start in range(0, len(content), 48_000):  # a command is one argv string: at most 128 KiB
                encoded = base64.b64encode(content[start:start + 48_000]).decode()
                assert sandbox.execute(f"printf %s {encoded} | base64 -d >> /uploads/content").exit_code == 0
            if direction == "read_file":
                assert sandbox.read_file("/uploads/content") == content
            else:
                assert sandbox.download("/uploads/content", tmp_path / "back").read_bytes() == content

    check()
    assert sandbox.execute("rm /uploads/content").exit_code == 0


# -- commands ---------------------------------------------------------------------------------

shell_words = st.sampled_from(["echo", "printf", "true", "false", ":", "test", "cat", "exit", "set", "read", "[", "]",
                               "if", "then", "fi", "for", "do", "done", "case", "esac", "{", "}", "!", "&&", "||"])
raw_commands = st.one_of(
    st.text(nasty_char, max_size=40),
    st.lists(st.one_of(shell_words, st.text(nasty_char, max_size=5)), max_size=8).map(" ".join),
    # Past the 1,024 bytes the supervisor's waiting shell takes: a fresh sh -c.
    st.builds(lambda text, size: (text * (size // len(text) + 1))[:size], st.text(nasty_char, min_size=1, max_size=20),
              st.integers(1025, 1300)),
)
timeouts = st.one_of(st.just(10.0), st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5),
                     st.just(MAX_TIMEOUT), st.just(MAX_TIMEOUT + 1))


def test_commands_never_break_the_channel(command_sandbox: DockerSandbox) -> None:
    sandbox = command_sandbox
    channel = sandbox._channel

    @settings(FUZZ, max_examples=1000)
    @given(command=raw_commands, timeout=timeouts)
    def check(command: str, timeout: float) -> None:
        valid_command = valid_text(command) and len(command.encode()) <= MAX_COMMAND_BYTES
        valid_timeout = math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT
        if not (valid_command and valid_timeout):
            with pytest.raises(InvalidArgumentError) as caught:
                sandbox.execute(command, timeout=timeout)
            assert ("command" if not valid_command else "timeout") in str(caught.value)
            return
        result = sandbox.execute(command, timeout=min(timeout, 10))
        assert 0 <= result.exit_code <= 255
        assert sandbox._channel is channel and channel is not None and channel.alive  # never re-opened

    check()
    assert sentinel_absent(sandbox)


def test_quoted_text_reaches_the_shell_unchanged(command_sandbox: DockerSandbox) -> None:
    sandbox = command_sandbox

    @settings(FUZZ, max_examples=1000)
    @given(text=st.one_of(nasty_text, nasty_text, long_text).filter(valid_text))
    def check(text: str) -> None:
        command = f"printf '%s' {shlex.quote(text)}"
        if len(command.encode()) > MAX_COMMAND_BYTES:
            with pytest.raises(InvalidArgumentError, match="command is .* bytes"):
                sandbox.execute(command)
            return
        result = sandbox.execute(command)
        assert (result.exit_code, result.stdout) == (0, text)

    check()
    assert sentinel_absent(sandbox)


# -- the nastiest accepted inputs, for real -----------------------------------------------------
# Offline-buildable: the setup commands only write, and pip finds its packages installed. The image
# is tagged by content hash and reused by later runs (as test_package_managers' are), not rebuilt.

NASTY_SETUP = ['a "quoted" ]', "back\\slash\\", "$(touch /pwned) `touch /pwned` ; touch /pwned", "# not a comment",
               "\"]\tRUN touch /pwned", "ünï\u2028cødé \U0001f600", "${HOME:-x} $0 \\\\n", "ENV X=1 \\"]
NASTY_ENV = {"NEWLINE": "a\nRUN touch /pwned\nb", "QUOTES": "'\"`$(touch /pwned)`\"'", "EMPTY": "", "EQ": "a=b=c",
             "UNI": "用户\u2028\U0001f600", "BACKSLASH": "\\"}
RECORD = "/fuzz-record"


def nasty_runtimes() -> list[RuntimeConfig]:
    record = [f"printf '%s\\n' {shlex.quote(text)} >> {RECORD}" for text in NASTY_SETUP]
    return [
        RuntimeConfig(name="test-fuzz.nasty_1", base_image="python:3.12-slim", setup_commands=record,
                      packages=["pip", "pip>=0", "PIP[zzz]!=0.0.1,>=0"], env_vars=NASTY_ENV,
                      work_dir="/-rf/.x/--help", description="\"]\nRUN touch /pwned"),
        RuntimeConfig(name="test-fuzz.nasty_2", image="pydantic-deep/debian:bookworm-minbase", env_vars=NASTY_ENV,
                      work_dir="/-x/.y/a_b"),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("runtime", nasty_runtimes(), ids=lambda runtime: runtime.name)
def test_nastiest_accepted_runtimes_build_and_run_as_written(runtime: RuntimeConfig) -> None:
    with DockerSandbox(runtime) as running:
        environment = running.execute("env -0").stdout.split("\0")
        assert all(f"{key}={value}" in environment for key, value in NASTY_ENV.items())
        assert running.execute("pwd").stdout == runtime.work_dir + "\n"
        assert running.execute("test -e /pwned").exit_code == 1
        if runtime.base_image is not None:
            assert running.execute(f"cat {RECORD}").stdout.split("\n")[:-1] == NASTY_SETUP
            assert running.execute("python3 -m pip --version").exit_code == 0
        else:  # no python3: commands go one docker exec each, with the same refusals
            assert not running.has_python
            with pytest.raises(InvalidArgumentError, match="NUL"):
                running.execute("echo a\0b")
        running.write_file("x", b"ok")
        assert running.read_file(f"{runtime.work_dir}/x") == b"ok"
    assert not os.path.exists("/pwned")


# -- regressions: what the fuzzing found --------------------------------------------------------


@pytest.mark.parametrize(("fields", "problem"), [
    ({"description": "\ud800"}, "lone surrogate"),  # once broke every container start (labels are JSON)
    ({"setup_commands": ["echo \udcff"]}, "lone surrogate"),
    ({"env_vars": {"A": "\ud800"}}, "lone surrogate"),
    ({"base_image": "a::b"}, "not a valid image reference"),  # once an engine error at start
    ({"base_image": "Python:3.12"}, "not a valid image reference"),
    ({"base_image": "x/" * 127 + "y"}, "not a valid image reference"),  # docker.io/x/...: past 255
    ({"work_dir": "/opt/pydantic-deep"}, "/opt/pydantic-deep"),  # would hold or hide the supervisor
    ({"work_dir": "/opt"}, "/opt/pydantic-deep"),
])
def test_runtime_config_refuses_what_once_failed_later(fields: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        RuntimeConfig(**{"name": "t", "base_image": "python:3.12-slim", **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(("command", "timeout", "problem"), [
    ("echo a\0b", None, "NUL"),  # once ran as `echo ab`, and killed the supervisor past 1 KiB
    ("echo a\0b" + " " * 2000, None, "NUL"),
    ("echo \ud800", None, "lone surrogate"),  # once killed the supervisor, and every command in flight
    ("x" * (MAX_COMMAND_BYTES + 1), None, "bytes"),  # once an E2BIG from posix_spawn
    ("true", math.inf, "timeout"),  # once an OverflowError
    ("true", math.nan, "timeout"),  # once closed the channel at once
    ("true", -1, "timeout"),
    ("true", 0, "timeout"),
])
def test_commands_refused_before_they_reach_the_supervisor(sandbox: DockerSandbox, command: str,
                                                           timeout: float | None, problem: str) -> None:
    channel = sandbox._channel
    with pytest.raises(InvalidArgumentError, match=problem):
        sandbox.execute(command, timeout=timeout)
    assert sandbox._channel is channel and sandbox.execute("echo ok").output == "ok\n"


@pytest.mark.parametrize("command", ["echo a\0b", "echo a\0b" + " " * 2000, "echo \ud800"])
def test_the_supervisor_answers_a_bad_command_alone(sandbox: DockerSandbox, command: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pydantic_deep.execution.channel._checked_command", lambda command, timeout: None)
    channel = sandbox._channel
    with pytest.raises(SandboxError, match="cannot run the command"):
        sandbox.execute(command)
    assert sandbox._channel is channel and channel is not None and channel.alive


def test_manager_names_are_used_as_given_or_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="'My App' must be 1-30 lowercase"):
        SessionManager(name="My App")  # once the same manager as "my-app": each took the other's sessions
    assert SessionManager(name="my-app").name == "my-app"


def test_text_content_that_utf8_cannot_hold_is_refused(sandbox: DockerSandbox) -> None:
    with pytest.raises(InvalidArgumentError, match="file content .* lone surrogate"):
        sandbox.write_file("x", "\ud800")  # once a bare UnicodeEncodeError
