"""`pydantic-deep mcp`, driven by the MCP SDK's own client and by a Pydantic AI agent, in real containers."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from helpers import poll_until
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from pydantic_deep.engine.client import docker_client

pytestmark = [pytest.mark.mcp, pytest.mark.anyio]

COMMAND = str(Path(sys.executable).with_name("pydantic-deep"))
# A 1x1 PNG, written in the sandbox by a command.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAA"
                       "AABJRU5ErkJggg==")


def manager_name() -> str:
    """A fresh session manager name; `test` makes the suite's leak check watch its volumes too."""
    return f"test-mcp-{uuid.uuid4().hex[:8]}"


def leftovers(name: str) -> list[str]:
    """The containers and volumes of the server's session manager still in the engine."""
    client = docker_client()
    label = {"label": f"pydantic-deep.manager={name}"}
    # The low-level listing: the high-level one inspects each container, which may be going meanwhile.
    return [c["Names"][0] for c in client.api.containers(all=True, filters=label)] + \
        [v.name for v in client.volumes.list(filters=label)]


def wait_until_gone(name: str, deadline: float = 30) -> list[str]:
    end = time.monotonic() + deadline
    while (left := leftovers(name)) and time.monotonic() < end:
        time.sleep(0.1)
    return left


def text_of(result) -> str:
    return "".join(item.text for item in result.content if item.type == "text")


async def test_stdio_client_runs_commands_moves_files_and_gets_images() -> None:
    name = manager_name()
    server = StdioServerParameters(command=COMMAND, args=["mcp", "--ephemeral", "--name", name])
    async with Client(server) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert tools == {"execute", "ls", "read_file", "read_upload", "write_file", "edit_file", "glob", "grep",
                         "expose_port", "upload_file", "sandbox_runtime"}

        progress: list[str | None] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append(message)

        result = await client.call_tool("execute", {"command": "echo one; sleep 0.3; echo two"},
                                        progress_callback=on_progress)
        assert text_of(result) == "one\ntwo\n\n[exit code 0]" and not result.is_error
        assert "".join(message or "" for message in progress) == "one\ntwo\n"  # streamed as it ran

        assert text_of(await client.call_tool("write_file", {"path": "notes/a.txt", "content": "hello\n"})) == \
            "Wrote 6 bytes to /workspace/notes/a.txt"
        assert text_of(await client.call_tool("read_file", {"path": "notes/a.txt"})) == "     1\thello"
        upload = await client.call_tool("upload_file", {"name": "../x.bin", "content": "AAE=", "base64_encoded": True})
        assert text_of(upload) == "Uploaded /uploads/x.bin (2 bytes, application/octet-stream)"

        encoded = base64.b64encode(PNG).decode()
        await client.call_tool("execute", {"command": f"echo {encoded} | base64 -d > plot.png"})
        image = await client.call_tool("read_file", {"path": "plot.png"})
        [(kind, mime, data)] = [(c.type, c.mime_type, c.data) for c in image.content if c.type == "image"]
        assert (kind, mime, base64.b64decode(data)) == ("image", "image/png", PNG)

        denied = await client.call_tool("read_file", {"path": "/etc/passwd"})
        assert denied.is_error and "outside the sandbox" in text_of(denied)
        assert leftovers(name)  # the sandbox exists while the client is connected
    assert wait_until_gone(name) == []  # the server exited with its client: sandbox and volumes removed


async def test_idle_sandbox_stops_and_comes_back_with_its_files_and_a_tool_switches_runtime() -> None:
    name = manager_name()
    server = StdioServerParameters(command=COMMAND, args=["mcp", "--ephemeral", "--name", name, "--idle-timeout", "1"])
    async with Client(server) as client:
        await client.call_tool("write_file", {"path": "kept.txt", "content": "still here"})
        containers = {"label": f"pydantic-deep.manager={name}"}
        await anyio.to_thread.run_sync(lambda: poll_until(  # idle cleanup removes it
            lambda: not docker_client().api.containers(all=True, filters=containers),
            "the idle sandbox is stopped", timeout=30, interval=0.1))
        assert text_of(await client.call_tool("read_file", {"path": "kept.txt"})) == "     1\tstill here"

        switched = text_of(await client.call_tool("sandbox_runtime", {"runtime": "node-minimal"}))
        assert switched.startswith("## Runtime Environment\n\n**Name:** node-minimal\n")
        assert "Other runtimes: " in switched and "python-minimal (" in switched
        read_in_node = "node -p \"require('fs').readFileSync('kept.txt', 'utf8')\""
        node = await client.call_tool("execute", {"command": read_in_node})
        assert text_of(node) == "still here\n\n[exit code 0]"
        unknown = await client.call_tool("sandbox_runtime", {"runtime": "no-such-runtime"})
        assert unknown.is_error and "no-such-runtime" in text_of(unknown)
    assert wait_until_gone(name) == []


