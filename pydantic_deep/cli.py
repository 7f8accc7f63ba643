"""The ``pydantic-deep`` command: engine, images, leftover containers, and the demo."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .engine import labels as label
from .engine.client import docker_client, start_engine
from .engine.containers import owner_gone, remove_container
from .engine.dial_in_dirs import sweep_dial_in_dirs
from .engine.networks import remove_unused_networks
from .engine.swarm import resolve_cluster
from .engine.swarm_networks import remove_unused_swarm_networks
from .errors import InvalidArgumentError, SandboxError
from .images.bases import AIRGAPPED_BASES, bootstrap_base
from .images.certs import resolve_ca_bundle
from .images.egress_proxy import ensure_egress_proxy_image
from .images.netfilter import ensure_netfilter_image
from .images.runtime import ensure_runtime_image
from .runtimes import get_runtime, list_runtimes
from .sandbox.disk_prune import prune_disks
from .sandbox.snapshots import delete_snapshot, list_snapshots, prune_snapshot_files, prune_snapshot_leftovers
from .sessions.naming import is_pool_disk


def _print_line(line: str) -> None:
    print(f"  | {line}", flush=True)


def _engine_start(args: argparse.Namespace) -> None:
    print(start_engine())


def _base_name(name: str) -> str:
    if name not in AIRGAPPED_BASES:
        raise argparse.ArgumentTypeError(f"no base {name!r}; choose from {', '.join(AIRGAPPED_BASES)}")
    return name


def _images_bootstrap(args: argparse.Namespace) -> None:
    client = docker_client()
    for base in [AIRGAPPED_BASES[name] for name in args.bases] or AIRGAPPED_BASES.values():
        started = time.monotonic()
        bootstrap_base(client, base, progress=_print_line if args.verbose else None, rebuild=args.rebuild)
        print(f"{base.tag}: {base.contents} ({time.monotonic() - started:.1f} s)", flush=True)
    started = time.monotonic()
    print(f"{ensure_netfilter_image(client)}: the network rules' helper, for remote engines "
          f"({time.monotonic() - started:.1f} s)", flush=True)
    started = time.monotonic()
    print(f"{ensure_egress_proxy_image(client, _print_line if args.verbose else None)}: the egress proxy, for "
          f"sandboxes with a list of hosts ({time.monotonic() - started:.1f} s)", flush=True)


def _images_build(args: argparse.Namespace) -> None:
    client = docker_client()
    ca_bundle = resolve_ca_bundle()
    for name in args.runtimes or list(list_runtimes()):
        started = time.monotonic()
        tag = ensure_runtime_image(client, get_runtime(name), ca_bundle=ca_bundle, progress=_print_line)
        print(f"{name}: {tag} ({time.monotonic() - started:.1f} s)", flush=True)


def _images_list(args: argparse.Namespace) -> None:
    for image in docker_client().images.list(filters={"label": label.MANAGED_FILTER}):
        size = image.attrs.get("Size", 0) / 1e6
        print(f"{', '.join(image.tags) or image.short_id:60} {size:8.0f} MB")


def _prune(args: argparse.Namespace) -> None:
    """Remove sandbox containers whose owning process on this host is gone (or all, with --all), the
    same sandbox services on the cluster ``$PYDANTIC_DEEP_CLUSTER`` names, what failed snapshots and
    ended forks left, then release the disks (``disk_size``) that no container uses any more, and
    remove the sandbox networks nobody is on, and the host's packet filter rules of those."""
    client = docker_client()
    removed = 0
    # ignore_removed: a killed process's sandboxes remove themselves meanwhile.
    for container in client.containers.list(all=True, filters={"label": label.MANAGED_FILTER}, ignore_removed=True):
        if not args.all and not owner_gone(container.labels):
            continue
        remove_container(client, container.id)
        removed += 1
    images = prune_snapshot_leftovers(everything=args.all)  # after the containers that may use them
    print(f"Removed {removed} container(s)" + (f" and {images} image(s) of failed snapshots and ended forks"
                                                if images else ""))
    print(f"Released {prune_disks(everything=args.all, warm=is_pool_disk)} disk(s)")
    sockets = sweep_dial_in_dirs(client)
    if sockets:
        print(f"Removed {sockets} directory(ies) of sockets that removed containers' supervisors dialled in on")
    files = prune_snapshot_files(everything=args.all)
    if files:
        print(f"Removed {files} disk file(s) of failed or deleted snapshots")
    cluster = resolve_cluster(None)
    if cluster is not None:  # $PYDANTIC_DEEP_CLUSTER: the sandbox services this host's processes left
        services = [service for service in cluster.client.services.list(filters={"label": label.MANAGED_FILTER})
                    if args.all or owner_gone(service.attrs["Spec"].get("Labels") or {})]
        for service in services:
            service.remove()
        print(f"Removed {len(services)} service(s) from the cluster at {cluster.manager}")
        swarm_networks = remove_unused_swarm_networks(cluster)
        if swarm_networks:
            print(f"Removed {swarm_networks} network(s) from the cluster at {cluster.manager}")
    # A remote engine's rules are changed through a helper container (its image built if needed).
    networks = remove_unused_networks(client, helper_image=lambda: ensure_netfilter_image(client))
    print(f"Removed {networks} network(s)")


