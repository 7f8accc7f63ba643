"""Notebook widgets (ipywidgets 8): pick a runtime, upload files, watch the sandboxes.

Each is a small class that owns a box of standard widgets and displays as that box. Work that
takes time (an image build, an upload, a refresh) runs on a worker thread, so the notebook never
freezes; ``last_action`` is its future. Errors show inline, in red.

They act on the notebook's sandboxes of ``%load_ext pydantic_deep`` (:func:`current_magics`), or,
for the monitor, on a :class:`SessionManager`.
"""

from __future__ import annotations

import collections
import functools
import html
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..engine import labels as label
from ..engine.client import docker_client
from ..execution.ports import ExposedPort
from ..images.builder import image_exists
from ..runtimes import get_runtime, list_runtimes
from ..sandbox.base import SandboxBase
from ..sandbox.docker import DockerSandbox
from ..sessions.manager import SessionManager
from ..sessions.sync import SyncSessionManager
from .charts import HISTORY_SECONDS, History, sparkline, state_badge
from .magics import SandboxMagics

if TYPE_CHECKING:
    from .terminal import TerminalWidget

__all__ = ["RuntimePicker", "SessionMonitor", "UploadPanel", "current_magics", "dashboard"]


def current_magics() -> SandboxMagics:
    """The ``%%sandbox`` magics of this notebook.

    Raises:
        RuntimeError: the extension is not loaded; the message says to run ``%load_ext pydantic_deep``.
    """
    from IPython import get_ipython

    shell = get_ipython()
    magics = shell.magics_manager.registry.get("SandboxMagics") if shell is not None else None
    if magics is None:
        raise RuntimeError("Run %load_ext pydantic_deep first: the widgets act on the notebook's sandboxes")
    return magics


class _Panel:
    """A box of widgets that does its slow work on one worker thread and shows errors inline."""

    def __init__(self, magics: SandboxMagics | None) -> None:
        self.error = widgets.HTML()
        self.box = widgets.VBox()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pydantic-deep-widget")
        self.last_action: Future[Any] | None = None
        if magics is not None:
            magics.widgets.append(self)  # %unload_ext closes it

    def _run(self, action: Callable[[], Any], *, busy: widgets.Button | None = None) -> Future[Any]:
        def guarded() -> Any:
            self.error.value = ""
            try:
                return action()
            except Exception as exc:
                self.show_error(exc)
                raise
            finally:
                if busy is not None:
                    busy.disabled = False

        if busy is not None:
            busy.disabled = True
        self.last_action = self._executor.submit(guarded)
        return self.last_action

    def show_error(self, exc: Exception) -> None:
        self.error.value = f"<span style='color:#b00'>{html.escape(type(exc).__name__)}: {html.escape(str(exc))}</span>"

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.box._repr_mimebundle_(**kwargs)

    def close(self) -> None:
        """Stop the worker thread and close the widgets."""
        self._executor.shutdown(wait=False)
        self.box.close()


class RuntimePicker(_Panel):
    """Every runtime with its description, packages and image status; Start makes it the notebook's.

    Start builds the image if needed, streaming the build log, then starts the notebook's sandbox
    with that runtime.
    """

    def __init__(self, magics: SandboxMagics | None = None) -> None:
        self.magics = magics or current_magics()
        super().__init__(self.magics)
        names = list(list_runtimes())
        self.dropdown = widgets.Dropdown(options=names, value=self.magics.runtime if self.magics.runtime in names
                                         else names[0], description="Runtime")
        self.details = widgets.HTML()
        self.start_button = widgets.Button(description="Start", button_style="primary", icon="play")
        self.log = widgets.Textarea(layout=widgets.Layout(width="100%", height="8em"), disabled=True)
        self.dropdown.observe(lambda _: self.describe(), names="value")
        self.start_button.on_click(lambda _: self.start())
        self.box.children = [widgets.HBox([self.dropdown, self.start_button]), self.details, self.log, self.error]
        self.describe()

    def describe(self) -> None:
        runtime = get_runtime(self.dropdown.value)
        if self.magics.backend == "local":
            status = "none needed: LocalSandbox, NOT ISOLATED"
        else:
            status = "built" if any(image_exists(docker_client(), tag) for tag in _built_tags(runtime.name)) \
                else "not built"
        packages = ", ".join(runtime.packages) or "none"
        self.details.value = (f"<b>{html.escape(runtime.description or runtime.name)}</b><br>"
                              f"Packages: {html.escape(packages)}<br>Image: {status}")

    def start(self) -> Future[Any]:
        """Build (if needed) and start the chosen runtime as the notebook's sandbox."""
        name = self.dropdown.value
        self.log.value = ""

        def build_and_start() -> None:
            self.magics.runtime = name
            sandbox = self.magics.sandbox_for(None, name)
            self._append(f"Started {sandbox!r}")
            self.describe()

        self.magics.progress = self._append
        return self._run(build_and_start, busy=self.start_button)

    def _append(self, line: str) -> None:
        self.log.value = (self.log.value + line + "\n")[-20_000:]


