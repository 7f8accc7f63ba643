"""The ``pydantic-deep`` command: engine, images, leftover containers, and the demo."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .engine.client import docker_client, start_engine
from .engine.containers import owner_gone
from .errors import SandboxError
from .images.bases import AIRGAPPED_BASES, bootstrap_base
from .images.certs import resolve_ca_bundle
from .images.runtime import ensure_runtime_image
from .runtimes import get_runtime, list_runtimes
from .sandbox.disk import prune_disks


def _print_line(line: str) -> None:
    print(f"  | {line}", flush=True)


def _engine_start(args: argparse.Namespace) -> None:
    print(start_engine())


def _images_bootstrap(args: argparse.Namespace) -> None:
    client = docker_client()
    for base in AIRGAPPED_BASES.values():
        started = time.monotonic()
        bootstrap_base(client, base, progress=_print_line if args.verbose else None, rebuild=args.rebuild)
        print(f"{base.tag}: {base.contents} ({time.monotonic() - started:.1f} s)", flush=True)


def _images_build(args: argparse.Namespace) -> None:
    client = docker_client()
    ca_bundle = resolve_ca_bundle()
    for name in args.runtimes or list(list_runtimes()):
        started = time.monotonic()
        tag = ensure_runtime_image(client, get_runtime(name), ca_bundle=ca_bundle, progress=_print_line)
        print(f"{name}: {tag} ({time.monotonic() - started:.1f} s)", flush=True)


def _images_list(args: argparse.Namespace) -> None:
    for image in docker_client().images.list(filters={"label": "pydantic-deep.managed=true"}):
        size = image.attrs.get("Size", 0) / 1e6
        print(f"{', '.join(image.tags) or image.short_id:60} {size:8.0f} MB")


def _prune(args: argparse.Namespace) -> None:
    """Remove sandbox containers whose owning process on this host is gone (or all, with --all),
    then release the disks (``disk_size``) that no container uses any more."""
    client = docker_client()
    removed = 0
    for container in client.containers.list(all=True, filters={"label": "pydantic-deep.managed=true"}):
        if not args.all and not owner_gone(container.labels):
            continue
        container.remove(force=True)
        removed += 1
    print(f"Removed {removed} container(s)")
    print(f"Released {prune_disks(everything=args.all)} disk(s)")


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    print(run_demo().rstrip())


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``pydantic-deep`` command."""
    parser = argparse.ArgumentParser(prog="pydantic-deep", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    engine = commands.add_parser("engine", help="the Docker engine").add_subparsers(required=True)
    engine.add_parser("start", help="start a local dockerd unless an engine answers").set_defaults(
        run=_engine_start)

    images = commands.add_parser("images", help="runtime and base images").add_subparsers(required=True)
    bootstrap = images.add_parser("bootstrap", help="build the air-gapped Debian base images")
    bootstrap.add_argument("--rebuild", action="store_true", help="rebuild even if present")
    bootstrap.set_defaults(run=_images_bootstrap)
    build = images.add_parser("build", help="build runtime images (default: all known runtimes)")
    build.add_argument("runtimes", nargs="*", metavar="RUNTIME")
    build.set_defaults(run=_images_build)
    images.add_parser("list", help="list pydantic-deep images").set_defaults(run=_images_list)

    prune = commands.add_parser("prune", help="remove containers and disks left by processes that are gone")
    prune.add_argument("--all", action="store_true", help="remove every pydantic-deep container")
    prune.set_defaults(run=_prune)
    commands.add_parser("demo", help="analyse a CSV with pandas inside a sandbox").set_defaults(run=_demo)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        args.run(args)
    except SandboxError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
