"""Ports exposed over the execution channel (issue 15), against real containers with the network off:
a FastAPI app answers, a WebSocket echoes, 50 requests run at once, 100 MB stream through with the
host's memory bounded, and a listener bound wider than loopback takes its token."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import poll_until

from pydantic_deep import DockerSandbox, ExposedPort, InvalidArgumentError, LocalSandbox, SandboxStateError
from pydantic_deep.execution.ports import TOKEN_HEADER, TOKEN_PARAMETER

pytestmark = pytest.mark.preview

APP = '''
import asyncio
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

app = FastAPI()
state = {"now": 0, "peak": 0}


@app.get("/")
def hello():
    return {"hello": "from the sandbox"}


@app.get("/slow")
async def slow():
    state["now"] += 1
    state["peak"] = max(state["peak"], state["now"])
    await asyncio.sleep(0.5)
    state["now"] -= 1
    return {"peak": state["peak"]}


@app.get("/download/{size}")
def download(size: int):
    block = bytes(range(256)) * 256

    def chunks():
        left = size
        while left:
            yield block[:min(left, len(block))]
            left -= min(left, len(block))

    return StreamingResponse(chunks(), media_type="application/octet-stream",
                             headers={"Content-Length": str(size)})
'''

# A WebSocket echo server with the standard library alone (python-web has no WebSocket package).
ECHO = '''
import base64, hashlib, socket, struct, threading

def serve(c):
    head = b""
    while b"\\r\\n\\r\\n" not in head:
        head += c.recv(4096)
    key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\\r\\n")
               if line.lower().startswith(b"sec-websocket-key"))
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n"
              b"Sec-WebSocket-Accept: " + accept + b"\\r\\n\\r\\n")
    f = c.makefile("rb")
    while True:
        first, second = f.read(2)
        opcode, size = first & 15, second & 127
        if size == 126:
            size = struct.unpack(">H", f.read(2))[0]
        elif size == 127:
            size = struct.unpack(">Q", f.read(8))[0]
        mask = f.read(4)
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(f.read(size)))
        if opcode == 8:
            c.sendall(b"\\x88\\x00")
            break
        length = bytes([size]) if size < 126 else struct.pack(">BH", 126, size)
        c.sendall(bytes([0x80 | opcode]) + length + data)
    c.close()

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8001))
s.listen(16)
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
'''


@pytest.fixture(scope="module")
def web() -> Iterator[DockerSandbox]:
    """A python-web sandbox, network off, serving the app on 8000 and the echo on 8001."""
    with DockerSandbox("python-web", network=False) as box:
        box.write_file("app.py", APP)
        box.write_file("echo.py", ECHO)
        box.execute("nohup python3 -m uvicorn app:app --port 8000 > uvicorn.log 2>&1 &")
        box.execute("nohup python3 echo.py > echo.log 2>&1 &")
        yield box


def listening(box: DockerSandbox, port: int) -> bool:
    """Whether a server listens on ``port`` in the sandbox (state 0A in /proc/net/tcp)."""
    table = box.execute("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null").output
    return any(f":{port:04X} " in line and line.split()[3] == "0A" for line in table.splitlines()[1:])


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_a_fastapi_app_with_the_network_off_answers_on_the_host(web: DockerSandbox) -> None:
    assert web.network is False
    url = web.expose(8000)
    assert url.startswith("http://127.0.0.1:") and web.expose(8000) == url  # the same again
    [exposed] = web.exposed
    assert exposed == ExposedPort(8000, url, "127.0.0.1", exposed.host_port, "channel")
    status, body = poll_until(lambda: (reply := get(url))[0] == 200 and reply, "the app answers", timeout=60)
    assert json.loads(body) == {"hello": "from the sandbox"}
    # Nothing published: the container has no port bindings at all.
    assert not web._engine().api.inspect_container(web.container_id)["HostConfig"]["PortBindings"]


def test_a_port_nothing_listens_on_answers_502_with_the_reason(web: DockerSandbox) -> None:
    status, body = get(web.expose(8999))
    assert status == 502 and b"nothing listens on port 8999 in the sandbox" in body
    assert web.unexpose(8999) and not web.unexpose(8999)
    assert [e.port for e in web.exposed] == [8000]


def test_a_websocket_echo_round_trips(web: DockerSandbox) -> None:
    import aiohttp

    url = web.expose(8001).replace("http://", "ws://")

    async def echo() -> list[str | bytes]:
        async with aiohttp.ClientSession() as client, client.ws_connect(url) as socket:
            await socket.send_str("hello through the channel")
            text = (await socket.receive(timeout=30)).data
            await socket.send_bytes(b"\x00\x01" * 20_000)  # past one frame's 125-byte short form
            data = (await socket.receive(timeout=30)).data
            return [text, data]

    poll_until(lambda: listening(web, 8001), "the echo server listens", timeout=30)
    assert asyncio.run(echo()) == ["hello through the channel", b"\x00\x01" * 20_000]


def test_fifty_concurrent_requests(web: DockerSandbox) -> None:
    import httpx

    url = web.expose(8000)
    poll_until(lambda: get(url)[0] == 200, "the app answers", timeout=60)

    async def fifty() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            return await asyncio.gather(*(client.get(f"{url}slow") for _ in range(50)))

    replies = asyncio.run(fifty())
    assert [reply.status_code for reply in replies] == [200] * 50
    # The app counts the requests it serves at once: they came over 50 connections together.
    assert max(reply.json()["peak"] for reply in replies) >= 25


def memory(field: str) -> int:
    """This process's ``VmRSS`` (resident memory) or ``VmHWM`` (its peak) in bytes: the listener
    and the channel run in this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def test_a_100_mb_download_streams_with_the_hosts_memory_bounded(web: DockerSandbox) -> None:
    size = 100 * 1024 * 1024
    exposed_url = urllib.parse.urlsplit(web.expose(8000))
    poll_until(lambda: get(exposed_url.geturl())[0] == 200, "the app answers", timeout=60)
    connection = http.client.HTTPConnection(exposed_url.hostname, exposed_url.port, timeout=60)
    connection.request("GET", f"/download/{size}")
    response = connection.getresponse()
    assert response.status == 200
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from now
    before = memory("VmRSS")
    # The client reads nothing for a while: without flow control the sandbox would push the body
    # into the host's memory meanwhile (tried: 29 MB in 2 s on a busy 2-core machine, 45 in 3).
    time.sleep(3)
    received = 0
    block = bytes(range(256)) * 256
    while chunk := response.read(1 << 20):
        assert chunk == (block * 17)[received % len(block):received % len(block) + len(chunk)]
        received += len(chunk)
    connection.close()
    assert received == size
    growth = memory("VmHWM") - before
    print(f"host peak RSS grew {growth / 1e6:.1f} MB while streaming {size / 1e6:.0f} MB")
    assert growth < 16 * 1024 * 1024, f"host memory grew {growth / 1e6:.1f} MB"


