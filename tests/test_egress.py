"""Host allow-lists through the egress proxy, and secret headers that never enter the sandbox (issue 17).

"Outside" is an HTTPS server with a CA of its own, in a network namespace this module makes (a
veth pair from the host, an address from the benchmark range 198.18.0.0/15), answering for three
names the sandboxes' ``hosts=`` pin to its address: the proxy resolves them, the sandbox never
does. The server records each request's headers in a file only the test reads (its answers carry
none, so a secret header could not come back into the sandbox that way). Everything is removed in
``finally``; the conftest checks that no network or packet filter rule is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets as random
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import namespace_behind_veth, poll_until, probe_connections

from pydantic_deep import DockerSandbox, InvalidArgumentError, SandboxStateError, SessionManager
from pydantic_deep.engine.client import docker_client
from pydantic_deep.engine.egress import PROXY_NAME

pytestmark = pytest.mark.egress

ALLOWED, REFUSED, SECRET = "allowed.egress.test", "refused.egress.test", "secret.egress.test"

# GET each URL through the proxy the environment names; one line each: the status, or why not.
FETCH = r"""python3 - {urls} <<'EOF'
import sys, urllib.request, urllib.error
for url in sys.argv[1:]:
    try:
        with urllib.request.urlopen(url, timeout=20) as answer:
            print(url, answer.status, answer.read().decode().strip())
    except urllib.error.HTTPError as exc:
        print(url, exc.code, exc.reason, exc.read().decode(errors="replace").strip().replace("\n", " ")[:300])
    except Exception as exc:
        print(url, "failed", getattr(exc, "reason", exc))
EOF"""
# Prints every file, /proc/*/environ and /proc/*/cmdline holding the needle (given in hex: not itself in an argv).
SEARCH = textwrap.dedent("""
    import os, stat, sys
    needle = bytes.fromhex(sys.argv[1])
    for top, dirs, files in os.walk("/"):
        if top == "/":
            dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
        for name in files:
            path = os.path.join(top, name)
            try:
                if stat.S_ISREG(os.lstat(path).st_mode) and needle in open(path, "rb").read():
                    print(path)
            except OSError:
                pass
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for part in ("environ", "cmdline"):
            try:
                if needle in open(f"/proc/{pid}/{part}", "rb").read():
                    print(f"/proc/{pid}/{part}")
            except OSError:
                pass
""")
SERVER = textwrap.dedent("""
    import http.server, json, ssl, sys
    log = open(sys.argv[3], "a")
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            log.write(json.dumps({"host": self.headers["Host"], "headers": dict(self.headers)}) + "\\n")
            log.flush()
            body = f"hello from {self.headers['Host']}".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 443), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()
