"""The execution channel's far end: a small supervisor that runs *inside* the container.

It is copied into every container whose image has ``python3`` (3.8 or newer). A new container on
an engine of the host's machine starts it with ``--dial PATH``: it connects to the host's socket
bind-mounted at PATH and speaks over that (``execution/dial_in.py``); otherwise it is started once
per channel with ``docker exec -i`` and speaks over its standard streams. Images with ``node`` and
no ``python3`` run its Node.js twin, ``supervisor.js``, which speaks the same protocol
(``tests/test_protocol.py`` holds both to it).
From then on, commands travel as frames over that one open stream instead of costing a
``docker exec`` each (about 50 ms, against well under 1 ms here).

Standard library only, and importable by the host, which takes the frame format from here.

Frames, both ways: a header ``>BII`` (kind, request id, payload length), then the payload.

Host to supervisor:
    RUN     JSON ``{"command", "timeout", "max_output", "stdin"}``: run ``/bin/sh -c command`` in a
            new session (so its process group can be killed whole).
    STDIN   bytes for the command's standard input; an empty payload closes it.
    SIGNAL  JSON ``{"signal": n}``: send the signal to the command's process group.
    TERMINAL         JSON ``{"command", "cols", "rows"}``: open a terminal: run ``command`` (``None``:
                     an interactive shell, bash where there is one) on a new pseudo-terminal of that
                     size, as the leader of a new session with it as its controlling terminal.
    TERMINAL_INPUT   bytes typed into the terminal (``\x03`` is Ctrl-C: the terminal's line
                     discipline turns it into SIGINT for the foreground process group).
    TERMINAL_RESIZE  JSON ``{"cols", "rows"}``: the new size (its foreground process gets SIGWINCH).
    TERMINAL_CLOSE   kill every process of the terminal's session.

Supervisor to host:
    HELLO   JSON ``{"version", "python", "pid"}`` (``"node"`` for ``"python"`` from supervisor.js), once,
            when ready.
    STDOUT / STDERR   output bytes, at most ``max_output`` in all per command; the rest is dropped.
    EXIT    JSON ``{"exit_code", "timed_out", "dropped", "oom_killed"}``; exit code 128+n after signal n.
    ERROR   JSON ``{"message"}``: the command could not be started.

A terminal's output comes in STDOUT frames (a terminal has one stream), and its end in an EXIT frame
(``timed_out``, ``dropped`` and ``oom_killed`` always false or 0) when its process exits; what the
process left in the background keeps running, as after a logout, until TERMINAL_CLOSE or the end of
the host's stream.
Ports (``kubectl port-forward``'s way): the host carries each TCP connection it accepts for a port of
the sandbox as a stream of frames, whose id (a request id the host picks) names it both ways. The
supervisor connects to the port on the container's loopback, so this works with the network off.
    PORT_OPEN    host to supervisor, JSON ``{"port": n}``: connect to 127.0.0.1:n (else [::1]:n).
    PORT_DATA    both ways, the stream's bytes. A side has at most ``PORT_WINDOW`` bytes of a stream
                 sent and not yet acknowledged: memory stays bounded however fast the other side is.
    PORT_ACK     both ways, ``>I`` n: the receiver wrote n bytes of the stream out; n more may come.
    PORT_END     both ways: the sender sends no more data (its socket read end of file); the receiver
                 shuts down writing once what it holds is written.
    PORT_CLOSE   both ways, JSON ``{"error": text}`` or empty: the stream is gone (nothing listens,
                 a reset); no frame follows for it.
A side forgets a stream once it has sent and received PORT_END, or sent or received PORT_CLOSE.

Out of memory: the kernel counts, per cgroup, the processes its OOM killer killed (cgroup v2's
``memory.events``, v1's ``memory.oom_control``: field ``oom_kill``). The count is the container's,
not the command's, so a command is reported ``oom_killed`` when it rose while the command ran and
the command either ran alone or itself died of SIGKILL (the OOM killer's signal) before its timeout.

At the process limit (``pids_limit``) no command can start. Processes that finished commands left
running in the background (in the command's process group) are then killed to make room, and a
command that still cannot start fails with a message that names the limit.

A command is finished when its shell exits; output its background children write later is read
and discarded, so a server started with ``&`` keeps running and never blocks on a full pipe. When
the host's stream closes, every command still running is killed and the supervisor exits.

The supervisor makes itself non-dumpable, so that the sandbox's code (the same user) cannot reach
its stream through ``/proc/<pid>/fd``, and asks the scheduler for short time slices, so that it runs
as soon as it wakes (see ``_ask_for_short_slices``).
"""

from __future__ import annotations

# The C halves of signal, socket and json: their Python modules import enum (and json re), 7 of
# the 10 ms the supervisor's imports took, on the path of every cold start. typing would cost as
# much: none here.
import _signal as signal  # type: ignore[import-not-found]  # (no stub: ints and two functions are used)
import _socket as socket
import errno
import fcntl
import os
import selectors
import struct
import sys
import termios
import time
from collections.abc import Callable

