"""A sandbox terminal in the notebook: xterm.js under the cell, attached to a :class:`Terminal`.

``%sandbox terminal`` (and the dashboard's Terminal buttons) show a :class:`TerminalWidget`. It is
an anywidget: its keys and output travel over the Jupyter kernel's comms, so it works wherever
widgets do (JupyterLab, Notebook 7, VS Code, JupyterHub, Binder) with no server extension, and
xterm.js comes with the package (``notebook/static``, vendored by ``scripts/vendor-xterm``): the
browser downloads nothing.
"""

from __future__ import annotations

import collections
import threading
from functools import cache
from importlib.resources import files
from typing import Any

import anywidget
import traitlets

from ..execution.terminal import Terminal
from ..sandbox.base import SandboxBase

__all__ = ["TerminalWidget"]

# What a view that comes late (the notebook reopened, a second view) is shown first.
_REPLAY_CHARS = 200_000


@cache
def _front_end() -> tuple[str, str]:
    """The widget's ES module (xterm.js, its fit add-on, then terminal.js) and its CSS."""
    static = files("pydantic_deep.notebook") / "static"

    def umd(name: str) -> str:
        # A UMD bundle run as CommonJS: it fills `module.exports`, whatever else the page defines.
        return (f"const {name} = (() => {{ const module = {{ exports: {{}} }}; const define = undefined;\n"
                "(function (module, exports, define) {\n")

    def load(file: str, name: str) -> str:
        return (umd(name) + (static / file).read_text() + "\n}).call(globalThis, module, module.exports, define);\n"
                "return module.exports; })();\n")

    module = load("xterm.js", "xterm") + load("addon-fit.js", "xtermFit") + (static / "terminal.js").read_text()
    css = (static / "xterm.css").read_text() + (
        ".pd-terminal { padding: 4px; background: #000; border-radius: 4px; }\n"
        ".pd-terminal-ended { opacity: 0.6; }\n")
    return module, css


class TerminalWidget(anywidget.AnyWidget):  # type: ignore[misc]
    """An interactive terminal of ``sandbox`` in the notebook (xterm.js).

    Args:
        sandbox: The sandbox to open it on (started if new).
        rows: Its height in lines; its width follows the output area.
        command: What to run on it; ``None``: an interactive shell.

    Closing the widget (or ``%unload_ext``) closes the terminal; the terminal ending (``exit``,
    or its sandbox stopping) is shown in it.
    """

    _esm = traitlets.Unicode().tag(sync=True)
    _css = traitlets.Unicode().tag(sync=True)
    cols = traitlets.Int(80).tag(sync=True)
    rows = traitlets.Int(24).tag(sync=True)

    def __init__(self, sandbox: SandboxBase, *, rows: int = 24, command: str | None = None) -> None:
        module, css = _front_end()
        super().__init__(_esm=module, _css=css, cols=80, rows=rows)
        self._shown: collections.deque[str] = collections.deque()
        self._shown_chars = 0
        self._lock = threading.Lock()
        self.terminal: Terminal = sandbox.terminal(cols=80, rows=rows, command=command, on_output=self._output)
        self.on_msg(self._from_browser)
        threading.Thread(target=self._watch, name="pydantic-deep-terminal-widget", daemon=True).start()

    def _output(self, text: str) -> None:
        with self._lock:
            self._shown.append(text)
            self._shown_chars += len(text)
            while self._shown_chars > _REPLAY_CHARS and len(self._shown) > 1:
                self._shown_chars -= len(self._shown.popleft())
        self.send({"type": "output", "data": text})

    def _from_browser(self, _widget: Any, message: dict[str, Any], _buffers: list[bytes]) -> None:
        kind = message.get("type")
        if not self.terminal.alive:
            return
        if kind == "input":
            self.terminal.write(str(message.get("data", "")))
        elif kind == "resize":
            self.terminal.resize(int(message["cols"]), int(message["rows"]))
            self.cols, self.rows = self.terminal.size
        elif kind == "ready":
            with self._lock:
                shown = "".join(self._shown)
            if shown:
                self.send({"type": "output", "data": "\x1bc" + shown})  # reset, then what it showed

    def _watch(self) -> None:
        code = self.terminal.wait()
        self.send({"type": "ended", "text": "the sandbox stopped" if code is None else f"exited with code {code}"})

    def close(self) -> None:
        """Close the terminal (its processes are killed) and the widget."""
        self.terminal.close()
        super().close()
