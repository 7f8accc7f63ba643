"""Runtime images: from a ``RuntimeConfig`` to an image tag the engine can run.

A runtime with ``base_image`` is built once and tagged ``pydantic-deep/<name>:<content hash>``. The
hash covers what changes the image (the base image's id, the package manager, packages, setup
commands, the CA bundle, and this recipe's version) and nothing else: ``description``,
``env_vars``, ``work_dir`` and ``network`` apply when a container starts, so changing them
rebuilds nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shlex
import time

import docker

from ..config import RuntimeConfig
from ..engine import labels as label
from .bases import APT_CLEANUP, resolve_base_image
from .builder import Progress, build_image, image_id, image_lock
from .certs import CONTAINER_CA_PATH, CaBundle

__all__ = ["ensure_runtime_image", "render_dockerfile", "resolve_runtime_image", "runtime_image_tag"]

logger = logging.getLogger("pydantic_deep.images")

# Bump when the Dockerfile recipe changes, so images built by an older recipe are not reused.
RECIPE_VERSION = 3

_INSTALL_COMMANDS = {
    "pip": "python3 -m pip install --no-cache-dir --disable-pip-version-check --progress-bar off {packages}",
    # Global, with /node_modules pointing at the global root: Node.js, TypeScript and bundlers
    # look there from every directory, so `import React` works in any project in the container.
    "npm": 'npm install --global --no-audit --no-fund --loglevel=warn {packages} '
    '&& ln -sfn "$(npm root --global)" /node_modules',
    "apt": "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
    f"{{packages}} && {APT_CLEANUP}",
    # The default CARGO_HOME keeps a source replacement set up in ~/.cargo/config.toml (a mirror,
    # or Debian's vendored crates where crates.io cannot be reached); its download cache goes.
    "cargo": "cargo install --root /usr/local {packages} && rm -rf ~/.cargo/registry ~/.cargo/git",
}


def runtime_image_tag(runtime: RuntimeConfig, base_image_id: str, ca_bundle: CaBundle | None) -> str:
    """The tag of ``runtime``'s image, given the id of the base it is built upon."""
    recipe = {
        "recipe": RECIPE_VERSION,
        "base": base_image_id,
        "package_manager": runtime.package_manager,
        "packages": runtime.packages,
        "setup_commands": runtime.setup_commands,
        "ca_bundle": ca_bundle.digest if ca_bundle else None,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    repository = re.sub(r"[^a-z0-9]+", "-", runtime.name.lower()).strip("-")
    return f"pydantic-deep/{repository}:{digest[:16]}"


def render_dockerfile(runtime: RuntimeConfig, base: str, ca_bundle: CaBundle | None) -> str:
    """The Dockerfile that builds ``runtime`` upon ``base``.

    Every RUN uses the JSON form, so no setup command or package can end a line early or continue
    onto the next one.
    """
    lines = [f"FROM {base}", "USER root"]
    if ca_bundle is not None:
        lines.append(f"COPY ca-certificates.crt {CONTAINER_CA_PATH}")
        lines.append("ENV " + " ".join(f"{name}={value}" for name, value in ca_bundle.environment().items()))
    commands = list(runtime.setup_commands)
    if runtime.packages:
        packages = " ".join(shlex.quote(package) for package in runtime.packages)
        commands.append(_INSTALL_COMMANDS[runtime.package_manager].format(packages=packages))
    lines += [f"RUN {json.dumps(['/bin/sh', '-c', command])}" for command in commands]
    return "\n".join(lines) + "\n"


def ensure_runtime_image(
    client: docker.DockerClient,
    runtime: RuntimeConfig,
    *,
    ca_bundle: CaBundle | None = None,
    progress: Progress | None = None,
) -> str:
    """Return the tag of an image for ``runtime``, building it first when needed.

    A pre-built ``image`` is used as is (pulled, or replaced by its air-gapped stand-in). A
    ``base_image`` runtime is built unless an image with the same content hash exists and
    ``cache_image`` is set; concurrent callers (threads or processes) wait for one build.

    Raises:
        ImageNotAvailableError: the (base) image cannot be had.
        ImageBuildError: the build failed; nothing was tagged.
    """
    return resolve_runtime_image(client, runtime, ca_bundle=ca_bundle, progress=progress)[0]


def resolve_runtime_image(
    client: docker.DockerClient,
    runtime: RuntimeConfig,
    *,
    ca_bundle: CaBundle | None = None,
    progress: Progress | None = None,
) -> tuple[str, str]:
    """:func:`ensure_runtime_image`, and the id of the image it returns: each image is looked up
    once (a start's only engine calls before its container's are these)."""
    if runtime.image is not None:
        return resolve_base_image(client, runtime.image, progress=progress)
    assert runtime.base_image is not None
    base, base_id = resolve_base_image(client, runtime.base_image, progress=progress)
    tag = runtime_image_tag(runtime, base_id, ca_bundle)
    if runtime.cache_image and (found := image_id(client, tag)) is not None:
        return tag, found
    with image_lock(tag):
        if runtime.cache_image and (found := image_id(client, tag)) is not None:
            return tag, found  # built by whoever held the lock before us
        logger.info("Building image %s for runtime %r (once; later starts reuse it)", tag, runtime.name)
        started = time.monotonic()
        build_image(
            client, tag, render_dockerfile(runtime, base, ca_bundle),
            files={"ca-certificates.crt": ca_bundle.pem} if ca_bundle else None,
            labels=label.managed({label.RUNTIME: runtime.name}),
            progress=progress, nocache=not runtime.cache_image,
        )
        logger.info("Built %s in %.1f s", tag, time.monotonic() - started)
    return tag, str(client.images.get(tag).id)