async def test_a_named_workspace_keeps_its_files_for_the_next_server_until_ephemeral() -> None:
    name = manager_name()
    first = StdioServerParameters(command=COMMAND, args=["mcp", "--workspace", "proj", "--name", name])
    async with Client(first) as client:
        await client.call_tool("write_file", {"path": "notes.md", "content": "remember"})
    assert wait_until_gone(name, deadline=5) != []  # stopped, its files kept
    again = StdioServerParameters(command=COMMAND, args=["mcp", "--workspace", "proj", "--name", name, "--ephemeral"])
    async with Client(again) as client:
        assert text_of(await client.call_tool("read_file", {"path": "notes.md"})) == "     1\tremember"
    assert wait_until_gone(name) == []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def http_server() -> Iterator[tuple[str, str, str]]:
    """`pydantic-deep mcp --http` on a free loopback port: (url, token, manager name)."""
    name, token, port = manager_name(), uuid.uuid4().hex, free_port()
    process = subprocess.Popen([COMMAND, "mcp", "--http", f"127.0.0.1:{port}", "--token", token, "--name", name,
                                "--ephemeral"], stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        def wants_the_token() -> bool:  # it answers, and asks for the token
            try:
                return httpx2.post(url, json={}).status_code == 401
            except httpx2.TransportError:
                return False

        poll_until(wants_the_token, "the MCP server answers", interval=0.05,
                   give_up=lambda: process.poll() is not None)
        yield url, token, name
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        assert wait_until_gone(name) == [], "the HTTP server left sandboxes behind"


@asynccontextmanager
async def http_client(url: str, token: str) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            yield client


async def test_http_clients_at_once_see_only_their_own_files(http_server: tuple[str, str, str]) -> None:
    url, token, name = http_server
    seen: dict[str, tuple[str, str]] = {}

    async def one_client(label: str) -> None:
        async with http_client(url, token) as client:
            await client.call_tool("write_file", {"path": f"{label}.txt", "content": label})
            await anyio.sleep(0.5)  # both sandboxes exist now
            listing = text_of(await client.call_tool("ls", {}))
            seen[label] = (listing, text_of(await client.call_tool("execute", {"command": "cat *.txt"})))

    async with anyio.create_task_group() as group:
        group.start_soon(one_client, "alice")
        group.start_soon(one_client, "bob")
    assert seen == {"alice": ("alice.txt  (5 bytes)", "alice\n[exit code 0]"),
                    "bob": ("bob.txt  (3 bytes)", "bob\n[exit code 0]")}
    # Each client deleted its session on leaving: its sandbox went with it, the server still runs.
    assert wait_until_gone(name) == []


async def test_http_requests_without_the_token_are_refused(http_server: tuple[str, str, str]) -> None:
    url, token, _ = http_server
    hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    async with httpx2.AsyncClient() as http:
        assert (await http.post(url, json=hello)).status_code == 401
        wrong = await http.post(url, json=hello, headers={"Authorization": f"Bearer {token}x"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    # With the token, a stateless (2026-07-28) request has no session to give a sandbox: refused, in words.
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="2026-07-28") as client:
            with pytest.raises(MCPError, match="connect with the initialize handshake"):
                await client.call_tool("ls", {})


def test_http_beyond_loopback_needs_a_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DEEP_MCP_TOKEN"}
    refused = subprocess.run([COMMAND, "mcp", "--http", "0.0.0.0:1"], capture_output=True, text=True, env=env,
                             timeout=60)
    assert refused.returncode != 0
    assert "pass --token TOKEN (or set PYDANTIC_DEEP_MCP_TOKEN)" in refused.stderr


async def test_pydantic_ai_agent_uses_the_server_through_its_mcp_client() -> None:
    from fastmcp.client.transports import StdioTransport
    from pydantic_ai.mcp import MCPToolset

    name = manager_name()
    steps = [
        [ToolCallPart("write_file", json.dumps({"path": "hello.py", "content": "print(6 * 7)\n"}))],
        [ToolCallPart("execute", json.dumps({"command": "python3 hello.py"}))],
    ]
    returns: list[tuple[str, str]] = []

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        last = messages[-1]
        returns.extend((part.tool_name, str(part.content)) for part in getattr(last, "parts", [])
                       if isinstance(last, ModelRequest) and isinstance(part, ToolReturnPart))
        return ModelResponse(parts=steps.pop(0)) if steps else ModelResponse(parts=[TextPart("done")])

    # keep_alive=False: the server ends with the agent's session, not at interpreter exit.
    # (init_timeout: the server imports Pydantic AI and the MCP SDK, seconds on a busy machine.)
    toolset = MCPToolset(StdioTransport(COMMAND, ["mcp", "--ephemeral", "--name", name], keep_alive=False),
                         init_timeout=60)
    agent = Agent(FunctionModel(script), toolsets=[toolset])
    async with agent:
        result = await agent.run("Run a Python script that prints 6 * 7")
    assert result.output == "done"
    assert returns == [("write_file", "Wrote 13 bytes to /workspace/hello.py"),
                       ("execute", "42\n\n[exit code 0]")]
    assert wait_until_gone(name) == []


@pytest.mark.parametrize(("argv", "message"), [
    (["--http", "8000"], "--http takes HOST:PORT (e.g. 127.0.0.1:8000), not '8000'"),
    (["--token", "t"], "--token is for the HTTP transport: add --http HOST:PORT"),
    (["--http", "127.0.0.1:8000", "--workspace", "w"], "--workspace names the one client of a stdio server"),
    (["--http", "example.com:8000"], "serving MCP on example.com lets other machines run commands"),
    (["--idle-timeout", "-1"], "idle_timeout must be 0 (never) or a positive number of seconds, not -1"),
])
def test_bad_options_are_refused_before_anything_starts(argv: list[str], message: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic_deep.cli import main

    monkeypatch.delenv("PYDANTIC_DEEP_MCP_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["mcp", *argv])
    assert message in str(exited.value)


def test_loopback_needs_no_token() -> None:
    from pydantic_deep.mcp.server import check_http_binding

    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"):
        check_http_binding(host, None)
    check_http_binding("0.0.0.0", "a-token")
