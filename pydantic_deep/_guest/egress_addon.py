"""The egress proxy's mitmproxy addon and its control commands: runs inside the proxy container.

Not imported by pydantic_deep itself: it is copied into the proxy's image
(:mod:`pydantic_deep.images.egress_proxy`), where mitmproxy is installed. One proxy serves every
host-pattern sandbox of an engine; each sandbox's policy is a file named by its address on the
proxied network, so the client's source address picks the policy (no policy: everything refused).

State lives in ``/run/egress``, a memory-backed filesystem only the proxy mounts (secret header
values never reach a disk, a label, a log or a command line):

- ``policies/<address>.json``: ``{"id", "allow", "secrets", "hosts", "upstream_ca"}``, written
  atomically by ``put`` (read from standard input), removed by ``drop``;
- ``ca/<id>/``: the sandbox's own CA (mitmproxy's cert store), made by ``ca`` (which prints its
  certificate): the proxy terminates TLS with it for the hosts that get secret headers;
- ``log/<id>.jsonl``: the decisions, one JSON line each (time, host, port, allowed, reason),
  printed by ``log``.

Patterns: ``name`` or ``*.name`` (any name below it, not ``name`` itself), with ``:port`` or the
default ports 80 and 443.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

STATE = Path("/run/egress")
POLICIES, CAS, LOGS = STATE / "policies", STATE / "ca", STATE / "log"
DEFAULT_PORTS = (80, 443)
LOG_LIMIT = 512 * 1024  # bytes of decisions kept per sandbox; the older half goes past it


def matches(pattern: str, host: str, port: int) -> bool:
    name, _, wanted_port = pattern.partition(":")
    if port not in ((int(wanted_port),) if wanted_port else DEFAULT_PORTS):
        return False
    host = host.lower().rstrip(".")
    if name.startswith("*."):
        return host.endswith(name[1:])
    return host == name


def allowed(policy: dict[str, Any] | None, host: str, port: int) -> str | None:
    """Why a request to ``host:port`` is refused, or ``None`` when it is allowed."""
    if policy is None:
        return "this address has no egress policy"
    if not any(matches(pattern, host, port) for pattern in policy["allow"]):
        listed = ", ".join(policy["allow"]) or "nothing"
        return f"{host}:{port} is not in the sandbox's allow-list ({listed})"
    return None


def secret_headers(policy: dict[str, Any] | None, host: str, port: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    for pattern, values in (policy or {}).get("secrets", {}).items():
        if matches(pattern, host, port):
            headers.update(values)
    return headers


def record(policy: dict[str, Any], host: str, port: int, refusal: str | None, how: str) -> None:
    path = LOGS / f"{policy['id']}.jsonl"
    line = json.dumps({"time": time.time(), "host": host, "port": port, "allowed": refusal is None,
                       "reason": refusal or "", "how": how})
    with open(path, "a") as log:
        log.write(line + "\n")
        if log.tell() > LOG_LIMIT:
            kept = path.read_bytes()[-LOG_LIMIT // 2:]
            path.write_bytes(kept[kept.find(b"\n") + 1:])


# -- the addon (mitmdump -s this file) ----------------------------------------------------------

try:
    from mitmproxy import certs, ctx, http, tls
    from mitmproxy.proxy.server_hooks import ServerConnectionHookData
    from OpenSSL import SSL
except ImportError:  # the control commands need none of it
    pass
else:
    def _address(client: Any) -> str:
        return str(client.peername[0]).removeprefix("::ffff:")

    class Egress:
        def __init__(self) -> None:
            self._policies: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}
            self._stores: dict[str, Any] = {}
            self._tunnels: dict[str, tuple[str, int]] = {}  # client id: its CONNECT's host and port

        def policy(self, client: Any) -> dict[str, Any] | None:
            address = _address(client)
            path = POLICIES / f"{address}.json"
            try:
                stat = path.stat()
            except FileNotFoundError:
                self._policies.pop(address, None)
                return None
            key = (stat.st_mtime_ns, stat.st_ino)
            cached = self._policies.get(address)
            if cached is None or cached[0] != key:
                cached = self._policies[address] = (key, json.loads(path.read_text()))
            return cached[1]

        def _refuse(self, flow: http.HTTPFlow, reason: str) -> None:
            body = f"pydantic-deep egress proxy: refused: {reason}\n"
            flow.response = http.Response.make(403, body, {"content-type": "text/plain", "x-egress-refused": reason})
            flow.response.reason = f"Forbidden by the sandbox's egress policy: {reason}"[:200]

        def http_connect(self, flow: http.HTTPFlow) -> None:
            policy = self.policy(flow.client_conn)
            host, port = flow.request.host, flow.request.port
            refusal = allowed(policy, host, port)
            if policy is not None:
                record(policy, host, port, refusal, "CONNECT")
            if refusal is not None:
                self._refuse(flow, refusal)
                return
            self._tunnels[flow.client_conn.id] = (host, port)

        def requestheaders(self, flow: http.HTTPFlow) -> None:
            policy = self.policy(flow.client_conn)
            host, port = flow.request.pretty_host, flow.request.port
            tunnel = self._tunnels.get(flow.client_conn.id)
            if tunnel is not None:  # inside a tunnel whose TLS the proxy terminates (a secret's host)
                if host.lower() != tunnel[0].lower():
                    self._refuse(flow, f"Host {host} differs from the tunnel's {tunnel[0]}")
                    return
            else:  # a plain HTTP request through the proxy
                refusal = allowed(policy, host, port)
                if policy is not None:
                    record(policy, host, port, refusal, flow.request.method)
                if refusal is not None:
                    self._refuse(flow, refusal)
                    return
            if flow.request.scheme == "https":  # secrets never travel in clear text
                for name, value in secret_headers(policy, host, port).items():
                    flow.request.headers[name] = value

        def tls_clienthello(self, data: tls.ClientHelloData) -> None:
            policy = self.policy(data.context.client)
            tunnel = self._tunnels.get(data.context.client.id)
            sni = data.client_hello.sni
            if tunnel is None or policy is None:
                return  # not a tunnel this addon admitted: tls_start_client refuses it
            if sni is not None and sni.lower() != tunnel[0].lower():
                refusal = allowed(policy, sni, tunnel[1])
                record(policy, sni, tunnel[1], refusal or None, "TLS SNI")
                if refusal is not None:
                    return  # intercepted, then refused by tls_start_client
            data.ignore_connection = not secret_headers(policy, sni or tunnel[0], tunnel[1])

        def tls_start_client(self, data: tls.TlsData) -> None:
            policy = self.policy(data.context.client)
            tunnel = self._tunnels.get(data.context.client.id)
            sni = data.context.client.sni or (tunnel[0] if tunnel else None)
            if policy is None or tunnel is None or sni is None or allowed(policy, sni, tunnel[1]) is not None:
                data.ssl_conn = SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD))  # no certificate: fails
                data.ssl_conn.set_accept_state()
                return
            # mitmproxy's own TLS set-up, with this sandbox's CA instead of the proxy's.
            config = ctx.master.addons.get("tlsconfig")
            store = self._stores.get(policy["id"])
            if store is None:
                store = self._stores[policy["id"]] = certs.CertStore.from_store(CAS / policy["id"], "mitmproxy", 2048)
            saved, config.certstore, data.ssl_conn = config.certstore, store, None
            try:
                config.tls_start_client(data)
            finally:
                config.certstore = saved

        def tls_start_server(self, data: tls.TlsData) -> None:
            policy = self.policy(data.context.client)
            if policy is None or not policy.get("upstream_ca"):
                return
            # Upstream servers are checked against what the sandbox itself trusts (its ca_bundle):
            # mitmproxy's own set-up, with that bundle as the trusted CAs (hooks run one at a time).
            ca_file = CAS / policy["id"] / "upstream.pem"
            if not ca_file.exists():
                ca_file.write_text(policy["upstream_ca"])
            option = ctx.options._options["ssl_verify_upstream_trusted_ca"]
            saved, option.value, data.ssl_conn = option.value, str(ca_file), None
            try:
                ctx.master.addons.get("tlsconfig").tls_start_server(data)
            finally:
                option.value = saved

        def server_connect(self, data: ServerConnectionHookData) -> None:
            policy = self.policy(data.client)
            if policy is None or data.server.address is None:
                return
            host, port = data.server.address
            pinned = policy.get("hosts", {}).get(str(host).lower())
            if pinned is not None:
                data.server.address = (pinned, port)

        def client_disconnected(self, client: Any) -> None:
            self._tunnels.pop(client.id, None)

    addons = [Egress()]


# -- the control commands (docker exec ... python3 egress_addon.py COMMAND) -----------------------

def _write_atomically(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(data)
    tmp.replace(path)


def main(argv: list[str]) -> int:
    for directory in (POLICIES, CAS, LOGS):
        directory.mkdir(parents=True, exist_ok=True)
    command, *args = argv
    if command == "ca":  # ca ID: make the sandbox's CA if missing, print its certificate
        from mitmproxy import certs as certstore
        certstore.CertStore.from_store(CAS / args[0], "mitmproxy", 2048)
        sys.stdout.write((CAS / args[0] / "mitmproxy-ca-cert.pem").read_text())
    elif command == "put":  # put ADDRESS [LIVE_ADDRESS...]: the policy from stdin; others not live go
        policy = json.loads(sys.stdin.read())
        _write_atomically(POLICIES / f"{args[0]}.json", json.dumps(policy))
        (CAS / policy["id"] / "upstream.pem").unlink(missing_ok=True)
        live = set(args)
        for stale in POLICIES.glob("*.json"):
            if stale.stem not in live:
                stale.unlink(missing_ok=True)
    elif command == "drop":  # drop ADDRESS ID: the sandbox is gone
        (POLICIES / f"{args[0]}.json").unlink(missing_ok=True)
        for path in (LOGS / f"{args[1]}.jsonl", *sorted((CAS / args[1]).glob("*"))):
            path.unlink(missing_ok=True)
        if (CAS / args[1]).exists():
            (CAS / args[1]).rmdir()
    elif command == "log":  # log ID
        path = LOGS / f"{args[0]}.jsonl"
        sys.stdout.write(path.read_text() if path.exists() else "")
    else:
        print(f"unknown command {command!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
