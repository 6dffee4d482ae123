"""The TLS flags: ``--tls-cert``/``--tls-key`` of the daemons that serve the API
(`berth scheduler`, `berth dev`) and ``--ca-file`` of everything that calls it.

Only click and pathlib here: `berth scheduler` imports this without the client.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

CA_FILE_HELP = "CA bundle (PEM) to trust for https scheduler URLs [default: the system's CAs]."


def server_tls_options(f: F) -> F:
    """``--tls-cert`` and ``--tls-key``; check them with :func:`tls_pair`."""
    f = click.option(
        "--tls-key",
        envvar="BERTH_TLS_KEY",
        show_envvar=True,
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Private key (PEM) of --tls-cert.",
    )(f)
    f = click.option(
        "--tls-cert",
        envvar="BERTH_TLS_CERT",
        show_envvar=True,
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Certificate (PEM, may hold its chain): serve HTTPS only. Needs --tls-key.",
    )(f)
    return f


def tls_pair(cert: Path | None, key: Path | None) -> tuple[Path, Path] | None:
    """Both paths, or None for plain HTTP; one without the other is a usage error."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given, missing = ("--tls-cert", "--tls-key") if key is None else ("--tls-key", "--tls-cert")
        raise click.UsageError(
            f"{given} needs {missing}: give both to serve HTTPS, or neither for plain HTTP"
        )
    return cert, key
