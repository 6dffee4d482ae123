"""TLS contexts: the scheduler's server context and the one client context of the
agent and the CLI, each built in one place.

TLS is optional. The scheduler serves HTTPS only when it is given a certificate and
its key; clients trust the system's CA store, or only the CA bundle of ``--ca-file``
for schedulers whose certificates a private CA signed.
"""

from __future__ import annotations

import ssl
from pathlib import Path

#: the oldest protocol either side accepts (TLS 1.0 and 1.1 are deprecated, RFC 8996)
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TLSSetupError(Exception):
    """A certificate, key or CA file that cannot be used; the message says which and why."""


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for ``cert`` (PEM, may hold the chain) and its private ``key``."""
    for what, path in (("certificate", cert), ("key", key)):
        try:
            path.read_bytes()
        except OSError as e:
            raise TLSSetupError(f"cannot read the TLS {what} {path}: {e.strerror or e}") from e
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MINIMUM_VERSION
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        # OpenSSL's reason is often only "PEM lib"; name the files and what they must be.
        why = f" ({e.reason})" if e.reason and e.reason != "PEM lib" else ""
        raise TLSSetupError(
            f"{cert} and {key} are not a PEM certificate and its matching private key{why}"
        ) from e
    return ctx


def client_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """The context every client uses for https URLs: hostname checked, TLS >= 1.2.

    Without ``ca_file`` the system's trust store is used; with it, only that bundle.
    """
    try:
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except ssl.SSLError as e:  # before OSError, of which it is a subclass
        why = f" ({e.reason})" if e.reason else ""
        raise TLSSetupError(f"{ca_file} is not a PEM CA bundle{why}") from e
    except OSError as e:
        raise TLSSetupError(f"cannot read the CA file {ca_file}: {e.strerror or e}") from e
    ctx.minimum_version = MINIMUM_VERSION
    if ca_file:
        # A certificate the operator names is a trust anchor even when it is not a
        # self-signed root (a server's own certificate given to `berth dev`'s agent);
        # Python 3.13 sets this flag by default.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx
