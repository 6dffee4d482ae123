"""`berth stats [--since 1h] [--step S] [--json]`: the cluster's history as a table.

One row per point of GET /api/v1/stats/history: the queue, jobs running, jobs that
started and ended during the step, and CPU and memory used, allocated and offered.
"""

from __future__ import annotations

from datetime import UTC, datetime

import click

from cli.jobs_cmd import print_json
from cli.live_cmd import EXIT_OK, client_options, run_client
from cli.text import table
from common.client import BerthClient
from common.history_models import History


def _gib(mb: float) -> str:
    return f"{mb / 1024:.1f}"


def history_rows(h: History) -> str:
    """A row per point: time (UTC), queue, jobs, then CPU in cores and memory in GiB,
    each as used/allocated/capacity."""
    day = datetime.fromtimestamp(h.since, UTC).date() != datetime.fromtimestamp(h.until, UTC).date()
    fmt = "%m-%d %H:%M:%S" if day else "%H:%M:%S"
    rows = [
        [
            datetime.fromtimestamp(p.t, UTC).strftime(fmt),
            str(p.queued),
            str(p.running),
            str(p.started),
            str(p.ended),
            f"{p.cpu.used:.1f}/{p.cpu.allocated:g}/{p.cpu.capacity:g}",
            f"{_gib(p.memory_mb.used)}/{_gib(p.memory_mb.allocated)}/{_gib(p.memory_mb.capacity)}",
        ]
        for p in h.points
    ]
    headers = ["TIME (UTC)", "QUEUED", "RUNNING", "STARTED", "ENDED"]
    headers += ["CPU USED/ALLOC/CAP", "MEM GiB USED/ALLOC/CAP"]
    return table(headers, rows, flexible=0)


@click.command()
@client_options
@click.option(
    "--since",
    default="1h",
    show_default=True,
    help="How far back: a duration (15m, 1h, 24h, 7d) or a Unix time.",
)
@click.option(
    "--step",
    type=click.IntRange(min=1),
    default=None,
    help="Seconds per row [default: the stored resolution, at most 720 rows].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
def stats(addr: str, token: str | None, since: str, step: int | None, as_json: bool) -> None:
    """The cluster over time: queue, jobs started and ended, CPU and memory."""

    async def body(client: BerthClient) -> int:
        h = await client.stats_history(since, step)
        if as_json:
            print_json(h)
        elif h.points:
            click.echo(history_rows(h))
        else:
            click.echo("no samples in that range yet")
        return EXIT_OK

    run_client(addr, token, body)
