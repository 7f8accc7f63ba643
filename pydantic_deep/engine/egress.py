"""The egress proxy: the one way out of sandboxes whose network is a list of host patterns.

One proxy container per engine (``pydantic-deep-egress-proxy``, mitmproxy with pydantic_deep's
addon, :mod:`pydantic_deep._guest.egress_addon`) sits on two networks: the proxied network, an
internal bridge with no route out where host-pattern sandboxes live and the proxy's port is the
one thing they reach (:mod:`pydantic_deep.engine.firewall`), and the egress network, through which
it goes out under the same host rules as any networked sandbox (no private ranges, no metadata
address, not the host). Each sandbox's policy is keyed by its address on the proxied network, so
one proxy serves many sandboxes, each with its own allow-list, secrets, CA and decisions log.

Why one per engine and not one per sandbox: a mitmproxy process takes about 60 MB and a second to
start, which a proxy per sandbox would add to every start and every sandbox's memory; one proxy
costs that once, and a policy change is one file write.

The policy reaches the proxy through ``docker exec`` with the policy on standard input, into a
memory-backed filesystem only the proxy mounts: secret header values are in no label, no command
line, no container inspect data, no log, and on no disk. The proxy runs as ``nobody`` with every
capability dropped and a read-only root filesystem.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, NotFound

from .._cache import cache_dir, write_atomically
from ..errors import SandboxError
from . import labels as label
from .api import Exec, docker_frames
from .networks import PROXIED_NETWORK, PROXY_PORT, ensure_egress_network, ensure_proxied_network

__all__ = ["ADDON_PATH", "PROXY_NAME", "EgressPolicy", "drop_policy", "ensure_egress_proxy", "issue_ca",
           "proxy_environment", "put_policy", "read_log", "sandbox_address"]

PROXY_NAME = "pydantic-deep-egress-proxy"
ADDON_PATH = "/opt/pydantic-deep/egress_addon.py"
_STATE = "/run/egress"
_lock = threading.Lock()


@dataclass(frozen=True)
class EgressPolicy:
    """What one sandbox may reach through the proxy, and what the proxy adds on the way."""

    id: str
    allow: tuple[str, ...]
    secrets: Mapping[str, Mapping[str, str]]
    hosts: Mapping[str, str]
    upstream_ca: str | None  # PEM the proxy checks servers against where it terminates TLS

    def __repr__(self) -> str:  # never the secrets' values
        secrets = {pattern: sorted(headers) for pattern, headers in self.secrets.items()}
        return f"EgressPolicy(id={self.id!r}, allow={list(self.allow)!r}, secret headers={secrets!r})"

    def to_json(self) -> bytes:
        return json.dumps({"id": self.id, "allow": list(self.allow),
                           "secrets": {k: dict(v) for k, v in self.secrets.items()},
                           "hosts": dict(self.hosts), "upstream_ca": self.upstream_ca}).encode()


def proxy_environment() -> dict[str, str]:
    """The variables that send pip, npm, curl, requests and the like through the proxy."""
    url = f"http://{PROXY_NAME}:{PROXY_PORT}"
    no_proxy = "localhost,127.0.0.1"
    return {"HTTP_PROXY": url, "HTTPS_PROXY": url, "http_proxy": url, "https_proxy": url,
            "NO_PROXY": no_proxy, "no_proxy": no_proxy, "npm_config_proxy": url, "npm_config_https_proxy": url}


def ensure_egress_proxy(client: docker.DockerClient, image: Callable[[], str]) -> None:
    """Start the engine's egress proxy (on the egress and the proxied network) unless it runs."""
    with _lock:
        for _ in range(50):
            try:
                attrs = client.api.inspect_container(PROXY_NAME)
            except NotFound:
                attrs = None
            if attrs is not None and attrs["State"]["Running"]:
                ensure_proxied_network(client, PROXY_NAME)
                _wait_listening(client)
                return
            if attrs is not None and attrs["State"]["Status"] not in ("created", "restarting"):
                client.api.remove_container(PROXY_NAME, force=True)  # died: its policies are gone anyway
            if attrs is None and _create(client, image()):
                return
            time.sleep(0.1)  # another process is making it
        raise SandboxError("the egress proxy did not start: see `docker logs` of " + PROXY_NAME)


def _resolv_conf() -> str:
    """A resolv.conf of the host's own DNS servers, for the proxy: Docker's embedded DNS does not
    forward other names for a container on an internal network (the proxied one)."""
    servers: list[str] = []
    for source in ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"):
        with contextlib.suppress(OSError):
            for line in Path(source).read_text().splitlines():
                fields = line.split()
                if fields[:1] == ["nameserver"] and len(fields) > 1 and ":" not in fields[1] \
                        and not fields[1].startswith("127.") and fields[1] not in servers:
                    servers.append(fields[1])
    if not servers:
        raise SandboxError("the egress proxy needs the host's DNS servers, and /etc/resolv.conf names none but "
                           "loopback ones (systemd-resolved's upstream ones are in /run/systemd/resolve/resolv.conf)")
    path = cache_dir("egress") / "resolv.conf"
    text = "".join(f"nameserver {server}\n" for server in servers) + "options ndots:0\n"
    if not path.exists() or path.read_text() != text:
        write_atomically(path, text.encode())
    return str(path)