def test_bad_arguments_change_nothing(web: DockerSandbox) -> None:
    before = web.exposed
    for port in (0, 70000, "8000", True):
        with pytest.raises(InvalidArgumentError, match="port must be a TCP port number"):
            web.expose(port)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="token must be"):
        web.expose(8000, token="short")
    with pytest.raises(InvalidArgumentError, match="is exposed already"):
        web.expose(8000, token="a" * 20)
    assert web.exposed == before


def test_ports_close_when_the_sandbox_stops() -> None:
    box = DockerSandbox("python-minimal").start()
    try:
        box.execute("nohup python3 -m http.server 8000 >/dev/null 2>&1 &")
        url = box.expose(8000)
        poll_until(lambda: get(url)[0] == 200, "the server answers", timeout=30)
    finally:
        box.stop()
    assert box.exposed == []
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)
    with pytest.raises(SandboxStateError):
        box.expose(8000)


def test_a_local_sandbox_gives_its_port_directly_and_forwards_with_a_token() -> None:
    with LocalSandbox() as box:
        box.execute("nohup python3 -u -m http.server 0 --bind 127.0.0.1 > server.log 2>&1 &")
        line = poll_until(lambda: box.exists("server.log") and "port" in (text := box.read_file("server.log").decode())
                          and text, "the server says its port", timeout=30)
        port = int(line.split("port ")[1].split()[0])
        assert box.expose(port) == f"http://127.0.0.1:{port}/"
        assert box.exposed[0].via == "direct"
        assert box.unexpose(port)
        token = "t" * 24
        url = box.expose(port, token=token)  # a token means a listener of ours, over the channel
        assert box.exposed[0].via == "channel" and url.endswith(f"?{TOKEN_PARAMETER}={token}")
        bare = url.split("?")[0]
        assert get(bare)[0] == 401
        assert get(bare, {TOKEN_HEADER: token})[0] == 200


