"""The ``%%sandbox`` cell magic and its line-magic companions, for notebooks.

``%load_ext pydantic_deep`` registers them. A cell under ``%%sandbox`` runs inside the notebook's
sandbox: as Python (or, in Node.js runtimes, JavaScript) in an interpreter that keeps its variables
from cell to cell, or as a shell script (``--shell``, and images with neither). Output streams into the cell as it
is produced; the last expression is displayed as Jupyter would (a DataFrame as a table, a figure as
an image); an exception shows the container's traceback and fails the cell.

Settings, through ``%config SandboxMagics.<name> = ...``: ``runtime``, ``session``, ``timeout``,
``network`` (``"on"``, ``"off"``, or host patterns ``"pypi.org,*.example.com"``: the only hosts new
sandboxes reach, through the egress proxy; empty: the runtime's), ``warm`` (started sandboxes of
``runtime`` kept ready, 0 by default, so the notebook's first cell does not wait for a container
start; used while ``network`` is empty), and ``backend`` (``"local"`` runs cells in a
:class:`LocalSandbox`, on this machine, not isolated). ``%sandbox network HOST...`` changes the hosts
of a running sandbox, ``%sandbox egress`` shows what it was allowed and refused.
"""

from __future__ import annotations

import shlex
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display
from traitlets import Enum, Float, Int, TraitError, Unicode, default, observe, validate

from ..errors import SandboxError, SandboxStateError
from ..results import OutputChunk
from ..runtimes import get_runtime, list_runtimes
from ..sandbox.backends import BACKENDS, default_backend, open_sandbox
from ..sandbox.base import SandboxBase
from ..sandbox.docker import DockerSandbox
from ..sandbox.pool import SandboxPool
from .interpreter import CellError, Event, SandboxInterpreter

__all__ = ["SandboxMagics"]


