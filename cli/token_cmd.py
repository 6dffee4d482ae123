"""`berth token create | list | revoke | rotate-join` and `berth audit` (admin only).

A token's secret is printed once, when it is created; the scheduler keeps only its
hash. Tokens are named by their id (a prefix of that hash) or by their name.
"""

from __future__ import annotations

from typing import Any

import click

from cli.jobs_cmd import print_json
from cli.live_cmd import EXIT_OK, client_options, run_client
from cli.text import table
from common.client import BerthClient
from common.models import AuditEntry, OwnerStatus, Quota, TokenInfo


def _token_rows(tokens: list[TokenInfo]) -> str:
    rows = [
        [
            t.id,
            t.name,
            t.role + (" (all jobs)" if t.all_jobs else ""),
            (t.created_at or "-")[:19],
            t.created_by or "-",
            (t.revoked_at or "")[:19],
        ]
        for t in tokens
    ]
    return table(["ID", "NAME", "ROLE", "CREATED", "BY", "REVOKED"], rows, flexible=1)


def _audit_rows(entries: list[AuditEntry]) -> str:
    rows = [
        [
            str(e.id),
            e.at[:23],
            f"{e.actor} ({e.role})",
            e.action,
            e.target or "-",
            ", ".join(f"{k}={v}" for k, v in (e.details or {}).items()),
        ]
        for e in entries
    ]
    return table(["ID", "AT", "WHO", "ACTION", "TARGET", "DETAILS"], rows, flexible=5)


def _owner_rows(owners: list[OwnerStatus]) -> str:
    def limit(value: float | int | None) -> str:
        return "-" if value is None else f"{value:g}"

    rows = [
        [
            o.name or "-",
            f"{o.running_cpu:g}/{limit(o.quota.max_running_cpu)}",
            f"{o.running_memory_mb}/{limit(o.quota.max_running_memory_mb)}",
            f"{o.running_jobs}/{limit(o.quota.max_running_jobs)}",
            str(o.queued_jobs),
            f"{o.usage_cpu_s:.0f}",
        ]
        for o in owners
    ]
    headers = ["OWNER", "CPU RUN/MAX", "MIB RUN/MAX", "JOBS RUN/MAX", "QUEUED", "USAGE CPU-S"]
    return table(headers, rows, flexible=0)


def quota_options(func: Any) -> Any:
    """--max-running-cpu, --max-running-memory-mb and --max-running-jobs."""
    for option in reversed(
        [
            click.option(
                "--max-running-cpu",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                help="Quota: CPUs its jobs may take at once.",
            ),
            click.option(
                "--max-running-memory-mb",
                type=click.IntRange(min=1),
                default=None,
                help="Quota: MiB of memory its jobs may take at once.",
            ),
            click.option(
                "--max-running-jobs",
                type=click.IntRange(min=1),
                default=None,
                help="Quota: jobs it may have assigned or running at once.",
            ),
        ]
    ):
        func = option(func)
    return func


@click.group()
def token() -> None:
    """Create, list and revoke API tokens; set their quotas; rotate the join token."""


@token.command()
@client_options
@click.option(
    "--role",
    type=click.Choice(["admin", "submit", "read"]),
    required=True,
    help="admin: everything; submit: submit and manage its own jobs; read: look only.",
)
@click.option("--name", required=True, help="Who the token is for; shown in the audit log.")
@click.option("--all-jobs", is_flag=True, help="A submit token that may see and act on every job.")
@quota_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def create(
    addr: str,
    token: str | None,
    role: str,
    name: str,
    all_jobs: bool,
    max_running_cpu: float | None,
    max_running_memory_mb: int | None,
    max_running_jobs: int | None,
    as_json: bool,
) -> None:
    """Create a token and print its secret (shown this once only)."""
    quota = Quota(max_running_cpu, max_running_memory_mb, max_running_jobs)

    async def body(client: BerthClient) -> int:
        made = await client.create_token(role, name, all_jobs=all_jobs, quota=quota)
        if as_json:
            print_json(made)
        else:
            click.echo(made.token)
            click.echo(f"created {made.role} token {made.id} named {made.name!r}", err=True)
        return EXIT_OK

    run_client(addr, token, body)


