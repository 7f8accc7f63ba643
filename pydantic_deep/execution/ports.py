"""A sandbox's ports on the host, carried over its execution channel (``sandbox.expose(port)``).

As ``kubectl port-forward`` does: a listener on the host accepts connections, and each one travels
as a stream of frames over the channel the sandbox already has (``PORT_*`` in
``_guest/supervisor.py``); the supervisor connects to the port on the container's loopback. No
container port is published, so it works with the sandbox's network off, and whatever runs over TCP
works: HTTP, streamed bodies, WebSockets, server-sent events.

Memory stays bounded: each side of a stream has at most ``PORT_WINDOW`` bytes sent and not yet
acknowledged, and the host acknowledges bytes only once its socket took them (a slow browser
slows the app's writes instead of filling the host's memory).

Listeners bind to loopback by default. A wider address (``host="0.0.0.0"``) always takes a token,
checked on each connection's first HTTP request: as the query parameter ``pydantic_deep_token``
(a ``GET`` is then answered with a redirect that sets a cookie, so a browser carries it from then
on, WebSockets too), the ``X-Pydantic-Deep-Token`` header, ``Authorization: Bearer``, or the cookie.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import ipaddress
import json
import re
import secrets
import socket
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from .._guest import supervisor as protocol
from ..errors import ChannelClosedError, InvalidArgumentError, SandboxError
from .channel import SupervisorChannel

__all__ = ["TOKEN_HEADER", "TOKEN_PARAMETER", "ExposedPort", "PortForwards", "checked_port", "is_loopback"]

TOKEN_PARAMETER = "pydantic_deep_token"
"""The query parameter that carries a port's token (once: a cookie carries it from then on)."""
TOKEN_HEADER = "X-Pydantic-Deep-Token"
"""The request header that carries a port's token, for clients other than browsers."""
_HEAD_LIMIT = 64 * 1024  # an HTTP request head longer than this is refused where a token is checked
_HEAD_TIMEOUT = 10.0
_READ_SIZE = 64 * 1024
_HTTP_METHODS = re.compile(rb"^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS|TRACE|CONNECT) ")
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{16,256}")


@dataclass(frozen=True)
class ExposedPort:
    """A port of a sandbox, open on the host."""

    port: int
    """The port inside the sandbox."""
    url: str
    """Where to open it (with the token, if it takes one)."""
    host: str
    """The host address the listener is bound to."""
    host_port: int
    """The port on the host."""
    via: Literal["channel", "direct"]
    """``"channel"``: carried over the sandbox's execution channel; ``"direct"``: the sandbox's own
    port, already on this host (a :class:`LocalSandbox`'s), given as it is."""
    token: str | None = field(default=None, repr=False)
    """What a client must show (see the module's docstring); ``None`` on loopback unless asked."""


def checked_port(port: object, argument: str = "port") -> int:
    """``port`` as a TCP port number (1-65535), or :class:`InvalidArgumentError`."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidArgumentError(f"{argument} must be a TCP port number from 1 to 65535, not {port!r}")
    return port


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback (so only local processes can connect)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _checked_token(token: object) -> str:
    if not isinstance(token, str) or not _TOKEN_SHAPE.fullmatch(token):
        raise InvalidArgumentError("token must be 16-256 letters, digits, '-' or '_' (it travels in URLs and "
                                   "cookies); leave it out to have one made")
    return token


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _forwarding_loop() -> asyncio.AbstractEventLoop:
    """The event loop every listener of this process runs on, in a thread of its own."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="pydantic-deep-ports", daemon=True).start()
        return _loop