""")


@dataclass
class Outside:
    address: str  # the server's, in the namespace
    host_side: str  # the host's address on the veth pair
    ca_file: Path  # the server's CA: what a sandbox's ca_bundle must hold to trust it
    requests: Path  # one JSON line per request the server got

    @property
    def hosts(self) -> dict[str, str]:
        return dict.fromkeys((ALLOWED, REFUSED, SECRET), self.address)

    def seen(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.requests.read_text().splitlines()]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outside]:
    """The HTTPS server in a namespace of its own, with a CA made here."""
    directory = tmp_path_factory.mktemp("egress")
    ca_key, ca_cert, key, csr, cert = (directory / name for name in ("ca.key", "ca.pem", "s.key", "s.csr", "s.pem"))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=egress test CA",
             "-keyout", str(ca_key), "-out", str(ca_cert))
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={ALLOWED}", "-keyout", str(key), "-out", str(csr))
    extensions = directory / "san.cnf"
    extensions.write_text(f"subjectAltName=DNS:{ALLOWED},DNS:{REFUSED},DNS:{SECRET}\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "2", "-extfile", str(extensions), "-out", str(cert))
    ca_key.unlink()
    base = ipaddress.IPv4Network("198.18.0.0/15")[4 * ((os.getpid() + 8191) % 32768)]
    requests = directory / "requests.jsonl"
    requests.touch()
    with namespace_behind_veth("egr", [ipaddress.IPv4Network(f"{base}/30")]) as namespace:
        server = subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, "-c", SERVER, str(cert), str(key),
                                   str(requests)])
        try:
            def answers() -> bool:
                probe = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c",
                                        "import socket; socket.create_connection(('127.0.0.1', 443), timeout=1)"],
                                       capture_output=True)
                return probe.returncode == 0

            poll_until(answers, "the outside HTTPS server listens", timeout=20,
                       give_up=lambda: server.poll() is not None)
            yield Outside(str(base + 2), str(base + 1), ca_cert, requests)
        finally:
            server.kill()
            server.wait()


def fetch(sandbox: DockerSandbox, *urls: str) -> dict[str, str]:
    result = sandbox.execute(FETCH.format(urls=" ".join(urls)), timeout=120)
    outcome = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert set(outcome) == set(urls), result.output
    return outcome


@pytest.fixture(scope="module")
def box(outside: Outside) -> Iterator[DockerSandbox]:
    with DockerSandbox("python-minimal", network=[ALLOWED], hosts=outside.hosts, ca_bundle=outside.ca_file) as box:
        yield box


@pytest.fixture(scope="module", autouse=True)
def the_proxy_forgets_stopped_sandboxes() -> Iterator[None]:
    """After the module: the proxy holds no policy, CA or log of a stopped sandbox."""
    yield
    with contextlib.suppress(Exception):  # no proxy at all is fine too
        listing = docker_client().containers.get(PROXY_NAME).exec_run(
            ["sh", "-c", "ls /run/egress/policies /run/egress/ca /run/egress/log | grep -v '^/\\|^$' || true"])
        assert listing.output.decode().strip() == "", listing.output


def test_an_allowed_host_answers_and_another_is_refused_with_the_reason(box: DockerSandbox) -> None:
    urls = [f"https://{ALLOWED}/", f"https://{REFUSED}/", f"http://{REFUSED}/", f"https://{ALLOWED}:8443/"]
    outcome = fetch(box, *urls)
    assert outcome[urls[0]] == f"200 hello from {ALLOWED}"
    assert f"403 Forbidden by the sandbox's egress policy: {REFUSED}:443 is not in the sandbox's allow-list " \
           f"({ALLOWED})" in outcome[urls[1]]
    assert outcome[urls[2]].startswith(f"403 Forbidden by the sandbox's egress policy: {REFUSED}:80 is not in the "
                                       f"sandbox's allow-list ({ALLOWED})")
    assert f"{ALLOWED}:8443 is not in the sandbox's allow-list" in outcome[urls[3]]  # other ports need ':port'
    log = box.egress_log()
    assert [(e.host, e.port, e.allowed) for e in log[-4:]] == [
        (ALLOWED, 443, True), (REFUSED, 443, False), (REFUSED, 80, False), (ALLOWED, 8443, False)]
    assert "not in the sandbox's allow-list" in log[-1].reason and log[-1].time <= time.time()


def test_direct_connections_dns_the_metadata_address_and_the_host_are_out_of_reach(
        box: DockerSandbox, outside: Outside) -> None:
    gateway = docker_client().api.inspect_network("pydantic-deep-proxied")["IPAM"]["Config"][0]["Gateway"]
    targets = [f"{outside.address}:443", f"{outside.host_side}:22", f"{gateway}:22", f"{gateway}:2375",
               "169.254.169.254:80", "1.1.1.1:443"]
    outcome = probe_connections(box, *targets, timeout=3)
    assert all(result in ("EHOSTUNREACH", "ENETUNREACH", "timeout") for result in outcome.values()), outcome
    dns = box.execute("getent hosts pypi.org; echo exit=$?; python3 -c \"import socket; s = socket.socket(socket."
                      "AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.sendto(b'x', ('8.8.8.8', 53)); s.recv(9)\" "
                      "2>&1 | tail -1", timeout=60)
    assert "exit=2" in dns.stdout and "pypi.org" not in dns.stdout.split("exit=")[0], dns.output
    assert "Error" in dns.stdout, dns.output  # the UDP datagram got no answer
    # Through the proxy: a name that is not a host pattern (an address) is refused, like any other.
    outcome = fetch(box, "http://169.254.169.254/latest/meta-data/", f"https://{outside.address}/")
    assert all(result.startswith("403") or "403" in result for result in outcome.values()), outcome


def test_changing_the_list_on_a_running_sandbox_takes_effect(box: DockerSandbox) -> None:
    box.set_network([REFUSED])
    try:
        outcome = fetch(box, f"https://{ALLOWED}/", f"https://{REFUSED}/")
        assert "403" in outcome[f"https://{ALLOWED}/"]
        assert outcome[f"https://{REFUSED}/"] == f"200 hello from {REFUSED}"
        with pytest.raises(SandboxStateError, match="keeps its kind of network"):
            box.set_network(True)
        with pytest.raises(InvalidArgumentError, match="not a host pattern"):
            box.set_network(["*"])
        assert box.network == (REFUSED,)  # nothing changed
    finally:
        box.set_network([ALLOWED])
    assert "403" in fetch(box, f"https://{REFUSED}/")[f"https://{REFUSED}/"]


def test_a_sandbox_attached_by_another_object_keeps_its_list_and_log(box: DockerSandbox, outside: Outside) -> None:
    """As a session adopted by a later process: the hosts come from the container's label, the
    secrets and pins from the caller, and the proxy gets them again."""
    adopted = DockerSandbox.attach(box.name, hosts=outside.hosts, ca_bundle=outside.ca_file)
    assert adopted.network == (ALLOWED,) and adopted.proxied
    assert fetch(adopted, f"https://{ALLOWED}/")[f"https://{ALLOWED}/"] == f"200 hello from {ALLOWED}"
    assert adopted.egress_log()[-1] == box.egress_log()[-1]
    assert (adopted.egress_log()[-1].host, adopted.egress_log()[-1].allowed) == (ALLOWED, True)


def _container_pids(container_id: str) -> list[int]:
    top = docker_client().api.top(container_id, ps_args="-eo pid")
    return [int(row[0]) for row in top["Processes"]]


def _in_memory(pid: int, needle: bytes) -> bool:
    """Whether ``needle`` is anywhere in the readable memory of process ``pid`` (read from the host)."""
    found = False
    with contextlib.suppress(OSError), open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb") as mem:
        for line in maps:
            span, permissions = line.split()[:2]
            if not permissions.startswith("r"):
                continue
            start, end = (int(part, 16) for part in span.split("-"))
            with contextlib.suppress(OSError, OverflowError, ValueError):
                mem.seek(start)
                if needle in mem.read(end - start):
                    found = True
    return found


def test_a_secret_header_arrives_and_never_enters_the_sandbox(outside: Outside) -> None:
    value = f"Bearer egress-{random.token_hex(16)}"
    with DockerSandbox("python-minimal", network=[ALLOWED, SECRET], hosts=outside.hosts, ca_bundle=outside.ca_file,
                       secrets={SECRET: {"Authorization": value}}) as box:
        outcome = fetch(box, f"https://{SECRET}/", f"https://{ALLOWED}/", f"http://{SECRET}/")
        assert outcome[f"https://{SECRET}/"] == f"200 hello from {SECRET}", outcome[f"https://{SECRET}/"]
        assert outcome[f"https://{ALLOWED}/"] == f"200 hello from {ALLOWED}"
        seen = {(r["host"], r["headers"].get("Authorization")) for r in outside.seen()}  # type: ignore[union-attr]
        assert (SECRET, value) in seen
        assert (ALLOWED, value) not in seen and (f"{SECRET}:80", value) not in seen  # never to others, nor in clear
        needle = value.encode()
        assert box.container_id is not None
        search = docker_client().api.exec_create(
            box.container_id, ["python3", "-c", SEARCH, needle.hex()], user="0:0")  # the value in no argv
        found = docker_client().api.exec_start(search["Id"]).decode()
        assert found.strip() == "", found  # no file, environment or command line holds it
        pids = _container_pids(box.container_id)
        assert pids and not any(_in_memory(pid, needle) for pid in pids)
        assert _in_memory(os.getpid(), needle)  # the search can find it: this process holds it
        for container in (box.container_id, PROXY_NAME):
            inspected = json.dumps(docker_client().api.inspect_container(container))
            assert value.split()[1] not in inspected
        assert value not in repr(box) and value not in box._repr_html_()
        assert all(value not in event.reason for event in box.egress_log())


def test_pip_installs_a_package_from_the_index_through_an_allow_list() -> None:
    with DockerSandbox("python-minimal", network=["pypi.org", "files.pythonhosted.org"]) as box:
        result = box.execute("pip install --no-cache-dir --disable-pip-version-check --target /tmp/pkgs six==1.16.0 "
                             "&& PYTHONPATH=/tmp/pkgs python3 -c 'import six; print(six.__version__)'", timeout=180)
        assert result.exit_code == 0 and result.stdout.strip().endswith("1.16.0"), result.output
        hosts = {event.host for event in box.egress_log() if event.allowed}
        assert hosts == {"pypi.org", "files.pythonhosted.org"}


def test_a_session_manager_gives_each_session_the_list_and_reports_its_egress(outside: Outside) -> None:
    manager = SessionManager(name="test-egress", network=[ALLOWED], hosts=outside.hosts, ca_bundle=outside.ca_file,
                             disk_size=None)

    async def run() -> None:
        sandbox = await manager.get_or_create("alice")
        assert fetch(sandbox, f"https://{ALLOWED}/", f"https://{REFUSED}/")[f"https://{ALLOWED}/"].startswith("200")
        [info] = await manager.list_sessions()
        assert [(event.host, event.allowed) for event in info.egress] == [(ALLOWED, True), (REFUSED, False)]

    try:
        asyncio.run(run())
    finally:
        asyncio.run(manager.shutdown(keep_files=False))


@pytest.mark.parametrize("options, problem", [
    ({"network": "pypi.org"}, "not the string 'pypi.org'"),
    ({"network": ["*"]}, "'\\*' would allow every host"),
    ({"network": ["10.0.0.1"]}, "is an IP address"),
    ({"network": ["pypi.org:http"]}, "no valid port"),
    ({"network": ["pypi.org"], "shared_network": "team"}, "shared_network and allow_private do not apply"),
    ({"network": True, "secrets": {"api.example.com": {"Authorization": "x"}}}, "secrets and hosts are for"),
    ({"network": ["api.example.com"], "secrets": {"api.example.com": {"Bad Header": "x"}}}, "not an HTTP header"),
    ({"network": ["api.example.com"], "secrets": {"api.example.com": {"Authorization": "a\nb"}}}, "not shown here"),
    ({"network": ["api.example.com"], "hosts": {"api.example.com": "api"}}, "not an IPv4 address"),
])
def test_bad_egress_arguments_are_refused_with_the_reason(options: dict[str, object], problem: str) -> None:
    with pytest.raises(InvalidArgumentError, match=problem):
        DockerSandbox("python-minimal", **options)  # type: ignore[arg-type]


def test_the_notebook_magics_set_change_and_show_the_list(outside: Outside) -> None:
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "pydantic_deep")
    magics = shell.magics_manager.registry["SandboxMagics"]
    try:
        shell.run_line_magic("config", "SandboxMagics.runtime = 'python-minimal'")
        shell.run_line_magic("config", f"SandboxMagics.network = '{REFUSED}'")
        shell.run_line_magic("config", "SandboxMagics.session = 'egress'")
        box = magics.sandbox_for()
        assert isinstance(box, DockerSandbox) and box.network == (REFUSED,)
        box.set_network([REFUSED], hosts=outside.hosts)  # the test's names, pinned (not a magic's business)
        with capture_output() as shown:
            shell.run_line_magic("sandbox", f"network {ALLOWED}")
        assert f"only {ALLOWED} (egress proxy)" in shown.stdout
        with capture_output():
            shell.run_cell_magic("sandbox", "--shell --no-raise", FETCH.format(urls=f"https://{ALLOWED}/"))
        with capture_output() as shown:
            shell.run_line_magic("sandbox", "egress")
        assert f"allowed {ALLOWED}:443" in shown.stdout
        with pytest.raises(UsageError, match="keeps its kind of network"):
            shell.run_line_magic("sandbox", "network on")
    finally:
        shell.run_line_magic("unload_ext", "pydantic_deep")
        shell.config.pop("SandboxMagics", None)  # %config lines persist on the shared shell
