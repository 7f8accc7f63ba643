"""A small Python interpreter that runs *inside* the container and keeps its variables between cells.

The ``%%sandbox`` magic starts one per notebook sandbox through the execution channel, so cell
after cell runs in one namespace, as in a Jupyter kernel. Standard library only (Python 3.8+);
pandas and matplotlib are used when the cell uses them. The host imports this module for the
message format and the value encoding, so both sides share one definition.

Requests, one JSON object per line on standard input::

    {"op": "execute", "code": "..."}         run a cell
    {"op": "push", "name": "x", "value": V}  set a variable (V from encode_value)
    {"op": "pull", "name": "x"}              send a variable back

Replies, one JSON object per line on the original standard output (file descriptors 1 and 2
are redirected into pipes, so output of the cell, of C code and of child processes is captured
and sent as ``stream`` messages in order)::

    {"kind": "ready", "language": "python", "version": "3.11.2"}
    {"kind": "stream", "name": "stdout" | "stderr", "text": "..."}
    {"kind": "display", "data": {"text/plain": ..., "text/html": ..., "image/png": base64}}
    {"kind": "result", "data": {...}}         the value of the cell's last expression
    {"kind": "error", "ename": ..., "evalue": ..., "traceback": "..."}
    {"kind": "value", "value": V}             the answer to "pull"
    {"kind": "done", "status": "ok" | "error" | "interrupted"}

SIGINT interrupts the running cell; the interpreter and its variables survive.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # Run as a script, Python puts this file's directory first on the path: cells import from the
    # working directory instead, as in a Jupyter kernel.
    sys.path[0] = ""

import ast
import base64
import codecs
import io
import json
import os
import threading
import traceback
import warnings
from typing import Any

_DRAIN = "\x00pydantic-deep-drain\x00"
CELL_NAME = "<cell>"


def encode_value(value: Any) -> dict[str, Any]:
    """A portable form of a DataFrame or of plain Python data (numbers, strings, bytes, and
    lists, tuples, sets and dicts of them).

    Raises:
        TypeError: anything else, with a message that says what can be moved.
    """
    module = type(value).__module__
    if module.startswith("pandas") and type(value).__name__ == "DataFrame":
        return {"type": "dataframe", "json": value.to_json(orient="table", date_format="iso")}
    text = repr(value)
    try:
        same = ast.literal_eval(text) == value
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        same = False
    if not same:
        raise TypeError(
            f"cannot move a {type(value).__name__}: only pandas DataFrames and plain Python data "
            "(numbers, strings, bytes, None, and lists, tuples, sets and dicts of them) can be moved"
        )
    return {"type": "literal", "repr": text}


def encode_json(value: Any) -> dict[str, Any]:
    """A value for the JavaScript interpreter, as JSON.

    Raises:
        TypeError: the value is not JSON data.
    """
    try:
        return {"type": "json", "json": json.dumps(value)}
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot move a {type(value).__name__} into Node.js: only JSON data can be moved") from exc


def decode_value(encoded: dict[str, Any]) -> Any:
    """The value :func:`encode_value` or :func:`encode_json` encoded (DataFrames need pandas here too)."""
    if encoded["type"] == "json":
        return json.loads(encoded["json"])
    if encoded["type"] == "dataframe":
        import pandas

        return pandas.read_json(io.StringIO(encoded["json"]), orient="table")
    return ast.literal_eval(encoded["repr"])


class Kernel:
    """The loop: one request at a time, output forwarded as it is produced."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
        self.proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
        self.lock = threading.Lock()
        self.drained: dict[str, threading.Event] = {}
        for fd, name in ((1, "stdout"), (2, "stderr")):
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            self.drained[name] = threading.Event()
            threading.Thread(target=self._forward, args=(read_end, name), daemon=True).start()
        sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), encoding="utf-8", line_buffering=True,
                                      write_through=True)
        sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", buffering=0), encoding="utf-8", line_buffering=True,
                                      write_through=True)
        warnings.filterwarnings("ignore", message=".*non-interactive.*cannot be shown")

    def send(self, message: dict[str, Any]) -> None:
        with self.lock:
            self.proto.write(json.dumps(message) + "\n")

    def _forward(self, fd: int, name: str) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        pending = ""
        while True:
            data = os.read(fd, 65536)
            if not data:
                return
            pending += decoder.decode(data)
            while _DRAIN in pending:
                before, pending = pending.split(_DRAIN, 1)
                if before:
                    self.send({"kind": "stream", "name": name, "text": before})
                self.drained[name].set()
            # Keep back what could be the start of a drain marker.
            keep = next((i for i in range(min(len(pending), len(_DRAIN)), 0, -1)
                         if _DRAIN.startswith(pending[-i:])), 0)
            text, pending = (pending[:-keep], pending[-keep:]) if keep else (pending, "")
            if text:
                self.send({"kind": "stream", "name": name, "text": text})

    def drain(self) -> None:
        """Wait until everything written to fds 1 and 2 so far has been sent."""
        for name, stream in (("stdout", sys.stdout), ("stderr", sys.stderr)):
            self.drained[name].clear()
            stream.write(_DRAIN)
            stream.flush()
            self.drained[name].wait()

    def serve(self) -> None:
        self.send({"kind": "ready", "language": "python", "version": sys.version.split()[0]})
        for line in sys.stdin:
            try:
                request = json.loads(line)
                status = getattr(self, "op_" + request["op"])(request)
            except KeyboardInterrupt:
                status = "interrupted"
            self.drain()
            self.send({"kind": "done", "status": status})

    def op_execute(self, request: dict[str, Any]) -> str:
        try:
            tree = ast.parse(request["code"], CELL_NAME, "exec")
            last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            exec(compile(tree, CELL_NAME, "exec"), self.namespace)
            if last is not None:
                value = eval(compile(ast.Expression(last.value), CELL_NAME, "eval"), self.namespace)
                if value is not None:
                    self.namespace["_"] = value
                    self.drain()
                    self.send({"kind": "result", "data": mimebundle(value)})
        except KeyboardInterrupt:
            self.show_figures()
            return "interrupted"
        except BaseException as exc:  # noqa: BLE001 - a cell's SystemExit is an error of the cell too
            self.drain()
            cell_frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
            text = "".join(traceback.format_list(cell_frames) + traceback.format_exception_only(type(exc), exc))
            self.send({"kind": "error", "ename": type(exc).__name__, "evalue": str(exc),
                       "traceback": "Traceback (most recent call last):\n" + text})
            return "error"
        self.show_figures()
        return "ok"

    def show_figures(self) -> None:
        """Send the figures the cell left open, as the inline backend does, and close them."""
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        if getattr(pyplot.show, "__module__", "") != __name__:
            setattr(pyplot, "show", lambda *args, **kwargs: self.show_figures())  # noqa: B010 - inline, as Jupyter
        self.drain()
        for number in pyplot.get_fignums():
            self.send({"kind": "display", "data": mimebundle(pyplot.figure(number))})
        pyplot.close("all")

    def op_push(self, request: dict[str, Any]) -> str:
        self.namespace[request["name"]] = decode_value(request["value"])
        return "ok"

    def op_pull(self, request: dict[str, Any]) -> str:
        name = request["name"]
        if name not in self.namespace:
            self.send({"kind": "error", "ename": "NameError", "evalue": f"name {name!r} is not defined",
                       "traceback": ""})
            return "error"
        try:
            self.send({"kind": "value", "value": encode_value(self.namespace[name])})
        except TypeError as exc:
            self.send({"kind": "error", "ename": "TypeError", "evalue": str(exc), "traceback": ""})
            return "error"
        return "ok"


def mimebundle(value: Any) -> dict[str, str]:
    """How to show ``value``: plain text always, HTML and PNG where the object offers them."""
    data = {"text/plain": repr(value)}
    if type(value).__module__.startswith("matplotlib") and hasattr(value, "savefig"):
        buffer = io.BytesIO()
        value.savefig(buffer, format="png", bbox_inches="tight")
        data["image/png"] = base64.b64encode(buffer.getvalue()).decode()
        data["text/plain"] = f"<Figure {value.get_figwidth():g}x{value.get_figheight():g} in>"
    for method, mime in (("_repr_html_", "text/html"), ("_repr_png_", "image/png")):
        render = getattr(value, method, None)
        if callable(render) and not isinstance(value, type):
            try:
                rendered = render()
            except Exception:  # noqa: BLE001 - a broken repr must not fail the cell
                continue
            if rendered:
                data[mime] = base64.b64encode(rendered).decode() if isinstance(rendered, bytes) else rendered
    return data


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    Kernel().serve()