def _create(client: docker.DockerClient, image: str) -> bool:
    egress = ensure_egress_network(client)
    proxied = ensure_proxied_network(client, PROXY_NAME)
    command = ["mitmdump", "--quiet", "--listen-port", str(PROXY_PORT), "--set", f"confdir={_STATE}/mitmproxy",
               "--set", "flow_detail=0", "--set", "termlog_verbosity=error", "-s", ADDON_PATH]
    try:
        container = client.api.create_container(
            image, command, name=PROXY_NAME, user="65534:65534", environment={"HOME": _STATE},
            labels=label.managed({label.ROLE: "egress-proxy"}),
            host_config=client.api.create_host_config(
                network_mode=egress, read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"],
                tmpfs={_STATE: "rw,noexec,nosuid,nodev,size=64m,mode=0700,uid=65534,gid=65534"},
                binds={_resolv_conf(): {"bind": "/etc/resolv.conf", "mode": "ro"}},
                log_config={"Type": "none"}, mem_limit="512m", pids_limit=256,
                sysctls={"net.ipv6.conf.all.disable_ipv6": "1"}))
    except APIError as exc:
        if exc.status_code == 409:
            return False  # made meanwhile by another process
        raise
    try:
        client.api.connect_container_to_network(container["Id"], proxied)
        client.api.start(container["Id"])
        _wait_listening(client)
    except BaseException:
        client.api.remove_container(container["Id"], force=True)
        raise
    return True


def _wait_listening(client: docker.DockerClient) -> None:
    probe = f"import socket; socket.create_connection(('127.0.0.1', {PROXY_PORT}), timeout=1).close()"
    deadline = time.monotonic() + 30
    while _run(client, ["python3", "-c", probe], check=False)[0] != 0:
        if time.monotonic() > deadline:
            raise SandboxError(f"the egress proxy does not listen on port {PROXY_PORT} after 30 s")
        time.sleep(0.05)


def _run(client: docker.DockerClient, argv: list[str], stdin: bytes | None = None, *,
         check: bool = True) -> tuple[int, str]:
    """Run ``argv`` in the proxy; (exit code, standard output)."""
    execution = Exec(client, PROXY_NAME, argv, stdin=stdin is not None)
    sock = execution.open_socket()
    try:
        if stdin is not None:
            sock.sendall(stdin)
            sock.shutdown(socket.SHUT_WR)
        out, err = bytearray(), bytearray()
        for stream, payload in docker_frames(sock):
            (out if stream == 1 else err).extend(payload)
    finally:
        sock.close()
    code = execution.exit_code
    if check and code:
        raise SandboxError(f"the egress proxy could not {argv[2]}: {err.decode(errors='replace').strip()}")
    return code, out.decode()


def _control(client: docker.DockerClient, *args: str, stdin: bytes | None = None) -> str:
    try:
        return _run(client, ["python3", ADDON_PATH, *args], stdin)[1]
    except NotFound:
        raise SandboxError("the egress proxy is gone (removed from outside): stop the sandbox and start it again "
                           "to start a new one") from None


def issue_ca(client: docker.DockerClient, sandbox_id: str) -> str:
    """The PEM certificate of the sandbox's own CA, made in the proxy (its key never leaves it)."""
    return _control(client, "ca", sandbox_id)


def _addresses(client: docker.DockerClient) -> list[str]:
    containers = client.api.inspect_network(PROXIED_NETWORK).get("Containers") or {}
    return [c["IPv4Address"].split("/")[0] for c in containers.values() if c.get("IPv4Address")]


def put_policy(client: docker.DockerClient, address: str, policy: EgressPolicy) -> None:
    """Give the sandbox at ``address`` (on the proxied network) ``policy``, at once; policies of
    addresses no container holds any more go."""
    _control(client, "put", address, *(a for a in _addresses(client) if a != address), stdin=policy.to_json())


def drop_policy(client: docker.DockerClient, address: str, sandbox_id: str) -> None:
    """Forget the sandbox: its policy, CA and log (a proxy already gone has forgotten it)."""
    try:
        _control(client, "drop", address, sandbox_id)
    except SandboxError:
        pass


def read_log(client: docker.DockerClient, sandbox_id: str) -> list[dict[str, Any]]:
    """The sandbox's decisions, oldest first."""
    return [json.loads(line) for line in _control(client, "log", sandbox_id).splitlines() if line]


def sandbox_address(attrs: Mapping[str, Any]) -> str | None:
    """A container's address on the proxied network (from its inspect data)."""
    network = (attrs.get("NetworkSettings", {}).get("Networks") or {}).get(PROXIED_NETWORK)
    return network.get("IPAddress") or None if network else None