class SandboxFailure(Exception):
    """A ``%%sandbox`` cell failed; shown as the container's traceback, not the host's."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a host traceback
        return self.text.rstrip("\n").splitlines()


def _transfer_arguments(magic: Callable[..., Any]) -> Callable[..., Any]:
    """The options %sandbox_push and %sandbox_pull share (as IPython's script_args does)."""
    magic = argument("-s", "--sandbox", dest="name", help="the sandbox (default: the notebook's)")(magic)
    magic = argument("names", nargs="+", help="the variables")(magic)
    return magic_arguments()(magic)


@magics_class
class SandboxMagics(Magics):
    """Run notebook cells inside Docker sandboxes."""

    runtime = Unicode("python-datascience", help="The runtime of new notebook sandboxes.").tag(config=True)
    session = Unicode("notebook", help="The name of the sandbox a cell runs in without -s.").tag(config=True)
    timeout = Float(600.0, help="Seconds a --shell cell may run (-t overrides it, and limits Python cells).").tag(
        config=True)
    network = Unicode("", help="New sandboxes' network: 'on', 'off', or comma-separated host patterns "
                      "('pypi.org,*.example.com'), the only hosts they reach; empty: the runtime's.").tag(config=True)
    backend = Enum(list(BACKENDS), help="docker, or local: LocalSandbox, on this machine and NOT ISOLATED (for "
                   "where Docker cannot run). Default: $PYDANTIC_DEEP_BACKEND, else docker.").tag(config=True)

    warm = Int(0, help="Started sandboxes of `runtime` kept ready (docker backend), so the notebook's first cell, "
               "and the first of each new -s sandbox, does not wait for a container start; 0 for none.").tag(
        config=True)

    @default("backend")
    def _default_backend(self) -> str:
        return default_backend()

    @validate("warm")
    def _check_warm(self, proposal: Any) -> int:
        if proposal["value"] < 0:
            raise TraitError(f"warm must be 0 or more, not {proposal['value']}")
        return int(proposal["value"])

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.sandboxes: dict[str, SandboxBase] = {}
        self.interpreters: dict[str, SandboxInterpreter] = {}
        self.progress: Callable[[str], None] = _print_progress  # where image build logs go
        self.widgets: list[Any] = []  # closed (their threads stopped) on %unload_ext
        self._languages: dict[str, str | None] = {}  # by container id
        self.pool: SandboxPool | None = None
        """The notebook's warm capacity (``warm`` sandboxes of ``runtime``), refilled in the background."""
        self._rewarm()

    @observe("runtime", "warm", "backend", "network")
    def _settings_changed(self, change: Any) -> None:
        if hasattr(self, "pool"):  # not while the traits are first set
            self._rewarm()

    def _rewarm(self) -> None:
        """Keep ``warm`` sandboxes of ``runtime`` ready, in place of those of the settings before."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        if self.warm and self.backend == "docker" and not self.network.strip():  # the pool's have the runtime's network
            self.pool = SandboxPool(self.runtime, size=self.warm, progress=self.progress).start()

    @property
    def _user_ns(self) -> dict[str, Any]:
        assert self.shell is not None, "the magics need an IPython shell"
        return self.shell.user_ns

    # -- sandboxes ----------------------------------------------------------------------------

    def sandbox_for(self, name: str | None = None, runtime: str | None = None) -> SandboxBase:
        """The named sandbox (default: the notebook's), started with ``runtime`` if new or changed."""
        name = name or self.session
        wanted = get_runtime(runtime or self.runtime) if runtime or name not in self.sandboxes else None
        current = self.sandboxes.get(name)
        if current is not None and (wanted is None or current.runtime == wanted) and current.state.value != "stopped":
            return current
        if current is not None:
            self.stop(name)
        config = wanted or get_runtime(self.runtime)
        if self.backend == "local":
            print("Starting a LocalSandbox: cells run on this machine, NOT ISOLATED", file=sys.stderr)
        network = _network_setting(self.network.split(",") if self.network.strip() else [])
        sandbox: SandboxBase
        if network is None and self.pool is not None and self.pool.runtime == config:
            sandbox = self.pool.acquire()  # a started one, nobody else's: no container start to wait for
        else:
            options = {} if network is None else {"network": network}
            sandbox = open_sandbox(config, backend=self.backend, progress=self.progress, **options).start()
        self.sandboxes[name] = sandbox
        return sandbox

    def interpreter_for(self, name: str | None = None, runtime: str | None = None) -> SandboxInterpreter:
        sandbox = self.sandbox_for(name, runtime)
        name = name or self.session
        interpreter = self.interpreters.get(name)
        if interpreter is None or interpreter.sandbox is not sandbox:
            interpreter = self.interpreters[name] = SandboxInterpreter(sandbox, self.language_of(sandbox) or "python")
        return interpreter

    def language_of(self, sandbox: SandboxBase) -> str | None:
        """``python`` or ``javascript``: what the sandbox's cells are written in; ``None`` for shell only."""
        key = sandbox.container_id or ""
        if key not in self._languages:
            if sandbox.has_python:
                self._languages[key] = "python"
            elif sandbox.execute("command -v node >/dev/null", timeout=30).exit_code == 0:
                self._languages[key] = "javascript"
            else:
                self._languages[key] = None
        return self._languages[key]

    def stop(self, name: str) -> None:
        """Stop the named sandbox and forget it."""
        if (interpreter := self.interpreters.pop(name, None)) is not None:
            interpreter.close()
        if (sandbox := self.sandboxes.pop(name, None)) is not None:
            sandbox.stop()

    def close(self) -> None:
        """Stop every sandbox of this notebook, its warm capacity and every widget's thread (on
        ``%unload_ext``)."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        for widget in self.widgets:
            widget.close()
        self.widgets.clear()
        for name in list(self.sandboxes):
            self.stop(name)

    # -- %%sandbox ----------------------------------------------------------------------------

    @magic_arguments()
    @argument("subcommand", nargs="*", help="line magic only: status | runtimes | upload PATH | files [DIR] | "
                                             "restart | stop | pause | resume | snapshot [NAME] | restore NAME | "
                                             "fork N | expose PORT | preview PORT | terminal [COMMAND] | "
                                             "network [on | off | HOST...] | egress")
    @argument("-s", "--sandbox", dest="name", help="the sandbox to use (default: the notebook's)")
    @argument("-r", "--runtime", help="the runtime to run the sandbox with")
    @argument("-t", "--timeout", type=float, help="seconds the cell may run")
    @argument("-o", "--out", help="keep the cell's result object in this variable")
    @argument("--shell", action="store_true", help="run the cell as a shell script")
    @argument("--no-raise", action="store_true", help="do not fail the cell when the code fails")
    @argument("--run", help="preview: start the app's server with this shell command first (in the background, "
                            "with $PYDANTIC_DEEP_PREVIEW_BASE set to the path the browser sees it under)")
    @argument("--absolute", action="store_true", help="preview: keep the proxy's path in requests (an app told its "
                                                      "base path, as Vite's --base)")
    @argument("--path", default="/", help="preview: the page to open (default /)")
    @line_cell_magic
    def sandbox(self, line: str, cell: str | None = None) -> Any:
        """Run a cell inside a Docker sandbox, or (as a line magic) manage the sandbox.

        Cell: ``%%sandbox [-s NAME] [-r RUNTIME] [-t SECONDS] [-o VAR] [--shell] [--no-raise]``.
        Line: ``%sandbox status | runtimes | upload PATH | files [DIR] | restart | stop | pause | resume |
        snapshot [NAME] | restore NAME | fork N | expose PORT | preview PORT [--absolute] [--run CMD] [--path P] |
        terminal [COMMAND] | network [on | off | HOST...] | egress``.
        ``expose`` prints the host URL of a port of the sandbox; ``preview`` shows the app in an iframe
        under the cell (see :meth:`SandboxBase.preview`), after starting it with ``--run``;
        ``terminal`` opens an interactive terminal on the sandbox under the cell (a shell, or COMMAND).
        ``snapshot`` keeps the sandbox's files (not its
        variables) under NAME; ``restore`` rolls the files back to a snapshot and restarts the
        interpreter; ``fork N`` starts N copies, named ``<sandbox>-fork1``..., for ``%%sandbox -s``.
        """
        args = parse_argstring(self.sandbox, line)
        try:
            if cell is None:
                return self._subcommand(args)
            if args.subcommand:
                raise UsageError(f"%%sandbox takes options only, not {' '.join(args.subcommand)!r}")
            if not cell.strip():
                raise UsageError("%%sandbox needs code in the cell")
            result = self._run_cell(args, cell)
        except SandboxError as exc:
            raise UsageError(str(exc)) from exc
        if args.out:
            self._user_ns[args.out] = result
        return None

    def _run_cell(self, args: Any, cell: str) -> Any:
        sandbox = self.sandbox_for(args.name, args.runtime)
        if args.shell or self.language_of(sandbox) is None:
            result = sandbox.execute(cell, timeout=args.timeout or self.timeout, on_output=_write_chunk)
            if result.exit_code != 0 and not args.no_raise:
                raise SandboxFailure(f"The shell cell failed with exit code {result.exit_code}"
                                     + (" (timed out)" if result.timed_out else ""))
            return result
        interpreter = self.interpreter_for(args.name, args.runtime)
        # -t: interrupt the cell in the sandbox when its time is up, as the interrupt button would.
        timer = threading.Timer(args.timeout, interpreter.interrupt) if args.timeout else None
        if timer is not None:
            timer.start()
        try:
            cell_result = interpreter.execute(cell, on_event=_show_event)
        finally:
            if timer is not None:
                timer.cancel()
        if cell_result.status == "interrupted":
            if timer is not None and not timer.is_alive():
                raise SandboxFailure(f"The cell ran past its {args.timeout:g} s and was interrupted")
            raise KeyboardInterrupt
        error = cell_result.error
        if error is not None:
            message = error.traceback or f"{error.ename}: {error.evalue}"
            if not args.no_raise:
                raise SandboxFailure(message)
            print(message, file=sys.stderr)  # shown, but the notebook goes on
        return cell_result

    # -- %sandbox subcommands -----------------------------------------------------------------

    def _subcommand(self, args: Any) -> Any:
        command, *rest = args.subcommand or ["status"]
        if command == "runtimes":
            for name, runtime in list_runtimes().items():
                print(f"{name:24} {runtime.description}")
        elif command == "status":
            if not self.sandboxes:
                print("No sandbox yet: the first %%sandbox cell starts one.")
            for name, sandbox in self.sandboxes.items():
                print(f"{name}: {sandbox!r}")
                for exposed in sandbox.exposed:
                    print(f"  port {exposed.port}: {exposed.url}")
        elif command == "upload":
            if len(rest) != 1:
                raise UsageError("usage: %sandbox upload PATH")
            print(f"Uploaded {self.sandbox_for(args.name, args.runtime).upload(rest[0])}")
        elif command == "files":
            for entry in self.sandbox_for(args.name, args.runtime).list_files(rest[0] if rest else "."):
                print(f"{entry.name}/" if entry.is_dir else f"{entry.name:40} {entry.size:>12,} bytes")
        elif command == "restart":
            name = args.name or self.session
            if (interpreter := self.interpreters.pop(name, None)) is not None:
                interpreter.close()
            print(f"Restarted the interpreter of {name!r}: its variables are gone")
        elif command == "stop":
            self.stop(args.name or self.session)
        elif command in ("expose", "preview"):
            if len(rest) != 1 or not rest[0].isdigit():
                raise UsageError(f"usage: %sandbox {command} PORT")
            return self._port_subcommand(command, int(rest[0]), args)
        elif command == "terminal":
            self._show_terminal(args.name, args.runtime, " ".join(rest) or None)
        elif command in ("pause", "resume", "snapshot", "restore", "fork", "network", "egress"):
            if self.backend != "docker":
                raise UsageError(f"%sandbox {command} needs the docker backend (a LocalSandbox has no container)")
            self._container_subcommand(command, rest, args)
        else:
            raise UsageError(f"unknown subcommand {command!r}: status, runtimes, upload PATH, files [DIR], "
                             "restart, stop, pause, resume, snapshot [NAME], restore NAME, fork N, expose PORT, "
                             "preview PORT, terminal [COMMAND], network [on | off | HOST...], egress")
        return None

    def _show_terminal(self, name: str | None, runtime: str | None, command: str | None) -> None:
        """Show a terminal of the sandbox under the cell (closed with the others on ``%unload_ext``)."""
        from IPython.display import display

        from .terminal import TerminalWidget  # anywidget: imported when a terminal is first asked for

        widget = TerminalWidget(self.sandbox_for(name, runtime), command=command)
        self.widgets.append(widget)
        display(widget)

    def _port_subcommand(self, command: str, port: int, args: Any) -> Any:
        sandbox = self.sandbox_for(args.name, args.runtime)
        if command == "expose":
            print(f"Port {port} of {args.name or self.session!r} is at {sandbox.expose(port)}")
            return None
        preview = sandbox.preview(port, path=args.path, absolute=args.absolute)
        if args.run:
            run = args.run
            if len(run) > 1 and run[0] == run[-1] and run[0] in "'\"":  # IPython keeps the quotes of an option
                run = run[1:-1]
            start = (f"PYDANTIC_DEEP_PREVIEW_BASE={shlex.quote(preview.base)} nohup sh -c {shlex.quote(run)} "
                     f"> /tmp/pydantic-deep-preview-{port}.log 2>&1 &")
            sandbox.execute(start, timeout=30)
            deadline = time.monotonic() + (args.timeout or self.timeout)
            while not sandbox.listening(port):
                if time.monotonic() > deadline:
                    log = sandbox.execute(f"tail -20 /tmp/pydantic-deep-preview-{port}.log", timeout=30).output
                    raise UsageError(f"nothing listens on port {port} after {run!r}; its log ends with:\n{log}")
                time.sleep(0.2)
        if args.out:
            self._user_ns[args.out] = preview
        return preview

    def _docker_sandbox_for(self, name: str | None, runtime: str | None = None) -> DockerSandbox:
        sandbox = self.sandbox_for(name, runtime)
        assert isinstance(sandbox, DockerSandbox)  # the docker backend's, checked by the caller
        return sandbox

    def _container_subcommand(self, command: str, rest: list[str], args: Any) -> None:
        name = args.name or self.session
        if command == "pause":
            self._docker_sandbox_for(args.name, args.runtime).pause()
            print(f"Paused {name!r}: no CPU, variables kept; the next cell resumes it")
        elif command == "resume":
            self._docker_sandbox_for(args.name, args.runtime).resume()
            print(f"Resumed {name!r}")
        elif command == "snapshot":
            if len(rest) > 1:
                raise UsageError("usage: %sandbox snapshot [NAME]")
            snapshot = self._docker_sandbox_for(args.name, args.runtime).snapshot(rest[0] if rest else None)
            print(f"Snapshot {snapshot.name!r} of {name!r}: {snapshot.size_bytes / 1e6:.1f} MB of files "
                  "(variables are not kept: re-run their cells after a restore)")
        elif command == "network":
            self._network_subcommand(name, rest, args)
        elif command == "egress":
            events = self._docker_sandbox_for(args.name, args.runtime).egress_log(50)
            for event in events:
                print(f"{time.strftime('%H:%M:%S', time.localtime(event.time))} "
                      f"{'allowed' if event.allowed else 'REFUSED'} {event.host}:{event.port}"
                      + (f" ({event.reason})" if event.reason else ""))
            if not events:
                print(f"No egress decision for {name!r} (only a sandbox with a list of hosts goes through the proxy)")
        elif command == "restore":
            if len(rest) != 1:
                raise UsageError("usage: %sandbox restore NAME")
            sandbox = self._docker_sandbox_for(args.name)
            if (interpreter := self.interpreters.pop(name, None)) is not None:
                interpreter.close()
            sandbox.restore(rest[0])
            print(f"Restored {name!r} to snapshot {rest[0]!r}: its files are back, its interpreter starts afresh")
        else:
            if len(rest) != 1 or not rest[0].isdigit():
                raise UsageError("usage: %sandbox fork N")
            forks = self._docker_sandbox_for(args.name, args.runtime).fork(int(rest[0]))
            names = [f"{name}-fork{index}" for index in range(1, len(forks) + 1)]
            for fork_name, fork in zip(names, forks, strict=True):
                self.stop(fork_name)  # a fork of that name from before
                self.sandboxes[fork_name] = fork
            print(f"Forked {name!r} into {', '.join(names)}: run cells in one with %%sandbox -s NAME")

    def _network_subcommand(self, name: str, rest: list[str], args: Any) -> None:
        sandbox = self._docker_sandbox_for(args.name, args.runtime)
        if not rest:
            print(f"{name!r}: network {sandbox.network_summary}")
            return
        network = _network_setting(rest)
        assert network is not None
        try:
            sandbox.set_network(network)
        except SandboxStateError as exc:
            raise UsageError(f"{exc}; or %config SandboxMagics.network and %sandbox stop, then run a cell") from None
        print(f"{name!r}: network {sandbox.network_summary}")

    @_transfer_arguments
    @line_magic
    def sandbox_push(self, line: str) -> None:
        """Copy notebook variables into the sandbox's interpreter: ``%sandbox_push df config``."""
        args = parse_argstring(self.sandbox_push, line)
        interpreter = self.interpreter_for(args.name)
        for name in args.names:
            if name not in self._user_ns:
                raise UsageError(f"no variable {name!r} in the notebook")
            try:
                interpreter.push(name, self._user_ns[name])
            except TypeError as exc:
                raise UsageError(f"{name}: {exc}") from None

    @_transfer_arguments
    @line_magic
    def sandbox_pull(self, line: str) -> None:
        """Copy variables of the sandbox's interpreter into the notebook: ``%sandbox_pull result``."""
        args = parse_argstring(self.sandbox_pull, line)
        interpreter = self.interpreter_for(args.name)
        for name in args.names:
            try:
                self._user_ns[name] = interpreter.pull(name)
            except CellError as exc:
                raise UsageError(f"{name}: {exc.evalue}") from None


def _network_setting(words: list[str]) -> bool | list[str] | None:
    """``on``/``off``, or host patterns, as ``DockerSandbox(network=)`` takes them; ``None`` for none given."""
    words = [word.strip() for word in words if word.strip()]
    if words in (["on"], ["off"]):
        return words == ["on"]
    return words or None


def _write_chunk(chunk: OutputChunk) -> None:
    stream = sys.stdout if chunk.stream == "stdout" else sys.stderr
    stream.write(chunk.text)
    stream.flush()


def _show_event(event: Event) -> None:
    if event["kind"] == "stream":
        _write_chunk(OutputChunk(event["name"], event["text"]))
    elif event["kind"] in ("display", "result"):
        data = dict(event["data"])
        display(data, raw=True)


def _print_progress(line: str) -> None:
    print(f"  | {line}", flush=True)
