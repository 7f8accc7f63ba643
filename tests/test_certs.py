"""CA bundles: which one is picked, and a file of extra certificates completed with public roots."""

from __future__ import annotations

from pathlib import Path

import certifi
import pytest

from pydantic_deep.images.certs import resolve_ca_bundle

PUBLIC_ROOTS = Path(certifi.where()).read_text()
CERT = PUBLIC_ROOTS[PUBLIC_ROOTS.index("-----BEGIN"):PUBLIC_ROOTS.index("-----END CERTIFICATE-----")] + (
    "-----END CERTIFICATE-----\n")


def test_explicit_bundle_wins_and_false_means_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "corp.pem"
    mine.write_text(CERT)
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    bundle = resolve_ca_bundle(mine)
    assert bundle is not None and bundle.source == mine
    assert resolve_ca_bundle(False) is None
    with pytest.raises(ValueError, match="does not exist"):
        resolve_ca_bundle(tmp_path / "missing.pem")


def test_host_variables_are_picked_up_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PYDANTIC_DEEP_CA_BUNDLE", "SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    assert resolve_ca_bundle() is None
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    assert resolve_ca_bundle().source == Path(certifi.where()).resolve()  # type: ignore[union-attr]
    extra = tmp_path / "extra.pem"
    extra.write_text(CERT)
    monkeypatch.setenv("PYDANTIC_DEEP_CA_BUNDLE", str(extra))
    assert resolve_ca_bundle().source == extra  # type: ignore[union-attr]


def test_extra_certificates_are_completed_with_public_roots(tmp_path: Path) -> None:
    extra = tmp_path / "extra.pem"
    extra.write_text(CERT)
    bundle = resolve_ca_bundle(extra)
    assert bundle is not None
    assert bundle.pem.startswith(Path(certifi.where()).read_bytes().rstrip())
    assert bundle.pem.rstrip().endswith(CERT.strip().encode())
    assert bundle.host_file().read_bytes() == bundle.pem


def test_a_file_without_certificates_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ValueError, match="holds no PEM certificate"):
        _ = resolve_ca_bundle(junk).pem  # type: ignore[union-attr]
