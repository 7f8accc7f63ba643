"""Previews: an app a sandbox serves, shown in an iframe under a notebook cell.

The iframe's address must be one the *browser* can reach, which is not always the kernel's host
(JupyterHub, Binder, a remote server). So the app goes through the Jupyter server itself when it
can: jupyter-server-proxy (``pip install jupyter-server-proxy`` where the server runs) serves
``<base_url>proxy/<port>/`` from the server's own origin, WebSockets included, and the port the
sandbox is exposed on (:meth:`SandboxBase.expose`) is on the same host as the server. Where the
proxy is missing, or no Jupyter server is found, the iframe opens the exposed URL directly.

The Jupyter server is found from the kernel: ``$JUPYTERHUB_SERVICE_PREFIX`` (JupyterHub, Binder),
else the server whose ``jpserver-<pid>.json`` names a parent process of the kernel; the proxy is
there when the server answers ``server-proxy/servers-info``.
"""

from __future__ import annotations

import functools
import html
import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import InvalidArgumentError
from ..execution.ports import ExposedPort

__all__ = ["JupyterServer", "Preview", "find_jupyter_server", "listens_in"]


@dataclass(frozen=True)
class JupyterServer:
    """The Jupyter server a kernel runs under, as far as routing a preview needs it."""

    base_url: str
    """The path the server's pages are under, ending in ``/`` (``/user/alice/`` on JupyterHub)."""
    proxy: bool
    """jupyter-server-proxy is there: ``<base_url>proxy/<port>/`` reaches a port of this host."""


@dataclass(frozen=True)
class Preview:
    """An exposed port shown as an iframe: display it (the last line of a cell) to see the app."""

    exposed: ExposedPort
    src: str
    """The iframe's address: a path on the Jupyter server (``via="jupyter"``), or the exposed URL."""
    via: Literal["jupyter", "direct"]
    base: str
    """The path the app is seen under in the browser (``/`` directly). An app that writes absolute
    paths into its pages must be told it (Vite: ``--base``), and previewed with ``absolute=True``."""
    height: int = 480

    def _repr_html_(self) -> str:
        src = html.escape(self.src, quote=True)
        route = "through the Jupyter server" if self.via == "jupyter" else "directly"
        return (f"<div class='pydantic-deep-preview'><iframe src='{src}' style='width:100%;height:{self.height}px;"
                f"border:1px solid #ccc' title='port {self.exposed.port} of the sandbox'></iframe>"
                f"<div style='font-size:smaller'>Port {self.exposed.port} of the sandbox, {route}: "
                f"<a href='{src}' target='_blank'>open in a new tab</a></div></div>")

    def __repr__(self) -> str:
        return f"<Preview of port {self.exposed.port} at {self.src} ({self.via})>"


def preview_of(exposed: ExposedPort, *, path: str = "/", absolute: bool = False, height: int = 480,
               server: JupyterServer | None = None) -> Preview:
    """The :class:`Preview` of an exposed port: through ``server`` when it has the proxy, else direct."""
    if not path.startswith("/"):
        raise InvalidArgumentError(f"path must start with '/', not {path!r}")
    if isinstance(height, bool) or not isinstance(height, int) or height <= 0:
        raise InvalidArgumentError(f"height must be a positive number of pixels, not {height!r}")
    if server is not None and server.proxy and exposed.token is None:
        base = f"{server.base_url}proxy/{'absolute/' if absolute else ''}{exposed.host_port}/"
        return Preview(exposed, base + path.lstrip("/"), "jupyter", base if absolute else "/", height)
    # Directly: the app is at the root of its own origin (the token, if any, is in the URL's query).
    url = exposed.url.split("?")[0].rstrip("/") + path
    query = exposed.url.partition("?")[2]
    return Preview(exposed, url + (f"?{query}" if query else ""), "direct", "/", height)


@functools.cache
def find_jupyter_server() -> JupyterServer | None:
    """The Jupyter server this process (a kernel) runs under, or ``None`` when none is found
    (looked for once per process)."""
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
    info = _server_info()
    if info is None:
        # On JupyterHub and Binder the server is the hub's single-user server, whose pages are under
        # the prefix; the proxy is taken to be there (it is on Binder and most hubs).
        return JupyterServer(prefix if prefix.endswith("/") else prefix + "/", True) if prefix else None
    base_url = info.get("base_url") or "/"
    return JupyterServer(base_url, _has_proxy(info))


def _server_info() -> dict | None:
    """The ``jpserver-<pid>.json`` of the server that is a parent process of this one."""
    try:
        from jupyter_core.paths import jupyter_runtime_dir
    except ImportError:
        return None
    ancestors = _ancestors()
    for file in Path(jupyter_runtime_dir()).glob("jpserver-*.json"):
        try:
            info = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        if info.get("pid") in ancestors:
            return dict(info)
    return None


def _ancestors() -> set[int]:
    pids, pid = set(), os.getppid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def _has_proxy(info: dict) -> bool:
    """Whether the server answers jupyter-server-proxy's ``server-proxy/servers-info``."""
    url = str(info.get("url", "")).rstrip("/") + "/"
    if not url.startswith("http"):
        return False
    base = str(info.get("base_url") or "/")
    address = url.split(base, 1)[0] if base != "/" else url.rstrip("/")
    request = urllib.request.Request(f"{address.rstrip('/')}{base}server-proxy/servers-info",
                                     headers={"Authorization": f"token {info.get('token', '')}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def listens_in(table: str, port: int) -> bool:
    """Whether ``/proc/net/tcp`` (and ``tcp6``) text, as ``cat`` shows it, has a listener on ``port``."""
    return any(f":{port:04X} " in line and line.split()[3] == "0A"
               for line in table.splitlines() if len(line.split()) > 3)
