"""SandboxInterpreter: a Python or JavaScript interpreter inside a sandbox that keeps its variables.

The host side of :mod:`pydantic_deep._guest.kernel` (and its Node.js twin, ``kernel.js``), over the
sandbox's execution channel. The ``%%sandbox`` magic runs each cell with
:meth:`SandboxInterpreter.execute`; any program can too.
"""

from __future__ import annotations

import json
import queue
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._guest.kernel import decode_value, encode_json, encode_value
from ..errors import CellError, InvalidArgumentError, SandboxError
from ..execution.channel import Process
from ..results import OutputChunk
from ..sandbox.base import SandboxBase, SandboxState
from ..sandbox.docker import DockerSandbox

__all__ = ["CellError", "CellResult", "SandboxInterpreter"]

Event = dict[str, Any]
"""One message of the kernel: ``{"kind": "stream" | "display" | "result" | "error" | ..., ...}``."""


@dataclass
class CellResult:
    """What one cell did.

    Attributes:
        status: ``ok``, ``error`` or ``interrupted``.
        events: Every message of the cell, in order (streams, displays, the result, an error).
    """

    status: str
    events: list[Event] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        return "".join(e["text"] for e in self.events if e["kind"] == "stream" and e["name"] == "stdout")

    @property
    def stderr(self) -> str:
        return "".join(e["text"] for e in self.events if e["kind"] == "stream" and e["name"] == "stderr")

    @property
    def result(self) -> dict[str, str] | None:
        """The mime bundle of the cell's last expression, if it had a value."""
        return next((e["data"] for e in self.events if e["kind"] == "result"), None)

    @property
    def error(self) -> CellError | None:
        event = next((e for e in self.events if e["kind"] == "error"), None)
        return CellError(event["ename"], event["evalue"], event["traceback"]) if event else None


_LANGUAGES = {  # the interpreter's command (given the sandbox's tools directory), and value encoding
    "python": ("python3 -u {tools}/kernel.py", encode_value),
    "javascript": ("node {tools}/kernel.js", encode_json),
}


class SandboxInterpreter:
    """A long-lived Python or Node.js interpreter in ``sandbox``; variables survive from cell to cell.

    Example:
        ```python
        interpreter = SandboxInterpreter(sandbox)
        interpreter.execute("import pandas as pd; df = pd.DataFrame({'a': [1, 2]})")
        interpreter.execute("df.a.sum()").result   # {'text/plain': '3'}
        ```
    """

    def __init__(self, sandbox: SandboxBase, language: str = "python") -> None:
        if language not in _LANGUAGES:
            raise InvalidArgumentError(f"language must be one of {', '.join(_LANGUAGES)}, not {language!r}")
        self.sandbox = sandbox
        self.language = language
        self._process: Process | None = None
        self._events: queue.Queue[Event | None] = queue.Queue()
        self._buffer = ""
        self._lock = threading.Lock()  # one request at a time
        self.version: str | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and not self._process.finished

    def start(self) -> None:
        """Start the interpreter (done by the first request when needed)."""
        if self.running:
            return
        self._events = queue.Queue()
        self._buffer = ""
        command = _LANGUAGES[self.language][0].format(tools=self.sandbox.tools_dir)
        self._process = self.sandbox.spawn(command, on_output=self._on_output)
        ready = self._next_event(timeout=60)
        if ready.get("kind") != "ready":
            raise SandboxError(f"the {self.language} interpreter did not start in the sandbox: {ready}")
        self.version = ready["version"]

    def _on_output(self, chunk: OutputChunk) -> None:
        if chunk.stream == "stderr":  # the kernel's own stderr is redirected: this is a crash
            self._events.put({"kind": "stream", "name": "stderr", "text": chunk.text})
            return
        self._buffer += chunk.text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            if line:
                self._events.put(json.loads(line))

    def _next_event(self, timeout: float | None) -> Event:
        while True:
            try:
                event = self._events.get(timeout=0.5 if timeout is None else timeout)
            except queue.Empty:
                if self._process is None or self._process.finished:
                    raise SandboxError("the interpreter in the sandbox exited") from None
                if timeout is not None:
                    raise SandboxError(f"no answer from the interpreter within {timeout:g} s") from None
                continue
            if event is not None:
                return event

    def _request(self, request: dict[str, Any], on_event: Callable[[Event], None] | None) -> CellResult:
        with self._lock, self.sandbox._activity():  # a running cell is use: its sandbox is not idle
            if isinstance(self.sandbox, DockerSandbox) and self.sandbox.state is SandboxState.PAUSED:
                # The interpreter's process talks over its own stream, past the calls that resume
                # a paused sandbox by themselves: a cell must thaw it first, as any call does.
                self.sandbox.resume()
            self.start()
            assert self._process is not None
            self._process.write((json.dumps(request) + "\n").encode())
            result = CellResult(status="ok")
            try:
                while (event := self._next_event(timeout=None))["kind"] != "done":
                    result.events.append(event)
                    if on_event is not None:
                        on_event(event)
            except KeyboardInterrupt:
                # Interrupt the cell in the sandbox and wait for the interpreter to say so.
                self.interrupt()
                while (event := self._next_event(timeout=30))["kind"] != "done":
                    result.events.append(event)
            result.status = event["status"]
            return result

    def execute(self, code: str, *, on_event: Callable[[Event], None] | None = None) -> CellResult:
        """Run ``code`` as one cell; ``on_event`` sees each message as it comes."""
        return self._request({"op": "execute", "code": code}, on_event)

    def push(self, name: str, value: Any) -> None:
        """Set the variable ``name`` in the interpreter (Python: DataFrames and plain Python data;
        JavaScript: JSON data).

        Raises:
            TypeError: the value cannot be moved (the message says what can).
        """
        encode = _LANGUAGES[self.language][1]
        result = self._request({"op": "push", "name": name, "value": encode(value)}, None)
        if result.error is not None:
            raise result.error

    def pull(self, name: str) -> Any:
        """The value of the interpreter's variable ``name``.

        Raises:
            CellError: no such variable, or a value that cannot be moved.
        """
        result = self._request({"op": "pull", "name": name}, None)
        if result.error is not None:
            raise result.error
        return decode_value(next(e["value"] for e in result.events if e["kind"] == "value"))

    def interrupt(self) -> None:
        """Interrupt the running cell (KeyboardInterrupt in the sandbox); variables survive."""
        if self._process is not None:
            self._process.signal(signal.SIGINT)

    def close(self) -> None:
        """Stop the interpreter; the next request starts a fresh one."""
        if self._process is not None:
            self._process.close_stdin()
            self._process.signal(signal.SIGKILL)
            self._process = None