try:
    import _json
except ImportError:  # a Python without json's C half: json itself (see _loads and _dumps)
    _json = None  # type: ignore[assignment]

try:
    import ctypes
except ImportError:  # a Python built without it: the steps of _with_libc are skipped
    ctypes = None  # type: ignore[assignment]

VERSION = 1
HEADER = struct.Struct(">BII")
RUN, STDIN, SIGNAL = 1, 2, 3
HELLO, STDOUT, STDERR, EXIT, ERROR = 10, 11, 12, 13, 14
TERMINAL, TERMINAL_INPUT, TERMINAL_RESIZE, TERMINAL_CLOSE = 20, 21, 22, 23
TERMINAL_FRAMES = (TERMINAL, TERMINAL_INPUT, TERMINAL_RESIZE, TERMINAL_CLOSE)
# A terminal's default program: an interactive shell, not a login one (a login shell's
# /etc/profile would replace the image's PATH).
_TERMINAL_SHELL = b'if [ -x /bin/bash ]; then exec /bin/bash -i; else exec /bin/sh -i; fi'
_TERMINAL_TYPE = b"xterm-256color"
PORT_OPEN, PORT_DATA, PORT_END, PORT_CLOSE, PORT_ACK = 30, 31, 32, 33, 34  # 20s: terminals
PORT_FRAMES = frozenset((PORT_OPEN, PORT_DATA, PORT_END, PORT_CLOSE, PORT_ACK))
PORT_WINDOW = 1024 * 1024
ACK = struct.Struct(">I")
_PORT_READ_SIZE = 256 * 1024  # per read from a port's socket: fewer, larger frames
_READ_SIZE = 65536
# The waiting shell: reads the command from fd 3 line by line (no other process is started),
# closes fd 3 so the command does not inherit it, and evaluates it as `sh -c` would.
_WAITING_SHELL = b's=; while IFS= read -r l || [ -n "$l" ]; do s="$s$l\n"; done <&3; exec 3<&-; eval "$s"'
# `read` takes a byte per system call: past this length a fresh `sh -c` is quicker. It also
# keeps the write into the waiting shell's empty pipe from ever blocking.
_SCRIPT_PIPE_LIMIT = 1024
# Python ignores SIGPIPE and SIGXFSZ, and commands would inherit that: `yes | head` would complain
# of a broken pipe. SIGPIPE gets its default back. SIGXFSZ stays ignored on purpose: a write past
# the per-file size limit then fails with "File too large", which every program reports, instead
# of killing the program with no message. A supervisor that started with its container was started
# in the background by a shell, which ignores SIGINT and SIGQUIT there: commands get them back too
# (an interrupt must reach the interpreter).
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGINT, signal.SIGQUIT)
_OOM_COUNTERS = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")
_KILLED_BY_SIGKILL = 128 + signal.SIGKILL
# Waiting shells kept ready. A command takes one, and only the last one is replaced at once; the
# others are a moment after a command's end, so that a shell's start (half a millisecond of a core)
# is not on the path of commands that do not need it: the next of a quick series finds the shell
# started during the one before, and a burst of first commands across many sandboxes (a burst of
# users) runs before their spares are made again.
_SPARES = 2
_REFILL_AFTER = 0.25
# sched_setattr(2)'s number by machine, its flag that gives children the default back, and the slice
# the supervisor asks for (see _ask_for_short_slices).
_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274, "armv7l": 380, "i686": 351, "ppc64le": 355, "s390x": 345}
_SCHED_FLAG_RESET_ON_FORK = 1
_SLICE_NS = 100_000
# How long a command may wait, at the process limit, for killed leftovers to be reaped by init.
_REAP_WAIT, _REAP_STEP = 1.0, 0.01


class _JsonDefaults:
    """What json's C scanner reads of a decoder: the settings of ``json.loads()``."""

    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int = float, int
    parse_constant = staticmethod(float)  # NaN, Infinity, -Infinity


_scan_json = _json.make_scanner(_JsonDefaults()) if _json is not None else None  # type: ignore[arg-type]


def _loads(payload: bytes) -> dict:
    """``json.loads(payload)`` (an object, in every frame of the protocol), by json's C scanner
    where there is one."""
    if _scan_json is not None:
        try:
            text = payload.decode()
            value, end = _scan_json(text, 0)
        except (ValueError, StopIteration):
            pass  # json.loads says what is wrong
        else:
            if end == len(text):
                return value
    import json

    return json.loads(payload)


def _dumps(message: dict[str, str | int | bool]) -> bytes:
    """``json.dumps(message).encode()`` for the flat messages the supervisor sends."""
    if _json is None:
        import json

        return json.dumps(message).encode()
    fields = (f"{_json.encode_basestring_ascii(key)}: {_json_value(value)}" for key, value in message.items())
    return ("{" + ", ".join(fields) + "}").encode()


def _json_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(int(value)) if isinstance(value, int) else _json.encode_basestring_ascii(value)


