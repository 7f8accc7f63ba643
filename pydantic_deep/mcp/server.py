"""SandboxMCPServer: the deep agent's sandbox tools, served to any MCP client.

The tools are the agent's own (:func:`~pydantic_deep.agent.tools.sandbox_toolset`: execute, ls,
read_file, read_upload, write_file, edit_file, glob, grep, expose_port), called with the same logic
and the same argument schemas, plus two that only an MCP client needs: ``upload_file`` (put a file into
``/uploads``) and ``sandbox_runtime`` (describe or change the sandbox's runtime).

Each MCP session gets its own sandbox from a :class:`~pydantic_deep.sessions.SessionManager`,
created on its first tool call:

- over stdio, the server process serves one client: one sandbox for the process;
- over streamable HTTP, each MCP session (``Mcp-Session-Id``) gets its own sandbox, so clients
  connected at once never see each other's files. Requests without a session (the stateless
  2026-07-28 protocol) are told to connect with the initialize handshake, which every client
  falls back to: this server advertises no stateless protocol version over HTTP.

A sandbox idle for ``idle_timeout`` seconds is stopped; its files stay and the next tool call
brings it back with them. When its session ends (the client disconnects or deletes the session,
or the server exits) the sandbox is removed with its files, except a named stdio ``workspace``,
whose files wait for the next server started with that name, unless ``ephemeral``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import ipaddress
import logging
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from pydantic_ai import BinaryContent, RunContext, ToolReturn
from pydantic_ai.exceptions import ModelRetry, ToolFailed
from pydantic_ai.toolsets import FunctionToolset
from pydantic_ai.usage import RunUsage
from starlette.types import ASGIApp, Receive, Scope, Send

from ..agent.agent import _NoModel
from ..agent.deps import DeepAgentDeps
from ..agent.prompt import BASE_INSTRUCTIONS, runtime_section
from ..agent.tools import command_output, sandbox_toolset
from ..config import RuntimeConfig
from ..errors import InvalidArgumentError, SandboxError
from ..results import OutputChunk
from ..runtimes import list_runtimes
from ..sessions.manager import SessionManager

__all__ = ["TOKEN_ENV_VAR", "SandboxMCPServer", "check_http_binding"]

logger = logging.getLogger("pydantic_deep.mcp")

TOKEN_ENV_VAR = "PYDANTIC_DEEP_MCP_TOKEN"
"""The bearer token of the HTTP transport when ``--token`` is not given."""

# Tool failures the client's model can act on: they come back as a tool error, in words.
_TOOL_FAILURES = (ToolFailed, ModelRetry, SandboxError, OSError, ValueError)


@dataclass
class _ClientDeps(DeepAgentDeps):
    """The deps of one MCP session: its sandbox, plus what the MCP-only tools need to change it."""

    user_id: str = ""
    manager: SessionManager | None = None
    runtimes: dict[str, str] = field(default_factory=dict)


async def upload_file(ctx: RunContext[_ClientDeps], name: str, content: str, base64_encoded: bool = False) -> str:
    """Put a file into /uploads (e.g. data the user gave you), where read_upload and commands find it.

    Args:
        name: The file's name; only its last path component is kept.
        content: The file's content: text, or base64 with base64_encoded=true (for binary files).
        base64_encoded: Whether content is base64.
    """
    try:
        data = base64.b64decode(content, validate=True) if base64_encoded else content.encode()
    except binascii.Error as exc:
        raise ToolFailed(f"content is not valid base64 ({exc}); send the bytes base64-encoded") from None
    uploaded = await ctx.deps.aupload_file(name, data)
    return f"Uploaded {uploaded.path} ({uploaded.size} bytes, {uploaded.media_type})"


async def sandbox_runtime(ctx: RunContext[_ClientDeps], runtime: str | None = None) -> str:
    """Describe the sandbox (runtime, work dir, network, packages), or switch it to another runtime.

    Switching replaces the container and keeps the files.

    Args:
        runtime: The runtime to switch to, e.g. python-datascience; omit it to only describe.
    """
    deps = ctx.deps
    if runtime is not None and deps.manager is not None and runtime != deps.backend.runtime.name:
        deps.backend = await deps.manager.get_or_create(deps.user_id, runtime=runtime)
    others = ", ".join(f"{name} ({description})" for name, description in deps.runtimes.items()
                       if name != deps.backend.runtime.name)
    return runtime_section(deps) + (f"\n\nOther runtimes: {others}" if others else "")


def check_http_binding(host: str, token: str | None) -> None:
    """Refuse to serve HTTP beyond loopback without a bearer token.

    Raises:
        InvalidArgumentError: ``host`` is reachable from other machines and no token was given.
    """
    if token:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        loopback = False
    if not loopback:
        raise InvalidArgumentError(
            f"serving MCP on {host} lets other machines run commands in your sandboxes: pass --token TOKEN "
            f"(or set {TOKEN_ENV_VAR}); clients then send 'Authorization: Bearer TOKEN'. Or bind to 127.0.0.1")


class _BearerAuth:
    """ASGI middleware: an HTTP request without ``Authorization: Bearer <token>`` gets 401."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body",
                            "body": b'{"error": "unauthorized: send Authorization: Bearer <token>"}'})
                return
        await self.app(scope, receive, send)