def _built_tags(runtime_name: str) -> list[str]:
    images = docker_client().images.list(filters={"label": f"{label.RUNTIME}={runtime_name}"})
    return [tag for image in images for tag in image.tags]


class UploadPanel(_Panel):
    """A file chooser whose files go into the sandbox's ``/uploads``, and what ``/uploads`` holds."""

    def __init__(self, magics: SandboxMagics | None = None) -> None:
        self.magics = magics or current_magics()
        super().__init__(self.magics)
        self.upload = widgets.FileUpload(multiple=True, description="Upload")
        self.listing = widgets.HTML()
        self.upload.observe(lambda change: self.store(change["new"]), names="value")
        self.box.children = [self.upload, self.listing, self.error]

    def store(self, files: tuple[dict[str, Any], ...]) -> Future[Any]:
        """Write ``files`` (FileUpload's value) into ``/uploads``, then list it."""

        def write() -> None:
            sandbox = self.magics.sandbox_for()
            for item in files:
                sandbox.upload(item["content"].tobytes(), f"/uploads/{item['name'].rsplit('/', 1)[-1]}")
            self._list(sandbox)

        return self._run(write)

    def refresh(self) -> Future[Any]:
        return self._run(lambda: self._list(self.magics.sandbox_for()))

    def _list(self, sandbox: Any) -> None:
        rows = "".join(f"<tr><td>{html.escape(e.name)}</td><td style='text-align:right'>{e.size:,}</td></tr>"
                       for e in sandbox.list_files("/uploads") if not e.is_dir)
        self.listing.value = ("<table><tr><th>/uploads</th><th>bytes</th></tr>" + rows + "</table>") if rows \
            else "<i>/uploads is empty</i>"