def _open_oom_counter() -> int | None:
    """A descriptor on the container's OOM-kill counter file, or ``None`` where there is none."""
    for path in _OOM_COUNTERS:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        if _read_oom_kills(fd) is not None:
            return fd
        os.close(fd)
    return None


def _read_oom_kills(fd: int | None) -> int | None:
    """The ``oom_kill`` count in the counter file (re-read from its start on every call)."""
    if fd is None:
        return None
    for line in os.pread(fd, 4096, 0).splitlines():
        name, _, value = line.partition(b" ")
        if name == b"oom_kill":
            return int(value)
    return None


class _Shell:
    """A spawned shell's pid and the supervisor's ends of its pipes."""

    def __init__(self, pid: int, script_fd: int | None, out_fd: int, err_fd: int, stdin_fd: int | None) -> None:
        self.pid, self.script_fd, self.out_fd, self.err_fd, self.stdin_fd = pid, script_fd, out_fd, err_fd, stdin_fd

    def close_parent_ends(self) -> None:
        for fd in (self.script_fd, self.out_fd, self.err_fd, self.stdin_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class _Command:
    """One running command: its process, pipes, output budget and deadline."""

    def __init__(self, request_id: int, pid: int, deadline: float | None, max_output: int | None,
                 oom_kills: int | None) -> None:
        self.request_id = request_id
        self.oom_kills = oom_kills  # the container's OOM-kill count when the command started
        self.overlapped = False  # another command ran at some time during this one
        self.pid = pid
        self.deadline = deadline
        self.budget = max_output
        self.dropped = 0
        self.timed_out = False
        self.stdin_fd: int | None = None
        self.stdin_pending = b""
        self.stdin_closing = False
        self.open_pipes = 2  # stdout and stderr


class _Terminal:
    """One terminal: its session leader and the supervisor's end (the master) of its pseudo-terminal."""

    def __init__(self, request_id: int, pid: int, master_fd: int) -> None:
        self.request_id, self.pid, self.master_fd = request_id, pid, master_fd
        self.pending_input = b""


def _window_size(cols: object, rows: object) -> bytes:
    """A ``struct winsize`` for TIOCSWINSZ; ValueError for sizes that are not 1 to 65535."""
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n < 65536 for n in (cols, rows)):
        raise ValueError(f"the size must be whole numbers from 1 to 65535, not cols={cols!r}, rows={rows!r}")
    return struct.pack("HHHH", rows, cols, 0, 0)