class SandboxMCPServer:
    """An MCP server whose tools act in a sandbox of each client's own.

    Example:
        ```python
        server = SandboxMCPServer(runtime="python-datascience", idle_timeout=600)
        server.run()                                    # stdio, as MCP clients launch it
        server.run(http=("127.0.0.1", 8000))            # streamable HTTP at http://127.0.0.1:8000/mcp
        ```

    Args:
        runtime: The runtime of new sandboxes; a client changes its own with ``sandbox_runtime``.
        idle_timeout: Seconds without a tool call before a sandbox's container is stopped (its files
            stay, and the next call brings it back); ``0`` never stops it.
        ephemeral: Remove every sandbox with its files when its session ends, even a named workspace.
        workspace: Over stdio, name the client's sandbox so its files outlive the server: the next
            server with this name gets them back. Without it, each server process has a sandbox of
            its own, removed when it exits.
        name: The session manager's name, which prefixes containers and volumes.
        max_sessions: Most sandboxes at once; past it a new client's tool calls fail and say so.
        **sandbox_options: Passed to every :class:`~pydantic_deep.DockerSandbox` (``memory``, ``network``...).
    """

    def __init__(self, runtime: str | RuntimeConfig = "python-minimal", *, idle_timeout: float = 1800,
                 ephemeral: bool = False, workspace: str | None = None, name: str = "mcp",
                 max_sessions: int | None = None, **sandbox_options: Any) -> None:
        if idle_timeout < 0:
            raise InvalidArgumentError(f"idle_timeout must be 0 (never) or a positive number of seconds, "
                                       f"not {idle_timeout}")
        # No warm capacity: a stdio server has one client, whose first call pays one start.
        self.manager = SessionManager(runtime, idle_timeout or float("inf"), name=name, max_sessions=max_sessions,
                                      warm=0, **sandbox_options)
        self.idle_timeout = idle_timeout
        self.ephemeral = ephemeral
        self.workspace = workspace
        self._instance = uuid.uuid4().hex[:12]
        self._transport: Literal["stdio", "http"] = "stdio"
        self._clients: dict[str, _ClientDeps] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        self._ending: set[asyncio.Task[None]] = set()  # sandboxes of ended HTTP sessions being removed
        self._tools = {**sandbox_toolset().tools, **FunctionToolset([upload_file, sandbox_runtime]).tools}
        self._runtimes = {name: config.description or "" for name, config in list_runtimes().items()}
        self.server: Server[Any] = Server("pydantic-deep", version=_version(), instructions=BASE_INSTRUCTIONS,
                                          on_list_tools=self._list_tools, on_call_tool=self._call_tool)

    # -- tools --------------------------------------------------------------------------------

    async def _list_tools(self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None,
                          ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[
            types.Tool(name=tool.name, description=tool.description, input_schema=tool.function_schema.json_schema)
            for tool in self._tools.values()])

    async def _call_tool(self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams,
                         ) -> types.CallToolResult:
        tool = self._tools.get(params.name)
        if tool is None:
            return _error(f"unknown tool {params.name!r}; the tools are {', '.join(self._tools)}")
        try:
            arguments = tool.function_schema.validator.validate_python(params.arguments or {})
        except ValidationError as exc:
            return _error(f"invalid arguments for {params.name}: {exc}")
        try:
            deps = await self._deps(ctx)
            # The tools read only ctx.deps; the model is the client's, so none stands behind this one.
            run_context = RunContext(deps=deps, model=_NoModel(), usage=RunUsage(), tool_name=params.name)
            async with _progress_of_commands(ctx):
                result = await tool.function_schema.call(arguments, run_context)
        except _TOOL_FAILURES as exc:
            message = str(exc) if isinstance(exc, (ToolFailed, ModelRetry)) else f"{type(exc).__name__}: {exc}"
            return _error(message)
        return types.CallToolResult(content=_content(result))

    # -- one sandbox per client ---------------------------------------------------------------

    def _client_id(self, ctx: ServerRequestContext[Any]) -> str:
        if self._transport == "stdio":
            return self.workspace or f"stdio-{self._instance}"
        headers = getattr(ctx.request, "headers", None)
        session = headers.get("mcp-session-id") if headers is not None else None
        if not session:
            raise MCPError(code=types.INVALID_REQUEST, message=(
                "this server keeps a sandbox per MCP session: connect with the initialize handshake "
                f"(protocol {HANDSHAKE_PROTOCOL_VERSIONS[-1]}), not stateless requests"))
        return f"http-{self._instance}-{session}"

    async def _deps(self, ctx: ServerRequestContext[Any]) -> _ClientDeps:
        """The client's deps with its sandbox, created or brought back (after idle cleanup) as needed."""
        user_id = self._client_id(ctx)
        lock = self._opening.setdefault(user_id, asyncio.Lock())
        async with lock:
            deps = self._clients.get(user_id)
            sandbox = await self.manager.get_or_create(user_id)
            if deps is None:
                deps = self._clients[user_id] = _ClientDeps(backend=sandbox, user_id=user_id, manager=self.manager,
                                                            runtimes=self._runtimes)
                if self._transport == "http":  # over stdio the process is the session: it ends at exit
                    self._on_session_end(ctx, user_id)
                logger.info("New MCP session: sandbox %s (%s)", sandbox.name, sandbox.runtime.name)
            deps.backend = sandbox
            return deps

    def _on_session_end(self, ctx: ServerRequestContext[Any], user_id: str) -> None:
        # The SDK unwinds a connection's exit stack when the session ends (stdio closed, HTTP session
        # deleted or expired); it has no public accessor from a request yet. Without it the sandbox
        # goes at server exit.
        # The removal runs beside the SDK's teardown, which gives its callbacks only seconds.
        connection = getattr(ctx.session, "_connection", None)
        exit_stack = getattr(connection, "exit_stack", None)
        if exit_stack is not None:
            exit_stack.callback(self._end_in_background, user_id)

    def _end_in_background(self, user_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._end_client(user_id))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _end_client(self, user_id: str) -> None:
        """Remove the client's sandbox (files too), or stop it and keep the files of a named workspace."""
        if self._clients.pop(user_id, None) is None:
            return
        self._opening.pop(user_id, None)
        if self.workspace and user_id == self.workspace and not self.ephemeral:
            await self.manager.stop(user_id)
        else:
            await self.manager.release(user_id)

    async def aclose(self) -> None:
        """End every client's sandbox (as when its session ends) and stop the idle cleanup."""
        self.manager.stop_cleanup_loop()
        await asyncio.gather(*self._ending, *(self._end_client(user_id) for user_id in list(self._clients)))
        await self.manager.shutdown(keep_files=not self.ephemeral)

    # -- transports ---------------------------------------------------------------------------

    def run(self, *, http: tuple[str, int] | None = None, token: str | None = None) -> None:
        """Serve until the client disconnects (stdio) or the process is interrupted or terminated;
        then every sandbox goes as its session's end says.

        Args:
            http: ``(host, port)`` to serve streamable HTTP at ``http://host:port/mcp``; stdio without it.
            token: The bearer token HTTP requests must carry; required when ``host`` is not loopback.

        Raises:
            InvalidArgumentError: HTTP beyond loopback without a token.
        """
        if http is not None:
            check_http_binding(http[0], token)
        asyncio.run(self.serve(http=http, token=token))

    async def serve(self, *, http: tuple[str, int] | None = None, token: str | None = None) -> None:
        """Async form of :meth:`run`."""
        serving = asyncio.create_task(self._serve_stdio() if http is None else self._serve_http(*http, token=token))
        loop = asyncio.get_running_loop()
        # Stdio clients end their servers with SIGTERM. Uvicorn shuts down on it by itself, then hands
        # the signal on to the handler it found: a no-op, so that the cleanup below still runs.
        on_sigterm: Callable[[], object] = serving.cancel if http is None else (lambda: None)
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread, or Windows
            loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        if self.idle_timeout:
            self.manager.start_cleanup_loop(interval=min(60.0, self.idle_timeout / 4))
        try:
            await serving
        except asyncio.CancelledError:
            if not serving.cancelled():
                raise  # we were cancelled, not the server: still clean up, then go on cancelling
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):  # a second SIGTERM: cleanup goes on
                loop.add_signal_handler(signal.SIGTERM, lambda: None)
            await self.aclose()

    async def _serve_stdio(self) -> None:
        from mcp.server.stdio import stdio_server

        self._transport = "stdio"
        async with stdio_server() as (read_stream, write_stream):
            await self.server.run(read_stream, write_stream, self.server.create_initialization_options())

    async def _serve_http(self, host: str, port: int, *, token: str | None) -> None:
        import uvicorn

        check_http_binding(host, token)
        self._transport = "http"
        # Advertise no stateless protocol version: clients fall back to the initialize handshake,
        # whose Mcp-Session-Id tells clients (and so their sandboxes) apart.
        self.server.add_request_handler("server/discover", types.RequestParams, self._discover_handshake_only)
        app: ASGIApp = self.server.streamable_http_app(host=host)
        if token:
            app = _BearerAuth(app, token)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        logger.info("Serving MCP at http://%s:%d/mcp", host if ":" not in host else f"[{host}]", port)
        await uvicorn.Server(config).serve()

    async def _discover_handshake_only(self, ctx: ServerRequestContext[Any], params: types.RequestParams | None,
                                       ) -> types.DiscoverResult:
        return types.DiscoverResult(supported_versions=list(HANDSHAKE_PROTOCOL_VERSIONS),
                                    capabilities=self.server.get_capabilities(protocol_version=ctx.protocol_version),
                                    instructions=self.server.instructions)