def _snapshots_list(args: argparse.Namespace) -> None:
    snapshots = list_snapshots()
    for snapshot in snapshots:
        print(f"{snapshot.name:40} {snapshot.runtime.name:20} {snapshot.size_bytes / 1e6:8.1f} MB  "
              f"{snapshot.created.isoformat(timespec='seconds')}  from {snapshot.source}")
    if not snapshots:
        print("No snapshots: take one with sandbox.snapshot(name) or %sandbox snapshot NAME")


def _snapshots_delete(args: argparse.Namespace) -> None:
    for name in args.names:
        delete_snapshot(name)
        print(f"Deleted snapshot {name}")


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    print(run_demo().rstrip())


def _mcp(args: argparse.Namespace) -> None:
    import os

    try:
        from .mcp.server import TOKEN_ENV_VAR, SandboxMCPServer
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in ("mcp", "mcp_types", "starlette", "uvicorn"):
            raise
        raise InvalidArgumentError("pydantic-deep mcp needs the MCP SDK: pip install 'pydantic-deep[mcp]'") from None

    http = None
    if args.http:
        host, _, port = args.http.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgumentError(f"--http takes HOST:PORT (e.g. 127.0.0.1:8000), not {args.http!r}")
        http = (host.strip("[]"), int(port))
        if args.workspace:
            raise InvalidArgumentError("--workspace names the one client of a stdio server; over HTTP each "
                                       "MCP session has a sandbox of its own")
    elif args.token:
        raise InvalidArgumentError("--token is for the HTTP transport: add --http HOST:PORT")
    server = SandboxMCPServer(args.runtime, idle_timeout=args.idle_timeout, ephemeral=args.ephemeral,
                              workspace=args.workspace, name=args.name, max_sessions=args.max_sessions,
                              network=args.network)
    server.run(http=http, token=args.token or os.environ.get(TOKEN_ENV_VAR) or None)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``pydantic-deep`` command."""
    parser = argparse.ArgumentParser(prog="pydantic-deep", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    engine = commands.add_parser("engine", help="the Docker engine").add_subparsers(required=True)
    engine.add_parser("start", help="start a local dockerd unless an engine answers").set_defaults(
        run=_engine_start)

    images = commands.add_parser("images", help="runtime and base images").add_subparsers(required=True)
    bootstrap = images.add_parser("bootstrap", help="build the air-gapped Debian base images (default: all)")
    # No `choices`: Python 3.11's argparse checks an empty `nargs="*"` list against them and refuses it.
    bootstrap.add_argument("bases", nargs="*", metavar="BASE", type=_base_name,
                           help=f"only these: {', '.join(AIRGAPPED_BASES)}")
    bootstrap.add_argument("--rebuild", action="store_true", help="rebuild even if present")
    bootstrap.set_defaults(run=_images_bootstrap)
    build = images.add_parser("build", help="build runtime images (default: all known runtimes)")
    build.add_argument("runtimes", nargs="*", metavar="RUNTIME")
    build.set_defaults(run=_images_build)
    images.add_parser("list", help="list pydantic-deep images").set_defaults(run=_images_list)

    snapshots = commands.add_parser("snapshots", help="snapshots of sandboxes' files").add_subparsers(required=True)
    snapshots.add_parser("list", help="list snapshots").set_defaults(run=_snapshots_list)
    delete = snapshots.add_parser("delete", help="delete snapshots (none of their sandboxes may run)")
    delete.add_argument("names", nargs="+", metavar="NAME")
    delete.set_defaults(run=_snapshots_delete)

    prune = commands.add_parser("prune", help="remove containers (and cluster services) and disks left by "
                                "processes that are gone, what failed snapshots and ended forks left (never a "
                                "named snapshot), and unused sandbox networks with their firewall rules")
    prune.add_argument("--all", action="store_true", help="remove every pydantic-deep container")
    prune.set_defaults(run=_prune)
    commands.add_parser("demo", help="analyse a CSV with pandas inside a sandbox").set_defaults(run=_demo)

    mcp = commands.add_parser("mcp", help="serve the sandbox tools to MCP clients (stdio, or HTTP with --http)")
    mcp.add_argument("--http", metavar="HOST:PORT", help="serve streamable HTTP at http://HOST:PORT/mcp")
    mcp.add_argument("--token", help="bearer token HTTP clients must send (required beyond loopback; "
                                     "default $PYDANTIC_DEEP_MCP_TOKEN)")
    mcp.add_argument("--runtime", default="python-minimal", help="runtime of new sandboxes (default %(default)s)")
    mcp.add_argument("--idle-timeout", type=float, default=1800, metavar="SECONDS",
                     help="stop a sandbox unused this long, keeping its files (0: never; default %(default)g)")
    mcp.add_argument("--ephemeral", action="store_true",
                     help="remove every sandbox and its files when its session ends, a named workspace too")
    mcp.add_argument("--workspace", metavar="NAME",
                     help="stdio: keep the sandbox's files under this name for the next server started with it")
    mcp.add_argument("--name", default="mcp", help="session manager name prefixing containers and volumes")
    mcp.add_argument("--max-sessions", type=int, metavar="N", help="most sandboxes at once (default: no limit)")
    mcp.add_argument("--network", action="store_true", default=None,
                     help="give the sandboxes network access (default: as the runtime says)")
    mcp.set_defaults(run=_mcp)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        args.run(args)
    except SandboxError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
