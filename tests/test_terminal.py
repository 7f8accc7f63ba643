"""Interactive terminals (issue 20): a PTY in a real sandbox, typed into and read from.

Run against a Python image (the Python supervisor), a Node.js image (the Node.js supervisor, whose
PTY comes from util-linux's ``script``), an image with neither (no supervisor: a ``docker exec``
with a tty) and the local backend, plus a session's sandbox.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator

import pytest
from helpers import poll_until

from pydantic_deep import (
    DockerSandbox,
    InvalidArgumentError,
    LocalSandbox,
    RuntimeConfig,
    SandboxBase,
    SyncSessionManager,
    Terminal,
    TerminalClosedError,
)

pytestmark = pytest.mark.terminal

KINDS = ["python-minimal", "node-minimal", "bare", "local"]
BARE = RuntimeConfig(name="test-terminal-bare", image="pydantic-deep/debian:bookworm-minbase")
TIMEOUT = 30


@pytest.fixture(scope="module")
def boxes() -> Iterator[dict[str, SandboxBase]]:
    """One sandbox per kind for the module, started when a test first needs it."""
    started: dict[str, SandboxBase] = {}
    try:
        yield started
    finally:
        for box in started.values():
            box.stop()


@pytest.fixture(params=KINDS)
def box(request: pytest.FixtureRequest, boxes: dict[str, SandboxBase]) -> SandboxBase:
    kind = request.param
    if kind not in boxes:
        boxes[kind] = (LocalSandbox() if kind == "local" else DockerSandbox(BARE if kind == "bare" else kind)).start()
    return boxes[kind]


# Escape sequences (colours, bracketed paste, cursor moves) and carriage returns: what the text
# looks like is what the tests check.
_DECORATION = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]|\r")


class Screen:
    """What a terminal showed so far, read as it comes, without escape sequences and ``\\r``."""

    def __init__(self, term: Terminal) -> None:
        self.term, self.text = term, ""

    def expect(self, pattern: str) -> re.Match[str]:
        """Wait until the output since the last match holds ``pattern`` (a regex); that match."""
        def found() -> re.Match[str] | None:
            self.text += _DECORATION.sub("", self.term.read(timeout=0.2))
            return re.search(pattern, self.text)

        match = poll_until(found, lambda: f"the terminal shows {pattern!r}; it showed {self.text[-500:]!r}",
                           timeout=TIMEOUT, interval=0)
        self.text = self.text[match.end():]
        return match


def test_an_interactive_interpreter_answers(box: SandboxBase) -> None:
    interpreter = {"node-minimal": "node", "test-terminal-bare": "sh"}.get(box.runtime.name, "python3")
    if interpreter == "sh":  # a bare image has no interpreter but the shell's arithmetic
        with box.terminal() as term:
            term.write("echo $((1+1))\n")
            Screen(term).expect(r"\n2\n")
        return
    with box.terminal() as term:
        screen = Screen(term)
        term.write(f"{interpreter}\n")
        screen.expect(">" if interpreter == "node" else ">>> ")
        term.write("1+1\n")
        screen.expect(r"1\+1\n2\n")
        term.write("exit()\n" if interpreter == "python3" else ".exit\n")  # leave the interpreter: back in the shell
        screen.expect(r"[$#] $")  # the shell's prompt
        term.write("echo shell=$((6*7))\n")
        screen.expect("shell=42")
    assert not term.alive and term.exit_code == 137


def test_stty_size_follows_resize(box: SandboxBase) -> None:
    with box.terminal(cols=100, rows=30) as term:
        screen = Screen(term)
        term.write("stty size\n")
        screen.expect(r"\n30 100\n")
        term.resize(cols=132, rows=43)
        assert term.size == (132, 43)
        # The kernel's SIGWINCH reaches the foreground program: a trap in it sees the new size.
        term.write("sh -c 'trap \"stty size\" WINCH; echo trap\"\"ping; while :; do sleep 0.05; done'\n")
        screen.expect(r"\ntrapping\n")
        term.resize(cols=90, rows=20)
        screen.expect(r"(^|\n)20 90\n")


def test_ctrl_c_interrupts_the_foreground_program_and_the_shell_lives_on(box: SandboxBase) -> None:
    with box.terminal() as term:
        screen = Screen(term)
        term.write("sh -c 'echo rea\"\"dy; exec sleep 100'\n")  # "ready": sleep runs in the foreground
        screen.expect(r"\nready\n")
        term.write("\x03")
        term.write("echo status=$?\n")
        screen.expect(r"\nstatus=130\n")
        assert term.alive


def test_two_terminals_at_once_and_a_program_that_ends(box: SandboxBase) -> None:
    with box.terminal(command="cat") as first, box.terminal(command="read line; echo got:$line; exit 7") as second:
        second.write("hello\n")
        assert second.wait(TIMEOUT) == 7
        assert "got:hello" in second.read(timeout=0)
        with pytest.raises(TerminalClosedError, match="exited with code 7"):
            second.write("more\n")
        first.write("still here\n")
        Screen(first).expect("still here\nstill here\n")  # the echo, then cat's copy


def test_nothing_is_left_after_close(box: SandboxBase) -> None:
    term = box.terminal()
    screen = Screen(term)
    term.write("sleep 313 & sleep 314 & echo \"pids=<$(jobs -p | tr '\\n' ' ')>\"\n")
    pids = screen.expect(r"pids=<([\d ]+)>").group(1).split()
    assert len(pids) == 2
    term.close()
    assert not term.alive and term.exit_code == 137
    running = " ".join(f"/proc/{pid}" for pid in pids)
    poll_until(lambda: box.execute(f"grep -ls '^State:.*[RSD]' {' '.join(p + '/status' for p in running.split())}"
                                   " || true").output == "", "the terminal's jobs are gone", timeout=TIMEOUT)
    term.close()  # again: a no-op


def test_read_until_stops_at_the_text_and_keeps_the_rest(box: SandboxBase) -> None:
    with box.terminal(command="printf 'one\\ntwo\\nthree\\n'; exec cat") as term:
        assert term.read_until("two", timeout=TIMEOUT).endswith("one\r\ntwo")
        assert term.read_until("three", timeout=TIMEOUT) == "\r\nthree"
        rest = term.read_until("never", timeout=0.2)  # it does not come: what is left, if anything
        assert rest in ("", "\r\n")
    with pytest.raises(InvalidArgumentError, match="empty"):
        term.read_until("")


def test_typing_counts_as_use_of_the_sandbox(box: SandboxBase) -> None:
    with box.terminal(command="cat") as term:
        box.last_used -= 1000  # as if untouched for a quarter of an hour
        assert box.idle_seconds > 999
        term.write("x")
        assert box.idle_seconds < 999  # an idle-session reaper leaves it alone


def test_bad_sizes_and_commands_are_refused_before_anything_runs(box: SandboxBase) -> None:
    for cols, rows in ((0, 24), (80, 70000), (80.5, 24), (True, 24)):
        with pytest.raises(InvalidArgumentError, match="cols|rows"):
            box.terminal(cols=cols, rows=rows)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="NUL"):
        box.terminal(command="echo a\0b")
    with box.terminal(command="cat") as term, pytest.raises(InvalidArgumentError, match="rows"):
        term.resize(80, 0)


def test_the_async_twins(box: SandboxBase) -> None:
    async def scenario() -> str:
        async with await box.aterminal(command="cat") as term:
            await term.awrite("async\n")
            seen = ""
            while "async\r\nasync\r\n" not in seen:
                seen += await asyncio.wait_for(term.aread(), TIMEOUT)
            assert await term.aread(timeout=0.05) == ""  # nothing more came
            return seen

    assert asyncio.run(scenario()) == "async\r\nasync\r\n"


def test_a_terminal_ends_with_its_sandbox() -> None:
    box = DockerSandbox("python-minimal").start()
    try:
        term = box.terminal()
        term.write("echo up\n")
        Screen(term).expect("\nup\n")
    finally:
        box.stop()
    assert term.wait(TIMEOUT) is None and not term.alive
    with pytest.raises(TerminalClosedError, match="sandbox stopped"):
        term.write("x")


def test_a_sessions_terminal_ends_when_the_session_stops() -> None:
    with SyncSessionManager("python-minimal", name=f"test-{uuid.uuid4().hex[:8]}") as manager:
        try:
            sandbox = manager.get_or_create("terminal-user")
            term = sandbox.terminal(command="echo $PWD; cat")
            Screen(term).expect(re.escape(sandbox.work_dir))
            assert manager.stop("terminal-user")
            assert term.wait(TIMEOUT) is None and not term.alive
        finally:
            manager.shutdown(keep_files=False)