@contextlib.asynccontextmanager
async def _progress_of_commands(ctx: ServerRequestContext[Any]) -> Any:
    """Send the output of the tool's commands as progress notifications while they run (when the
    client asked for progress), in order, from the sandbox's reader thread to the event loop."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[OutputChunk | None] = asyncio.Queue()

    async def forward() -> None:
        sent = 0
        while (chunk := await chunks.get()) is not None:
            sent += len(chunk.text)
            with contextlib.suppress(Exception):  # progress is advisory: a closed stream loses none of the result
                await ctx.session.report_progress(sent, message=chunk.text)

    forwarder = asyncio.create_task(forward())
    token = command_output.set(lambda chunk: loop.call_soon_threadsafe(chunks.put_nowait, chunk))
    try:
        yield
    finally:
        command_output.reset(token)
        chunks.put_nowait(None)
        await forwarder


def _content(result: Any) -> list[types.ContentBlock]:
    """A tool's return value as MCP content: its text, and images as image content."""
    if not isinstance(result, ToolReturn):
        return [types.TextContent(type="text", text=str(result))]
    content: list[types.ContentBlock] = [
        types.TextContent(type="text", text=str(result.return_value))]
    for item in result.content if isinstance(result.content, list) else [result.content]:
        if isinstance(item, BinaryContent) and item.is_image:
            content.append(types.ImageContent(type="image", data=base64.b64encode(item.data).decode(),
                                              mime_type=item.media_type))
        elif item is not None:
            content.append(types.TextContent(type="text", text=str(item)))
    return content


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pydantic-deep")
    except PackageNotFoundError:
        return "0"