class _Tunnel:
    """One accepted connection, carried to the sandbox's port as a stream of the channel."""

    def __init__(self, channel: SupervisorChannel, port: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, on_traffic: Callable[[], object] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.channel, self.port, self.reader, self.writer = channel, port, reader, writer
        self.on_traffic = on_traffic
        self.last_traffic = 0.0
        self.stream_id = 0
        self.credit = protocol.PORT_WINDOW  # bytes that may go to the sandbox before it acknowledges some
        self.credit_came = asyncio.Event()
        self.to_ack = 0  # bytes written to the client, to acknowledge once its socket took them
        self.acking = False
        self.sent_end = self.got_end = False
        self.received = False  # the sandbox sent data
        self.closed_by_sandbox = False
        self.first = b""  # the client's first bytes: an HTTP request gets a readable error
        self.first_came = asyncio.Event()
        self.done = self.loop.create_future()

    def stream_frame(self, kind: int, payload: bytes) -> None:
        """A frame from the sandbox (on the channel's reader thread)."""
        self.loop.call_soon_threadsafe(self._frame, kind, payload)

    def _frame(self, kind: int, payload: bytes) -> None:
        if self.done.done():
            return
        if kind == protocol.PORT_DATA:
            self.received = True
            self._traffic()
            self.writer.write(payload)
            self.to_ack += len(payload)
            if not self.acking:
                self.acking = True
                self.loop.create_task(self._acknowledge())
        elif kind == protocol.PORT_ACK:
            self.credit += protocol.ACK.unpack(payload)[0]
            self.credit_came.set()
        elif kind == protocol.PORT_END:
            self.got_end = True
            if self.writer.can_write_eof():
                self.writer.write_eof()  # after what is buffered
            self._finish_if_ended()
        elif kind == protocol.PORT_CLOSE:
            self.closed_by_sandbox = True
            error = json.loads(payload).get("error") if payload else None
            self.loop.create_task(self._closed_by_sandbox(error))

    async def _acknowledge(self) -> None:
        """Tell the sandbox how much the client's socket took, so more may come."""
        try:
            while self.to_ack and not self.done.done():
                await self.writer.drain()
                count, self.to_ack = self.to_ack, 0
                self._send(protocol.PORT_ACK, protocol.ACK.pack(count))
        except (ConnectionError, OSError):
            self._abort()
        finally:
            self.acking = False

    async def _closed_by_sandbox(self, error: str | None) -> None:
        if error and not self.received:
            if not self.first:  # the client's request may not have been read yet (the pump reads it)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.first_came.wait(), 0.5)
            if _HTTP_METHODS.match(self.first):
                self.writer.write(_bad_gateway(error, browser=b"text/html" in self.first))
        self._finish()

    async def run(self, head: bytes) -> None:
        """Carry the connection until both ways ended, or either side closed it."""
        try:
            self.stream_id = self.channel.open_stream(self.port, self)
        except ChannelClosedError as exc:
            with contextlib.suppress(TimeoutError, ConnectionError, OSError):
                self.first = head or await asyncio.wait_for(self.reader.read(_READ_SIZE), 0.5)
            await self._closed_by_sandbox(str(exc))
            return
        pump = self.loop.create_task(self._pump(head))
        try:
            await self.done
        finally:  # also when the listener closes (unexpose, the sandbox stops) and cancels this
            pump.cancel()
            self.writer.close()
            if self.closed_by_sandbox or (self.sent_end and self.got_end):
                self.channel.forget_stream(self.stream_id)
            else:  # the client went, or the listener closed: the sandbox's end goes too
                with contextlib.suppress(ChannelClosedError):
                    self.channel.send_stream(self.stream_id, protocol.PORT_CLOSE)

    async def _pump(self, head: bytes) -> None:
        """The client's bytes to the sandbox, within the window."""
        try:
            data = head
            while True:
                if data:
                    if not self.first:
                        self.first = data
                        self.first_came.set()
                    self._traffic()
                    self.credit -= len(data)
                    self._send(protocol.PORT_DATA, data)
                while self.credit <= 0:
                    self.credit_came.clear()
                    await self.credit_came.wait()
                data = await self.reader.read(min(_READ_SIZE, self.credit))
                if not data:
                    break
            self.sent_end = True
            self._send(protocol.PORT_END)
            self._finish_if_ended()
        except (ConnectionError, OSError):
            self._abort()

    def _traffic(self) -> None:
        """Bytes moved: the sandbox is in use (said at most once a second)."""
        now = self.loop.time()
        if self.on_traffic is not None and now - self.last_traffic >= 1.0:
            self.last_traffic = now
            self.on_traffic()

    def _send(self, kind: int, payload: bytes = b"") -> None:
        try:
            self.channel.send_stream(self.stream_id, kind, payload)
        except ChannelClosedError:
            self._finish()

    def _finish_if_ended(self) -> None:
        if self.sent_end and self.got_end:
            self._finish()

    def _abort(self) -> None:
        """The client's connection broke: :meth:`run` closes the sandbox's end too."""
        self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


def _bad_gateway(error: str, *, browser: bool) -> bytes:
    """The answer to a request the sandbox's port did not take: a browser gets a page that tries
    again every second, so a preview opened before its server is up shows the app once it is."""
    if not browser:
        return _http_response(502, "Bad Gateway", f"pydantic-deep: {error}\n")
    page = (f"<!doctype html><meta http-equiv='refresh' content='1'><title>Waiting for the sandbox</title>"
            f"<p style='font-family:sans-serif;color:#555'>pydantic-deep: {html.escape(error)}; "
            "trying again every second.</p>")
    return _http_response(502, "Bad Gateway", page, ("Content-Type: text/html; charset=utf-8",))


def _http_response(status: int, reason: str, text: str = "", headers: tuple[str, ...] = ()) -> bytes:
    body = text.encode()
    plain = () if any(header.startswith("Content-Type:") for header in headers) else (
        "Content-Type: text/plain; charset=utf-8",)
    lines = [f"HTTP/1.1 {status} {reason}", *plain, f"Content-Length: {len(body)}", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class _Request:
    """The parts of an HTTP request head that carry a token."""

    method: str
    target: str
    headers: dict[str, str]

    @classmethod
    def parse(cls, head: bytes) -> _Request | None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return None
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        return cls(parts[0], parts[1], headers)

    def query_token(self) -> tuple[str | None, str]:
        """The token in the query, and the target without it."""
        url = urllib.parse.urlsplit(self.target)
        pairs = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
        tokens = [value for name, value in pairs if name == TOKEN_PARAMETER]
        rest = urllib.parse.urlencode([(name, value) for name, value in pairs if name != TOKEN_PARAMETER])
        return (tokens[0] if tokens else None), urllib.parse.urlunsplit(("", "", url.path or "/", rest, ""))

    def cookie(self, name: str) -> str | None:
        for item in self.headers.get("cookie", "").split(";"):
            key, _, value = item.strip().partition("=")
            if key == name:
                return value
        return None


class _Forward:
    """One listener on the host for one port of the sandbox."""

    def __init__(self, open_channel: Callable[[], SupervisorChannel], port: int, token: str | None,
                 on_traffic: Callable[[], object] | None) -> None:
        self.open_channel, self.port, self.token, self.on_traffic = open_channel, port, token, on_traffic
        self.server: asyncio.Server | None = None
        self.cookie = ""
        self.tunnels: set[asyncio.Task[None]] = set()

    async def listen(self, host: str, host_port: int) -> int:
        self.server = await asyncio.start_server(self.accept, host, host_port, limit=_HEAD_LIMIT)
        bound = self.server.sockets[0].getsockname()[1]
        self.cookie = f"{TOKEN_PARAMETER}_{bound}"  # cookies go to every port of a host: one name per port
        return int(bound)

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tunnels.add(task)
        try:
            with contextlib.suppress(socket.error):
                writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            head = b""
            if self.token is not None:
                head = await self.authorize(reader, writer)
                if not head:
                    return
            loop = asyncio.get_running_loop()
            try:  # may start, resume or re-open the sandbox's channel: not on the event loop
                channel = await loop.run_in_executor(None, self.open_channel)
            except SandboxError as exc:
                writer.write(_http_response(502, "Bad Gateway", f"pydantic-deep: {exc}\n"))
                return
            await _Tunnel(channel, self.port, reader, writer, self.on_traffic).run(head)
        except (ConnectionError, OSError, asyncio.CancelledError):  # cancelled: the listener closes
            pass
        finally:
            writer.close()
            self.tunnels.discard(task)

    async def authorize(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        """The request head to forward once the token is right; ``b""`` when the client was answered."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return b""  # not HTTP, or too slow to say: refused without a word
        request = _Request.parse(head)
        if request is None:
            return b""
        assert self.token is not None
        from_query, clean_target = request.query_token()
        bearer = request.headers.get("authorization", "")
        shown = [from_query, request.headers.get(TOKEN_HEADER.lower()), request.cookie(self.cookie),
                 bearer[7:] if bearer.lower().startswith("bearer ") else None]
        if not any(candidate is not None and hmac.compare_digest(candidate.encode(), self.token.encode())
                   for candidate in shown):
            writer.write(_http_response(401, "Unauthorized", (
                "pydantic-deep: this port takes a token: open the URL sandbox.expose() returned (it ends with "
                f"?{TOKEN_PARAMETER}=...), or send the header {TOKEN_HEADER}\n")))
            await writer.drain()
            return b""
        if from_query is None:
            return head
        cookie = f"Set-Cookie: {self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Lax"
        if request.method == "GET" and request.headers.get("upgrade") is None:
            # A browser: the cookie carries the token from now on, and the address bar loses it.
            writer.write(_http_response(303, "See Other", "", (f"Location: {clean_target}", cookie)))
            await writer.drain()
            return b""
        first_line, rest = head.split(b"\r\n", 1)
        return f"{request.method} {clean_target} {first_line.rsplit(b' ', 1)[1].decode()}".encode() + b"\r\n" + rest

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tunnels):
            task.cancel()
        if self.server is not None:
            await self.server.wait_closed()


class PortForwards:
    """The ports one sandbox has open on the host (what :meth:`SandboxBase.expose` keeps).

    Args:
        open_channel: Returns the sandbox's live supervisor channel (starting or re-opening it),
            or raises :class:`SandboxError` saying why there is none. Called for each connection.
        direct: The sandbox's ports are this machine's (a :class:`LocalSandbox`): on loopback
            without a token, a port is given as it is, with no listener of ours in between.
    """

    def __init__(self, open_channel: Callable[[], SupervisorChannel], *, direct: bool = False,
                 on_traffic: Callable[[], object] | None = None) -> None:
        self._open_channel = open_channel
        self._direct = direct
        self._on_traffic = on_traffic
        self._forwards: dict[int, tuple[_Forward | None, ExposedPort]] = {}  # None: direct
        self._lock = threading.Lock()

    def expose(self, port: int, *, host: str = "127.0.0.1", host_port: int | None = None,
               token: str | None = None) -> ExposedPort:
        """Listen on ``host`` for ``port`` of the sandbox (see :meth:`SandboxBase.expose`)."""
        port = checked_port(port)
        if host_port is not None:
            checked_port(host_port, "host_port")
        if not isinstance(host, str) or not host:
            raise InvalidArgumentError(f"host must be an address of this machine to listen on, not {host!r}")
        if token is not None:
            token = _checked_token(token)
        elif not is_loopback(host):
            token = secrets.token_urlsafe(24)
        with self._lock:
            known = self._forwards.get(port)
            if known is not None:
                exposed = known[1]
                if (host, host_port or exposed.host_port, token or exposed.token) == (
                        exposed.host, exposed.host_port, exposed.token):
                    return exposed
                raise InvalidArgumentError(f"port {port} is exposed already, at {exposed.url} (host {exposed.host}); "
                                           f"call unexpose({port}) first to expose it otherwise")
            self._open_channel()  # the sandbox runs, and can carry streams: or the reason it cannot
            if self._direct and token is None and host_port in (None, port):
                exposed = ExposedPort(port, _url("127.0.0.1", port, None), "127.0.0.1", port, "direct")
                self._forwards[port] = (None, exposed)
                return exposed
            forward = _Forward(self._open_channel, port, token, self._on_traffic)
            loop = _forwarding_loop()
            try:
                bound = asyncio.run_coroutine_threadsafe(forward.listen(host, host_port or 0), loop).result()
            except OSError as exc:
                where = f"{host}:{host_port}" if host_port else host
                raise InvalidArgumentError(f"cannot listen on {where} for port {port}: {exc.strerror or exc} "
                                           "(choose another host_port, or leave it out)") from None
            exposed = ExposedPort(port, _url(host, bound, token), host, bound, "channel", token)
            self._forwards[port] = (forward, exposed)
        return exposed

    def unexpose(self, port: int) -> bool:
        """Close the listener of ``port`` and its connections; ``False`` when it was not exposed."""
        with self._lock:
            known = self._forwards.pop(checked_port(port), None)
        if known is None:
            return False
        if known[0] is not None:
            asyncio.run_coroutine_threadsafe(known[0].close(), _forwarding_loop()).result()
        return True

    def close_all(self) -> None:
        """Close every listener and connection (the sandbox stops)."""
        for port in list(self._forwards):
            self.unexpose(port)

    @property
    def exposed(self) -> list[ExposedPort]:
        """The open ports, by port number."""
        return [exposed for _, (_, exposed) in sorted(self._forwards.items())]


def _url(host: str, port: int, token: str | None) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()  # every address: the name others know this machine by
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?{TOKEN_PARAMETER}={token}" if token else "")