class SessionMonitor(_Panel):
    """A live view of sandboxes: the notebook's, or a session manager's.

    Each row shows the sandbox's state as a coloured badge, a line of figures (CPU seconds, memory,
    disk, idle time, container), and two small live charts of its CPU use and memory over the last
    minutes (inline SVG: nothing is downloaded); above them, how many sandboxes are in each state.
    Each row has Stop, and Terminal, which opens an interactive terminal on that sandbox below.
    One background thread refreshes it every ``interval`` seconds until :meth:`close`.
    """

    def __init__(self, source: SandboxMagics | SessionManager | SyncSessionManager | None = None,
                 interval: float = 2.0) -> None:
        source = source or current_magics()
        # A SessionManager is called through a facade of the monitor's own (closed with it).
        self._facade: SyncSessionManager | None = None
        if isinstance(source, SessionManager):
            source = self._facade = SyncSessionManager.wrap(source)
        self.source: SandboxMagics | SyncSessionManager = source
        super().__init__(self.source if isinstance(self.source, SandboxMagics) else None)
        self.interval = interval
        self.rows = widgets.VBox()
        self.terminal_area = widgets.VBox()
        self.terminal: TerminalWidget | None = None
        self.box.children = [self.rows, self.terminal_area, self.error]
        self._histories: dict[tuple[str, str], History] = {}
        self._row_widgets: dict[tuple[str, str], widgets.HBox] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pydantic-deep-monitor", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopped.is_set():
            try:
                self.refresh()
            except Exception:  # shown inline by refresh; keep watching
                pass
            self._stopped.wait(self.interval)

    def sessions(self) -> list[dict[str, Any]]:
        """One dict per sandbox: user, runtime, state, cpu, memory, disk used and its cap, idle,
        container, its cluster node (``None`` on one host), its open ports, its last egress decisions,
        how to stop it, and how to get it (for a terminal)."""
        if isinstance(self.source, SyncSessionManager):
            manager = self.source
            return [{"user": s.user_id, "runtime": s.runtime, "state": s.state, "cpu": s.cpu_seconds,
                     "memory": s.memory_bytes, "disk": s.disk_bytes, "disk_limit": s.disk_limit_bytes,
                     "idle": s.idle_seconds, "container": s.container, "node": s.node, "exposed": s.exposed,
                     "egress": s.egress, "stop": functools.partial(manager.stop, s.user_id),
                     "sandbox": functools.partial(manager.get_or_create, s.user_id)}
                    for s in manager.list_sessions()]
        found = []
        for name, sandbox in list(self.source.sandboxes.items()):
            usage = sandbox.usage() if sandbox.alive else None
            found.append({"user": name, "runtime": sandbox.runtime.name,
                          "state": "busy" if sandbox.busy else sandbox.state.value,
                          "cpu": usage.cpu_seconds if usage else 0.0, "memory": usage.memory_bytes if usage else 0,
                          "disk": usage.disk_bytes if usage else 0,
                          "disk_limit": usage.disk_limit_bytes if usage else None,
                          "idle": sandbox.idle_seconds, "container": (sandbox.container_id or "")[:12],
                          "node": getattr(sandbox, "node", None),  # a LocalSandbox has none
                          "exposed": sandbox.exposed,
                          "egress": sandbox.egress_log(20) if usage and isinstance(sandbox, DockerSandbox) else [],
                          "stop": functools.partial(self.source.stop, name),
                          "sandbox": lambda sandbox=sandbox: sandbox})
        return found

    def refresh(self) -> None:
        """Read the sandboxes now and redraw the view (called by the background thread)."""
        try:
            sessions = self.sessions()
        except Exception as exc:
            self.show_error(exc)
            raise
        now = time.monotonic()
        keys = [(session["user"], session["container"]) for session in sessions]
        for key, session in zip(keys, sessions, strict=True):
            self._histories.setdefault(key, History()).add(now, session["cpu"], session["memory"])
        for gone in set(self._histories) - set(keys):
            del self._histories[gone]
            self._row_widgets.pop(gone, None)
        counts = collections.Counter(session["state"] for session in sessions)
        summary = " ".join(f"{state_badge(state)} {count}" for state, count in sorted(counts.items()))
        header = widgets.HTML(f"<b>Sandboxes</b> {summary} <span style='color:#666'>· charts: CPU % and "
                              f"memory over the last {HISTORY_SECONDS / 60:.0f} minutes at most</span>")
        lines: list[widgets.Widget] = [header]
        for key, session in zip(keys, sessions, strict=True):
            row = self._row_widgets.get(key)
            if row is None:  # buttons made once per sandbox: a refresh never swaps one under the pointer
                stop = widgets.Button(description="Stop", icon="stop", layout=widgets.Layout(width="6em"))
                stop.on_click(lambda _, action=session["stop"]: self._run(lambda: self._stop_and_refresh(action)))
                terminal = widgets.Button(description="Terminal", icon="terminal", layout=widgets.Layout(width="8em"))
                terminal.on_click(lambda _, get=session["sandbox"], user=session["user"]:
                                  self._run(lambda: self.open_terminal(get(), user)))
                row = self._row_widgets[key] = widgets.HBox([widgets.HTML(), stop, terminal])
            row.children[0].value = self._describe(session, self._histories[key], now)
            lines.append(row)
        if not sessions:
            lines.append(widgets.HTML("<i>no sandbox running</i>"))
        self.rows.children = lines  # one assignment: traitlets sends one update

    @staticmethod
    def _describe(session: dict[str, Any], history: History, now: float) -> str:
        """A row's figures, then its CPU and memory charts."""
        figures = (f"{html.escape(session['user'])} · {html.escape(session['runtime'])} · {session['state']} · "
                   f"{session['cpu']:.1f} · {session['memory'] / 2**20:.1f} MB · {_disk_text(session)} · "
                   f"{session['idle']:.0f} s · {html.escape(session['container'])}"
                   + (f" on {html.escape(session['node'])}" if session["node"] else "")
                   + _ports_html(session["exposed"]) + _egress_text(session))
        cpu, memory, span = history.cpu_percent(), history.memory(), history.shown_span(now)
        cpu_now = cpu[-1][1] if cpu else 0.0
        charts = (sparkline(cpu, now, span=span, floor=100, colour="#d84315", kind="cpu", label="CPU, % of one core")
                  + f" CPU {cpu_now:.0f}% &nbsp; "
                  + sparkline(memory, now, span=span, floor=64 * 2**20, colour="#1565c0", kind="memory",
                              label="memory")
                  + f" memory {session['memory'] / 2**20:.0f} MB")
        return f"{state_badge(session['state'])} {figures}<br>{charts}"

    def open_terminal(self, sandbox: SandboxBase, name: str) -> TerminalWidget:
        """Show a terminal of ``sandbox`` below the table (closing the one shown before)."""
        from .terminal import TerminalWidget  # anywidget: imported when a terminal is first asked for

        if self.terminal is not None:
            self.terminal.close()
        self.terminal = TerminalWidget(sandbox)
        close = widgets.Button(description="Close terminal", icon="times", layout=widgets.Layout(width="11em"))
        close.on_click(lambda _: self.close_terminal())
        self.terminal_area.children = [widgets.HTML(f"<b>Terminal of {html.escape(name)}</b>"), self.terminal, close]
        return self.terminal

    def close_terminal(self) -> None:
        """Close the terminal shown below the table, if any."""
        if self.terminal is not None:
            self.terminal.close()
            self.terminal = None
        self.terminal_area.children = []

    def _stop_and_refresh(self, stop: Callable[[], Any]) -> None:
        stop()
        self.refresh()

    def close(self) -> None:
        self._stopped.set()
        self._thread.join()
        self.close_terminal()
        if self._facade is not None:
            self._facade.close()
        super().close()