@token.command(name="quota")
@client_options
@click.argument("name")
@quota_options
@click.option("--clear", is_flag=True, help="Lift every limit of the quota.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def quota_(
    addr: str,
    token: str | None,
    name: str,
    max_running_cpu: float | None,
    max_running_memory_mb: int | None,
    max_running_jobs: int | None,
    clear: bool,
    as_json: bool,
) -> None:
    """Set what the jobs of the tokens named NAME may take at once (admin); the limits
    not given are lifted. Without limits or --clear, show it."""
    quota = Quota(max_running_cpu, max_running_memory_mb, max_running_jobs)

    async def body(client: BerthClient) -> int:
        if quota or clear:
            shown = [await client.set_quota(name, quota)]
        else:
            shown = [o for o in (await client.list_owners()).owners if o.name == name]
        if as_json:
            print_json(shown)
        else:
            click.echo(_owner_rows(shown))
        return EXIT_OK

    run_client(addr, token, body)


@token.command()
@client_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def owners(addr: str, token: str | None, as_json: bool) -> None:
    """Every owner of jobs: quota, what runs, what waits, fair-share usage."""

    async def body(client: BerthClient) -> int:
        listing = await client.list_owners()
        if as_json:
            print_json(listing.owners)
        else:
            click.echo(_owner_rows(listing.owners))
        return EXIT_OK

    run_client(addr, token, body)


@token.command(name="list")
@client_options
@click.option("--revoked", is_flag=True, help="Include revoked tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(addr: str, token: str | None, revoked: bool, as_json: bool) -> None:
    """People's tokens and the join token (node tokens show on their nodes)."""

    async def body(client: BerthClient) -> int:
        listing = await client.list_tokens(revoked=revoked)
        if as_json:
            print_json(listing.tokens)
        else:
            click.echo(_token_rows(listing.tokens))
        return EXIT_OK

    run_client(addr, token, body)


@token.command()
@client_options
@click.argument("token_id", metavar="ID_OR_NAME")
def revoke(addr: str, token: str | None, token_id: str) -> None:
    """Revoke a token: its requests and dashboard sessions stop working at once."""

    async def body(client: BerthClient) -> int:
        gone = await client.revoke_token(token_id)
        click.echo(f"revoked {gone.role} token {gone.id} named {gone.name!r}")
        return EXIT_OK

    run_client(addr, token, body)


@token.command(name="rotate-join")
@client_options
def rotate_join(addr: str, token: str | None) -> None:
    """Replace the join token and print the new one. Registered agents keep working;
    new agents need the new token. The scheduler's join.token file is rewritten."""

    async def body(client: BerthClient) -> int:
        new = await client.rotate_join_token()
        click.echo(new.token)
        click.echo(f"the join token is now {new.id}; the previous one is revoked", err=True)
        return EXIT_OK

    run_client(addr, token, body)


@click.command()
@client_options
@click.option("--actor", default=None, help="Only what this token name did.")
@click.option("--action", default=None, help="Only this action, e.g. job.cancel.")
@click.option("--target", default=None, help="Only about this job, node or token id.")
@click.option("--after", type=click.IntRange(0), default=0, help="Entries after this id.")
@click.option("--limit", type=click.IntRange(1, 5000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def audit(
    addr: str,
    token: str | None,
    actor: str | None,
    action: str | None,
    target: str | None,
    after: int,
    limit: int,
    as_json: bool,
) -> None:
    """Who submitted, cancelled, retried, drained, created or revoked what, and when."""

    async def body(client: BerthClient) -> int:
        page = await client.audit(
            after=after, limit=limit, actor=actor, action=action, target=target
        )
        if as_json:
            print_json(page.entries)
        else:
            click.echo(_audit_rows(page.entries))
        return EXIT_OK

    run_client(addr, token, body)
