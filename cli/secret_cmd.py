"""`berth secret set | list | delete`: stored secrets that jobs name in their env.

A value is read from stdin (one trailing line break dropped, so that
``echo VALUE | berth secret set NAME`` stores VALUE; typed without echo at a terminal)
or, exactly as it is, from ``--from-file``; it is never printed, listed or sent back.
A job uses a secret with ``{"secret": NAME}`` as an env value (``berth run
--secret-env VAR=NAME``).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from cli.jobs_cmd import print_json
from cli.live_cmd import EXIT_OK, CommandError, client_options, run_client
from cli.text import table
from common.client import BerthClient
from common.secret_models import MAX_SECRET_BYTES, SecretInfo

#: the usage error's exit code (as click's)
_EXIT_USAGE = 2


def _when(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def secret_rows(secrets: list[SecretInfo]) -> str:
    rows = [
        [s.name, s.owner, "yes" if s.shared else "no", _when(s.created_at), _when(s.updated_at)]
        for s in secrets
    ]
    return table(["NAME", "OWNER", "SHARED", "CREATED", "UPDATED"], rows, flexible=0)


def read_value(from_file: Path | None) -> str:
    """The value to store: the file's bytes as they are, or stdin less one trailing
    line break."""
    if from_file is not None:
        raw = from_file.read_bytes()
    elif sys.stdin.isatty():
        raw = click.prompt("value", hide_input=True, err=True).encode()
    else:
        raw = sys.stdin.buffer.read().removesuffix(b"\n").removesuffix(b"\r")
    if not raw:
        raise CommandError("the value is empty", _EXIT_USAGE)
    if len(raw) > MAX_SECRET_BYTES:
        raise CommandError(f"the value is over {MAX_SECRET_BYTES} bytes", _EXIT_USAGE)
    try:
        value = raw.decode()
    except UnicodeDecodeError:
        raise CommandError("the value is not UTF-8 text", _EXIT_USAGE) from None
    if "\x00" in value:
        raise CommandError("the value holds a NUL byte", _EXIT_USAGE)
    return value


@click.group()
def secret() -> None:
    """Stored secrets: values jobs get in their env, encrypted at rest, masked in logs."""


@secret.command(name="set")
@client_options
@click.argument("name")
@click.option(
    "--from-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Read the value from this file, exactly as it is (default: stdin).",
)
@click.option(
    "--shared/--private",
    default=None,
    help="Admin: every token's jobs may use it, or only its owner's.  [default: a new "
    "secret is private, an existing one stays as it is]",
)
def set_(
    addr: str, token: str | None, name: str, from_file: Path | None, shared: bool | None
) -> None:
    """Create secret NAME, or give your own NAME a new value (read from stdin)."""
    try:
        value = read_value(from_file)
    except CommandError as e:
        click.echo(f"berth: {e.message}", err=True)
        sys.exit(e.code)

    async def body(client: BerthClient) -> int:
        made = await client.set_secret(name, value, shared=shared)
        click.echo(f"{made.name}: set{' (shared)' if made.shared else ''}")
        return EXIT_OK

    run_client(addr, token, body)


@secret.command(name="list")
@client_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(addr: str, token: str | None, as_json: bool) -> None:
    """The secrets this token may see: names, owners, times (never values)."""

    async def body(client: BerthClient) -> int:
        listing = await client.list_secrets()
        if as_json:
            print_json(listing)
        else:
            click.echo(secret_rows(listing.secrets))
        return EXIT_OK

    run_client(addr, token, body)


@secret.command()
@client_options
@click.argument("name")
def delete(addr: str, token: str | None, name: str) -> None:
    """Delete secret NAME; queued jobs that need it fail (running ones go on)."""

    async def body(client: BerthClient) -> int:
        gone = await client.delete_secret(name)
        click.echo(f"deleted {gone.secret.name}")
        if gone.failed_jobs:
            click.echo(
                f"failed {len(gone.failed_jobs)} queued jobs that needed it: "
                + " ".join(gone.failed_jobs),
                err=True,
            )
        return EXIT_OK

    run_client(addr, token, body)