def _session_members(session: int) -> list[int]:
    """The pids of the processes in ``session`` (field 6 of ``/proc/PID/stat``)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if len(fields) > 3 and int(fields[3]) == session:
            members.append(int(entry))
    return members
class _Stream:
    """One connection to a port of the sandbox, carried to the host as a stream (see PORT_* above)."""

    def __init__(self, stream_id: int, sock: socket.socket) -> None:
        self.id, self.sock = stream_id, sock
        self.outgoing = bytearray()  # from the host, not yet written to the socket
        self.credit = PORT_WINDOW  # bytes that may still go to the host before it acknowledges some
        self.sent_end = False  # the socket read end of file, and the host was told
        self.got_end = False  # the host sends no more: shut down writing once outgoing is written
        self.shut = False  # writing is shut down
        self.events = 0  # what the selector watches the socket for


def _connect_loopback(port: int) -> socket.socket:
    """A connection to ``port`` on the container's loopback: IPv4 first, then IPv6 (Vite's default)."""
    failure: OSError | None = None
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:  # no IPv6 in this container
            failure = failure or exc
            continue
        try:
            sock.settimeout(5)  # on loopback a connect is answered at once, unless the backlog is full
            sock.connect((address, port))
        except OSError as exc:
            sock.close()
            failure = failure or exc
            continue
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    assert failure is not None
    raise failure


class Supervisor:
    """The event loop: frames from the host, output from commands, exits and deadlines."""

    def __init__(self, host_in: int, host_out: int) -> None:
        self.host_in, self.host_out = host_in, host_out
        self.selector = selectors.DefaultSelector()
        self.commands: dict[int, _Command] = {}  # by request id
        self.by_pid: dict[int, _Command] = {}
        self.terminals: dict[int, _Terminal] = {}  # by request id
        self.terminal_pids: dict[int, _Terminal] = {}
        self.inbox = b""
        self.outbox = bytearray()  # frames for the host, written by flush()
        # Converted once: handing os.environ to posix_spawn re-encodes it on every command.
        self.environment = dict(os.environb)
        self.devnull = os.open(os.devnull, os.O_RDONLY)
        self.spares: list[_Shell] = []  # waiting shells, oldest first
        self.refill_at: float | None = None  # when to bring the spares back to _SPARES
        self.oom_counter = _open_oom_counter()
        # Process groups of finished commands that still had members: their background jobs.
        self.leftover_groups: set[int] = set()
        self.streams: dict[int, _Stream] = {}  # connections to ports, by stream id
        wake_read, wake_write = os.pipe()
        for fd in (wake_read, wake_write):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the selector through the fd above
        self.selector.register(wake_read, selectors.EVENT_READ, ("wake", None))
        self.selector.register(host_in, selectors.EVENT_READ, ("host", None))

    def send(self, kind: int, request_id: int, payload: bytes = b"") -> None:
        """Queue a frame for the host; :meth:`flush` writes the queue once a turn of the loop is
        done, or once it holds a read's worth of output."""
        self.outbox += HEADER.pack(kind, request_id, len(payload))
        self.outbox += payload
        if len(self.outbox) >= _READ_SIZE:
            self.flush()

    def flush(self) -> None:
        """Write the queued frames in one go. A quick command's output and its EXIT come out of the
        same turn: one write wakes the host's reader once instead of twice (under a burst of new
        users, a hundred times fewer wake-ups, each of them a turn at the host's GIL)."""
        data, self.outbox = self.outbox, bytearray()
        view = memoryview(data)
        while view:  # blocking writes: a slow host slows commands down instead of losing output
            view = view[os.write(self.host_out, view):]

    def send_json(self, kind: int, request_id: int, message: dict[str, str | int | bool]) -> None:
        self.send(kind, request_id, _dumps(message))

    def serve(self) -> None:
        self._keep_spares(1)
        self.send_json(HELLO, 0, {"version": VERSION, "python": sys.version.split()[0], "pid": os.getpid()})
        self.flush()
        self._keep_spares(_SPARES)
        while True:
            for key, events in self.selector.select(self._next_timeout()):
                role, command = key.data
                if role == "host" and not self._read_host():
                    self._kill_all()
                    return
                if role == "port":
                    self._port_ready(command, events)
                elif role == "wake":
                    self._drain_wakeups(key.fd)
                elif role in ("stdout", "stderr"):
                    self._read_output(key.fd, role, command)
                elif role == "stdin":
                    self._flush_stdin(command)
                elif role == "terminal":
                    self._terminal_ready(command, events)
            self._reap()
            self._enforce_deadlines()
            self.flush()
            if self.refill_at is not None and time.monotonic() >= self.refill_at:
                self.refill_at = None
                self._keep_spares(_SPARES)

    # -- frames from the host ------------------------------------------------------------------

    def _read_host(self) -> bool:
        chunk = os.read(self.host_in, _READ_SIZE)
        if not chunk:
            return False
        self.inbox += chunk
        while len(self.inbox) >= HEADER.size:
            kind, request_id, length = HEADER.unpack_from(self.inbox)
            if len(self.inbox) < HEADER.size + length:
                break
            payload = self.inbox[HEADER.size:HEADER.size + length]
            self.inbox = self.inbox[HEADER.size + length:]
            self._handle(kind, request_id, payload)
        return True

    def _handle(self, kind: int, request_id: int, payload: bytes) -> None:
        if kind in PORT_FRAMES:
            self._port_frame(kind, request_id, payload)
            return
        command = self.commands.get(request_id)
        if kind == RUN:
            self._start(request_id, _loads(payload))
        elif kind == STDIN and command is not None and command.stdin_fd is not None:
            if payload:
                command.stdin_pending += payload
            else:
                command.stdin_closing = True
            self._flush_stdin(command)
        elif kind == SIGNAL and command is not None:
            self._signal(command, _loads(payload)["signal"])
        elif kind in TERMINAL_FRAMES:
            self._handle_terminal(kind, request_id, payload)

    # -- ports (streams to TCP ports on the container's loopback) -----------------------------

    def _port_frame(self, kind: int, stream_id: int, payload: bytes) -> None:
        if kind == PORT_OPEN:
            self._port_open(stream_id, payload)
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # a stream this side forgot already (closed): the host learns it from our CLOSE
        if kind == PORT_DATA:
            stream.outgoing += payload
            self._port_write(stream)
        elif kind == PORT_ACK:
            stream.credit += ACK.unpack(payload)[0]
        elif kind == PORT_END:
            stream.got_end = True
            self._port_write(stream)
        elif kind == PORT_CLOSE:
            self._port_forget(stream)
        if stream.id in self.streams:
            self._port_watch(stream)

    def _port_open(self, stream_id: int, payload: bytes) -> None:
        try:
            port = int(_loads(payload)["port"])
            if not 0 < port < 65536:
                raise ValueError(f"port {port} is out of range")
        except (ValueError, KeyError, TypeError) as exc:
            self.send_json(PORT_CLOSE, stream_id, {"error": f"cannot open the stream: {exc}"})
            return
        try:
            sock = _connect_loopback(port)
        except OSError as exc:
            self.send_json(PORT_CLOSE, stream_id,
                           {"error": f"nothing listens on port {port} in the sandbox ({exc.strerror or exc})"})
            return
        stream = self.streams[stream_id] = _Stream(stream_id, sock)
        self._port_watch(stream)

    def _port_ready(self, stream: _Stream, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            self._port_write(stream)
        if events & selectors.EVENT_READ and stream.id in self.streams:
            try:
                chunk = stream.sock.recv(min(_PORT_READ_SIZE, stream.credit))
            except BlockingIOError:
                chunk = None
            except OSError as exc:
                self._port_fail(stream, exc)
                return
            if chunk:
                stream.credit -= len(chunk)
                self.send(PORT_DATA, stream.id, chunk)
            elif chunk is not None:
                stream.sent_end = True
                self.send(PORT_END, stream.id)
        if stream.id in self.streams:
            self._port_watch(stream)

    def _port_write(self, stream: _Stream) -> None:
        """Write what the host sent to the socket, as far as it takes it, and acknowledge that."""
        written = 0
        try:
            while stream.outgoing:
                sent = stream.sock.send(stream.outgoing)
                del stream.outgoing[:sent]
                written += sent
        except BlockingIOError:
            pass
        except OSError as exc:
            self._port_fail(stream, exc)
            return
        if written:
            self.send(PORT_ACK, stream.id, ACK.pack(written))
        if stream.got_end and not stream.outgoing and not stream.shut:
            stream.shut = True
            try:
                stream.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the peer closed already

    def _port_watch(self, stream: _Stream) -> None:
        """Watch the socket for what the stream waits for; forget the stream once both ways ended."""
        if stream.sent_end and stream.shut:
            self._port_forget(stream)
            return
        events = (selectors.EVENT_READ if not stream.sent_end and stream.credit > 0 else 0) | (
            selectors.EVENT_WRITE if stream.outgoing else 0)
        if events == stream.events:
            return
        if not events:
            self.selector.unregister(stream.sock)
        elif not stream.events:
            self.selector.register(stream.sock, events, ("port", stream))
        else:
            self.selector.modify(stream.sock, events, ("port", stream))
        stream.events = events

    def _port_fail(self, stream: _Stream, exc: OSError) -> None:
        self.send_json(PORT_CLOSE, stream.id, {"error": f"the connection to the sandbox's port broke ({exc})"})
        self._port_forget(stream)

    def _port_forget(self, stream: _Stream) -> None:
        if stream.events:
            self.selector.unregister(stream.sock)
            stream.events = 0
        stream.sock.close()
        self.streams.pop(stream.id, None)

    def _spawn(self, command: bytes | None, with_stdin: bool) -> _Shell:
        """Start ``sh -c command`` in a new session; with no command, a shell that waits for one.

        A waiting shell reads its command from a pipe on fd 3 once :meth:`_start` writes it
        there, then runs it with ``eval``. Spawning it ahead of time takes the shell's own
        start-up (most of a command's cost) off the path of the next command.
        """
        script_read, script_write = os.pipe() if command is None else (None, None)
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        in_read, in_write = os.pipe() if with_stdin else (self.devnull, None)
        child_ends = [fd for fd in (script_read, out_write, err_write) if fd is not None]
        child_ends += [in_read] if with_stdin else []
        actions = [(os.POSIX_SPAWN_DUP2, in_read, 0), (os.POSIX_SPAWN_DUP2, out_write, 1),
                   (os.POSIX_SPAWN_DUP2, err_write, 2)]
        if script_read is not None:
            actions.append((os.POSIX_SPAWN_DUP2, script_read, 3))
        argv = [b"sh", b"-c", command if command is not None else _WAITING_SHELL, b"sh"]
        try:
            pid = os.posix_spawn(b"/bin/sh", argv, self.environment, file_actions=actions, setsid=True,
                                 setsigdef=_DEFAULT_SIGNALS)
        except OSError:
            for fd in (script_write, out_read, err_read, in_write):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            for fd in child_ends:
                os.close(fd)
        return _Shell(pid, script_write, out_read, err_read, in_write)

    def _start(self, request_id: int, spec: dict) -> None:
        # The host refuses such commands; should one come anyway, it fails alone: an exception
        # here would end the supervisor and every command it runs.
        try:
            script = spec["command"].encode() + b"\n"
        except (KeyError, AttributeError, UnicodeEncodeError) as exc:
            self.send_json(ERROR, request_id, {"message": f"cannot run the command: {exc!r}"})
            return
        if b"\0" in script:  # sh -c would cut it short, the waiting shell would drop the byte
            self.send_json(ERROR, request_id, {"message": "cannot run the command: it holds a NUL byte"})
            return
        shell = None
        if self.spares and not spec.get("stdin") and len(script) <= _SCRIPT_PIPE_LIMIT:
            shell = self.spares.pop(0)
            script_fd = shell.script_fd
            assert script_fd is not None  # a waiting shell always has its script pipe
            try:
                os.write(script_fd, script)  # fits the pipe's buffer: never blocks
            except BrokenPipeError:  # the spare was killed (by a `pkill sh`, say)
                shell.close_parent_ends()
                shell = None
            else:
                os.close(script_fd)
                shell.script_fd = None
        if shell is None:
            try:
                shell = self._spawn_making_room(spec["command"].encode(), bool(spec.get("stdin")))
            except OSError as exc:
                reason = ("the sandbox is at its process limit (pids_limit): its commands' processes use "
                          "them all" if exc.errno == errno.EAGAIN else str(exc))
                self.send_json(ERROR, request_id, {"message": f"cannot start /bin/sh: {reason}"})
                return
        self._keep_spares(1)  # none left: one now, while the command runs, so the next one finds it
        timeout = spec.get("timeout")
        command = _Command(request_id, shell.pid, time.monotonic() + timeout if timeout else None,
                           spec.get("max_output"), _read_oom_kills(self.oom_counter))
        if self.commands:
            command.overlapped = True
            for other in self.commands.values():
                other.overlapped = True
        self.commands[request_id] = command
        self.by_pid[shell.pid] = command
        for fd, role in ((shell.out_fd, "stdout"), (shell.err_fd, "stderr")):
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ, (role, command))
        if shell.stdin_fd is not None:
            os.set_blocking(shell.stdin_fd, False)
            command.stdin_fd = shell.stdin_fd

    def _spawn_making_room(self, command: bytes, with_stdin: bool) -> _Shell:
        """:meth:`_spawn`; at the process limit, first kill the background jobs of finished commands."""
        try:
            return self._spawn(command, with_stdin)
        except OSError as exc:
            if exc.errno != errno.EAGAIN or not self.leftover_groups:
                raise
        # A group whose processes all ended may have passed its number on to a running command.
        running = {*self.by_pid, *(spare.pid for spare in self.spares)}
        for group in self.leftover_groups - running:
            self._kill_group(group)
        self.leftover_groups.clear()
        # The killed processes free their slots once init has reaped them, a moment later.
        deadline = time.monotonic() + _REAP_WAIT
        while True:
            try:
                return self._spawn(command, with_stdin)
            except OSError as exc:
                if exc.errno != errno.EAGAIN or time.monotonic() > deadline:
                    raise
            time.sleep(_REAP_STEP)

    # -- commands -----------------------------------------------------------------------------

    def _read_output(self, fd: int, role: str, command: _Command) -> None:
        try:
            chunk = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        if not chunk:
            self.selector.unregister(fd)
            os.close(fd)
            command.open_pipes -= 1
            if command.open_pipes == 0 and command.pid in self.by_pid:
                # Both pipes closed: the shell has most likely exited; reap it without waiting
                # for SIGCHLD to come round the loop.
                pid, status = os.waitpid(command.pid, os.WNOHANG)
                if pid:
                    del self.by_pid[pid]
                    self._finish(command, status)
            return
        self._forward(command, role, chunk)

    def _forward(self, command: _Command, role: str, chunk: bytes) -> None:
        if command.request_id not in self.commands:
            return  # a finished command's background children: read and discard
        if command.budget is not None:
            kept = chunk[:max(command.budget, 0)]
            command.dropped += len(chunk) - len(kept)
            command.budget -= len(kept)
            chunk = kept
        if chunk:
            self.send(STDOUT if role == "stdout" else STDERR, command.request_id, chunk)

    def _flush_stdin(self, command: _Command) -> None:
        fd = command.stdin_fd
        if fd is None:
            return
        try:
            while command.stdin_pending:
                written = os.write(fd, command.stdin_pending)
                command.stdin_pending = command.stdin_pending[written:]
        except BlockingIOError:
            pass
        except BrokenPipeError:
            command.stdin_pending, command.stdin_closing = b"", True
        registered = fd in self.selector.get_map()
        if command.stdin_pending and not registered:
            self.selector.register(fd, selectors.EVENT_WRITE, ("stdin", command))
        elif not command.stdin_pending:
            if registered:
                self.selector.unregister(fd)
            if command.stdin_closing:
                os.close(fd)
                command.stdin_fd = None

    def _signal(self, command: _Command, signum: int) -> None:
        self._kill_group(command.pid, signum)

    @staticmethod
    def _kill_group(group: int, signum: int = signal.SIGKILL) -> bool:
        """Send ``signum`` to a process group; False when the group has no process left."""
        try:
            os.killpg(group, signum)
        except ProcessLookupError:
            return False
        return True

    def _reap(self) -> None:
        while self.by_pid or self.terminal_pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            command = self.by_pid.pop(pid, None)
            if command is not None:
                self._finish(command, status)
            terminal = self.terminal_pids.pop(pid, None)
            if terminal is not None:
                self._terminal_exited(terminal, status)

    def _finish(self, command: _Command, status: int) -> None:
        # Whatever the shell wrote before it exited is in its pipes now: read it before EXIT.
        for key in list(self.selector.get_map().values()):
            role, owner = key.data
            if owner is command and role in ("stdout", "stderr"):
                while True:
                    try:
                        chunk = os.read(key.fd, _READ_SIZE)
                    except BlockingIOError:
                        break
                    if not chunk:
                        self.selector.unregister(key.fd)
                        os.close(key.fd)
                        break
                    self._forward(command, role, chunk)
        if command.stdin_fd is not None:
            if command.stdin_fd in self.selector.get_map():
                self.selector.unregister(command.stdin_fd)
            os.close(command.stdin_fd)
            command.stdin_fd = None
        exit_code = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else (
            status >> 8 if os.WIFEXITED(status) else -os.WTERMSIG(status))
        if exit_code < 0:
            exit_code = 128 - exit_code  # killed by signal n: 128 + n, as shells report it
        del self.commands[command.request_id]
        # Signal 0 only asks whether a group still has members.
        self.leftover_groups = {group for group in self.leftover_groups if self._kill_group(group, 0)}
        if self._kill_group(command.pid, 0):
            self.leftover_groups.add(command.pid)
        self.send_json(EXIT, command.request_id,
                       {"exit_code": exit_code, "timed_out": command.timed_out, "dropped": command.dropped,
                        "oom_killed": self._oom_killed(command, exit_code)})
        if len(self.spares) < _SPARES and self.refill_at is None:
            self.refill_at = time.monotonic() + _REFILL_AFTER

    def _oom_killed(self, command: _Command, exit_code: int) -> bool:
        """Whether the OOM killer struck this command (see the module's docstring)."""
        now = _read_oom_kills(self.oom_counter)
        if now is None or command.oom_kills is None or now <= command.oom_kills:
            return False
        return not command.overlapped or (exit_code == _KILLED_BY_SIGKILL and not command.timed_out)

    def _keep_spares(self, count: int) -> None:
        """Have ``count`` waiting shells ready for the next commands."""
        while len(self.spares) < count:
            try:
                self.spares.append(self._spawn(None, False))
            except OSError:
                return  # the pids limit, say: commands then start their own shell

    def _next_timeout(self) -> float | None:
        deadlines = [c.deadline for c in self.commands.values() if c.deadline and not c.timed_out]
        if self.refill_at is not None:
            deadlines.append(self.refill_at)
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for command in list(self.commands.values()):
            if command.deadline is not None and not command.timed_out and now >= command.deadline:
                command.timed_out = True
                self._signal(command, signal.SIGKILL)

    def _drain_wakeups(self, fd: int) -> None:
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass

    def _kill_all(self) -> None:
        for command in list(self.commands.values()):
            self._signal(command, signal.SIGKILL)
        for spare in self.spares:
            spare.kill()
        for terminal in self.terminals.values():
            self._kill_session(terminal)

    # -- terminals ----------------------------------------------------------------------------

    def _handle_terminal(self, kind: int, request_id: int, payload: bytes) -> None:
        terminal = self.terminals.get(request_id)
        if kind == TERMINAL:
            self._open_terminal(request_id, payload)
        elif terminal is None:
            return  # ended already: its EXIT is on its way
        elif kind == TERMINAL_INPUT:
            terminal.pending_input += payload
            self._flush_terminal_input(terminal)
        elif kind == TERMINAL_RESIZE:
            size = _loads(payload)
            try:
                fcntl.ioctl(terminal.master_fd, termios.TIOCSWINSZ, _window_size(size.get("cols"), size.get("rows")))
            except (ValueError, OSError):
                pass  # the host checks sizes; a terminal whose process just ended has no size to set
        elif kind == TERMINAL_CLOSE:
            self._kill_session(terminal)

    def _open_terminal(self, request_id: int, payload: bytes) -> None:
        try:
            spec = _loads(payload)
            winsize = _window_size(spec.get("cols"), spec.get("rows"))
            command = spec.get("command")
            script = _TERMINAL_SHELL if command is None else command.encode()
            if b"\0" in script:
                raise ValueError("it holds a NUL byte")
        except (ValueError, AttributeError, UnicodeEncodeError) as exc:
            self.send_json(ERROR, request_id, {"message": f"cannot open the terminal: {exc}"})
            return
        environment = dict(self.environment)
        environment.setdefault(b"TERM", _TERMINAL_TYPE)
        opened: list[int] = []
        try:
            master, slave = os.openpty()  # no /dev/ptmx, or no descriptor left: the terminal fails alone
            opened += (master, slave)
            fcntl.ioctl(slave, termios.TIOCSWINSZ, winsize)
            pid = os.fork()
        except OSError as exc:
            for fd in opened:
                os.close(fd)
            reason = ("the sandbox is at its process limit (pids_limit)" if exc.errno == errno.EAGAIN else str(exc))
            self.send_json(ERROR, request_id, {"message": f"cannot open the terminal: {reason}"})
            return
        if pid == 0:  # the child: a new session whose controlling terminal is the slave
            try:
                os.setsid()
                fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
                for fd in (0, 1, 2):
                    os.dup2(slave, fd)
                for signum in _DEFAULT_SIGNALS:
                    signal.signal(signum, signal.SIG_DFL)
                os.execve(b"/bin/sh", [b"sh", b"-c", script], environment)
            except BaseException as exc:  # noqa: B036 - nothing may run on in a forked child
                os.write(2, f"cannot start /bin/sh: {exc}\r\n".encode())
            finally:
                os._exit(127)
        os.close(slave)
        os.set_blocking(master, False)
        terminal = _Terminal(request_id, pid, master)
        self.terminals[request_id] = terminal
        self.terminal_pids[pid] = terminal
        self.selector.register(master, selectors.EVENT_READ, ("terminal", terminal))

    def _terminal_ready(self, terminal: _Terminal, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            self._flush_terminal_input(terminal)
        if events & selectors.EVENT_READ:
            self._read_terminal(terminal)

    def _read_terminal(self, terminal: _Terminal) -> bool:
        """Forward what the terminal shows; False once nothing is left to read."""
        try:
            chunk = os.read(terminal.master_fd, _READ_SIZE)
        except BlockingIOError:
            return False
        except OSError:  # EIO: no process has the terminal open any more
            chunk = b""
        if not chunk:
            self._watch_terminal(terminal, 0)
            return False
        self.send(STDOUT, terminal.request_id, chunk)
        return True

    def _flush_terminal_input(self, terminal: _Terminal) -> None:
        try:
            while terminal.pending_input:
                written = os.write(terminal.master_fd, terminal.pending_input)
                terminal.pending_input = terminal.pending_input[written:]
        except BlockingIOError:
            pass
        except OSError:
            terminal.pending_input = b""
        self._watch_terminal(terminal, selectors.EVENT_READ | (selectors.EVENT_WRITE if terminal.pending_input else 0))

    def _watch_terminal(self, terminal: _Terminal, events: int) -> None:
        """Have the selector report ``events`` on the terminal's master (none: stop watching it)."""
        registered = terminal.master_fd in self.selector.get_map()
        if events and registered:
            self.selector.modify(terminal.master_fd, events, ("terminal", terminal))
        elif events:
            self.selector.register(terminal.master_fd, events, ("terminal", terminal))
        elif registered:
            self.selector.unregister(terminal.master_fd)

    def _terminal_exited(self, terminal: _Terminal, status: int) -> None:
        while self._read_terminal(terminal):  # what it showed before it exited comes before EXIT
            pass
        self._watch_terminal(terminal, 0)
        os.close(terminal.master_fd)  # a background process that reads the terminal now gets SIGHUP
        del self.terminals[terminal.request_id]
        exit_code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        self.send_json(EXIT, terminal.request_id,
                       {"exit_code": exit_code, "timed_out": False, "dropped": 0, "oom_killed": False})

    def _kill_session(self, terminal: _Terminal) -> None:
        """Kill every process of the terminal's session (jobs in process groups of their own too)."""
        for pid in {terminal.pid, *_session_members(terminal.pid)}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _out_of_reach_of_sandbox_code(libc: ctypes.CDLL) -> None:
    """Make this process non-dumpable. Code in the sandbox runs as the same user, so it could
    otherwise open ``/proc/<pid>/fd/N`` (or ``mem``) of the supervisor and write into the channel's
    stream; for a non-dumpable process those are the kernel's (root's) only. Commands get the flag
    back when they exec."""
    libc.prctl(4, 0, 0, 0, 0)  # prctl(PR_SET_DUMPABLE, 0)


def _ask_for_short_slices(libc: ctypes.CDLL) -> None:
    """Ask the scheduler for short time slices, so that the supervisor runs as soon as it wakes.

    It mostly waits and then works for a moment: a frame came, a shell exited. Linux's EEVDF
    scheduler lets a task that wakes preempt the one running on its CPU only when its own slice is
    the shorter; with equal default slices inside a container's cpu cgroup, each spawn waited in
    vfork for the new shell to use up its slice (0.7 ms, against 0.06 ms asked for 0.1 ms slices).
    Commands get the default back (``SCHED_FLAG_RESET_ON_FORK``). Kernels before 6.12 ignore a slice
    asked for an ordinary task: nothing changes there.
    """
    number = _SCHED_SETATTR.get(os.uname().machine)
    if number is not None:
        attr = struct.pack("=IIQiIQQQ", 48, 0, _SCHED_FLAG_RESET_ON_FORK, 0, 0, _SLICE_NS, 0, 0)  # sched_attr v0
        libc.syscall(number, 0, attr, 0)


def _with_libc(*steps: Callable[[ctypes.CDLL], None]) -> None:
    """Run each step with the C library; best effort: a Python without ctypes skips them."""
    if ctypes is None:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return
    for step in steps:
        try:
            step(libc)
        except (OSError, AttributeError):
            pass


def _dial(path: str) -> int:
    """A connection to the host's socket at ``path``; exits quietly when nobody listens there
    (the host gave up waiting, or this is a restart of the container)."""
    host = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        host.connect(path)
    except OSError:
        sys.exit(0)
    return host.detach()


def main() -> None:
    _with_libc(_out_of_reach_of_sandbox_code, _ask_for_short_slices)
    if sys.argv[1:2] == ["--dial"]:  # started with the container: frames go over the host's socket
        host = _dial(sys.argv[2])
        Supervisor(host_in=host, host_out=host).serve()
        return
    # Frames own stdout; a stray print would corrupt the stream, so fd 1 is kept for them alone.
    host_out = os.dup(1)
    os.dup2(2, 1)
    Supervisor(host_in=0, host_out=host_out).serve()


if __name__ == "__main__":
    main()