WIDER = '''
import http.client, json, sys, time
from pydantic_deep import DockerSandbox

with DockerSandbox("python-minimal") as box:
    box.execute("nohup python3 -m http.server 8000 >/dev/null 2>&1 &")
    url = box.expose(8000, host="0.0.0.0")
    [exposed] = box.exposed

    def ask(path, headers={}):
        connection = http.client.HTTPConnection("192.0.2.1", exposed.host_port, timeout=30)
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        return response.status, dict(response.getheaders()), body.decode(errors="replace")

    deadline = time.monotonic() + 30
    while ask("/", {"X-Pydantic-Deep-Token": exposed.token})[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    print(json.dumps({"url": url, "token": exposed.token, "host": exposed.host,
                      "none": ask("/")[:1], "wrong": ask("/", {"X-Pydantic-Deep-Token": "x" * 32})[:1],
                      "header": ask("/", {"X-Pydantic-Deep-Token": exposed.token})[0],
                      "bearer": ask("/", {"Authorization": "Bearer " + exposed.token})[0],
                      "query": ask("/?a=1&pydantic_deep_token=" + exposed.token)[:2],
                      "cookie": ask("/", {"Cookie": "x=1; pydantic_deep_token_%d=%s" % (exposed.host_port,
                                                                                           exposed.token)})[0]}))
'''


