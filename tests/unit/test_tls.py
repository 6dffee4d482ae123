"""The TLS contexts of common/tls.py and the pairing rule of the daemons' TLS flags."""

from __future__ import annotations

import ssl
from pathlib import Path

import click
import pytest
import trustme

from cli.tls import tls_pair
from common.tls import TLSSetupError, client_context, server_context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost")
    other = ca.issue_cert("example.org")
    paths = {name: root / f"{name}.pem" for name in ("ca", "cert", "key", "other_key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    other.private_key_pem.write_to_path(str(paths["other_key"]))
    return paths


def test_server_context_refuses_anything_older_than_tls_1_2(pki: dict[str, Path]) -> None:
    ctx = server_context(pki["cert"], pki["key"])
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_server_context_names_the_file_it_cannot_read(pki: dict[str, Path]) -> None:
    missing = pki["cert"].parent / "missing.pem"
    with pytest.raises(TLSSetupError, match=f"cannot read the TLS key {missing}"):
        server_context(pki["cert"], missing)


def test_server_context_refuses_a_key_of_another_certificate(pki: dict[str, Path]) -> None:
    with pytest.raises(TLSSetupError, match="not a PEM certificate and its matching private key"):
        server_context(pki["cert"], pki["other_key"])


def test_client_context_checks_host_names_and_trusts_only_the_ca_file(
    pki: dict[str, Path],
) -> None:
    ctx = client_context(pki["ca"])
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert len(ctx.get_ca_certs()) == 1


def test_client_context_refuses_a_file_that_holds_no_certificate(pki: dict[str, Path]) -> None:
    with pytest.raises(TLSSetupError, match="is not a PEM CA bundle"):
        client_context(pki["key"])
    with pytest.raises(TLSSetupError, match="cannot read the CA file"):
        client_context(pki["ca"].parent / "missing.pem")


def test_tls_flags_come_in_pairs(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    assert tls_pair(None, None) is None
    assert tls_pair(cert, key) == (cert, key)
    with pytest.raises(click.UsageError, match="--tls-cert needs --tls-key"):
        tls_pair(cert, None)
    with pytest.raises(click.UsageError, match="--tls-key needs --tls-cert"):
        tls_pair(None, key)
