"""`berth node forget` (admin): let a node's name be registered again.

An agent re-registers its name with the node token it keeps in its state dir; the join
token alone never takes over a registered name. When an agent lost its state dir for
good (a rebuilt host), an admin forgets the old node and the new agent registers anew.
"""

from __future__ import annotations

import click

from cli.live_cmd import EXIT_OK, client_options, run_client
from common.client import BerthClient


@click.group()
def node() -> None:
    """Manage registered nodes (admin)."""


@node.command()
@client_options
@click.argument("name", metavar="NODE")
@click.option(
    "--force",
    is_flag=True,
    help="Also when it runs jobs: they are lost and retried elsewhere.",
)
def forget(addr: str, token: str | None, name: str, force: bool) -> None:
    """Forget a node: its token stops working and its name may be registered again.

    NODE is a node id or name. Refused while the node runs jobs, unless --force."""

    async def body(client: BerthClient) -> int:
        listing = await client.list_nodes()
        node_id = {n.name: n.id for n in listing.nodes}.get(name, name)
        gone = await client.forget_node(node_id, force=force)
        lost = gone["lost_jobs"]
        click.echo(
            f"forgot node {gone['name']} ({gone['id']})"
            + (f"; its jobs {', '.join(lost)} were lost and will be retried" if lost else "")
        )
        return EXIT_OK

    run_client(addr, token, body)
