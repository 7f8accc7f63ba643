"""The image of the egress proxy that host-pattern sandbox networks (``network=["pypi.org"]``) go out through.

The air-gapped Python base plus mitmproxy from PyPI (installed through the host's proxy with the
extra CA, like a runtime's packages) and pydantic_deep's addon (:mod:`pydantic_deep._guest.egress_addon`).
Its tag carries a hash of the addon and the version, so a changed addon is a new image. Built on
first need, or by ``pydantic-deep images bootstrap``.
"""

from __future__ import annotations

import hashlib
from importlib import resources

import docker

from ..engine import labels as label
from ..engine.egress import ADDON_PATH
from .bases import PYTHON, bootstrap_base
from .builder import Progress, build_image, image_exists, image_lock
from .certs import CONTAINER_CA_PATH, resolve_ca_bundle

__all__ = ["MITMPROXY_VERSION", "egress_proxy_tag", "ensure_egress_proxy_image"]

MITMPROXY_VERSION = "11.0.2"  # the last release for Python 3.11, the air-gapped base's
_LABELS = label.managed({label.ROLE: "egress-proxy", label.KIND: "egress-proxy"})


def _addon() -> bytes:
    return resources.files("pydantic_deep._guest").joinpath("egress_addon.py").read_bytes()


def egress_proxy_tag() -> str:
    """The proxy image's tag for this version of the addon and of its recipe."""
    recipe = _dockerfile("") + repr(sorted(_LABELS.items()))
    digest = hashlib.sha256(_addon() + recipe.encode()).hexdigest()[:12]
    return f"pydantic-deep/egress-proxy:{digest}"


def _dockerfile(pip_env: str) -> str:
    return "\n".join([
        f"FROM {PYTHON.tag}",
        *([f"COPY ca-certificates.crt {CONTAINER_CA_PATH}"] if pip_env else []),
        f"RUN {pip_env} python3 -m pip install --no-cache-dir --disable-pip-version-check --progress-bar off "
        f"mitmproxy=={MITMPROXY_VERSION}",
        f"COPY egress_addon.py {ADDON_PATH}",
        # mitmproxy loads a script once its modification time is past 0, which a build context's is not.
        f"RUN touch {ADDON_PATH}",
    ]) + "\n"


def ensure_egress_proxy_image(client: docker.DockerClient, progress: Progress | None = None) -> str:
    """The proxy's image, built if missing; returns its tag."""
    tag = egress_proxy_tag()
    if image_exists(client, tag):
        return tag
    bootstrap_base(client, PYTHON, progress=progress)
    ca_bundle = resolve_ca_bundle()
    files: dict[str, bytes] = {"egress_addon.py": _addon()}
    pip_env = ""
    if ca_bundle is not None:  # only for the build: the proxy checks servers against the sandbox's bundle
        files["ca-certificates.crt"] = ca_bundle.pem
        pip_env = " ".join(f"{name}={value}" for name, value in ca_bundle.environment().items())
    with image_lock(tag):
        if not image_exists(client, tag):
            build_image(client, tag, _dockerfile(pip_env), files=files, progress=progress,
                        labels=_LABELS)
    return tag
