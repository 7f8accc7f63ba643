"""Extra CA certificates, for HTTPS behind a TLS-inspecting proxy.

pip, npm, cargo and requests inside an image build or a container trust only the image's own CA
list, so behind a corporate or sandbox proxy they fail with ``CERTIFICATE_VERIFY_FAILED``. A
*CA bundle* is one PEM file holding every certificate to trust. It is copied into image builds and
mounted read-only into containers at :data:`CONTAINER_CA_PATH`, and the usual variables point at it.

Which bundle is used (first match wins):

1. the ``ca_bundle=`` argument (a path to a PEM file, or ``False`` for none);
2. ``PYDANTIC_DEEP_CA_BUNDLE``;
3. the host's own ``SSL_CERT_FILE``, ``PIP_CERT`` or ``REQUESTS_CA_BUNDLE``, when set.

A file of only your extra certificates works too: it is appended to the public roots (certifi's
list), because pip and requests replace their default list rather than extend it.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import certifi

from .._cache import cache_dir, write_atomically
from ..errors import InvalidArgumentError

__all__ = ["CONTAINER_CA_PATH", "CaBundle", "bundle_with", "resolve_ca_bundle"]

CONTAINER_CA_PATH = "/etc/pydantic-deep/ca-certificates.crt"
_HOST_VARIABLES = ("PYDANTIC_DEEP_CA_BUNDLE", "SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE")
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
# A bundle with this many certificates is a whole trust store, not a list of extras.
_WHOLE_STORE_MIN = 20


@dataclass(frozen=True)
class CaBundle:
    """A PEM bundle on the host, to be trusted inside builds and containers."""

    source: Path

    @cached_property
    def pem(self) -> bytes:
        """The bundle's PEM text, completed with public roots when it holds only a few extras."""
        try:
            data = self.source.read_bytes()
        except OSError as exc:
            raise InvalidArgumentError(
                f"ca_bundle: cannot read {self.source}: {exc.strerror}; give a readable PEM file, or False for none"
            ) from None
        certificates = _PEM_CERT.findall(data)
        if not certificates:
            raise InvalidArgumentError(
                f"ca_bundle: CA bundle {self.source} holds no PEM certificate; give a PEM file, or False for none")
        if len(certificates) < _WHOLE_STORE_MIN:
            data = Path(certifi.where()).read_bytes().rstrip() + b"\n" + b"\n".join(certificates) + b"\n"
        return data

    @cached_property
    def digest(self) -> str:
        """SHA-256 of the bundle's content, part of an image's content hash."""
        return hashlib.sha256(self.pem).hexdigest()

    def host_file(self) -> Path:
        """A host file holding :attr:`pem`, to bind-mount into containers."""
        path = cache_dir("ca") / f"{self.digest}.crt"
        if not path.exists():
            write_atomically(path, self.pem)
        return path

    @staticmethod
    def environment() -> dict[str, str]:
        """The variables that make pip, requests, OpenSSL, npm/Node.js and cargo use the bundle."""
        return {
            name: CONTAINER_CA_PATH
            for name in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
                         "NODE_EXTRA_CA_CERTS", "NPM_CONFIG_CAFILE", "CARGO_HTTP_CAINFO")
        }


def resolve_ca_bundle(ca_bundle: str | os.PathLike[str] | bool | None = None) -> CaBundle | None:
    """Find the CA bundle to hand into builds and containers.

    Args:
        ca_bundle: A PEM file; ``False`` for none; ``None`` or ``True`` to look at the environment.

    Returns:
        The bundle, or ``None`` when there is none to use.

    Raises:
        InvalidArgumentError: an explicitly named bundle does not exist.
    """
    if ca_bundle is False:
        return None
    if ca_bundle is not None and ca_bundle is not True:
        path = Path(ca_bundle)
        if not path.is_file():
            raise InvalidArgumentError(
                f"ca_bundle: CA bundle {path} does not exist; give a PEM file, or False for none")
        return CaBundle(path.resolve())
    for variable in _HOST_VARIABLES:
        value = os.environ.get(variable)
        if value and Path(value).is_file():
            return CaBundle(Path(value).resolve())
    return None


def bundle_with(ca_bundle: CaBundle | None, extra_pem: str) -> CaBundle:
    """``ca_bundle`` (or the public roots, without one) plus the certificates of ``extra_pem``: for a
    sandbox that also trusts its egress proxy's CA of its own."""
    base = ca_bundle.pem if ca_bundle is not None else Path(certifi.where()).read_bytes()
    data = base.rstrip() + b"\n" + extra_pem.strip().encode() + b"\n"
    path = cache_dir("ca") / f"{hashlib.sha256(data).hexdigest()}.crt"
    if not path.exists():
        write_atomically(path, data)
    return CaBundle(path)