@pytest.fixture
def namespace() -> Iterator[str]:
    """A network namespace of the test's own, with loopback and one address (192.0.2.1, TEST-NET-1, on a
    veth pair whose both ends stay in it)."""
    name = f"pdpreview{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for command in (["link", "set", "lo", "up"], ["link", "add", "pd0", "type", "veth", "peer", "name", "pd1"],
                        ["addr", "add", "192.0.2.1/24", "dev", "pd0"], ["link", "set", "pd0", "up"]):
            subprocess.run(["ip", "-n", name, *command], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def test_a_port_bound_wider_than_loopback_takes_its_token(namespace: str) -> None:
    # In a namespace of its own, so that listening on every address reaches no one else.
    script = textwrap.dedent(WIDER)
    done = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["host"] == "0.0.0.0" and seen["token"] and f"?{TOKEN_PARAMETER}={seen['token']}" in seen["url"]
    assert seen["none"] == [401] and seen["wrong"] == [401]
    assert seen["header"] == seen["bearer"] == seen["cookie"] == 200
    status, headers = seen["query"]
    # A browser's first visit: redirected to the same page without the token, which a cookie now carries.
    assert status == 303 and headers["Location"] == "/?a=1"
    assert headers["Set-Cookie"].startswith(f"{TOKEN_PARAMETER}_") and "HttpOnly" in headers["Set-Cookie"]


def test_the_agents_tool_exposes_a_port_and_tells_the_model_the_url(web: DockerSandbox) -> None:
    from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from pydantic_deep import DeepAgentDeps, create_deep_agent

    poll_until(lambda: web.listening(8000), "the app listens", timeout=60)
    seen: list[str] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returns = [part for part in messages[-1].parts if isinstance(part, ToolReturnPart)] if isinstance(
            messages[-1], ModelRequest) else []
        if not returns:
            return ModelResponse(parts=[ToolCallPart("expose_port", json.dumps({"port": 8000}))])
        seen.extend(str(part.content) for part in returns)
        return ModelResponse(parts=[TextPart("done")])

    asyncio.run(create_deep_agent(FunctionModel(model)).run("Serve the app", deps=DeepAgentDeps(backend=web)))
    [said] = seen
    url = next(item.url for item in web.exposed if item.port == 8000)
    assert said.startswith(f"Port 8000 of the sandbox is open at {url}")
    assert "answered 200" in said and '{"hello":"from the sandbox"}' in said


def test_sessions_list_their_open_ports_and_the_dashboard_links_them() -> None:
    import uuid

    from pydantic_deep import SessionManager
    from pydantic_deep.widgets import SessionMonitor

    async def scenario() -> None:
        manager = SessionManager("python-minimal", name=f"test-ports-{uuid.uuid4().hex[:8]}")
        try:
            sandbox = await manager.get_or_create("ada")
            await sandbox.aexecute("nohup python3 -m http.server 8000 >/dev/null 2>&1 &")
            url = await sandbox.aexpose(8000)
            [info] = await manager.list_sessions()
            assert [(item.port, item.url) for item in info.exposed] == [(8000, url)]
            monitor = SessionMonitor(manager, interval=3600)
            try:
                await asyncio.to_thread(monitor.refresh)
                row = monitor.rows.children[1].children[0].value
                assert f"ports <a href='{url}' target='_blank'>8000</a>" in row, row
            finally:
                monitor.close()
            await manager.stop("ada")  # the session's sandbox stops: its ports close
            assert sandbox.exposed == []
            with pytest.raises(OSError):
                await asyncio.to_thread(urllib.request.urlopen, url, timeout=5)
        finally:
            await manager.shutdown(keep_files=False)

    asyncio.run(scenario())


def test_a_client_that_closes_its_sending_side_still_gets_the_answer(web: DockerSandbox) -> None:
    import socket

    # Python's http.server answers a request whose client sent its end (uvicorn drops it).
    web.execute("mkdir -p half && echo half-closed > half/page.txt && "
                "nohup python3 -m http.server 8002 -d half > /dev/null 2>&1 &")
    url = urllib.parse.urlsplit(web.expose(8002))
    poll_until(lambda: web.listening(8002), "http.server listens", timeout=30)
    with socket.create_connection((url.hostname, url.port), timeout=30) as client:
        client.sendall(b"GET /page.txt HTTP/1.0\r\n\r\n")
        client.shutdown(socket.SHUT_WR)  # half-closed: PORT_END to the sandbox, which still answers
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"\r\n\r\nhalf-closed\n")


def test_traffic_through_a_port_is_use_of_the_sandbox(web: DockerSandbox) -> None:
    url = web.expose(8000)
    poll_until(lambda: get(url)[0] == 200, "the app answers", timeout=60)
    before = web.last_used
    poll_until(lambda: get(url)[0] == 200 and web.last_used > before, "a request counts as use", timeout=10)


def test_a_preview_goes_through_the_jupyter_server_when_it_has_the_proxy() -> None:
    from pydantic_deep.sandbox.preview import JupyterServer, preview_of

    exposed = ExposedPort(8000, "http://127.0.0.1:41000/", "127.0.0.1", 41000, "channel")
    hub = JupyterServer("/user/ada/", proxy=True)
    proxied = preview_of(exposed, path="/docs", server=hub)
    assert (proxied.src, proxied.via, proxied.base) == ("/user/ada/proxy/41000/docs", "jupyter", "/")
    absolute = preview_of(exposed, absolute=True, server=hub)
    assert (absolute.src, absolute.base) == ("/user/ada/proxy/absolute/41000/", "/user/ada/proxy/absolute/41000/")
    assert "<iframe src='/user/ada/proxy/41000/docs'" in proxied._repr_html_()
    # No proxy, no server found, or a token (the proxy would not carry it): the exposed URL itself.
    for server in (JupyterServer("/", proxy=False), None):
        assert preview_of(exposed, path="/docs", server=server).src == "http://127.0.0.1:41000/docs"
    tokened = ExposedPort(8000, "http://h:41000/?pydantic_deep_token=" + "t" * 20, "0.0.0.0", 41000, "channel",
                          "t" * 20)
    direct = preview_of(tokened, server=hub)
    assert (direct.via, direct.src) == ("direct", "http://h:41000/?pydantic_deep_token=" + "t" * 20)
    with pytest.raises(InvalidArgumentError, match="path must start with '/'"):
        preview_of(exposed, path="docs")


