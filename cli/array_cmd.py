"""`berth array show|cancel|retry|pause|resume ID`: job arrays, and the ``--array``
syntax of `berth submit`.

An array is submitted with ``berth submit --array 0-99%10 IMAGE -- CMD...`` (Slurm's
syntax: indexes 0-99, so 100 tasks, at most 10 of them assigned or running at once; a
plain count such as ``--array 100`` is 0-99 too). Each task finds its index in
``$BERTH_ARRAY_INDEX`` and the array's id in ``$BERTH_ARRAY_ID``; the array's id is
the id of its first task.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import click

from cli.jobs_cmd import print_json
from cli.live_cmd import EXIT_FAILED, EXIT_OK, client_options, run_client
from cli.text import ago
from common.arrays import ArraySummary
from common.client import BerthClient
from common.models import MAX_ARRAY_TASKS, ArraySpec

_ARRAY = re.compile(r"^(?:(\d+)-(\d+)|(\d+))(?:%(\d+))?$")


def parse_array(text: str) -> ArraySpec:
    """``0-99%10`` -> 100 tasks, at most 10 at once; ``100`` -> 100 tasks; ``0-99`` ->
    100 tasks without a limit. Indexes always run from 0: other ranges are refused."""
    m = _ARRAY.match(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not N, 0-LAST or either with %MAX (for example 0-99%10)")
    start, last, plain, limit = m.groups()
    if plain is not None:
        count = int(plain)
    else:
        if int(start) != 0:
            raise ValueError(
                f"{text!r}: array indexes start at 0 (give 0-{last} or a count of tasks)"
            )
        count = int(last) + 1
    if not 1 <= count <= MAX_ARRAY_TASKS:
        raise ValueError(f"{text!r}: an array has 1 to {MAX_ARRAY_TASKS} tasks (got {count})")
    max_concurrent = None
    if limit is not None:
        max_concurrent = int(limit)
        if not 1 <= max_concurrent <= MAX_ARRAY_TASKS:
            raise ValueError(f"{text!r}: %MAX must be 1 to {MAX_ARRAY_TASKS}")
    return ArraySpec(count=count, max_concurrent=max_concurrent)


def array_detail(summary: ArraySummary, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    spec = summary.spec
    limit = f", at most {summary.max_concurrent} at once" if summary.max_concurrent else ""
    counts = ", ".join(f"{n} {state}" for state, n in summary.counts.items() if n) or "-"
    lines = [
        f"array     {summary.id}  {summary.name}",
        f"tasks     {summary.count}{limit}",
        f"states    {counts}",
        f"image     {spec.image}",
        f"command   {spec.command!r}",
        f"submitted {ago(summary.created_at, now)} by {summary.owner or '-'}",
    ]
    if summary.kept != summary.count:
        lines.append(f"kept      {summary.kept} (the rest were deleted by retention)")
    return "\n".join(lines)


@click.group()
def array() -> None:
    """Job arrays: show one, or cancel, retry, pause or resume all its tasks."""


@array.command()
@client_options
@click.argument("array_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(addr: str, token: str | None, array_id: str, as_json: bool) -> None:
    """An array's tasks counted by state, and what they run."""

    async def body(client: BerthClient) -> int:
        summary = await client.get_array(array_id)
        if as_json:
            print_json(summary)
        else:
            click.echo(array_detail(summary))
        return EXIT_OK

    run_client(addr, token, body)


def _action(action: str, what: str) -> click.Command:
    @click.command(name=action)
    @client_options
    @click.argument("array_id", metavar="ID")
    @click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
    def command(addr: str, token: str | None, array_id: str, as_json: bool, **kw: bool) -> None:
        failed_only = not kw.get("all_ended", False)

        async def body(client: BerthClient) -> int:
            results = (await client.act_array(action, array_id, failed_only=failed_only)).results
            if as_json:
                print_json(results)
                return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED
            refused = [r for r in results if not r.ok]
            click.echo(f"{array_id}  {action}: {len(results) - len(refused)} tasks")
            for r in refused:
                message = (r.error or {}).get("message", "refused")
                click.echo(f"{r.job_id}  refused: {message}", err=True)
            return EXIT_OK if not refused else EXIT_FAILED

        run_client(addr, token, body)

    if action == "retry":
        command = click.option(
            "--all",
            "all_ended",
            is_flag=True,
            help="Every ended task, not only failed, timed out and cancelled ones "
            "(completed ones are refused: they are final).",
        )(command)
    command.help = f"{what} Exits 1 if any task was refused."
    return command


for _name, _what in (
    ("cancel", "Cancel every task of the array that has not ended."),
    ("retry", "Run the array's failed, timed out and cancelled tasks again."),
    ("pause", "Pause the array's running tasks."),
    ("resume", "Resume the array's paused tasks."),
):
    array.add_command(_action(_name, _what))