def _ports_html(exposed: Sequence[ExposedPort]) -> str:
    """The open ports as links, e.g. `` · ports 8000`` linking to their URLs; nothing without any."""
    links = [f"<a href='{html.escape(item.url, quote=True)}' target='_blank'>{item.port}</a>" for item in exposed]
    return f" · ports {', '.join(links)}" if links else ""


def _disk_text(session: dict[str, Any]) -> str:
    """Disk used against the cap, e.g. ``12.0 / 200 MB``; ``not capped`` without a disk."""
    if session["disk_limit"] is None:
        return "disk not capped"
    return f"{session['disk'] / 2**20:.1f} / {session['disk_limit'] / 2**20:.0f} MB"


def _egress_text(session: dict[str, Any]) -> str:
    """`` · egress: 3 allowed, 1 refused (last: host)`` for a sandbox behind the egress proxy, else nothing."""
    events = session.get("egress") or []
    refused = [event for event in events if not event.allowed]
    if not events:
        return ""
    last = f" (last: {html.escape(refused[-1].host)})" if refused else ""
    return f" · egress: {len(events) - len(refused)} allowed, {len(refused)} refused{last}"


def dashboard(source: SessionManager | SyncSessionManager | None = None) -> widgets.VBox:
    """The runtime picker, the upload panel and the session monitor, together."""
    magics = current_magics()
    picker, uploads, monitor = RuntimePicker(magics), UploadPanel(magics), SessionMonitor(source or magics)
    return widgets.VBox([widgets.HTML("<h3>pydantic-deep</h3>"), picker.box, uploads.box, monitor.box])