def test_the_preview_magic_starts_the_app_and_shows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    from pydantic_deep.sandbox.preview import Preview, find_jupyter_server

    find_jupyter_server.cache_clear()
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")  # as under JupyterHub: through its proxy
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "pydantic_deep")
    try:
        options = "-s preview-test -r python-minimal -t 60"
        run = ('--run "mkdir -p site && cd site && echo $PYDANTIC_DEEP_PREVIEW_BASE > base.txt && '
               'python3 -m http.server 8000"')
        shown = ip.run_line_magic("sandbox", f"preview 8000 {options} --absolute {run}")
        assert isinstance(shown, Preview) and shown.via == "jupyter"
        port = shown.exposed.host_port
        assert shown.src == shown.base == f"/user/ada/proxy/absolute/{port}/"
        # The server started with the base in its environment, and answers through the exposed port.
        status, body = get(shown.exposed.url + "base.txt")
        assert (status, body) == (200, f"/user/ada/proxy/absolute/{port}/\n".encode())
        with capture_output() as out:
            ip.run_line_magic("sandbox", f"expose 8000 {options}")
            ip.run_line_magic("sandbox", "status")
        assert f"Port 8000 of 'preview-test' is at {shown.exposed.url}" in out.stdout
        assert f"  port 8000: {shown.exposed.url}" in out.stdout
        with pytest.raises(UsageError, match="usage: %sandbox preview PORT"):
            ip.run_line_magic("sandbox", f"preview {options}")
        with pytest.raises(UsageError, match="nothing listens on port 8001 after 'echo no server'"):
            ip.run_line_magic("sandbox", 'preview 8001 -s preview-test -t 1 --run "echo no server"')
    finally:
        ip.run_line_magic("unload_ext", "pydantic_deep")  # stops the sandbox
        find_jupyter_server.cache_clear()


def test_a_dead_channel_ends_its_connections_and_the_next_one_gets_a_new_channel() -> None:
    with DockerSandbox("python-minimal") as box:
        box.execute("head -c 50000000 /dev/zero > big && nohup python3 -m http.server 8000 >/dev/null 2>&1 &")
        url = urllib.parse.urlsplit(box.expose(8000))
        poll_until(lambda: box.listening(8000), "the server listens", timeout=30)
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        connection.request("GET", "/big")
        response = connection.getresponse()
        assert response.status == 200 and response.read(1 << 20)
        # The supervisor dies (as the OOM killer or a `pkill` could do it): the download ends short,
        # rather than hanging.
        kill = ('for p in /proc/[0-9]*; do [ "${p#/proc/}" != $$ ] && grep -qs supervisor.py $p/cmdline && '
                'kill -9 "${p#/proc/}"; done; true')
        assert box._engine().containers.get(box.container_id).exec_run(["sh", "-c", kill]).exit_code == 0
        with pytest.raises(http.client.IncompleteRead):
            response.read()
        connection.close()
        # The next connection re-opens the channel and the server (which outlived it) answers.
        assert poll_until(lambda: get(url.geturl())[0] == 200, "a new connection answers", timeout=30)


def test_a_client_that_speaks_late_to_a_port_nothing_listens_on_gets_the_reason(web: DockerSandbox) -> None:
    import socket

    url = urllib.parse.urlsplit(web.expose(8998))
    with socket.create_connection((url.hostname, url.port), timeout=30) as client:
        # A slow client: the sandbox refuses the stream before the request comes, which still gets
        # a readable 502 (a browser's, a page that retries).
        time.sleep(0.1)
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\n\r\n")
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway") and b"http-equiv='refresh'" in answer
    assert b"nothing listens on port 8998 in the sandbox" in answer
    web.unexpose(8998)
